"""How much of the item-CF start is left in a trained model's ad-id rows: cosine between
each trained row and its start (``collab_id_vectors``, recomputed: it is deterministic), by
how often the ad is a training target.

    python docs/results/amazon-toys/collab-init/drift.py WORLD INDEX MODEL
"""
import sys
from pathlib import Path

import numpy as np
import torch

from leadre_model.data.split import train_item_sequences
from leadre_model.index.sid_index import load_index
from leadre_model.llm.dense_head import dense_head_of
from leadre_model.llm.retriever import SidRetriever
from leadre_model.train.pipeline import collab_id_vectors

world, index_dir, model_dir = (Path(a) for a in sys.argv[1:4])
index = load_index(index_dir)
head = dense_head_of(SidRetriever.from_dirs(model_dir, index_dir).model)
rows = head.ids.weight.detach().float()
start = torch.as_tensor(collab_id_vectors(world, index, index_dir, rows.shape[1], seed=0))
cos = torch.nn.functional.cosine_similarity(rows, start[: len(rows)]).numpy()
seqs = train_item_sequences(world, {a: i for i, a in enumerate(index.ad_ids)})
counts = np.bincount(np.concatenate([np.asarray(s) for s in seqs]), minlength=len(rows))[: len(rows)]
print("| training count | ads | mean cosine(trained row, item-CF start) | mean row norm |")
print("|---|---|---|---|")
for lo, hi in ((0, 1), (1, 5), (5, 20), (20, 100), (100, 10**9)):
    m = (counts >= lo) & (counts < hi)
    if m.any():
        label = f"{lo}" if hi == lo + 1 else (f"≥ {lo}" if hi > 10**8 else f"{lo}–{hi - 1}")
        print(f"| {label} | {int(m.sum())} | {cos[m].mean():.3f} | {rows[m].norm(dim=1).mean():.3f} |")
