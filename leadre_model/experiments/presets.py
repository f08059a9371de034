"""Training budget of the ablation runs: every variant gets the same one."""

from __future__ import annotations

from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig

# The `experiment` preset: a variant trains in ~5 minutes on 2 busy CPU cores, so the whole
# study fits in about an hour. It is far below the paper's budget (a pretrained 1B+ model);
# the report says what that costs.
EXPERIMENT_TRAIN: TrainConfig = TRAIN_PRESETS["experiment"]
