"""Probe: does the S-ID head add to the dense head when it scores the dense head's own
candidates (a product of the two experts, LIGER-style, without a beam that could miss them)?

    python docs/results/amazon-toys/head-fusion/probe.py WORLD INDEX MODEL [M] [OUT]

Per prompt: the dense head's log-softmax over all ads (as `--rerank full` serves), its top M
(default 50) candidates, their S-ID log-probability teacher-forced
(llm/decode.py candidate_scores), and the top 10 by dense + w · S-ID for several w (w = 0 is the served
list). Same 5,000 users as `leadre eval --max-test-users 5000`; validation = each user's
second-to-last target from the history before it (choose w there), test = the eval's target.
Recall@10 with and without the user's seen ads masked; se = binomial standard error.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from leadre_model.eval.harness import EvalConfig, build_eval_data
from leadre_model.eval.metrics import recall_at_k
from leadre_model.llm.decode import candidate_scores, encode_prompts
from leadre_model.llm.dense_head import dense_head_of, prompt_scores
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples

world, index_dir, model_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
m = int(sys.argv[4]) if len(sys.argv) > 4 else 50
out_path = Path(sys.argv[5]) if len(sys.argv) > 5 else None
weights = [0.0, 0.1, 0.25, 0.5, 1.0, 2.0]
data = build_eval_data(world, EvalConfig(max_test_users=5000, progress=False))
users = [c.user.user_id for c in data.test_cases]
pos = {u: i for i, u in enumerate(users)}
n_items = len(data.ad_ids)
hists = {"valid": [h[:-1] for h in data.test_histories], "test": list(data.test_histories)}
targets = {"valid": [h[-1] for h in data.test_histories], "test": list(data.test_targets)}

sid = SidRetriever.from_dirs(model_dir, index_dir)
assert sid.manifest is not None
model, head = sid.model, dense_head_of(sid.model)
assert head is not None
model.eval()
to_eval = np.array([data.index.get(a, -1) for a in sid.index.ad_ids])
ok = (to_eval >= 0) & (torch.as_tensor(sid.index.active) & head.fits.cpu()).numpy()
row_of = np.full(n_items, -1)
row_of[to_eval[ok]] = np.flatnonzero(ok)
lines = []


def say(line: str) -> None:
    print(line, flush=True)
    lines.append(line)


def recall(top: np.ndarray, tgt: np.ndarray) -> str:
    r = recall_at_k(top, tgt, 10)
    return f"{r:.4f} ± {np.sqrt(r * (1 - r) / len(tgt)):.4f}"


for split in ("valid", "test"):
    samples = build_samples(world, sid.index, sid.manifest.prompt_config, ["main"], split,
                            users=users)
    order = np.array([pos[x["user_id"]] for x in samples])
    ids = [list(x) for x in encode_prompts(sid.tokenizer, [x["prompt"] for x in samples])]
    t0 = time.time()
    logp = torch.log_softmax(prompt_scores(model, head, ids).float(), 1).numpy()
    full = np.full((len(users), n_items), -np.inf, dtype=np.float32)
    full[np.ix_(order, to_eval[ok])] = logp[:, ok]
    ids_by_user = [None] * len(users)
    for j, i in enumerate(order):
        ids_by_user[i] = ids[j]
    tgt = np.asarray(targets[split])
    for masked in (False, True):
        s = full.copy()
        if masked:
            for i, h in enumerate(hists[split]):
                s[i, h] = -np.inf
        cand = np.argsort(-s, axis=1)[:, :m]  # eval items, best dense first
        dense = np.take_along_axis(s, cand, 1)
        codes = sid.index.codes[row_of[cand]]
        t1 = time.time()
        sidlp = candidate_scores(model, ids_by_user, codes, sid.level_ids,
                                   sid.tokenizer.pad_token_id)
        cost = time.time() - t1
        hit_m = float(np.mean([t in c for t, c in zip(tgt, cand)]))
        say(f"{split}\t{'masked' if masked else 'all'}\tdense top-{m} holds the target "
            f"{hit_m:.4f}; S-ID scoring {cost:.0f} s for {len(users)} prompts")
        for w in weights + [float("inf")]:
            fused = sidlp if np.isinf(w) else dense + w * sidlp
            top = np.take_along_axis(cand, np.argsort(-fused, axis=1, kind="stable")[:, :10], 1)
            name = "S-ID alone (within the candidates)" if np.isinf(w) else f"dense + {w} x S-ID"
            say(f"{split}\t{'masked' if masked else 'all'}\t{name}\tRecall@10 {recall(top, tgt)}")
if out_path is not None:
    out_path.write_text("\n".join(lines) + "\n")
