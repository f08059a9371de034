"""`leadre experiment ablations`: the paper's ablations on one synthetic world, one split.

Every variant is trained from scratch with the same data, seed and budget and evaluated on
the same leave-one-out test users as the baselines. The reference variant (EX → IM → Main,
full prompts, soft token, S-IDs) is trained once with DPO; the model saved before DPO is
the SFT reference every other SFT-only variant is compared with:

* Table 1: w.o. content behaviour, w.o. interest summary;
* Table 2: curricula EX → Main, Main+IM+EX mixed, Main+EX mixed, Main only;
* Table 6: the ad as S-IDs vs. its original text vs. a compressed text;
* Fig. 4a: without the learnable soft-prompt token;
* Fig. 4b: DPO vs. SFT only (HR and eCPM@K);
* Fig. 5: Dice of the top-K under history truncation (every retriever, from the harness).

Runs are resumable: a variant whose model directory is complete is evaluated, not retrained.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.errors import UsageError
from leadre_model.eval.harness import (
    EvalConfig,
    Retriever,
    baseline_retrievers,
    build_eval_data,
    evaluate,
)
from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever
from leadre_model.experiments.presets import EXPERIMENT_TRAIN
from leadre_model.experiments.report import write_report
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig
from leadre_model.train.pipeline import TrainConfig, train_leadre
from leadre_model.train.sft import SFT_PRESETS, SFTStageConfig

STUDIES = ("table1", "table2", "table6", "fig4a", "fig4b", "fig5")
REFERENCE = "ex>im>main"


class Variant(BaseModel):
    """One trained model: a study's change to the reference TrainConfig."""

    model_config = ConfigDict(frozen=True)

    name: str
    study: str
    label: str
    curriculum: str = REFERENCE
    prompts: dict[str, Any] = Field(default_factory=dict)
    text_target: str | None = None  # Table 6: "name" | "compressed"


VARIANTS: tuple[Variant, ...] = (
    Variant(name="wo_content", study="table1", label="w.o. content", prompts={"include_content": False}),
    Variant(name="wo_summary", study="table1", label="w.o. summary", prompts={"include_summary": False}),
    Variant(name="cur_ex_main", study="table2", label="EX → Main", curriculum="ex>main"),
    Variant(name="cur_mix_all", study="table2", label="Main+IM+EX", curriculum="main+im+ex"),
    Variant(name="cur_mix_ex", study="table2", label="Main+EX", curriculum="main+ex"),
    Variant(name="cur_main", study="table2", label="Main only", curriculum="main"),
    Variant(name="text_name", study="table6", label="original text", text_target="name"),
    Variant(name="text_compressed", study="table6", label="compressed text",
            text_target="compressed"),
    Variant(name="no_soft", study="fig4a", label="w.o. soft prompt", prompts={"soft_token": ""}),
)


class AblationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    world: SynthConfig = Field(default_factory=lambda: SynthConfig(n_users=1000, n_ads=1000,
                                                                   n_content=1500))
    train: TrainConfig = Field(default_factory=lambda: EXPERIMENT_TRAIN)
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig(dice_drops=(1, 2, 4, 8),
                                                                progress=False))
    pretrain: SFTStageConfig | None = Field(
        default_factory=lambda: SFT_PRESETS["lm-tiny"],
        description="train one base model with the 'lm' stage (loss on every token of the "
        "train users' behaviour sequences) and start every variant from it, as the paper's "
        "variants all start from one pretrained LLM; None: each variant starts from scratch")
    baselines: tuple[str, ...] = ("popularity", "popularity_ecpm", "itemcf", "sasrec_ce")
    studies: tuple[str, ...] = STUDIES
    beam_width: int = Field(20, ge=1)
    progress: bool = True


def _train_cfg(base: TrainConfig, v: Variant | None, dpo: bool) -> TrainConfig:
    d = base.model_dump()
    if v is not None:
        d["curriculum"] = v.curriculum
        d["prompts"] = {**d["prompts"], **v.prompts}
    if not dpo:
        d["dpo"] = None
    return TrainConfig.model_validate(d)


def _done(model_dir: Path) -> bool:
    return (model_dir / "manifest.json").exists()


def _trained_s(model_dir: Path) -> float:
    """Training wall time recorded in a saved model's train_log.json (a resumed run reuses
    the model, so its own clock would say ~0)."""
    try:
        timings = json.loads((model_dir / "train_log.json").read_text())["timings"]
    except (OSError, KeyError, ValueError):
        return float("nan")
    return float(sum(timings.values()))


def run_ablations(cfg: AblationConfig, out: Path,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the world and index (if absent), train and evaluate every variant of the
    selected studies, write ``out/report.md`` with tables and plots; returns the results."""
    unknown = set(cfg.studies) - set(STUDIES)
    if unknown:
        raise UsageError(f"unknown studies {sorted(unknown)}; choose among {STUDIES}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2))
    timings: dict[str, float] = {}
    world, index_dir, models = out / "world", out / "index", out / "models"

    t0 = time.perf_counter()
    if not (world / "world.json").exists():
        generate_world(world, cfg.world, progress=cfg.progress)
    if not (index_dir / "index.json").exists():
        from leadre_model.data.store import load_ads
        from leadre_model.index.build import build_index

        rq = PRESETS[preset_for(cfg.world.n_ads)].model_copy(update={"seed": cfg.world.seed})
        build_index(load_ads(world), index_dir, IndexConfig(rqvae=rq),
                    cache_path=out / "embeddings.npz", progress=cfg.progress)
    timings["world_index_s"] = time.perf_counter() - t0

    data = build_eval_data(world, cfg.eval)
    results: dict[str, Any] = {"data": data.stats, "retrievers": {}, "train": {}, "labels": {}}

    def run_eval(rs: list[Retriever], key: str) -> None:
        t = time.perf_counter()
        res = evaluate(world, rs, cfg.eval, data=data)
        results["retrievers"].update(res["retrievers"])
        results["ltrr_labels"] = res["ltrr_labels"]
        timings[f"eval_{key}_s"] = time.perf_counter() - t

    log("baselines: " + ", ".join(cfg.baselines))
    run_eval(list(baseline_retrievers(cfg.baselines, progress=cfg.progress)), "baselines")

    lcfg = LeadreEvalConfig(beam_width=cfg.beam_width, progress=cfg.progress)

    train_base = cfg.train
    if cfg.pretrain is not None:
        base = models / "base"
        if not _done(base):
            log("training the base model (lm stage: behaviour-sequence language modelling)")
            base_cfg = cfg.train.model_copy(update={"curriculum": "lm", "lm": cfg.pretrain,
                                                    "dpo": None})
            results["train"]["base"] = train_leadre(world, index_dir, base, base_cfg,
                                                    progress=cfg.progress)
        timings["train_base_s"] = _trained_s(base)
        train_base = cfg.train.model_copy(update={
            "llm": cfg.train.llm.model_copy(update={"base": str(base.resolve())})})

    def leadre(name: str, model_dir: Path, label: str) -> Retriever:
        results["labels"][name] = label
        return LeadreRetriever(name, model_dir, index_dir, world, lcfg)

    # The reference: SFT saved before DPO ("reference"), then DPO on top ("reference_dpo").
    ref_sft, ref_dpo = models / "reference_sft", models / "reference_dpo"
    with_dpo = "fig4b" in cfg.studies
    if not _done(ref_sft) or (with_dpo and not _done(ref_dpo)):
        log("training the reference (EX → IM → Main" + (" + DPO)" if with_dpo else ")"))
        t = time.perf_counter()
        target = ref_dpo if with_dpo else ref_sft
        summary = train_leadre(world, index_dir, target, _train_cfg(train_base, None, with_dpo),
                               progress=cfg.progress, sft_out=ref_sft if with_dpo else None)
        timings["train_reference_s"] = time.perf_counter() - t
        results["train"]["reference"] = summary
    else:
        timings["train_reference_s"] = _trained_s(ref_dpo if with_dpo else ref_sft)
    refs = [leadre("reference", ref_sft, "LEADRE (EX → IM → Main, SFT)")]
    if with_dpo:
        refs.append(leadre("reference_dpo", ref_dpo, "LEADRE + DPO"))
    run_eval(refs, "reference")

    for v in VARIANTS:
        if v.study not in cfg.studies:
            continue
        model_dir = models / v.name
        if not _done(model_dir):
            log(f"training {v.name} ({v.label})")
            if v.text_target is None:
                results["train"][v.name] = train_leadre(
                    world, index_dir, model_dir, _train_cfg(train_base, v, False),
                    progress=cfg.progress)
            else:
                from leadre_model.experiments.text_targets import train_text_variant

                results["train"][v.name] = train_text_variant(
                    world, index_dir, model_dir, _train_cfg(train_base, v, False), v.text_target)
        timings[f"train_{v.name}_s"] = _trained_s(model_dir)
        if v.text_target is None:
            r = leadre(v.name, model_dir, v.label)
        else:
            from leadre_model.experiments.text_targets import TextTargetRetriever

            results["labels"][v.name] = v.label
            r = TextTargetRetriever(v.name, model_dir, index_dir, world, v.text_target,
                                    beam_width=cfg.beam_width)
        run_eval([r], v.name)

    results["timings"] = timings
    results["variants"] = [v.model_dump() for v in VARIANTS if v.study in cfg.studies]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_report(results, cfg, out)
    return results
