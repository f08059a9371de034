"""Baselines on amazon-toys with the TIGER protocol: one `name: value` line per figure.

    python bench/baselines_amazon.py [--data ../shared/data/amazon-toys] [--ce-budget-s 300]

Leave-one-out (last item = test, second-to-last = validation), full ranking over all
11,924 items, Recall@5/10 and NDCG@5/10 (plus the paper's HR/NDCG@K, diversity, LTRR@K
against item-CF, invalid rate, Dice under truncation). Popularity, item-CF, SASRec trained
with full-softmax cross-entropy and SASRec with sampled BCE (one negative), in the same
harness, each once on the raw full ranking and once with the user's history items masked
(`*_noseen_*` lines: no test item of this data set occurs in its own history, and RecBole-
style evaluations mask them). The published figures of the data README follow as
`published_*` lines; they come from other code and are references, not measurements of
this run. On 2 CPU cores the whole run takes about 10 minutes (SASRec training is capped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from leadre_model.data.amazon import load_amazon
from leadre_model.eval.baselines import SASRec, SASRecConfig
from leadre_model.eval.harness import (
    EvalConfig,
    ItemIdRetriever,
    baseline_retrievers,
    build_eval_data,
    evaluate,
)

PUBLISHED = {  # ../shared/data/README.md
    "published_tiger_recall@5": 0.0521,
    "published_tiger_ndcg@5": 0.0371,
    "published_tiger_recall@10": 0.0712,
    "published_tiger_ndcg@10": 0.0432,
    "published_sasrec_in_tiger_paper_recall@10": 0.0675,
    "published_sasrec_in_tiger_paper_ndcg@10": 0.0374,
    "published_tiger_rerun_timoniche_recall@10": 0.0522,
    "published_tiger_rerun_timoniche_ndcg@10": 0.0292,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("../shared/data/amazon-toys"))
    ap.add_argument("--baselines", nargs="+", default=["popularity", "itemcf", "sasrec_ce", "sasrec_bce"])
    ap.add_argument("--ce-budget-s", type=float, default=300.0, help="SASRec-CE training cap")
    ap.add_argument("--bce-budget-s", type=float, default=270.0, help="SASRec-BCE training cap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true", help="tqdm bars on stderr")
    args = ap.parse_args()
    t0 = time.perf_counter()
    cfg = EvalConfig(seed=args.seed, progress=args.progress)
    # BCE improves slowly and its validation NDCG is noisy: validating every 4 epochs (16
    # epochs of patience instead of 8) keeps early stopping from cutting it short.
    sas = {"ce": SASRecConfig(loss="ce", seed=args.seed, time_budget_s=args.ce_budget_s),
           "bce": SASRecConfig(loss="bce", seed=args.seed, time_budget_s=args.bce_budget_s,
                               eval_every=4)}
    retrievers = [_retriever(name, sas, args.progress) for name in args.baselines]
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "amazon-toys"
        load_amazon(args.data, world)
        data = build_eval_data(world, cfg)
        for k, v in data.stats.items():
            print(f"data_{k}: {v}")
        print(f"data_build_s: {time.perf_counter() - t0:.1f}")
        sys.stdout.flush()
        results = evaluate(world, retrievers, cfg, data=data)
        for r in retrievers:  # the same trained models, history ads masked (`_noseen` lines)
            r.exclude_seen = True
        noseen = evaluate(world, retrievers, cfg, data=data, fit=False)
    for r in retrievers:
        for key, v in results["retrievers"][r.name].items():
            print(f"{r.name}_{key}: {v:.1f}" if key.endswith("_s") else f"{r.name}_{key}: {v:.4f}")
        for key, v in noseen["retrievers"][r.name].items():
            if not key.endswith("_s"):
                print(f"{r.name}_noseen_{key}: {v:.4f}")
        if isinstance(r.model, SASRec) and r.model.log:
            key = f"valid_ndcg@{r.model.cfg.valid_k}"
            best = max(r.model.log, key=lambda x: x[key])
            print(f"{r.name}_epochs_run: {r.model.log[-1]['epoch']}")
            print(f"{r.name}_best_epoch: {best['epoch']}")
            print(f"{r.name}_best_{key}: {best[key]:.4f}")
    for key, v in PUBLISHED.items():
        print(f"{key}: {v}")
    for loss, c in sas.items():
        print(f"sasrec_{loss}_config: {c.model_dump_json()}")
    print(f"wall_s_total: {time.perf_counter() - t0:.1f}")


def _retriever(name: str, sas: dict[str, SASRecConfig], progress: bool) -> ItemIdRetriever:
    if not name.startswith("sasrec_"):
        return baseline_retrievers([name], progress=progress)[0]
    cfg = sas[name.removeprefix("sasrec_")]  # each loss with its own training cap
    return ItemIdRetriever(name, lambda d: SASRec(len(d.ad_ids), cfg, allowed=d.active,
                                                  progress=progress))


if __name__ == "__main__":
    main()
