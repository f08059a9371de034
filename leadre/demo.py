"""`leadre demo`: the whole system end to end on the embedded default, through the library
functions the sub-commands call: synthetic world → index → report → training → retrievals
for a few users → the live system (services) answering through the Mixer."""

from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from leadre_model.cli import print_index_built, print_index_report, print_trained
from leadre_model.clikit import console, print_counts

DEMO_COLLAB_WEIGHT = 0.5


def run_demo(workdir: Path, *, users: int = 500, ads: int = 2000, seed: int = 0,
             progress: bool = True) -> None:
    from leadre_model.data.store import load_ads
    from leadre_model.data.synth import SynthConfig, generate_world
    from leadre_model.index.build import build_index, training_sequences
    from leadre_model.index.collab import CollabConfig
    from leadre_model.index.report import build_report
    from leadre_model.index.rqvae import PRESETS, preset_for
    from leadre_model.index.sid_index import IndexConfig
    from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre
    from services.demo_live import run_live_demo

    world, index, model = workdir / "world", workdir / "index", workdir / "model"
    console.rule("[bold]1/5 synthetic world")
    t0 = time.perf_counter()
    manifest = generate_world(world, SynthConfig(seed=seed, n_users=users, n_ads=ads,
                                                 n_content=max(ads, 1000)), progress=progress)
    print_counts(f"synthetic world → {world} ({time.perf_counter() - t0:.1f}s)", manifest)

    console.rule("[bold]2/5 ad index (text → embedding → RQ-VAE → S-IDs → trie)")
    catalog = load_ads(world)
    # Collaborative S-IDs: the demo world has traffic history for most ads
    # (docs/data_and_index.md, "The ad index"); new ads added live still get S-IDs, from
    # their text.
    cfg = IndexConfig(rqvae=PRESETS[preset_for(len(catalog))].model_copy(update={"seed": seed}),
                      collab=CollabConfig(weight=DEMO_COLLAB_WEIGHT))
    t0 = time.perf_counter()
    built = build_index(catalog, index, cfg, cache_path=workdir / "embeddings.npz", progress=progress,
                        sequences=training_sequences(world, catalog, cfg))
    print_index_built(built, index, time.perf_counter() - t0)

    console.rule("[bold]3/5 index report")
    print_index_report(index / "report", build_report(index, catalog, index / "report"))
    _show_examples(workdir)

    console.rule("[bold]4/5 LLM alignment: LM on the corpus, curriculum SFT (EX → IM → Main), DPO")
    print_trained(train_leadre(world, index, model, TRAIN_PRESETS["demo"], progress=progress),
                  model)
    _show_retrievals(workdir)
    _show_quality(workdir)

    console.rule("[bold]5/5 live system: inference × 2, nearline worker, user server, mixer")
    run_live_demo(workdir, console)


def _show_retrievals(workdir: Path, n_users: int = 3, k: int = 5) -> None:
    from leadre_model.data.store import load_ads
    from leadre_model.llm.retriever import SidRetriever
    from leadre_model.prompts.tasks import build_samples
    from leadre_model.train.pipeline import TRAIN_PRESETS

    sid = SidRetriever.from_dirs(workdir / "model", workdir / "index")
    index = sid.index
    ads = {a.ad_id: a for a in load_ads(workdir / "world")}
    samples = build_samples(workdir / "world", index, TRAIN_PRESETS["demo"].prompts, ["main"],
                            "test")[:n_users]
    hits = sid.retrieve([s["prompt"] for s in samples], beam_width=20, top_k=k)
    for sample, user_hits in zip(samples, hits, strict=True):
        console.rule(f"user {sample['user_id']}")
        console.print(sample["prompt"], highlight=False, markup=False)
        truth = ads[sample["target_ad"]]
        table = Table(title=f"top {k} decoded ads (held-out next ad: {truth.ad_id} {truth.name})")
        for col in ("#", "ad", "name", "category", "eCPM", "log-prob"):
            table.add_column(col)
        for rank, hit in enumerate(user_hits, 1):
            ad = ads[index.ad_ids[hit.row]]
            mark = " ✓" if ad.ad_id == truth.ad_id else ""
            table.add_row(str(rank), ad.ad_id + mark, ad.name, ad.category_l2, f"{ad.ecpm:.2f}",
                          f"{hit.logprob:.2f}")
        console.print(table)


def _show_quality(workdir: Path, n_users: int = 50) -> None:
    """The demo model against the baselines on its own split, and how much its lists
    depend on the user (distinct first ads over ``n_users`` test users)."""
    from leadre_model.eval.harness import EvalConfig, baseline_retrievers, evaluate
    from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever

    world = workdir / "world"
    leadre = LeadreRetriever("leadre", workdir / "model", workdir / "index", world,
                             LeadreEvalConfig(progress=False))
    retrievers = [*baseline_retrievers(["popularity", "recent", "itemcf", "sasrec_ce"],
                                       progress=False), leadre]
    cfg = EvalConfig(progress=False, dice_drops=())
    res = evaluate(world, retrievers, cfg)
    table = Table(title=f"leave-one-out test, {res['data']['test']} users (full ranking over "
                        f"{res['data']['active_ads']} active ads)")
    for col in ("retriever", "HR@1", "HR@8 ± se", "NDCG@8", "invalid"):
        table.add_column(col, justify="right")
    for name, f in res["retrievers"].items():
        table.add_row(name, f"{f['hr@1']:.3f}", f"{f['hr@8']:.3f} ± {f['hr@8_se']:.3f}",
                      f"{f['ndcg@8']:.3f}", f"{f['invalid_rate']:.3f}")
    console.print(table)
    from leadre_model.eval.harness import build_eval_data

    cases = build_eval_data(world, cfg).test_cases[:n_users]
    first = {row[0] for row in leadre.recommend(cases, 1) if row}
    console.print(f"distinct first ads over {len(cases)} users: {len(first)}")


def _show_examples(workdir: Path, n: int = 5) -> None:
    from leadre_model.data.store import load_ads
    from leadre_model.index.sid_index import load_index, load_trie

    index = load_index(workdir / "index")
    trie = load_trie(workdir / "index")
    ads = {a.ad_id: a for a in load_ads(workdir / "world")}
    table = Table(title="a few ads and their semantic IDs (looked up back through the trie)")
    for col in ("ad", "name", "category", "S-ID", "trie → ad"):
        table.add_column(col)
    for row in range(min(n, len(index))):
        ad = ads[index.ad_ids[row]]
        back = int(trie.lookup(index.codes[row : row + 1])[0])
        table.add_row(ad.ad_id, ad.name, f"{ad.category_l1} / {ad.category_l2}", index.sid(row),
                      index.ad_ids[back] if back >= 0 else f"(paused: {ad.status.value})")
    console.print(table)
