"""Retrieval quality on a fixed synthetic world, LEADRE against baselines trained to
convergence in the same run (issue "Retrieval quality", one `name: value` line each).

    python bench/quality_bench.py [--workdir runs/quality_bench] [--preset bench]
                                  [--collab-weight 0.5] [--device auto|cpu|cuda]

World: the ablation world (1,000 users, 1,000 ads, 1,500 content items, seed 0). A seeded
5 % of the ads are *new*: left out of the index LEADRE trains on and of every baseline's
training data, then given S-IDs with the trained RQ-VAE (`add_ads`, the code behind
`leadre index add`, no retraining) before testing (leadre_model/eval/new_ads.py).

Figures (HR@8 on all 1,000 test users, full ranking; `_xs`: the user's earlier target ads
masked, in every retriever; `_se`: standard error):
  leadre_hr8, sasrec_ce_hr8, itemcf_hr8, recent_hr8, popularity_hr8 (+ `_xs`)
  leadre_vs_best_baseline      LEADRE ÷ the best baseline, on test targets that are not new
                               ads (the cases a baseline can answer at all); `_xs` likewise
  leadre_new_ad_recall10 / sasrec_ce_… / itemcf_…   Recall@10 on targets that are new ads
  merged_itemcf_leadre_hr8 vs itemcf_hr8            what the LEADRE branch adds to item-CF
  distinct_top1_over_50_users, invalid_rate, train_s (LEADRE), sasrec_train_s (both
  dropouts tried: 0.3 and 0.5, the better on validation NDCG@10 is the opponent)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.device import describe, resolve_device
from leadre_model.eval import metrics as M
from leadre_model.eval.baselines import SASRecConfig
from leadre_model.eval.harness import EvalConfig, baseline_retrievers, build_eval_data
from leadre_model.eval.leadre_retriever import LeadreEvalConfig, LeadreRetriever
from leadre_model.eval.new_ads import (
    MergedRetriever,
    hold_out,
    new_ad_mask,
    new_ad_recall,
    pick_new_ads,
)
from leadre_model.index.build import add_ads, build_index, training_sequences
from leadre_model.index.collab import CollabConfig
from leadre_model.index.rqvae import PRESETS, preset_for
from leadre_model.index.sid_index import IndexConfig, load_embeddings, load_index
from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre

WORLD = SynthConfig(n_users=1000, n_ads=1000, n_content=1500, seed=0)


def hr(out: list[list[str]], data, k: int, mask: np.ndarray | None = None) -> float:
    ranked = np.full((len(out), k), M.INVALID, dtype=np.int64)
    for u, row in enumerate(out):
        ids = [data.index.get(a, M.INVALID) for a in row[:k]]
        ranked[u, : len(ids)] = ids
    t = data.test_targets
    if mask is not None:
        ranked, t = ranked[mask], t[mask]
    return M.hit_rate_at_k(ranked, t, k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/quality_bench"))
    ap.add_argument("--preset", default="bench", choices=sorted(TRAIN_PRESETS))
    ap.add_argument("--new-share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, default=WORLD.n_users, help="(smaller: a smoke run)")
    ap.add_argument("--epochs", type=float, default=None, help="override the seq epochs")
    ap.add_argument("--collab-weight", type=float, default=0.0,
                    help="collaborative S-IDs (index/collab.py); 0: text only, as shipped")
    ap.add_argument("--reuse-model", action="store_true",
                    help="test the model a previous run trained (train_s: its recorded time)")
    ap.add_argument("--device", default="cpu", help="LEADRE and SASRec: cpu | cuda | auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    print(f"device: {describe(device)}")
    wd: Path = args.workdir
    world = wd / "world"
    if not (world / "world.json").exists():
        generate_world(world, WORLD.model_copy(update={"n_users": args.users}), progress=False)
    ads = load_ads(world)
    new = pick_new_ads([a.ad_id for a in ads], args.new_share, args.seed)
    tag = f"-cf{args.collab_weight:g}" if args.collab_weight > 0 else ""
    index_dir, served_dir = wd / f"index{tag}", wd / f"index_served{tag}"
    if not (index_dir / "index.json").exists():
        cfg = IndexConfig(rqvae=PRESETS[preset_for(len(ads))].model_copy(update={"seed": args.seed}),
                          collab=CollabConfig(weight=args.collab_weight))
        known_ads = [a for a in ads if a.ad_id not in new]
        # the new ads' traffic stays out of the collaborative embedding too
        build_index(known_ads, index_dir, cfg, cache_path=wd / "embeddings.npz",
                    progress=False, sequences=training_sequences(world, known_ads, cfg))
    shutil.rmtree(served_dir, ignore_errors=True)
    shutil.copytree(index_dir, served_dir)
    _, added = add_ads(served_dir, ads, cache_path=wd / "embeddings.npz", progress=False)

    model_dir = wd / f"model-{args.preset}{tag}"
    t0 = time.perf_counter()
    reuse = args.reuse_model and (model_dir / "train_log.json").exists()
    preset = TRAIN_PRESETS[args.preset]
    if args.epochs is not None and preset.seq is not None:
        preset = preset.model_copy(update={"seq": preset.seq.model_copy(
            update={"epochs": args.epochs})})
    if reuse:
        train_s = sum(json.loads((model_dir / "train_log.json").read_text())["timings"].values())
    else:
        train_leadre(world, index_dir, model_dir, preset, progress=False, device=device)
        train_s = time.perf_counter() - t0

    data = build_eval_data(world, EvalConfig(progress=False))
    known = hold_out(data, new)
    cases = data.test_cases
    is_new = new_ad_mask(data, new)
    baselines = baseline_retrievers(["popularity", "recent", "itemcf"], progress=False)
    for b in baselines:
        b.fit_eval(known)
    # SASRec-CE, early-stopped on validation, its dropout chosen on validation too
    sasrecs = [baseline_retrievers(["sasrec_ce"], sasrec=SASRecConfig(dropout=p), progress=False,
                                   device=device)[0] for p in (0.3, 0.5)]
    for s in sasrecs:
        s.fit_eval(known)
    sasrec = max(sasrecs, key=lambda s: s.info["best_valid_ndcg@10"])
    sasrec_s = sum(s.info["train_s"] for s in sasrecs)
    baselines.append(sasrec)
    leadre = LeadreRetriever("leadre", model_dir, index_dir, world,
                             LeadreEvalConfig(progress=False), index=load_index(served_dir),
                             embeddings=load_embeddings(served_dir), device=device)
    itemcf = baselines[2]
    retrievers = [leadre, *baselines]
    figures: dict[str, float] = {}
    outs: dict[str, list[list[str]]] = {}
    for xs in (False, True):
        for r in retrievers:
            r.exclude_seen = xs
            out = r.recommend(cases, 10)
            suffix = "_xs" if xs else ""
            figures[f"{r.name}_hr8{suffix}"] = hr(out, data, 8)
            figures[f"{r.name}_hr8_known{suffix}"] = hr(out, data, 8, ~is_new)
            if not xs:
                outs[r.name] = out
        best = max(figures[f"{b.name}_hr8_known{suffix}"] for b in baselines)
        figures[f"leadre_vs_best_baseline{suffix}"] = figures[f"leadre_hr8_known{suffix}"] / best
    for r in retrievers:
        r.exclude_seen = False
    n = len(cases)
    lines: list[tuple[str, float | int | str]] = []
    for name in ("leadre", "sasrec_ce", "itemcf", "recent", "popularity"):
        p = figures[f"{name}_hr8"]
        lines += [(f"{name}_hr8", p), (f"{name}_hr8_se", np.sqrt(p * (1 - p) / n)),
                  (f"{name}_hr8_xs", figures[f"{name}_hr8_xs"])]
    lines += [("leadre_vs_best_baseline", figures["leadre_vs_best_baseline"]),
              ("leadre_vs_best_baseline_xs", figures["leadre_vs_best_baseline_xs"])]
    for name in ("leadre", "sasrec_ce", "itemcf"):
        rec, n_new = new_ad_recall(outs[name], data, new, 10)
        lines.append((f"{name}_new_ad_recall10", rec))
    lines.append(("new_ad_test_targets", n_new))
    lines.append(("new_ads_added_to_index", len(added)))
    lines.append(("new_ads_unrepresentable", leadre.unrepresentable))
    merged = MergedRetriever("merged", itemcf, leadre).recommend(cases, 10)
    lines += [("merged_itemcf_leadre_hr8", hr(merged, data, 8)),
              ("itemcf_alone_hr8", figures["itemcf_hr8"])]
    lines.append(("distinct_top1_over_50_users", len({o[0] for o in outs["leadre"][:50] if o})))
    lines.append(("invalid_rate", M.invalid_output_rate(outs["leadre"], data.active_ids)))
    lines += [("test_users", n), ("train_s", train_s), ("sasrec_train_s", sasrec_s),
              ("sasrec_epochs", sasrec.info["epochs_run"]),
              ("sasrec_dropout", sasrec.info["config"]["dropout"]),
              ("leadre_params", sum(p.numel() for p in leadre.model.parameters()))]
    for k, v in lines:
        print(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
