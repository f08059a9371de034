"""SFT step benchmark: our trainer (the model's own loss, train/sft_trainer.py) against
TRL's ``SFTTrainer`` (its fused LM head) on the same ``seq`` rows in the same run. One
``name: value`` line per figure.

    python bench/sft_step_bench.py --world runs/amazon/world --index runs/amazon/index-cf50
                                   [--preset cpu-90m-ens] [--steps 60] [--repeats 2]

Setup: the preset's tokenizer, model and dense head as ``leadre train`` builds them
(``pipeline.member_model``) and its ``seq`` stage settings (batch, length grouping, ad deletion), on ``--steps`` × batch rows
drawn at random from the world's training rows (the refit's held-out users excluded, as
in ``leadre train``). Each trainer runs one pass over those rows from the same initial
weights; the two alternate ``--repeats`` times and each keeps its fastest pass (the
machines are shared). Wall clock, the process's torch threads (``--threads``, default 2).

Lines: ``sft_step_s_ours`` and ``sft_step_s_trl`` (seconds per optimizer step: the
pass's wall time from its first step to its last, over its steps), ``speedup_vs_trl``,
``max_abs_loss_diff`` (the two trainers' logged losses, step by step: the same loss, so
~1e-4 or less), ``steps``, ``rows``, ``threads``.
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from leadre_model.data.split import holdout_users
from leadre_model.errors import LeadreError
from leadre_model.index.sid_index import load_index
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, member_model
from leadre_model.train.sft import train_stage
from leadre_model.train.sft_trainer import ModelLossSFTTrainer


class Clock(TrainerCallback):
    """Wall time from the trainer's first step to its last (no dataset or model setup)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def on_train_begin(self, *_args: object, **_kw: object) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, *_args: object, **_kw: object) -> None:
        self.end = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--preset", default="cpu-90m-ens",
                    choices=sorted(k for k, v in TRAIN_PRESETS.items() if v.curriculum == "seq"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from trl import SFTTrainer

    torch.set_num_threads(args.threads)
    cfg = TRAIN_PRESETS[args.preset]
    index = load_index(args.index)
    holdout = holdout_users(args.world, cfg.holdout_users) if cfg.holdout_users else None
    samples = build_samples(args.world, index, cfg.prompts, ["seq"], "train", holdout=holdout)
    seq = cfg.seq or cfg.sft
    n = min(len(samples), args.steps * seq.batch_size)
    rows = random.Random(args.seed).sample(samples, n)
    model, tokenizer, _ = member_model(cfg, args.world, args.index, index, ["seq"], {"seq": rows})
    stage = seq.model_copy(update={"epochs": 1.0, "logging_steps": 1, "seed": args.seed})

    best: dict[str, float] = {}
    losses: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, cls in (("ours", ModelLossSFTTrainer), ("trl", SFTTrainer)):
            trial, clock = copy.deepcopy(model), Clock()
            history = train_stage(trial, tokenizer, rows, stage, progress=False,
                                  callbacks=[clock], trainer_cls=cls)
            steps = max(int(h["step"]) for h in history)
            best[name] = min(best.get(name, float("inf")), (clock.end - clock.start) / steps)
            losses[name] = [h["loss"] for h in history]
    diff = max(abs(a - b) for a, b in zip(losses["ours"], losses["trl"], strict=True))
    print(f"sft_step_s_ours: {best['ours']:.4f}")
    print(f"sft_step_s_trl: {best['trl']:.4f}")
    print(f"speedup_vs_trl: {best['trl'] / best['ours']:.3f}")
    print(f"max_abs_loss_diff: {diff:.2e}")
    print(f"steps: {steps}")
    print(f"rows: {n}")
    print(f"threads: {args.threads}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, LeadreError) as exc:  # a missing world or index: say which, no traceback
        raise SystemExit(f"sft_step_bench: {exc}") from None
