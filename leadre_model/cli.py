"""The offline package's sub-commands: `leadre data …`, `leadre index …`, `leadre train`
and `leadre eval` (the `leadre` command itself is assembled in ``leadre/cli.py``).

Every command turns expected failures (bad input files, missing paths, invalid options)
into one clear message and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markdown import Markdown
from rich.table import Table

from leadre_model.clikit import console, friendly, print_counts
from leadre_model.errors import BadInputError, UsageError
from leadre_model.index.embed import EmbedConfig
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig
from leadre_model.index.text import TextConfig

if TYPE_CHECKING:
    from leadre_model.index.sid_index import SidIndex

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: CUDA when torch sees one)"

data_app = typer.Typer(help="Build or import a world (ads, content, users, behaviours).",
                       no_args_is_help=True)
index_app = typer.Typer(help="The ad index: semantic IDs and trie.", no_args_is_help=True)


@data_app.command("synth")
@friendly
def data_synth(
    out: Path = typer.Option(..., help="world directory to write"),
    users: int = typer.Option(200, min=1, help="number of users"),
    ads: int = typer.Option(2000, min=2, help="number of ads"),
    content: int = typer.Option(3000, min=1, help="number of content items"),
    seed: int = typer.Option(0, help="random seed (same seed → same world)"),
    progress: bool = typer.Option(True, help="show progress bars"),
) -> None:
    """Generate the seeded synthetic world (streamed, bounded memory)."""
    from leadre_model.data.synth import SynthConfig, generate_world

    cfg = SynthConfig(seed=seed, n_users=users, n_ads=ads, n_content=content)
    t0 = time.perf_counter()
    manifest = generate_world(out, cfg, progress=progress)
    print_counts(f"synthetic world → {out} ({time.perf_counter() - t0:.1f}s)", manifest)


@data_app.command("import")
@friendly
def data_import(
    items: Path = typer.Option(..., exists=False, help="items CSV (see docs/import_format.md)"),
    interactions: Path = typer.Option(..., help="interactions CSV: user,item,timestamp-or-position[,action,domain]"),
    out: Path = typer.Option(..., help="world directory to write"),
    users: Path | None = typer.Option(None, help="optional users CSV"),
    progress: bool = typer.Option(True, help="a counting bar per file (a line per file in a log)"),
) -> None:
    """Import your own data in the documented CSV format; bad rows are reported as file:line."""
    from leadre_model.data.importer import import_world

    print_counts(f"imported world → {out}",
                 import_world(items, interactions, users, out, progress=progress))


@data_app.command("taobao")
@friendly
def data_taobao(
    out: Path = typer.Option(..., help="world directory to write"),
    src: Path = typer.Option(Path("../shared/data/taobao-ad-sample"), help="taobao-ad-sample dir"),
    progress: bool = typer.Option(True, help="a counting bar (a line in a log)"),
) -> None:
    """Load the Taobao display-ad sample (ads, advertisers, profiles, content behaviour)."""
    from leadre_model.data.taobao import load_taobao

    print_counts(f"taobao world → {out}", load_taobao(src, out, progress=progress))


@data_app.command("amazon")
@friendly
def data_amazon(
    out: Path = typer.Option(..., help="world directory to write"),
    src: Path = typer.Option(Path("../shared/data/amazon-toys"), help="amazon-toys dir"),
    progress: bool = typer.Option(True, help="a counting bar (a line in a log)"),
) -> None:
    """Load Amazon Toys (items with short text, time-ordered sequences)."""
    from leadre_model.data.amazon import load_amazon

    print_counts(f"amazon world → {out}", load_amazon(src, out, progress=progress))


def _index_config(
    n_ads: int, preset: str, levels: int | None, codebook_size: int | None, code_dim: int | None,
    epochs: int | None, encoder: str | None, template: str | None, seed: int,
) -> IndexConfig:
    name = preset_for(n_ads) if preset == "auto" else preset
    if name not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose auto or one of {sorted(PRESETS)}")
    overrides = {k: v for k, v in {"levels": levels, "codebook_size": codebook_size,
                                   "code_dim": code_dim, "epochs": epochs}.items() if v is not None}
    rq = PRESETS[name].model_copy(update={**overrides, "seed": seed})
    rq = type(rq).model_validate(rq.model_dump())  # re-validate the overrides
    return IndexConfig(
        rqvae=rq,
        embed=EmbedConfig(model=encoder) if encoder else EmbedConfig(),
        text=TextConfig(template=template) if template else TextConfig(),
    )


@index_app.command("build")
@friendly
def index_build(
    world: Path = typer.Option(..., help="world directory (from `leadre data ...`)"),
    out: Path = typer.Option(..., help="index directory to write"),
    preset: str = typer.Option("auto", help="auto | tiny | small | medium | paper"),
    levels: int | None = typer.Option(None, help="RQ-VAE levels M (overrides preset)"),
    codebook_size: int | None = typer.Option(None, help="codes per level K (overrides preset)"),
    code_dim: int | None = typer.Option(None, help="code dimension d (overrides preset)"),
    epochs: int | None = typer.Option(None, help="RQ-VAE epochs (overrides preset)"),
    encoder: str | None = typer.Option(None, help="local sentence-transformers model path"),
    template: str | None = typer.Option(None, help="ad text template with {name} etc."),
    cache: Path | None = typer.Option(Path(".leadre_cache/embeddings.npz"),
                                      help="embedding cache file (by text hash)"),
    collab_weight: float = typer.Option(
        0.0, min=0.0, max=0.95,
        help="share of the RQ-VAE input given to a collaborative item embedding learnt from "
        "the users' training targets (0: S-IDs from text alone; docs/data_and_index.md "
        "says what it costs new ads)"),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True),
) -> None:
    """Embed ad texts, train the RQ-VAE, assign unique S-IDs and build the trie."""
    from leadre_model.data.store import load_ads
    from leadre_model.index.build import build_index, training_sequences
    from leadre_model.index.collab import CollabConfig

    ads = load_ads(world)
    cfg = _index_config(len(ads), preset, levels, codebook_size, code_dim, epochs, encoder,
                        template, seed)
    cfg = cfg.model_copy(update={"collab": CollabConfig(weight=collab_weight)})
    t0 = time.perf_counter()
    index = build_index(ads, out, cfg, cache_path=cache, progress=progress,
                        sequences=training_sequences(world, ads, cfg))
    print_index_built(index, out, time.perf_counter() - t0)


def print_index_built(index: SidIndex, out: Path, seconds: float) -> None:
    console.print(f"indexed {len(index):,} ads → {out} in {seconds:.1f}s "
                  f"(embedded {index.stats['embedded']:,}, from cache {index.stats['cached']:,})")


@index_app.command("add")
@friendly
def index_add(
    index: Path = typer.Option(..., help="index directory"),
    world: Path = typer.Option(..., help="world whose ads not yet indexed get S-IDs"),
    cache: Path | None = typer.Option(Path(".leadre_cache/embeddings.npz")),
    progress: bool = typer.Option(True),
) -> None:
    """Give new ads S-IDs with the trained RQ-VAE (no retraining); existing S-IDs never change.
    Ads already indexed take the status in the world (paused ads leave the trie)."""
    from leadre_model.data.store import load_ads
    from leadre_model.index.build import add_ads

    idx, added = add_ads(index, load_ads(world), cache_path=cache, progress=progress)
    console.print(f"added {len(added):,} ad(s); index now holds {len(idx):,} "
                  f"({int(idx.active.sum()):,} active)")


@index_app.command("report")
@friendly
def index_report(
    index: Path = typer.Option(..., help="index directory"),
    world: Path = typer.Option(..., help="world with the ads' categories"),
    out: Path | None = typer.Option(None, help="report directory (default INDEX/report)"),
) -> None:
    """Table 5 (collisions, codebook usage), Table 3 (neighbour accuracy), loss curve."""
    from leadre_model.data.store import load_ads
    from leadre_model.index.report import build_report
    from leadre_model.index.sid_index import read_meta

    read_meta(index)  # fail on a wrong --index before reading the world
    out = out or index / "report"
    print_index_report(out, build_report(index, load_ads(world), out))


def print_index_report(out: Path, figures: dict[str, Any]) -> None:
    console.print(Markdown((out / "report.md").read_text().split("## Training")[0]))
    console.print(f"report: {out / 'report.md'}")
    console.print_json(json.dumps({k: figures[k] for k in ("collision_rate_before_code",
                                                           "sid_unique_fraction")}))


@friendly
def train(
    world: Path = typer.Option(..., help="world directory"),
    index: Path = typer.Option(..., help="index directory (from `leadre index build`)"),
    out: Path = typer.Option(..., help="model directory to write"),
    preset: str = typer.Option("cpu", help="cpu | cpu-90m | demo | bench | text-small | tiny | experiment "
                               "| paper (docs/training_and_evaluation.md: which preset to pick)"),
    curriculum: str | None = typer.Option(
        None, help="e.g. lm>ex>im>main, ex>im>main, main+im+ex, main (lm: language modelling "
        "of the behaviour corpus, for a model from scratch)"),
    base: str | None = typer.Option(None, help="local HF causal-LM checkpoint (default: tiny "
                                    "Qwen2 from scratch; a checkpoint skips the preset's lm stage)"),
    lora_r: int | None = typer.Option(None, min=1, help="with --base: PEFT LoRA adapters of "
                                      "this rank (merged into the weights when saved)"),
    dpo: bool = typer.Option(True, help="align to eCPM with DPO after SFT"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    batch_size: int | None = typer.Option(
        None, min=1, help="per-step batch of the SFT stages instead of the preset's (e.g. "
        "256 on a GPU, so an epoch is bound by the GPU; the preset's figures hold for its own)"),
    epochs: float | None = typer.Option(None, min=0.01, help="epochs of every SFT stage "
                                        "instead of the preset's (validation still stops early)"),
    members: int | None = typer.Option(None, min=1, help="an ensemble of this many models "
                                       "instead of the preset's (each with its share of the "
                                       "time budget; needs a dense head)"),
    fork: float | None = typer.Option(None, min=0.0, max=0.99, help="the members share this "
                                      "share of the schedule (one trunk), then each goes on "
                                      "from it with its own seeds; 0: independent members "
                                      "(docs/training_and_evaluation.md: ensembles)"),
    progress: bool = typer.Option(True),
) -> None:
    """SFT (the CPU recipe's dense seq stage, or EX → IM → Main) and DPO; saves
    safetensors + manifest."""
    from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre
    from leadre_model.train.sft import strip_lm

    if preset not in TRAIN_PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {sorted(TRAIN_PRESETS)}")
    cfg = TRAIN_PRESETS[preset]
    update: dict[str, Any] = {}
    if curriculum:
        update["curriculum"] = curriculum
    if lora_r is not None and not base:
        raise UsageError("--lora-r needs --base (LoRA adapts a pretrained checkpoint)")
    if base:
        from leadre_model.llm.model import LoraSettings

        lora = LoraSettings(r=lora_r, alpha=2 * lora_r) if lora_r else cfg.llm.lora
        update["llm"] = cfg.llm.model_copy(update={"base": base, "lora": lora})
        if not curriculum:  # a pretrained checkpoint already is a language model
            update["curriculum"] = strip_lm(cfg.curriculum)
    if not dpo:
        update["dpo"] = None
    if members is not None:
        update["members"] = members
    if fork is not None:
        update["fork"] = fork or None
    stage_update = {k: v for k, v in (("batch_size", batch_size), ("epochs", epochs))
                    if v is not None}
    for stage in ("sft", "lm", "seq") if stage_update else ():
        if getattr(cfg, stage) is not None:
            update[stage] = getattr(cfg, stage).model_copy(update=stage_update)
    cfg = type(cfg).model_validate({**cfg.model_dump(), **update})
    from leadre_model.device import resolve_device

    print_trained(train_leadre(world, index, out, cfg, progress=progress,
                               device=resolve_device(device)), out)


def print_trained(summary: dict[str, Any], out: Path) -> None:
    t = summary["timings"]
    console.print(f"model → {out}  samples {summary['samples']}  DPO pairs {summary['dpo_pairs']}  "
                  + "  ".join(f"{k} {v:.0f}" for k, v in t.items()))
    if "trunk" in summary:
        trunk = summary["trunk"]
        console.print(f"  trunk: sft_s {trunk['timings']['sft_s']:.0f}  forked at epoch "
                      f"{trunk['fork_epoch']:g}")
    for i, m in enumerate(summary.get("members", [])):
        best = {k: v for k, v in (m.get("validation") or {}).items() if k.startswith("best_")}
        console.print(f"  member {i}: sft_s {m['timings']['sft_s']:.0f}  "
                      + "  ".join(f"{k} {v:g}" for k, v in best.items()))


@friendly
def ensemble(
    model: list[Path] = typer.Option(..., help="a trained model with a dense head; give two "
                                     "or more (the first one's tokenizer and prompts serve all)"),
    out: Path = typer.Option(..., help="ensemble model directory to write"),
    take: int | None = typer.Option(None, min=0, help="with one --model, an ensemble: write "
                                    "its member TAKE (0 = the first) alone to --out instead"),
) -> None:
    """Join models trained apart (e.g. on several machines at once, seeds differing) into
    one ensemble that ranks by their mean dense log-probability; or, with --take, write one
    member of an ensemble as a model of its own."""
    from leadre_model.llm.ensemble import join_models, take_member

    if take is not None:
        if len(model) != 1:
            raise UsageError("--take writes a member of one ensemble: give one --model")
        taken = take_member(model[0], take, out)
        console.print(f"member {take} of {model[0]} → {out}  version {taken['model_version']}")
        return
    manifest = join_models(model, out)
    console.print(f"ensemble → {out}  {1 + len(manifest['members'])} members  "
                  f"version {manifest['model_version']}")


@friendly
def eval_cmd(
    world: Path = typer.Option(..., help="world directory (split leave-one-out per user)"),
    model: list[Path] = typer.Option([], help="trained LEADRE model directory (repeatable)"),
    index: Path | None = typer.Option(None, help="index directory the models were trained on"),
    baselines: str = typer.Option("popularity,recent,itemcf,sasrec_ce",
                                  help="comma-separated: popularity, popularity_ecpm, recent, "
                                  "itemcf, sasrec_ce, sasrec_bce ('' for none)"),
    beam: int = typer.Option(20, min=1, help="beam width B for LEADRE"),
    rerank: str = typer.Option("", help="models with a dense head: comma-separated ways to "
                               "rank, one LEADRE row each, among off, dense, mix, full, fuse "
                               "(llm/dense_head.py; '' = as saved)"),
    branches: str = typer.Option("", help="branch combinations (eval/branches.py), e.g. "
                                 "'itemcf|leadre,leadre>itemcf': item-CF@10 ∪ LEADRE@10 (adds "
                                 "Recall@20) and the Mixer's merge; A|B:strict, A>B:0.5"),
    sasrec_budget_s: float | None = typer.Option(
        None, min=1, help="cap on SASRec training time (default: none, early stopping on "
        "validation decides; a cap is shown in the bar and recorded in results.json)"),
    sasrec_seeds: int = typer.Option(
        1, min=1, help="fit each SASRec baseline this many times (seeds seed, seed+1, …): "
        "rows sasrec_ce@seed1, … and their per-user mean sasrec_ce@meanN (± se, and the "
        "spread over fits), which the models are also paired against"),
    exclude_seen: str = typer.Option("both", help="off | on | both: mask each user's earlier "
                                     "target ads in every retriever, LEADRE included"),
    max_test_users: int | None = typer.Option(None, min=1, help="seeded subsample of test users"),
    holdout_users: int | None = typer.Option(
        None, min=1, help="refit (data/split.py): only these many users keep their validation "
        "target held out, every other user's trains the baselines too; default: the one the "
        "models were trained with, else none"),
    cache: Path | None = typer.Option(Path(".leadre_cache/baselines"),
                                      help="fitted-baseline cache (per split and settings)"),
    out: Path | None = typer.Option(None, help="write results.json, results.md and "
                                    "recall_at_10.png (Recall@10 ± se per retriever) here"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (LEADRE and SASRec)"),
    progress: bool = typer.Option(True),
) -> None:
    """HR@K (± standard error), NDCG@K, Recall@K, diversity, LTRR@K, eCPM@K, invalid rate
    and Dice for LEADRE models and baselines on one leave-one-out split
    (see leadre_model/eval/harness.py)."""
    from leadre_model.eval.baselines import SASRecConfig
    from leadre_model.eval.harness import EvalConfig, baseline_retrievers, evaluate_both
    from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever

    if model and index is None:
        raise UsageError("--model needs --index (the index the model was trained on)")
    if exclude_seen not in ("off", "on", "both"):
        raise UsageError(f"--exclude-seen must be off, on or both, not {exclude_seen!r}")
    holdout_users = _same_holdout(model, holdout_users)
    cfg = EvalConfig(max_test_users=max_test_users, seed=seed, progress=progress,
                     holdout_users=holdout_users,
                     **({"recall_ks": (5, 10, 20)} if branches else {}))
    names = [b.strip() for b in baselines.split(",") if b.strip()]
    sasrec = SASRecConfig(time_budget_s=sasrec_budget_s, seed=seed)
    from leadre_model.device import resolve_device

    dev = resolve_device(device)
    retrievers: list[Any] = baseline_retrievers(names, sasrec=sasrec, progress=progress,
                                                cache_dir=cache, device=dev,
                                                sasrec_seeds=sasrec_seeds)
    modes = [r.strip() for r in rerank.split(",") if r.strip()] or [None]
    for i, m in enumerate(model):
        for mode in modes:
            name = "leadre" if len(model) == 1 else f"leadre:{m.name or i}"
            name += f"[{mode}]" if len(modes) > 1 else ""
            lcfg = LeadreEvalConfig(beam_width=beam, progress=progress, rerank=mode)
            retrievers.append(LeadreRetriever(name, m, index, world,  # type: ignore[arg-type]
                                              lcfg, device=dev))
    if branches:
        from leadre_model.eval.branches import Memoized, branch_retrievers

        retrievers = [Memoized(r) for r in retrievers]
        try:
            retrievers += branch_retrievers(branches, {r.name: r for r in retrievers})
        except ValueError as e:
            raise UsageError(str(e)) from e
    started = time.perf_counter()
    results = evaluate_both(world, retrievers, cfg, exclude_seen)
    _print_results(results, world)
    if out is not None:
        from leadre_model.eval.harness import render_table
        from leadre_model.eval.plots import recall_chart
        from leadre_model.eval.results_table import run_record

        results["run"] = run_record(time.perf_counter() - started)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        (out / "results.md").write_text(f"# Evaluation of {world}\n\n{render_table(results)}\n\n"
                                        f"LTRR labels: {results['ltrr_labels']}\n")
        chart = recall_chart(results, out / "recall_at_10.png")
        console.print(f"results → {out} (results.json, results.md"
                      f"{', ' + chart.name if chart else ''})")


def _same_holdout(models: list[Path], asked: int | None) -> int | None:
    """The refit holdout every retriever gets: the models' own (their training config),
    which ``asked`` must match. A baseline fitted on a different split than LEADRE would
    not be the same comparison."""
    from leadre_model.llm.manifest import Manifest

    trained: dict[Path, int | None] = {}
    for m in models:
        try:
            config = Manifest.read(m).extra.get("train", {}).get("config", {})
        except (FileNotFoundError, BadInputError):
            continue  # LeadreRetriever reports a directory that is not a model
        trained[m] = config.get("holdout_users")
    found = set(trained.values())
    if len(found) > 1:
        raise UsageError("the models were trained with different validation holdouts ("
                         + ", ".join(f"{m}: {h}" for m, h in trained.items())
                         + "); evaluate them separately")
    if not trained:
        return asked
    own = found.pop()
    if asked is not None and asked != own:
        was = f"holdout_users {own}" if own else "no holdout (every validation target held out)"
        raise UsageError(f"--holdout-users {asked}, but the models were trained with {was}; "
                         "the baselines must see the split LEADRE saw: drop the option")
    return own


def _print_results(results: dict[str, Any], world: Path) -> None:
    rows = results["retrievers"]
    console.print(f"leave-one-out test on {world} ({results['data']['test']} users)")
    view = Table()
    view.add_column("figure")
    for name in rows:
        view.add_column(name, justify="right")
    for fig in dict.fromkeys(f for r in rows.values() for f in r):  # a figure per line fits
        view.add_row(fig, *(f"{r[fig]:.4f}" if fig in r else "" for r in rows.values()))
    console.print(view)
    for name, info in results.get("fits", {}).items():
        if "epochs_run" in info:
            c = info["config"]
            console.print(f"{name}: {info['epochs_run']} epochs (best {info['best_epoch']}), "
                          f"stopped by {info['stopped_by']}, {info['train_s']:.0f}s"
                          f"{' (from cache)' if info.get('from_cache') else ''}; lr {c['lr']}, "
                          f"hidden {c['hidden']}, patience {c['patience']}, cap "
                          f"{c['time_budget_s']}", highlight=False)
