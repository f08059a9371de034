"""A training preset as it ships, or with overrides of its parts (the variants of this
report), training progress and one line per validation round on stderr.

    python docs/results/amazon-toys/cpu-90m-tied/train.py WORLD INDEX OUT PRESET [OVERRIDES_JSON]

OVERRIDES_JSON: {"llm": {...}, "seq": {...}, "validation": {...}} merged into the preset's
parts, e.g. '{"llm": {"dropout": 0.3}, "seq": {"epochs": 14}}'. With a weight average
(validation.average_decay, score_raw) the best un-averaged weights also go to OUT-raw.
"""
import json
import sys
import time
from pathlib import Path

from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre

world, index, out, preset = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
cfg = TRAIN_PRESETS[preset]
for part, update in (json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}).items():
    old = getattr(cfg, part)
    cfg = cfg.model_copy(update={part: type(old).model_validate({**old.model_dump(), **update})})
t0 = time.time()
summary = train_leadre(world, index, out, cfg, progress=True,
                       raw_out=out.with_name(out.name + "-raw"))
print(json.dumps({"wall_s": time.time() - t0, "timings": summary["timings"],
                  "validation": summary.get("validation")}))
