"""Business-value alignment with DPO (§4.3.2), through TRL's DPOTrainer.

Preference pairs (prompt, chosen, rejected): for a user, two ads that are both likely to
be engaged with — the ad the user actually engaged with next, and one of the SFT model's
own top-B constrained decodes for that prompt (so the pair never drags the model towards
ads it would not retrieve anyway) — ordered by eCPM: the higher-eCPM ad is ``chosen``.
Pairs whose eCPMs are within ``min_ratio`` of each other carry no business signal and are
skipped. The reference model is a frozen copy of the SFT model (passed explicitly: TRL
would otherwise try to load a reference model by name).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.errors import BadInputError
from leadre_model.train.stage import StageConfig, run_trainer


class DPOStageConfig(StageConfig):
    epochs: float = Field(default=1.0, gt=0)
    lr: float = Field(default=5e-6, gt=0)
    beta: float = Field(default=0.1, gt=0, description="DPO temperature β")
    min_ratio: float = Field(default=1.1, ge=1.0, description="chosen eCPM ≥ ratio × rejected")
    candidates: int = Field(default=8, ge=2, description="SFT decodes considered per prompt")


DPO_PRESETS: dict[str, DPOStageConfig] = {
    "paper": DPOStageConfig(),
    "tiny": DPOStageConfig(lr=5e-4, batch_size=16, grad_accum=1, epochs=1.0),
}


def preference_pairs(
    samples: Sequence[Mapping[str, Any]],
    candidates: Sequence[Sequence[str]],
    ecpm: Mapping[str, float],
    sid_of: Mapping[str, str],
    cfg: DPOStageConfig,
) -> list[dict[str, str]]:
    """Pairs from main-task samples (``prompt``, ``target_ad``) and, per sample, the SFT
    model's decoded ad ids. One pair per sample at most: the target vs. a random other
    candidate whose eCPM differs by at least ``min_ratio``."""
    if len(samples) != len(candidates):
        raise ValueError(f"{len(samples)} samples but {len(candidates)} candidate lists")
    rng = random.Random(cfg.seed)
    pairs = []
    for sample, cands in zip(samples, candidates, strict=True):
        target = sample["target_ad"]
        others = [c for c in cands[: cfg.candidates] if c != target]
        rng.shuffle(others)
        for other in others:
            hi, lo = (target, other) if ecpm[target] >= ecpm[other] else (other, target)
            if ecpm[hi] >= cfg.min_ratio * max(ecpm[lo], 1e-12):
                pairs.append({"prompt": sample["prompt"], "chosen": sid_of[hi],
                              "rejected": sid_of[lo]})
                break
    return pairs


def train_dpo(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[Mapping[str, str]],
    cfg: DPOStageConfig,
    progress: bool = True,
) -> list[dict[str, float]]:
    """DPO on ``model`` in place against a frozen copy of it; returns the log history."""
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise BadInputError("no preference pairs: every candidate pair had near-equal eCPM")
    ref_model = copy.deepcopy(model).eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    return run_trainer(DPOTrainer, DPOConfig, model, tokenizer, pairs, cfg, progress,
                       trainer_kwargs={"ref_model": ref_model}, beta=cfg.beta)
