"""`leadre experiment recipe`: the CPU recipe's ablations, one change at a time.

The paper's components (profile, interest summary, content behaviour, soft token,
explicit alignment, DPO) and the recipe's own choices (S-ID rows initialised from the RQ-VAE
codebooks) are each removed from or added to the `cpu` preset; every variant trains on the
same world and split with the same budget and is tested beside the baselines (trained to
convergence, fitted once) with exclude-seen off and on. Writes ``report.md``, ``results.json``
and ``recipe_ablations.png`` (resumable: trained variants are reused).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.errors import UsageError
from leadre_model.eval.harness import (
    EvalConfig,
    baseline_retrievers,
    build_eval_data,
    evaluate_both,
)
from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever
from leadre_model.eval.results_table import run_record
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig
from leadre_model.train.dpo import DPO_PRESETS
from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig, train_leadre

# name → (what the paper or the recipe says it is, override of the cpu preset's dump)
RECIPE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "reference": (("cpu preset: profile + summary + ads & content, soft token, seq, "
                   "content loss, codebook init"), {}),
    "wo_content": ("Table 1: w.o. content behaviour", {"prompts": {"include_content": False}}),
    "wo_summary": ("Table 1: w.o. interest summary", {"prompts": {"include_summary": False}}),
    "wo_profile": ("w.o. user profile", {"prompts": {"include_profile": False}}),
    "no_soft": ("Fig. 4a: w.o. soft prompt token", {"prompts": {"soft_token": ""}}),
    "ex_then_seq": ("Table 2: EX → main (explicit alignment first)", {"curriculum": "ex>seq"}),
    "default_init": ("S-ID rows from the default init, not the RQ-VAE codebooks",
                     {"llm": {"sid_init": "default"}}),
    "no_content_loss": ("no auxiliary loss on content categories",
                        {"prompts": {"compact": {"content_loss": False}}}),
    "time_gaps": ("+ a time-gap token before each behaviour",
                  {"prompts": {"compact": {"content_loss": True, "time_gaps": True}}}),
    "item_text": ("+ each ad's frozen MiniLM text embedding as an input soft token",
                  {"llm": {"item_text": True}}),
    "dropout": ("+ dropout 0.2 on embeddings and attention", {"llm": {"dropout": 0.2}}),
    "select": ("+ model selection on validation Recall@10 (30 epochs, best kept)",
               {"seq": {"epochs": 30},
                "validation": {"users": 300, "every_epochs": 2, "patience": 4}}),
    "dropout_select": ("+ dropout 0.2 + model selection on validation (30 epochs)",
                       {"llm": {"dropout": 0.2}, "seq": {"epochs": 30},
                        "validation": {"users": 300, "every_epochs": 2, "patience": 4}}),
    "dpo": ("Fig. 4b: + DPO on eCPM pairs", {"dpo": DPO_PRESETS["tiny"].model_dump(),
                                             "dpo_users": 300}),
    # index-side variants: an "index" key overrides the IndexConfig; the variant trains on
    # its own index, built from the same world (index/collab.py)
    "collab": ("+ collaborative S-IDs (RQ-VAE over text + co-occurrence embedding, weight 0.5)",
               {"index": {"collab": {"weight": 0.5}}}),
}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def variant_config(name: str, base: TrainConfig | None = None) -> TrainConfig:
    """The cpu preset (or ``base``) with the variant's overrides, merged key by key."""
    over = {k: v for k, v in RECIPE_VARIANTS[name][1].items() if k != "index"}
    d = _merged((base or TRAIN_PRESETS["cpu"]).model_dump(), over)
    return TrainConfig.model_validate(d)


def _variant_index(out: Path, world: Path, world_cfg: SynthConfig, name: str,
                   progress: bool = False) -> Path:
    """The shared index, or the variant's own when it overrides the index config."""
    over = RECIPE_VARIANTS[name][1].get("index")
    index_dir = out / (f"index-{name}" if over else "index")
    if (index_dir / "index.json").exists():
        return index_dir
    from leadre_model.data.store import load_ads
    from leadre_model.index.build import build_index, training_sequences

    rq = PRESETS[preset_for(world_cfg.n_ads)].model_copy(update={"seed": world_cfg.seed})
    cfg = IndexConfig.model_validate(_merged(IndexConfig(rqvae=rq).model_dump(), over or {}))
    ads = load_ads(world)
    build_index(ads, index_dir, cfg, cache_path=out / "embeddings.npz", progress=progress,
                sequences=training_sequences(world, ads, cfg))
    return index_dir


def run_recipe(out: Path, world_cfg: SynthConfig, variants: list[str],
               log: Callable[[str], None] = print, progress: bool = False) -> dict[str, Any]:
    started = time.perf_counter()
    unknown = set(variants) - set(RECIPE_VARIANTS)
    if unknown:
        raise UsageError(f"unknown variants {sorted(unknown)}; "
                         f"choose among {list(RECIPE_VARIANTS)}")
    out.mkdir(parents=True, exist_ok=True)
    world = out / "world"
    if not (world / "world.json").exists():
        generate_world(world, world_cfg, progress=progress)
    _variant_index(out, world, world_cfg, "reference", progress)
    train_s: dict[str, float] = {}
    retrievers: list[Any] = baseline_retrievers(["popularity", "recent", "itemcf", "sasrec_ce"],
                                                progress=progress)
    for name in variants:
        model_dir = out / "models" / name
        index_dir = _variant_index(out, world, world_cfg, name, progress)
        if not (model_dir / "manifest.json").exists():
            log(f"train {name}")
            t0 = time.perf_counter()
            train_leadre(world, index_dir, model_dir, variant_config(name), progress=progress)
            train_s[name] = time.perf_counter() - t0
        else:
            timings = json.loads((model_dir / "train_log.json").read_text())["timings"]
            train_s[name] = float(sum(timings.values()))
        retrievers.append(LeadreRetriever(name, model_dir, index_dir, world,
                                          LeadreEvalConfig(progress=progress)))
    cfg = EvalConfig(progress=progress, dice_drops=(1, 2, 4))
    log("evaluate")
    res = evaluate_both(world, retrievers, cfg, "both", data=build_eval_data(world, cfg))
    res["train_s"] = train_s
    res["variants"] = {n: RECIPE_VARIANTS[n][0] for n in variants}
    res["run"] = run_record(time.perf_counter() - started)
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str))
    _report(out, res, world_cfg)
    return res


def _report(out: Path, res: dict[str, Any], world_cfg: SynthConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["retrievers"]
    names = [n for n in rows if not n.endswith("+xs")]
    lines = [f"# CPU recipe ablations ({out.name})", "",
             f"World: `{world_cfg.model_dump_json()}`; split: {res['data']}.", "",
             ("HR@8 ± standard error on every test user, full ranking; `+xs`: the user's "
              "earlier target ads masked in every retriever. Train time on this 2-core machine."),
             "",
             ("| retriever | what | HR@1 | HR@8 ± se | NDCG@8 | eCPM@8 | HR@8 +xs | Dice drop1 | "
              "invalid | train s |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        f, x = rows[n], rows.get(f"{n}+xs", {})
        fit = res.get("fits", {}).get(n, {})
        t = res["train_s"].get(n, fit.get("train_s", f.get("fit_s", 0.0)))
        lines.append(f"| {n} | {res['variants'].get(n, 'baseline')} | {f['hr@1']:.3f} | "
                     f"{f['hr@8']:.3f} ± {f['hr@8_se']:.3f} | {f['ndcg@8']:.3f} | "
                     f"{f.get('ecpm@8', float('nan')):.1f} | {x.get('hr@8', float('nan')):.3f} | "
                     f"{f.get('dice_drop1@8', float('nan')):.3f} | {f['invalid_rate']:.3f} | "
                     f"{t:.0f} |")
    sas = res.get("fits", {}).get("sasrec_ce", {})
    if sas:
        lines += ["", (f"SASRec-CE: {sas['epochs_run']} epochs, best {sas['best_epoch']}, "
                       f"stopped by {sas['stopped_by']} (patience {sas['config']['patience']} "
                       f"rounds of {sas['config']['eval_every']} epochs), {sas['train_s']:.0f} s.")]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [rows[n]["hr@8"] for n in names], 0.4,
           yerr=[rows[n]["hr@8_se"] for n in names], label="HR@8")
    ax.bar([i + 0.2 for i in xs], [rows[f"{n}+xs"]["hr@8"] for n in names], 0.4,
           yerr=[rows[f"{n}+xs"]["hr@8_se"] for n in names], label="HR@8, seen ads excluded")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("HR@8")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recipe_ablations.png", dpi=120)
    plt.close(fig)


__all__ = ["RECIPE_VARIANTS", "run_recipe", "variant_config"]
