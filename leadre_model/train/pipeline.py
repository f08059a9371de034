"""The whole alignment run (§4.2-4.3): samples → tokenizer → model → curriculum SFT → DPO
→ a saved model tied to the S-ID index. `leadre train` and `make demo` call this."""

from __future__ import annotations

import copy
import json
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator

from leadre_model.configbase import StrictConfig
from leadre_model.data.split import holdout_users, train_item_sequences
from leadre_model.data.store import load_ads
from leadre_model.device import describe
from leadre_model.index.collab import CollabConfig, fit_collab
from leadre_model.index.sid_index import SidIndex, load_embeddings, load_index, load_trie
from leadre_model.index.sids import sid_vocabulary
from leadre_model.index.trie import SidTrie
from leadre_model.llm.dense_head import attach_dense_head
from leadre_model.llm.item_text import attach_item_text
from leadre_model.llm.model import DenseHeadSettings, LLMConfig, build_model, save_model
from leadre_model.llm.retriever import SidRetriever
from leadre_model.llm.tokenizer import TokenizerConfig, tokenizer_hash, train_tokenizer
from leadre_model.prompts.compact import CompactConfig, compact_vocabulary
from leadre_model.prompts.config import PromptConfig
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.dpo import DPO_PRESETS, DPOStageConfig, preference_pairs, train_dpo
from leadre_model.train.fork import ForkPoint, branch_optimizers
from leadre_model.train.plots import plot_training
from leadre_model.train.sft import (
    SFT_PRESETS,
    SFTStageConfig,
    parse_curriculum,
    run_curriculum,
    stage_config,
    train_stage,
)
from leadre_model.train.validate import BestOnValidation, SidValidator, ValidationConfig


class TrainConfig(StrictConfig):
    llm: LLMConfig = Field(default_factory=LLMConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    prompts: PromptConfig = Field(default_factory=PromptConfig)
    curriculum: str = "ex>im>main"
    sft: SFTStageConfig = Field(default_factory=lambda: SFT_PRESETS["tiny"])
    lm: SFTStageConfig | None = Field(default=None, description="settings of the curriculum's "
                                      "'lm' stage, if it has one (default: those of sft)")
    seq: SFTStageConfig | None = Field(default=None, description="settings of a 'seq' stage "
                                       "(dense rows, compact prompts; default: those of sft)")
    dpo: DPOStageConfig | None = Field(default_factory=lambda: DPO_PRESETS["tiny"])
    dpo_users: int = Field(default=400, ge=1, description="main-task samples used for DPO pairs")
    max_samples_per_task: int | None = Field(default=None, ge=1)
    validation: ValidationConfig | None = Field(default=None, description="score the last "
                                                "stage on validation targets, keep the best "
                                                "weights, early-stop (train/validate.py)")
    holdout_users: int | None = Field(default=None, ge=1, description="refit: only these "
                                      "many users keep their validation target held out (they "
                                      "select the model); every other user's is trained on "
                                      "(data/split.py). None: every user's is held out")
    members: int = Field(default=1, ge=1, description="an ensemble: this many models, each "
                         "trained on the same samples with its seeds shifted by its number "
                         "and its share of the validation time budget; retrieval averages "
                         "their dense heads' log-probabilities (needs a dense head, no DPO)")
    fork: float | None = Field(default=None, gt=0, lt=1, description="members > 1: they "
                               "share this share of the last stage's schedule (one trunk, "
                               "member 0's seeds), then each goes on from the trunk's weights "
                               "and optimizer state with its own seeds (train/fork.py), so "
                               "each gets more epochs in the same time budget. Needs "
                               "validation rounds every epoch or more often (the fork is "
                               "taken at a round)")

    @model_validator(mode="after")
    def _ensemble_needs_dense_head(self) -> TrainConfig:
        if self.members > 1 and (self.llm.dense_head is None or self.dpo is not None):
            raise ValueError("members > 1 averages the dense heads' scores: it needs "
                             "llm.dense_head and no DPO stage (dpo: null)")
        if self.fork is not None and (self.members < 2 or self.validation is None
                                      or self.validation.every_epochs > 1):
            raise ValueError("fork needs members > 1 and validation rounds at least every "
                             "epoch (validation.every_epochs <= 1): the trunk forks at a round")
        return self


def member_config(cfg: TrainConfig, i: int) -> TrainConfig:
    """The config member ``i`` of an ensemble trains with: every seed (initialisation, data
    order, ad deletion) shifted by ``i`` so the members differ, and ``1/members`` of the
    validation time budget so the ensemble keeps the preset's budget."""
    if cfg.members == 1:
        return cfg

    def shifted(stage: Any) -> Any:
        return None if stage is None else stage.model_copy(update={"seed": stage.seed + i})

    update: dict[str, Any] = {
        "llm": cfg.llm.model_copy(update={"seed": cfg.llm.seed + i}),
        "sft": shifted(cfg.sft), "lm": shifted(cfg.lm), "seq": shifted(cfg.seq)}
    if cfg.validation is not None and cfg.validation.time_budget_s is not None:
        update["validation"] = cfg.validation.model_copy(update={
            "time_budget_s": cfg.validation.time_budget_s / cfg.members})
    return cfg.model_copy(update=update)


def trunk_config(cfg: TrainConfig) -> TrainConfig:
    """The config a fork's trunk trains with: member 0's seeds and the time budget of the one
    schedule the trunk and the branches share (its cosine is fitted to it). The trunk runs
    ``fork`` of that schedule once and each of the ``members`` branches the rest, so the
    budget is the preset's over ``fork + members × (1 - fork)``."""
    if cfg.fork is None or cfg.validation is None:
        raise ValueError("trunk_config needs a config with fork and validation")
    base = member_config(cfg, 0)
    budget = cfg.validation.time_budget_s
    if budget is not None:
        budget /= cfg.fork + cfg.members * (1 - cfg.fork)
    return base.model_copy(update={
        "validation": cfg.validation.model_copy(update={"time_budget_s": budget})})


# A model from scratch first learns the corpus (the `lm` stage, loss on every token), then
# the curriculum: without it the tiny model stays at the targets' marginal distribution
# (docs/results/ablations-synthetic-v2/report.md).
_SMALL_LLM = LLMConfig(hidden_size=96, intermediate_size=256, num_layers=2)

# The CPU recipe (issue "Retrieval quality"): compact prompts (every prompt component as a
# few tokens, leadre_model/prompts/compact.py) and the dense `seq` task (one row per user,
# the loss on the S-ID of every train target, and on each content behaviour's category as an
# auxiliary task), S-ID rows initialised from the RQ-VAE codebooks, a ≈0.2M-parameter Qwen2
# from scratch. Measured by bench/quality_bench.py and `leadre experiment recipe`; the
# "Which preset to pick" in docs/training_and_evaluation.md has the costs.
_COMPACT_PROMPTS = PromptConfig(format="compact", max_behaviors=200, token_budget=600,
                                compact=CompactConfig(content_loss=True))
_CPU_LLM = LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2, max_positions=1024,
                     sid_init="codebook")
_SEQ = SFTStageConfig(epochs=20, lr=3e-3, min_lr=3e-4, batch_size=16, grad_accum=1,
                      warmup_ratio=0.05, logging_steps=50)
_CPU = TrainConfig(llm=_CPU_LLM, tokenizer=TokenizerConfig(vocab_size=300),
                   prompts=_COMPACT_PROMPTS, curriculum="seq", seq=_SEQ, dpo=None)

# The same recipe for a real catalog (tens of thousands of users and ads) within 90 minutes
# on 2 cores: a wider, deeper Qwen2 (4 layers × 192, ≈2.2M parameters; 3 × 128 learned
# less per pass on amazon-toys, docs/results/amazon-toys/cpu-90m-collab) with dropout 0.1
# (the 2.2M model overfits ≈130k targets without it: amazon-toys test Recall@10 0.0428 →
# 0.0506, docs/results/amazon-toys/cpu-90m-192-dropout), more passes, and model selection
# on validation Recall@10 (train/validate.py), which also stops it early when a catalog
# needs fewer passes, so it is not tuned to one dataset's epoch count.
_CPU_90M = _CPU.model_copy(update={
    "llm": _CPU_LLM.model_copy(update={"hidden_size": 192, "intermediate_size": 576,
                                       "num_layers": 4, "dropout": 0.1}),
    "seq": _SEQ.model_copy(update={"epochs": 20, "lr": 2e-3, "min_lr": 1e-4, "batch_size": 32,
                                   "weight_decay": 0.05, "logging_steps": 200,
                                   "group_by_length": True}),
    "validation": ValidationConfig(users=1000, every_epochs=2, patience=4,
                                   time_budget_s=85 * 60),
})

# cpu-90m plus a dense retrieval head beside the S-ID head (LIGER; llm/dense_head.py): the
# query at each target's <|ad|> is trained with full-softmax CE over all ads (as SASRec-CE);
# retrieval is its top-k over all active ads ("full": the best use of the head in the
# 4-epoch pilot, above re-ranking the beam); `leadre eval --rerank` scores the others.
# Measured on amazon-toys:
# docs/results/amazon-toys/cpu-90m-dense-head.
_CPU_90M_DENSE = _CPU_90M.model_copy(update={
    "llm": _CPU_90M.llm.model_copy(update={"dense_head": DenseHeadSettings(rerank="full")})})

# cpu-90m-dense with the head's ad-id vectors also added at the input (tied, as SASRec ties
# its item embeddings; llm/dense_head.py `id_input`): S-ID codes are shared by many ads, the
# id vector lets the model memorise an ad's own co-occurrences. Model selection every epoch
# on 5,000 validation users by the dense top-10 alone (no beam search), so the epoch count
# is chosen per catalog by validation, not fixed. Measured on amazon-toys
# (docs/results/amazon-toys/cpu-90m-tied) and amazon-sports (test Recall@10 0.0358 ± 0.0026
# against SASRec-CE 0.0434, 86 min: docs/results/amazon-sports/cpu-90m-tied).
# Dropout 0.3 (SASRec's) and a 12-epoch cosine: with 0.1 over 20 epochs it memorised its
# users' rows (validation 0.0648, test 0.0486); with these, test 0.0544.
# No interest summary: a `seq` row is one forward pass over the user's whole train history,
# so a summary at its head counts the categories of every target the row predicts, and each
# position sees its own future (at serving time the summary only holds the past). Without
# it (SASRec has none) test 0.0630 ± 0.0034: docs/results/amazon-toys/cpu-90m-tied-nosummary.
_CPU_90M_TIED = _CPU_90M.model_copy(update={
    "prompts": _COMPACT_PROMPTS.model_copy(update={"include_summary": False}),
    "llm": _CPU_90M.llm.model_copy(update={
        "dropout": 0.3, "dense_head": DenseHeadSettings(rerank="full", id_input=True)}),
    "seq": _CPU_90M.seq.model_copy(update={"epochs": 12}),
    "validation": _CPU_90M.validation.model_copy(update={
        "users": 5000, "every_epochs": 1.0, "patience": 3, "every_use": False}),
})

# cpu-90m-tied plus ad deletion in the `seq` rows (SFTStageConfig.drop_ads 0.2: each
# training ad of a row is dropped with this chance, drawn anew for every batch,
# train/augment.py), so the model cannot fit a user's exact row; rows a fifth shorter also
# make the epochs shorter. With `fit_schedule` a catalog too large for 12 epochs in the
# budget gets a cosine fitted to the epochs that fit, ending annealed instead of cut at a high
# learning rate. On a catalog where 12 epochs fit (amazon-toys) it changes nothing.
# Test Recall@10 against `cpu-90m-tied`: amazon-toys 0.0652 ± 0.0035 (0.0630), 37 min;
# amazon-sports 0.0386 ± 0.0027 (0.0358), 70 min; SASRec-CE 0.0718 / 0.0430 in the same
# runs (docs/results/amazon-sports/cpu-90m-aug).
# No weight decay (SASRec-CE has none): AdamW's decay shrinks every ad's id and code rows each
# step while Adam moves only the rows in the batch, so rare ads lose most, and test targets
# are rarer in training than validation ones. It lowers validation and raises the test:
# amazon-toys 0.0674 ± 0.0035 (0.0652 with 0.05), amazon-sports 0.0400 ± 0.0028 (0.0386);
# SASRec-CE 0.0718 / 0.0430 (docs/results/amazon-sports/cpu-90m-aug/weight-decay-0).
_CPU_90M_AUG = _CPU_90M_TIED.model_copy(update={
    "seq": _CPU_90M_TIED.seq.model_copy(update={"drop_ads": 0.2, "weight_decay": 0.0}),
    "validation": _CPU_90M_TIED.validation.model_copy(update={"fit_schedule": True}),
})

# cpu-90m-aug as a refit (data/split.py): the 5,000 users that select the epoch keep their
# validation target held out; every other user's is their last train target, so the model
# learns the latest interaction of most users, as a production retrain would. Evaluate it
# with the same holdout for every opponent (`leadre eval` takes it from the model).
# Test Recall@10 against SASRec-CE refitted on the same split: amazon-toys 0.0792 ± 0.0038
# vs 0.0816 (classic split 0.0674 vs 0.0718), 54 min; amazon-sports 0.0450 ± 0.0029 vs
# 0.0482 (classic 0.0400 vs 0.0430), 57 min (docs/results/amazon-{toys,sports}/refit).
_CPU_90M_REFIT = _CPU_90M_AUG.model_copy(update={"holdout_users": 5000})

# cpu-90m-refit with each ad's frozen MiniLM text embedding (the index's, the text the RQ-VAE
# quantised) at the input and in the dense head's ad vectors, through one trained map (tied,
# as the ids are: llm/item_text.py, DenseHeadSettings.text_output): ads that share S-ID codes
# then differ by their text, rare and new ones included. Test Recall@10 against
# cpu-90m-refit: amazon-toys 0.0774 ± 0.0038 (0.0792), amazon-sports 0.0448 ± 0.0029
# (0.0450); Recall@20 0.1136 (0.1094) and 0.0722 (0.0688): a deeper list, the same top 10
# (docs/results/amazon-{toys,sports}/text-head).
_CPU_90M_TEXT = _CPU_90M_REFIT.model_copy(update={"llm": _CPU_90M_REFIT.llm.model_copy(update={
    "item_text": True,
    "dense_head": DenseHeadSettings(rerank="full", id_input=True, text_output=True)})})

# cpu-90m-refit as an ensemble of two members (TrainConfig.members), each with half of an
# 84-minute validation budget (its cosine fitted to the epochs 42 minutes hold) and its
# seeds shifted; retrieval ranks by the mean of their dense log-probabilities. amazon-sports
# test Recall@10 0.0512 ± 0.0031 against SASRec-CE 0.0482 (cpu-90m-refit 0.0450), 75.7 min;
# the members alone 0.0508 and 0.0476 (docs/results/amazon-sports/ensemble). amazon-toys
# 0.0814 ± 0.0039 against SASRec-CE 0.0816 (cpu-90m-refit 0.0792), 80.7 min; the members
# alone 0.0784 and 0.0760 (docs/results/amazon-toys/ensemble). The budget decides the
# epochs, so the machine's pace shows in the figure: 12 epochs a member (≈ 200 s an epoch,
# SFT on the model's own loss) 0.0850 ± 0.0037 against three SASRec-CE fits' mean 0.0823;
# 6 (≈ 410 s an epoch) 0.0728 (docs/results/amazon-toys/ensemble-{fast,rerun}).
_CPU_90M_ENS = _CPU_90M_REFIT.model_copy(update={
    "members": 2,
    "validation": _CPU_90M_REFIT.validation.model_copy(update={"time_budget_s": 84 * 60})})

# cpu-90m-ens as three members that share the first half of a 10-epoch schedule
# (TrainConfig.fork: one trunk, then each member goes on from its weights and optimizer state
# with its own seeds, train/fork.py): three members of 10 epochs for the epochs of two
# independent ones (5 + 3 × 5), in the same 84 minutes (the schedule is fitted to 84 / 2
# minutes, so a slower machine or catalog gets a shorter cosine, never a cut one). Two
# members of a 16-epoch schedule forked at 8 overfitted on amazon-toys (validation peaked at
# 0.0846 / 0.0872 against 0.0888-0.0906 for these 10-epoch members).
# Measured on amazon-toys, refit split (docs/results/amazon-toys/fork): test Recall@10
# 0.0782 ± 0.0038 against SASRec-CE 0.0850 in the same eval and the independent members of
# cpu-90m-ens 0.0814, 60 min: the forked members are too alike for the average to add what
# two independent ones do, so cpu-90m-ens stays the recipe; this preset is kept to measure
# forks (`--fork F`, `--members N`).
_CPU_90M_FORK = _CPU_90M_ENS.model_copy(update={
    "members": 3, "fork": 0.5, "seq": _CPU_90M_ENS.seq.model_copy(update={"epochs": 10})})

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # ≈5 min on 2 cores for 1,000 users (≈5,400 train targets); scales with users × epochs.
    "cpu": _CPU,
    # bench/quality_bench.py's preset: the CPU recipe as it ships.
    "bench": _CPU,
    # real catalogs (amazon-toys: 19,412 users), ≤ 90 min on 2 cores, validation-selected
    "cpu-90m": _CPU_90M,
    "cpu-90m-dense": _CPU_90M_DENSE,
    "cpu-90m-tied": _CPU_90M_TIED,
    "cpu-90m-aug": _CPU_90M_AUG,
    "cpu-90m-refit": _CPU_90M_REFIT,
    "cpu-90m-text": _CPU_90M_TEXT,
    "cpu-90m-ens": _CPU_90M_ENS,
    "cpu-90m-fork": _CPU_90M_FORK,
    # `make demo`: the CPU recipe, then DPO on eCPM pairs (§4.3.2) from 150 users with a
    # learning rate of 2e-4, not the tiny preset's 5e-4: on the demo's SFT model, 5e-4 raised
    # eCPM@8 by 15 % but drew the first slot to a few high-eCPM ads (distinct first ads
    # over 50 users 32 → 24; 3e-4: 28); 2e-4 kept 31 with eCPM@8 +7 %, HR@8 unchanged.
    "demo": _CPU.model_copy(update={"dpo": DPO_PRESETS["tiny"].model_copy(update={"lr": 2e-4}),
                                    "dpo_users": 150}),
    # The paper's text prompts and EX → IM → Main curriculum at a tiny scale (before the
    # CPU recipe this was the demo preset; kept for the ablations and as the text path).
    "text-small": TrainConfig(
        llm=_SMALL_LLM,
        tokenizer=TokenizerConfig(vocab_size=1000),
        prompts=PromptConfig(max_behaviors=15, token_budget=320),
        curriculum="lm>ex>im>main",
        lm=SFT_PRESETS["lm-tiny"].model_copy(update={"epochs": 8}),
        sft=SFT_PRESETS["tiny"].model_copy(update={"epochs": 2}),
        dpo_users=150,
        max_samples_per_task=600,
    ),
    "tiny": TrainConfig(curriculum="lm>ex>im>main", lm=SFT_PRESETS["lm-tiny"]),
    # The ablation budget (leadre_model/experiments): a 2-layer, 96-wide Qwen2 (≈0.4M
    # parameters), ≈200-token prompts, ≤ 1,000 samples per task, 2 epochs per stage; the
    # ablation runner adds the shared `lm` base model in front of every variant.
    "experiment": TrainConfig(
        llm=_SMALL_LLM,
        tokenizer=TokenizerConfig(vocab_size=1000),
        prompts=PromptConfig(max_behaviors=15, token_budget=320),
        sft=SFT_PRESETS["tiny"].model_copy(update={"epochs": 2}),
        lm=SFT_PRESETS["lm-tiny"],  # with --curriculum lm>…
        max_samples_per_task=1000,
        dpo_users=300,
    ),
    # The paper's hyper-parameters (§5.1) for a real checkpoint: pass --base PATH.
    "paper": TrainConfig(sft=SFT_PRESETS["paper"], dpo=DPO_PRESETS["paper"]),
}


def _tasks(curriculum: str) -> list[str]:
    return sorted({t for stage in parse_curriculum(curriculum) for t in stage})


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cap_samples(samples: list[dict[str, Any]], n: int | None, seed: int) -> list[dict[str, Any]]:
    """A seeded random ``n`` of the samples, in their original order. Samples come user by
    user, so taking the first ``n`` would train on the first few users only."""
    if n is None or len(samples) <= n:
        return samples
    keep = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in keep]


def train_leadre(
    world: Path, index_dir: Path, out: Path, cfg: TrainConfig, progress: bool = True,
    sft_out: Path | None = None, device: torch.device | None = None,
    raw_out: Path | None = None,
) -> dict[str, Any]:
    """Train and save; returns a summary (stage logs, sample counts, wall times, the
    device). ``sft_out``: also save the model as it is after SFT, before DPO (Fig. 4b
    compares); ``raw_out``: with ``validation.score_raw``, also save the best un-averaged
    weights (a test then shows what the average adds); ``device``: where the trainers and
    validation decodes run (default: CPU). The saved weights load on any device. With
    ``cfg.members`` > 1 the members train one after another on the samples built once
    (:func:`member_config`) and are saved together in ``out`` (``sft_out`` and ``raw_out``
    hold member 0)."""
    device = device or torch.device("cpu")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    index, trie = load_index(index_dir), load_trie(index_dir)
    tasks = _tasks(cfg.curriculum)
    # DPO pairs come from main-task prompts even when the curriculum trains `seq` rows
    needed = tasks + (["main"] if cfg.dpo is not None and "main" not in tasks else [])
    holdout = holdout_users(world, cfg.holdout_users) if cfg.holdout_users else None
    samples = build_samples(world, index, cfg.prompts, needed, "train", holdout=holdout)
    by_task = {t: cap_samples([s for s in samples if s["task"] == t], cfg.max_samples_per_task,
                        cfg.sft.seed) for t in needed}
    valid = None
    if cfg.validation is not None:
        valid = cap_samples(build_samples(world, index, cfg.prompts, ["main"], "valid",
                                          holdout=holdout),
                            cfg.validation.users, cfg.sft.seed)
    timings["samples_s"] = time.perf_counter() - t0

    trunk: dict[str, Any] | None = None
    if cfg.fork is None:
        runs = [_train_member(member_config(cfg, i), world, index_dir, index, trie, tasks,
                              by_task, valid, device, progress) for i in range(cfg.members)]
    else:
        runs, trunk = _train_forked(cfg, world, index_dir, index, trie, tasks, by_task, valid,
                                    device, progress)
    model, tokenizer, summary, member_timings = runs[0]
    # the selectors' best un-averaged weights, out of the summaries; raw_out gets member 0's
    raw_states = [s.pop("_best_raw_state", None) for _, _, s, _ in runs]
    timings |= member_timings
    if cfg.members > 1:
        if len({tokenizer_hash(t) for _, t, _, _ in runs}) > 1:  # members share one tokenizer
            raise RuntimeError("ensemble members were built with different tokenizers")
        summary["config"] = cfg.model_dump()
        summary["members"] = [{"seed_shift": i, "validation": s.get("validation"), "timings": t}
                              for i, (_, _, s, t) in enumerate(runs)]
        timings["sft_s"] = sum(t["sft_s"] for _, _, _, t in runs)
        if trunk is not None:
            summary["trunk"] = trunk
            timings["sft_s"] += trunk["timings"]["sft_s"]
        paces = [t["sft_s_per_epoch"] for _, _, _, t in runs if "sft_s_per_epoch" in t]
        if paces:  # a member's epoch, on average (sft_s counts every member)
            timings["sft_s_per_epoch"] = sum(paces) / len(paces)
    if sft_out is not None:
        save_model(model, tokenizer, sft_out, index.digest(), extra={"train": summary})
    if raw_out is not None and raw_states[0] is not None:
        chosen_state = copy.deepcopy(model.state_dict())
        model.load_state_dict(raw_states[0])
        save_model(model, tokenizer, raw_out, index.digest(), extra={"train": summary})
        model.load_state_dict(chosen_state)
    dpo_log: list[dict[str, float]] = []
    n_pairs = 0
    if cfg.dpo is not None:
        t0 = time.perf_counter()
        chosen = cap_samples(by_task["main"], cfg.dpo_users, cfg.sft.seed)
        pairs = dpo_pairs(model, tokenizer, index, world, chosen, cfg.dpo, trie)
        n_pairs = len(pairs)
        dpo_log = train_dpo(model, tokenizer, pairs, cfg.dpo, progress) if pairs else []
        timings["dpo_s"] = time.perf_counter() - t0

    summary = {
        **summary,
        "samples": {t: len(v) for t, v in by_task.items() if t in tasks},
        "dpo_pairs": n_pairs,
        "dpo": dpo_log,
        "timings": timings,
    }
    save_model(model, tokenizer, out, index.digest(), extra={"train": summary},
               members=[m for m, *_ in runs[1:]])
    (Path(out) / "train_log.json").write_text(json.dumps(summary, indent=2))
    plot_training(summary, Path(out) / "training.png")
    return summary


_Run = tuple[Any, Any, dict[str, Any], dict[str, float]]  # model, tokenizer, summary, timings


def _selector(cfg: ValidationConfig | None, valid: list[dict[str, Any]] | None,
              index: SidIndex, trie: SidTrie, tokenizer: Any, progress: bool,
              **fork: Any) -> BestOnValidation | None:
    """The model selection of a member, trunk (``fork_share``) or branch (``start``); None
    without validation settings or samples."""
    if cfg is None or valid is None:
        return None
    return BestOnValidation(SidValidator(index, valid, cfg, trie), cfg, tokenizer,
                            report=_stderr_line if progress else None, **fork)


def _train_forked(cfg: TrainConfig, world: Path, index_dir: Path, index: SidIndex,
                  trie: SidTrie, tasks: list[str], by_task: dict[str, list[dict[str, Any]]],
                  valid: list[dict[str, Any]] | None, device: torch.device, progress: bool,
                  ) -> tuple[list[_Run], dict[str, Any]]:
    """A fork (``cfg.fork``): the trunk trains the curriculum until ``fork`` of its last
    stage's schedule; each member then goes on from it (:func:`_train_branch`) with its own
    seeds and an equal share of the time the trunk left. Returns the members' runs and the
    trunk's summary (its validation rounds, timings, fork epoch and step)."""
    trunk, tokenizer, summary, timings = _train_member(
        trunk_config(cfg), world, index_dir, index, trie, tasks, by_task, valid, device,
        progress, fork_share=cfg.fork)
    point = summary.pop("_fork", None)
    summary.pop("_best_raw_state", None)
    if point is None:
        raise RuntimeError("the trunk ended without reaching its fork")
    budget = cfg.validation.time_budget_s if cfg.validation is not None else None
    left = None if budget is None else max(budget - timings["sft_s"], 1.0) / cfg.members
    stage = parse_curriculum(cfg.curriculum)[-1]
    samples = [s for t in stage for s in by_task[t]]
    runs = [_train_branch(member_config(cfg, i), trunk, tokenizer, point, stage, samples, index,
                          trie, valid, device, progress, left, summary["sft"])
            for i in range(cfg.members)]
    return runs, {"fork_epoch": point.epoch, "fork_step": point.step,
                  "validation": summary.get("validation"), "timings": timings}


def _train_branch(cfg: TrainConfig, trunk: Any, tokenizer: Any, point: ForkPoint,
                  stage: list[str], samples: list[dict[str, Any]], index: SidIndex,
                  trie: SidTrie, valid: list[dict[str, Any]] | None, device: torch.device,
                  progress: bool, budget_s: float | None, trunk_sft: list[dict[str, Any]],
                  ) -> _Run:
    """One member of a fork: a copy of the trunk going on with the trunk's optimizer state
    and schedule from ``point`` over the rest of the last stage's epochs, with ``cfg``'s
    seeds, selected on validation within ``budget_s``. Its log is the trunk's, then its own
    (epochs counted from the start of the run)."""
    t0 = time.perf_counter()
    model = copy.deepcopy(trunk)
    optimizers = branch_optimizers(model, point)
    stage_cfg = stage_config(stage, cfg.sft, cfg.lm, cfg.seq)
    stage_cfg = stage_cfg.model_copy(update={"epochs": stage_cfg.epochs - point.epoch})
    validation = (None if cfg.validation is None
                  else cfg.validation.model_copy(update={"time_budget_s": budget_s}))
    selector = _selector(validation, valid, index, trie, tokenizer, progress, start=point)
    rows = list(samples)
    random.Random(stage_cfg.seed).shuffle(rows)
    history = train_stage(model, tokenizer, rows, stage_cfg, progress,
                          callbacks=[selector] if selector else (), optimizers=optimizers)
    for h in history:  # the branch's trainer counts its epochs from the fork
        if "epoch" in h:
            h["epoch"] = round(h["epoch"] + point.epoch, 4)
    timings = {"sft_s": time.perf_counter() - t0}
    end = max((h.get("epoch", point.epoch) for h in history), default=point.epoch)
    if selector is not None and selector.history:
        end = max(end, selector.history[-1]["epoch"])
    if end > point.epoch:
        timings["sft_s_per_epoch"] = timings["sft_s"] / (end - point.epoch)
    summary: dict[str, Any] = {
        "config": cfg.model_dump(), "forked_at": point.epoch, "device": describe(device),
        "sft": [*trunk_sft, {"stage": "+".join(stage), "samples": len(rows),
                             "history": history}]}
    if selector is not None:
        summary["validation"] = selector.summary()
    return model, tokenizer, summary, timings


def member_model(cfg: TrainConfig, world: Path, index_dir: Path, index: SidIndex,
                 tasks: Sequence[str], by_task: dict[str, list[dict[str, Any]]],
                 ) -> tuple[Any, Any, dict[str, float]]:
    """A member's untrained model and tokenizer as ``cfg`` builds them (tokenizer, S-ID
    rows, item text, dense head and its start), on the CPU; ``by_task``'s prompts train a
    BPE tokenizer for text prompts. Returns the model, tokenizer and timings
    (``collab_init_s``)."""
    timings: dict[str, float] = {}
    compact = cfg.prompts.format == "compact"
    extra = compact_vocabulary(cfg.prompts.compact) if compact else []
    if cfg.llm.base == "tiny":
        # compact prompts are all added tokens: nothing for BPE to learn from them
        corpus = [] if compact else [s["prompt"] for t in tasks for s in by_task[t]]
        tokenizer = train_tokenizer(corpus, index.level_sizes, cfg=cfg.tokenizer,
                                    extra_tokens=extra)
        model, tokenizer = build_model(cfg.llm, tokenizer)
    else:  # a checkpoint keeps its own tokenizer; the S-ID tokens it lacks are added
        model, tokenizer = build_model(cfg.llm, new_tokens=[*sid_vocabulary(index.level_sizes),
                                                            *extra])
    if cfg.llm.sid_init == "codebook":
        from leadre_model.index.sid_index import load_rqvae
        from leadre_model.llm.model import init_sid_rows_from_codebooks

        init_sid_rows_from_codebooks(model, tokenizer,
                                     load_rqvae(index_dir).quantizer.codebooks.detach(),
                                     cfg.llm.seed)
    if cfg.llm.item_text:
        attach_item_text(model, tokenizer, index, load_embeddings(index_dir), cfg.llm.seed)
    if cfg.llm.dense_head is not None:
        head = attach_dense_head(model, tokenizer, index, cfg.llm.dense_head, cfg.llm.seed)
        if cfg.llm.dense_head.id_init == "collab":
            t1 = time.perf_counter()
            vectors = collab_id_vectors(world, index, index_dir, head.query.in_features,
                                        cfg.llm.seed)
            head.init_ids(vectors)
            timings["collab_init_s"] = time.perf_counter() - t1
    return model, tokenizer, timings


def _train_member(cfg: TrainConfig, world: Path, index_dir: Path, index: SidIndex,
                  trie: SidTrie, tasks: list[str], by_task: dict[str, list[dict[str, Any]]],
                  valid: list[dict[str, Any]] | None, device: torch.device, progress: bool,
                  fork_share: float | None = None) -> _Run:
    """One model: tokenizer, model, curriculum (validation selecting its epoch). Returns the
    model, tokenizer, its summary (``_best_raw_state``: the selector's best un-averaged
    weights, if any; ``_fork``: with ``fork_share``, where this trunk stopped for its
    branches) and its timings."""
    t0 = time.perf_counter()
    model, tokenizer, timings = member_model(cfg, world, index_dir, index, tasks, by_task)
    model.to(device)

    selector = _selector(cfg.validation, valid, index, trie, tokenizer, progress,
                         fork_share=fork_share)
    timings["tokenizer_model_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sft_logs = run_curriculum(model, tokenizer, by_task, cfg.curriculum, cfg.sft, progress,
                              lm_cfg=cfg.lm, seq_cfg=cfg.seq,
                              last_stage_callbacks=[selector] if selector else ())
    timings["sft_s"] = time.perf_counter() - t0
    # epochs run: the last logged epoch of each stage (and the last validation round, which
    # runs at the end of the last stage)
    ends = [max((h.get("epoch", 0.0) for h in log["history"]), default=0.0) for log in sft_logs]
    if selector is not None and selector.history and ends:
        ends[-1] = max(ends[-1], selector.history[-1]["epoch"])
    epochs = sum(ends)
    if epochs > 0:
        timings["sft_s_per_epoch"] = timings["sft_s"] / epochs

    summary: dict[str, Any] = {"config": cfg.model_dump(), "sft": sft_logs,
                               "device": describe(device)}
    if selector is not None:
        summary["validation"] = selector.summary()
        if selector.best_raw_state is not None:
            summary["_best_raw_state"] = selector.best_raw_state
        if selector.fork is not None:
            summary["_fork"] = selector.fork
    return model, tokenizer, summary, timings


def collab_id_vectors(world: Path, index: SidIndex, index_dir: Path, dim: int,
                      seed: int) -> np.ndarray:
    """Item-CF embeddings (``dim`` wide, index rows) of the users' *training* sequences, as
    collaborative S-IDs use them (``index/collab.py``: SVD of the 1/gap co-occurrence, an
    ad with little traffic partly predicted from its text), for the dense head's ad-id
    table: ads that co-occur start close, and a rare ad starts near what its text and few
    neighbours say instead of at noise. No validation or test target is in them."""
    row_of = {a: i for i, a in enumerate(index.ad_ids)}
    # a wide checkpoint (hidden 1,536+) gets a rank-256 SVD padded with zeros: init_ids only
    # keeps directions, and a rank-1,536 SVD of the catalog would cost minutes for little
    rank = min(dim, 256)
    vectors = fit_collab(load_embeddings(index_dir), train_item_sequences(world, row_of),
                         CollabConfig(dim=rank), seed).vectors
    return np.pad(vectors, ((0, 0), (0, dim - rank)))


def dpo_pairs(model: Any, tokenizer: Any, index: SidIndex, world: Path,
              samples: Sequence[dict[str, Any]], cfg: DPOStageConfig,
              trie: SidTrie | None = None) -> list[dict[str, str]]:
    """Pairs (§4.3.2) from the SFT model's own top decodes; see train/dpo.py. ``trie``:
    the index's (built from it when not given)."""
    sid = SidRetriever(model, tokenizer, index, trie)
    candidates = sid.ad_ids(sid.retrieve([s["prompt"] for s in samples], cfg.candidates))
    ads = {a.ad_id: a for a in load_ads(world)}
    ecpm = {a: ads[a].ecpm for a in index.ad_ids}
    sid_of = {a: index.sid(i) for i, a in enumerate(index.ad_ids)}
    return preference_pairs(samples, candidates, ecpm, sid_of, cfg)

