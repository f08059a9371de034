"""SASRec-CE's validation Recall@10 on the three user sets of selection_sets.py (seen ads
not masked, as selection scores): is the selection set's lead the users in it (then every
model shows it) or LEADRE's pick of its best round on it?

    python docs/results/amazon-toys/cpu-90m-tied-nosummary/epochs-20/sasrec_sets.py WORLD INDEX PRESET [CACHE]

SASRec-CE is the one `leadre eval` fits (loaded from its cache when there).
"""
import sys
from pathlib import Path

import numpy as np

from leadre_model.eval.harness import EvalConfig, baseline_retrievers, build_eval_data
from leadre_model.index.sid_index import load_index
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, cap_samples

world, index_dir, preset = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cache = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".leadre_cache/baselines")
cfg = TRAIN_PRESETS[preset]
assert cfg.validation is not None
index = load_index(index_dir)
valid = build_samples(world, index, cfg.prompts, ["main"], "valid")
picked = {s["user_id"] for s in cap_samples(valid, cfg.validation.users, cfg.sft.seed)}
evaluated = build_eval_data(world, EvalConfig(max_test_users=5000, progress=False))
eval_users = {c.user.user_id for c in evaluated.test_cases}
(sasrec,) = baseline_retrievers(["sasrec_ce"], progress=False, cache_dir=cache)
sasrec.fit_eval(evaluated)  # the eval's own fit (its cache key)
data = build_eval_data(world, EvalConfig(progress=False))  # every test user
assert sasrec.model is not None
users = [c.user.user_id for c in data.test_cases]
hists = [h[:-1] for h in data.test_histories]
targets = np.asarray([h[-1] for h in data.test_histories])
hit = np.zeros(len(users), dtype=bool)
for lo in range(0, len(users), 2000):
    sc = np.asarray(sasrec.model.scores(hists[lo:lo + 2000]), dtype=np.float32)
    top = np.argpartition(-sc, 10, axis=1)[:, :10]
    hit[lo:lo + 2000] = [t in row for t, row in zip(targets[lo:lo + 2000], top)]
for name, keep in (("selection (the training run's 5,000)", picked),
                   ("eval users (leadre eval's 5,000)", eval_users),
                   ("all validation users", set(users))):
    m = np.array([u in keep for u in users])
    r = hit[m].mean()
    print(f"sasrec_ce\t{name}\t{m.sum()} users\tRecall@10 {r:.4f} ± {np.sqrt(r * (1 - r) / m.sum()):.4f}",
          flush=True)
