"""Validation Recall@10 of one model on three sets of validation users, scored exactly as
model selection scores them while training (train/validate.py `SidValidator`, the
preset's ValidationConfig: dense top 10 over all active ads, seen ads not masked).

    python docs/results/amazon-toys/cpu-90m-tied-nosummary/epochs-20/selection_sets.py WORLD INDEX MODEL PRESET

  * selection: the seeded 5,000 the training run selected on (pipeline.py `cap_samples`);
  * eval users: the validation targets of `leadre eval --max-test-users 5000`'s users;
  * all: every user with a validation target.
Why: the 20-epoch run's selection round (0.0848) sits above the 12-epoch run's (0.0838)
while its test is far below (0.0610 against 0.0674). If the selection set alone says so,
the rounds were picked on noise of that sample.
"""
import sys
from pathlib import Path

from leadre_model.eval.harness import EvalConfig, build_eval_data
from leadre_model.llm.retriever import SidRetriever
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, cap_samples
from leadre_model.train.validate import SidValidator

world, index_dir, model_dir, preset = (Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                                       sys.argv[4])
cfg = TRAIN_PRESETS[preset]
assert cfg.validation is not None
sid = SidRetriever.from_dirs(model_dir, index_dir)
assert sid.manifest is not None
valid = build_samples(world, sid.index, sid.manifest.prompt_config, ["main"], "valid")
eval_users = {c.user.user_id for c in
              build_eval_data(world, EvalConfig(max_test_users=5000, progress=False)).test_cases}
sets = {"selection (the training run's 5,000)": cap_samples(valid, cfg.validation.users,
                                                             cfg.sft.seed),
        "eval users (leadre eval's 5,000)": [s for s in valid if s["user_id"] in eval_users],
        "all validation users": valid}
picked = {s["user_id"] for s in sets["selection (the training run's 5,000)"]}
print(f"overlap of selection and eval users: {len(picked & eval_users)}", flush=True)
for name, samples in sets.items():
    v = SidValidator(sid.index, samples, cfg.validation.model_copy(update={"every_use": False}))
    r = v(sid.model, sid.tokenizer)
    se = (r * (1 - r) / len(samples)) ** 0.5
    print(f"{name}\t{len(samples)} users\tRecall@10 {r:.4f} ± {se:.4f}", flush=True)
