"""Probe: Recall@10 on validation and test (same 5,000 users) of LEADRE's dense scores and
SASRec-CE's scores, with a popularity correction score - tau * log(1 + train count).

    python docs/results/amazon-toys/cpu-90m-tied-nosummary/popularity-correction/probe.py WORLD INDEX MODEL [CACHE]

Why: amazon-toys test targets are rarer in training than validation targets (mean training
count 18.9 against 21.6; 25.7 % against 20.2 % with fewer than 5), so a model leaning on
popularity would drop more from validation to test. Output: probe_output.txt.
"""
import sys
from pathlib import Path

import numpy as np
import torch

from leadre_model.eval.harness import EvalConfig, baseline_retrievers, build_eval_data
from leadre_model.eval.metrics import recall_at_k
from leadre_model.llm.decode import encode_prompts
from leadre_model.llm.dense_head import dense_head_of, prompt_scores
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples

world, index_dir, model_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cache = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".leadre_cache/baselines")
data = build_eval_data(world, EvalConfig(max_test_users=5000, progress=False))
users = [c.user.user_id for c in data.test_cases]
pos = {u: i for i, u in enumerate(users)}
n_items = len(data.ad_ids)
count = np.bincount([x for s in data.train_sequences for x in s], minlength=n_items)
logc = np.log1p(count).astype(np.float32)
TAUS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6]
hists = {"valid": [h[:-1] for h in data.test_histories], "test": list(data.test_histories)}
targets = {"valid": [h[-1] for h in data.test_histories], "test": list(data.test_targets)}


def report(name: str, split: str, scores: np.ndarray) -> None:
    """scores (users, n_items) in eval-id space, -inf where not allowed."""
    s = scores.copy()
    for i, h in enumerate(hists[split]):
        s[i, h] = -np.inf
    tgt = np.asarray(targets[split])
    out = []
    for tau in TAUS:
        adj = s - tau * logc
        top = np.argpartition(-adj, 10, axis=1)[:, :10]  # the top 10, unordered
        out.append(f"{tau}:{recall_at_k(top, tgt, 10):.4f}")
    se = np.sqrt(0.07 * 0.93 / len(tgt))
    print(f"{name}\t{split}\t" + " ".join(out) + f"\t(se≈{se:.4f})", flush=True)


sid = SidRetriever.from_dirs(model_dir, index_dir)
assert sid.manifest is not None
head = dense_head_of(sid.model)
assert head is not None
to_eval = np.array([data.index.get(a, -1) for a in sid.index.ad_ids])
allowed = (torch.as_tensor(sid.index.active) & head.fits.cpu()).numpy()
for split in ("valid", "test"):
    samples = build_samples(world, sid.index, sid.manifest.prompt_config, ["main"], split,
                            users=users)
    order = np.array([pos[x["user_id"]] for x in samples])
    assert len(order) == len(users)
    with torch.no_grad():
        sc = prompt_scores(sid.model, head, encode_prompts(sid.tokenizer,
                                                           [x["prompt"] for x in samples]))
    logp = torch.log_softmax(sc.float(), 1).numpy()
    full = np.full((len(users), n_items), -np.inf, dtype=np.float32)
    ok = (to_eval >= 0) & allowed
    full[np.ix_(order, to_eval[ok])] = logp[:, ok]
    report("leadre", split, full)

for r in baseline_retrievers(["sasrec_ce"], progress=False, cache_dir=cache):
    r.fit_eval(data)
    assert r.model is not None
    for split in ("valid", "test"):
        sc = np.asarray(r.model.scores(hists[split]), dtype=np.float32)
        sc = sc - np.logaddexp.reduce(sc, axis=1, keepdims=True)
        report(r.name, split, sc)
