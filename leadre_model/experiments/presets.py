"""Training budget of the ablation runs: every variant gets the same one."""

from __future__ import annotations

from leadre_model.llm.model import LLMConfig
from leadre_model.prompts.config import PromptConfig
from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig

# A 2-layer, 128-wide Qwen2 on short prompts: each variant trains in minutes on 2 cores.
EXPERIMENT_TRAIN: TrainConfig = TRAIN_PRESETS["tiny"].model_copy(update={
    "llm": LLMConfig(hidden_size=128, intermediate_size=384, num_layers=2),
    "prompts": PromptConfig(max_behaviors=20, token_budget=320),
    "sft": TRAIN_PRESETS["tiny"].sft.model_copy(update={"epochs": 3}),
})
