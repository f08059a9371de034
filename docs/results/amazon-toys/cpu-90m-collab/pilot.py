"""Equal-budget pilot: the cpu-90m model on one index for a short schedule, validation
Recall@10 on 1,000 users after every epoch (train_log.json "validation").

    python docs/results/amazon-toys/cpu-90m-collab/pilot.py WORLD INDEX OUT EPOCHS [LLM_JSON]

LLM_JSON: optional overrides of the preset's LLMConfig, e.g. '{"hidden_size": 192}'.

(the report's runs: `runs/amazon/world runs/amazon/index{,-cf50,-cf80} OUT 4`)
"""
import json
import sys
import time
from pathlib import Path

from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre
from leadre_model.train.validate import ValidationConfig

world, index, out, epochs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
base = TRAIN_PRESETS["cpu-90m"]
llm = base.llm.model_validate({**base.llm.model_dump(), **json.loads(sys.argv[5])}) \
    if len(sys.argv) > 5 else base.llm
cfg = base.model_copy(update={
    "llm": llm,
    "seq": base.seq.model_copy(update={"epochs": epochs}),
    "validation": ValidationConfig(users=1000, every_epochs=1, patience=10, time_budget_s=40 * 60),
})
t0 = time.time()
summary = train_leadre(world, index, out, cfg, progress=False)
print(json.dumps({"wall_s": time.time() - t0, "timings": summary["timings"],
                  "validation": json.loads((out / "train_log.json").read_text())["validation"]}))
