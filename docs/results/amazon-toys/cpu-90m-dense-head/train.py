"""The full amazon-toys run of this report: a training preset as it ships, with the stop of
its validation-selected `seq` stage moved to fit the session (the figures say which).

    python docs/results/amazon-toys/cpu-90m-dense-head/train.py WORLD INDEX OUT PRESET [BUDGET_MIN]
"""
import json
import sys
import time
from pathlib import Path

from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre

world, index, out, preset = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
cfg = TRAIN_PRESETS[preset]
if len(sys.argv) > 5:
    cfg = cfg.model_copy(update={"validation": cfg.validation.model_copy(
        update={"time_budget_s": float(sys.argv[5]) * 60})})
t0 = time.time()
summary = train_leadre(world, index, out, cfg, progress=True)
print(json.dumps({"wall_s": time.time() - t0, "timings": summary["timings"],
                  "validation": summary.get("validation")}))
