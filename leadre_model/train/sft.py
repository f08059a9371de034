"""Curriculum supervised fine-tuning (§4.3.1) with TRL's SFTTrainer.

Samples are TRL prompt-completion rows (``prompt``, ``completion`` = S-ID tokens); TRL
tokenizes ``prompt + completion`` and puts the loss on the completion only, which is the
same sequence the decoder scores (prompt ids, then S-ID token ids), so training and
decoding agree on what a probability means (full-vocabulary next-token softmax).

A curriculum is a list of stages, each a set of tasks trained together; stages run in
order on the same model (EX → IM → Main is ``ex>im>main``; ``main+im+ex`` mixes all three
in one stage — the variants of Table 2). ``lm`` (behaviour-sequence language modelling, see
:mod:`leadre_model.prompts.tasks`) is a stage of its own, trained with the loss on every
token; ``lm>ex>im>main`` is the default for a model trained from scratch.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leadre_model.errors import BadInputError, UsageError
from leadre_model.train.stage import StageConfig, run_trainer

TASKS = ("ex", "im", "main", "adv", "lm", "seq")


class SFTStageConfig(StageConfig):
    """Paper defaults (§5.1): AdamW, lr 6e-5 decaying to 6e-6, batch 64, 3 epochs."""

    epochs: float = Field(default=3.0, gt=0)
    lr: float = Field(default=6e-5, gt=0)
    min_lr: float = Field(default=6e-6, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_ratio: float = Field(default=0.03, ge=0, le=1)
    group_by_length: bool = Field(default=False, description="batch rows of similar length "
                                  "together: far less padding when a few users have long "
                                  "histories (real catalogs)")
    drop_ads: float = Field(default=0.0, ge=0, lt=1, description="seq stage only: delete each "
                            "ad behaviour of a row (but its last target) with this probability, "
                            "drawn anew every batch (train/augment.py)")


SFT_PRESETS: dict[str, SFTStageConfig] = {
    "paper": SFTStageConfig(),
    # A ~1M-parameter model from scratch needs a much larger step size than a pretrained LLM.
    "tiny": SFTStageConfig(epochs=3, lr=3e-3, min_lr=3e-4, batch_size=16, grad_accum=1,
                           warmup_ratio=0.05),
    # The `lm` stage of a model from scratch: one row per user, so more passes.
    "lm-tiny": SFTStageConfig(epochs=6, lr=3e-3, min_lr=3e-4, batch_size=16, grad_accum=1,
                              warmup_ratio=0.05),
}

CURRICULA: dict[str, list[list[str]]] = {
    "ex>im>main": [["ex"], ["im"], ["main"]],
    "ex>main": [["ex"], ["main"]],
    "main+im+ex": [["main", "im", "ex"]],
    "main+ex": [["main", "ex"]],
    "main": [["main"]],
}


def strip_lm(spec: str) -> str:
    """The curriculum without its ``lm`` stage (``lm>ex>im>main`` → ``ex>im>main``)."""
    return ">".join(st for st in spec.split(">") if st != "lm")


def parse_curriculum(spec: str) -> list[list[str]]:
    """``ex>im>main`` → [[ex], [im], [main]]; ``main+ex`` → [[main, ex]]."""
    stages = [[t for t in stage.split("+") if t] for stage in spec.split(">")]
    unknown = {t for stage in stages for t in stage} - set(TASKS)
    if unknown or not all(stages):
        raise UsageError(f"bad curriculum {spec!r}: stages are '+'-joined tasks from {TASKS}, "
                         "separated by '>'")
    for own in ("lm", "seq"):
        if any(own in st and len(st) > 1 for st in stages):
            raise UsageError(f"bad curriculum {spec!r}: '{own}' (pre-built loss masks) is a "
                             f"stage of its own, e.g. 'ex>{own}'")
    return stages


def train_stage(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: Sequence[Mapping[str, Any]],
    cfg: SFTStageConfig,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    optimizers: tuple[Any, Any] | None = None,
    trainer_cls: type | None = None,
) -> list[dict[str, float]]:
    """One SFT pass over ``samples``; returns TRL's log history (loss per logging step).
    ``lm`` samples train as plain text (prompt + completion, loss on every token); all
    others as prompt-completion rows with the loss on the completion only. ``optimizers``:
    an optimizer and its schedule to go on with (a fork's branch, train/fork.py) instead of
    the fresh AdamW and cosine of ``cfg``; ``trainer_cls``: the trainer (default
    :class:`~leadre_model.train.sft_trainer.ModelLossSFTTrainer`; bench/sft_step_bench.py
    passes TRL's own ``SFTTrainer`` to compare)."""
    from trl import SFTConfig

    from leadre_model.train.sft_trainer import ModelLossSFTTrainer

    if not samples:
        raise BadInputError("no training samples for this stage")
    kinds = {s.get("task") for s in samples}
    own = kinds & {"lm", "seq"}
    if own and len(kinds) > 1:
        raise ValueError(f"a {'/'.join(sorted(own))} stage cannot mix in other tasks")
    lm = kinds == {"lm"}
    rows: list[dict[str, Any]]
    trainer_kwargs: dict[str, Any] = {"callbacks": list(callbacks)} if callbacks else {}
    if optimizers is not None:
        trainer_kwargs["optimizers"] = optimizers
    if kinds == {"seq"}:
        rows = [dense_row_ids(tokenizer, s) for s in samples]
        if cfg.drop_ads > 0:
            trainer_kwargs["data_collator"] = _ad_deletion(tokenizer, cfg)
    elif lm:
        rows = [{"text": s["prompt"] + s["completion"]} for s in samples]
    else:
        rows = [{"prompt": s["prompt"], "completion": s["completion"]} for s in samples]
    return run_trainer(
        trainer_cls or ModelLossSFTTrainer, SFTConfig, model, tokenizer, rows, cfg, progress,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": cfg.min_lr},
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        optim="adamw_torch",
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        completion_only_loss=not lm,
        trainer_kwargs=trainer_kwargs or None,
    )


def _ad_deletion(tokenizer: PreTrainedTokenizerBase, cfg: SFTStageConfig) -> Any:
    """TRL's own collator for pre-tokenized rows, behind random ad deletion."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from leadre_model.train.augment import AdDeletionCollator

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return AdDeletionCollator.for_tokenizer(DataCollatorForLanguageModeling(pad_token_id=pad),
                                            tokenizer, cfg.drop_ads, cfg.seed)


def dense_row_ids(tokenizer: PreTrainedTokenizerBase, sample: Mapping[str, Any]) -> dict[str, list[int]]:
    """A ``seq`` sample (compact tokens + per-token loss mask) as pre-tokenized TRL row:
    ``input_ids`` and ``labels`` (-100 where the mask is 0). Every compact unit is one
    added token, so the ids are looked up, not re-tokenized."""
    from leadre_model.prompts.compact import split_units

    units = split_units(sample["prompt"])
    mask = sample["loss_mask"]
    if len(units) != len(mask):
        raise ValueError(f"seq sample of user {sample.get('user_id')!r}: {len(units)} tokens, "
                         f"{len(mask)} mask bits")
    ids = tokenizer.convert_tokens_to_ids(units)
    unk = [u for u, i in zip(units, ids) if i is None or i == tokenizer.unk_token_id]
    if unk:
        raise ValueError(f"tokenizer lacks compact tokens, e.g. {unk[:3]}")
    return {"input_ids": ids, "labels": [i if m == "1" else -100 for i, m in zip(ids, mask)]}


def stage_config(stage: Sequence[str], cfg: SFTStageConfig, lm_cfg: SFTStageConfig | None,
                 seq_cfg: SFTStageConfig | None) -> SFTStageConfig:
    """The settings a curriculum stage trains with: an ``lm`` or ``seq`` stage's own if
    given, else ``cfg``."""
    own = {"lm": lm_cfg, "seq": seq_cfg}.get(stage[0]) if len(stage) == 1 else None
    return own or cfg


def run_curriculum(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples_by_task: Mapping[str, Sequence[Mapping[str, Any]]],
    curriculum: str,
    cfg: SFTStageConfig,
    progress: bool = True,
    lm_cfg: SFTStageConfig | None = None,
    seq_cfg: SFTStageConfig | None = None,
    last_stage_callbacks: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    """Run every stage in order; a mixed stage shuffles its tasks' samples together.
    ``lm_cfg`` / ``seq_cfg``: the settings of an ``lm`` / ``seq`` stage (default: ``cfg``);
    ``last_stage_callbacks``: trainer callbacks of the final stage (model selection)."""
    logs = []
    stages = parse_curriculum(curriculum)
    for i, stage in enumerate(stages):
        missing = [t for t in stage if not samples_by_task.get(t)]
        if missing:
            raise BadInputError(f"curriculum {curriculum!r} stage {i + 1} needs samples for "
                                f"{missing}")
        samples = [s for t in stage for s in samples_by_task[t]]
        random.Random(cfg.seed + i).shuffle(samples)
        stage_cfg = stage_config(stage, cfg, lm_cfg, seq_cfg)
        history = train_stage(model, tokenizer, samples, stage_cfg, progress,
                              callbacks=last_stage_callbacks if i == len(stages) - 1 else ())
        logs.append({"stage": "+".join(stage), "samples": len(samples), "history": history})
    return logs
