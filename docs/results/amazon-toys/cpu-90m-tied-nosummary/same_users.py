"""Validation and test Recall@10 of LEADRE, item-CF and SASRec-CE on the same users: the
5,000 seeded test users of `leadre eval --max-test-users 5000`, each scored on its
validation target (history: its training targets) and on its test target (history: also
the validation ad). LEADRE ranks as `leadre eval` does (its head's setting), from the
prompts `build_samples` makes for training-time validation (train/validate.py); the
baselines are the eval's, loaded from its cache or refitted.

    python docs/results/amazon-toys/cpu-90m-tied-nosummary/same_users.py WORLD INDEX MODEL [CACHE]
"""
import sys
from pathlib import Path

import numpy as np

from leadre_model.eval.harness import EvalConfig, baseline_retrievers, build_eval_data
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples

world, index_dir, model_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cache = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(".leadre_cache/baselines")
data = build_eval_data(world, EvalConfig(max_test_users=5000, progress=False))
users = [c.user.user_id for c in data.test_cases]


def line(name: str, split: str, hits: np.ndarray) -> None:
    print(f"{name}\t{split}\tRecall@10 {hits.mean():.4f} ± {hits.std() / np.sqrt(len(hits)):.4f}"
          f"\t{len(hits)} users", flush=True)


sid = SidRetriever.from_dirs(model_dir, index_dir)
assert sid.manifest is not None
for split in ("valid", "test"):
    samples = build_samples(world, sid.index, sid.manifest.prompt_config, ["main"], split,
                            users=users)
    prompts, targets = [x["prompt"] for x in samples], [x["target_ad"] for x in samples]
    found = sid.ad_ids(sid.retrieve(prompts, 20, top_k=10, batch_size=64))  # the head's "full"
    line("leadre", split, np.array([t in set(a) for t, a in zip(targets, found)]))

# a test user's test history is its training targets then its validation ad
valid = ([h[:-1] for h in data.test_histories], [h[-1] for h in data.test_histories])
test = (data.test_histories, list(data.test_targets))
for r in baseline_retrievers(["itemcf", "sasrec_ce"], progress=False, cache_dir=cache):
    r.fit_eval(data)
    assert r.model is not None
    for split, (hist, target) in (("valid", valid), ("test", test)):
        ranked = r.model.recommend(hist, 10, False)
        line(r.name, split, np.array([t in set(row) for t, row in zip(target, ranked)]))
