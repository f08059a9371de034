"""Evaluation harness (§5): one leave-one-out split, every retriever on the same test cases.

Split (:mod:`leadre_model.data.split`): per user, targets are the positive ad events
(click, conversion; a conversion right after its own click is the same interaction); the
last is the test target, the one before the validation target, earlier ones are training
targets. Only ads of the world's catalog are targets; a target outside it is skipped.

What a retriever sees: an :class:`EvalCase` per test user — the profile and *all* positive
behaviours (ads and content) before the target, the target's time, and the earlier targets
as :attr:`EvalCase.ad_history`. It answers with ad ids (strings), best first, so LEADRE
(prompt → constrained decoding → S-ID → ad id) plugs in beside the baselines.

Item-ID baselines (popularity, item-CF, SASRec) see only ``ad_history``: the sequence of
earlier *targets* (positive ad events, click→conversion merged), not content behaviour.
They are trained on each user's training targets and early-stop on the validation target;
at test time the history also holds the validation target (the standard SASRec protocol).
With ``holdout_users`` (a refit, :mod:`leadre_model.data.split`) only those users keep a
validation target; every other user's is a training target, for every retriever alike.

Figures on the test targets (full ranking over the catalog):
HR@1/4/8 and NDCG@4/8 (paper); Recall@5/10 and NDCG@5/10 (TIGER); concentration and
abundance of categories in the top ``list_k``; LTRR@K against the item-CF branch's top-K
(see :func:`~leadre_model.eval.metrics.ltrr_at_k`); business value = mean eCPM of the top
``list_k``; invalid-output rate = share of returned ids that are not active ads (those also
count as misses everywhere else); Dice of the top ``dice_k`` with the first ``d``
behaviours removed vs. the full history (Fig. 5), for each ``d`` in ``dice_drops``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from leadre_model.data.records import AdStatus, Behavior, User
from leadre_model.data.split import (
    holdout_users,
    iter_user_histories,
    leave_one_out,
    target_indices,
)
from leadre_model.data.store import load_ads
from leadre_model.errors import UsageError
from leadre_model.eval import metrics as M
from leadre_model.eval.baselines import (
    ItemCF,
    ItemCFConfig,
    ItemRecommender,
    Popularity,
    Recent,
    SASRec,
    SASRecConfig,
)


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hr_ks: tuple[int, ...] = (1, 4, 8)
    ndcg_ks: tuple[int, ...] = (4, 5, 8, 10)
    recall_ks: tuple[int, ...] = (5, 10)
    ltrr_ks: tuple[int, ...] = (4, 8)
    list_k: int = Field(8, ge=1, description="K of concentration, abundance, business value")
    dice_k: int = Field(8, ge=1)
    dice_drops: tuple[int, ...] = (1, 2, 4)
    category_field: Literal["category_l1", "category_l2"] = "category_l1"
    max_test_users: int | None = Field(None, ge=1, description="seeded subsample of test users")
    merge_conversions: bool = True
    holdout_users: int | None = Field(None, ge=1, description="refit (data/split.py): only "
                                      "these many users keep their validation target held "
                                      "out; every other user's trains the baselines")
    itemcf: ItemCFConfig = ItemCFConfig()
    seed: int = 0
    progress: bool = True

    @property
    def max_k(self) -> int:
        return max((*self.hr_ks, *self.ndcg_ks, *self.recall_ks, *self.ltrr_ks, self.list_k,
                    self.dice_k))


@dataclass(frozen=True)
class EvalCase:
    """One user at one target: what a retriever may look at (module doc)."""

    user: User
    behaviors: list[Behavior]  # positive behaviours before the target, oldest first
    now_ts: int  # the target's time (prompts count "N days ago" from it)
    ad_positions: list[int]  # indices into behaviors of the earlier targets

    @property
    def ad_history(self) -> list[str]:
        return [self.behaviors[i].item_id for i in self.ad_positions]

    def truncated(self, drop: int) -> EvalCase:
        """The same case with its ``drop`` oldest behaviours removed (Fig. 5)."""
        return EvalCase(self.user, self.behaviors[drop:], self.now_ts,
                        [i - drop for i in self.ad_positions if i >= drop])


@dataclass
class EvalData:
    """The split, the catalog as arrays over integer ad ids, and the test cases."""

    ad_ids: list[str]
    index: dict[str, int]
    active: np.ndarray  # bool per ad
    ecpm: np.ndarray
    category: np.ndarray  # integer category code per ad (cfg.category_field)
    train_sequences: list[list[int]]
    valid_histories: list[list[int]]
    valid_targets: list[int]
    test_cases: list[EvalCase]
    test_histories: list[list[int]]
    test_targets: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)
    # ids an item-id model may map (default: the whole catalog); new ads leave it
    known: dict[str, int] | None = None

    @property
    def fingerprint(self) -> str:
        """Hash of everything a baseline is fitted on (train and validation sequences,
        catalog, active mask): the key of cached fits."""
        h = hashlib.sha256()
        for seq in (*self.train_sequences, [-1], *self.valid_histories, [-2], self.valid_targets):
            h.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
        h.update("\n".join(self.ad_ids).encode())
        h.update(self.active.tobytes())
        return h.hexdigest()

    @property
    def active_ids(self) -> frozenset[str]:
        return frozenset(a for a, ok in zip(self.ad_ids, self.active) if ok)

    def to_ints(self, ads: Sequence[str]) -> list[int]:
        known = self.index if self.known is None else self.known
        return [known[a] for a in ads if a in known]


@runtime_checkable
class Retriever(Protocol):
    """Anything that turns test cases into ranked ad ids."""

    name: str

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]: ...


@runtime_checkable
class Trainable(Protocol):
    """A retriever the harness trains on the split before testing it."""

    def fit_eval(self, data: EvalData) -> None: ...


class ItemIdRetriever:
    """Adapts an integer-id :class:`ItemRecommender` to the ad-id :class:`Retriever`
    protocol; ``make`` builds the model from the data (vocabulary size, masks).

    ``exclude_seen`` masks the ads of the case's ad history before ranking. Off by default
    (ads are re-clicked in a real ad system); on amazon-toys no test item ever occurs in its
    own history, and a model with tied input/output embeddings tends to rank the last item
    first, so the bench reports both."""

    def __init__(self, name: str, make: Callable[[EvalData], ItemRecommender],
                 exclude_seen: bool = False, cache_dir: Path | None = None,
                 settings: dict | None = None) -> None:
        self.name, self.make, self.exclude_seen = name, make, exclude_seen
        self.cache_dir, self.settings = cache_dir, settings or {}
        self.data: EvalData | None = None
        self.model: ItemRecommender | None = None

    @property
    def info(self) -> dict:
        """Settings, epochs, stopping reason and time of the fit (models that train)."""
        return dict(getattr(self.model, "info", {}) or {"settings": self.settings})

    def fit_eval(self, data: EvalData) -> None:
        """Fit on the split; models with weights (SASRec) are cached per (split, settings)
        in ``cache_dir``, so a second evaluation of the same world does not retrain."""
        self.data, self.model = data, self.make(data)
        path = None
        if self.cache_dir is not None and hasattr(self.model, "state"):
            key = hashlib.sha256(json.dumps([self.name, self.settings, data.fingerprint],
                                            sort_keys=True, default=str).encode()).hexdigest()
            path = Path(self.cache_dir) / f"{self.name}-{key[:20]}.pt"
            if path.exists():
                self.model.load_state(torch.load(path, weights_only=False, map_location="cpu"))  # type: ignore[attr-defined]
                return
        self.model.fit(data.train_sequences, (data.valid_histories, data.valid_targets))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(self.model.state(), tmp)  # type: ignore[attr-defined]
            tmp.replace(path)

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        if self.data is None or self.model is None:
            raise RuntimeError(f"{self.name}: fit_eval first")
        ids = [self.data.to_ints(c.ad_history) for c in histories]
        ranked = self.model.recommend(ids, k, self.exclude_seen)
        return [[self.data.ad_ids[i] for i in row if i != M.INVALID] for row in ranked]


BASELINES = ("popularity", "popularity_ecpm", "recent", "itemcf", "sasrec_ce", "sasrec_bce")
# A trained baseline fitted with more seeds (``--sasrec-seeds``) adds ``sasrec_ce@seed1``, …
# beside ``sasrec_ce`` and, after testing, the per-user mean of their hits as
# ``sasrec_ce@mean3``: one opponent fit moves by about a standard error on amazon-toys
# (docs/results/amazon-toys/fork), so a verdict on a tie should not rest on one draw.
SEED_MARK, MEAN_MARK = "@seed", "@mean"


def baseline_kind(name: str) -> str | None:
    """The baseline a result row stands for (``sasrec_ce@seed1`` and ``sasrec_ce@mean3`` →
    ``sasrec_ce``; ``+xs`` kept off); None for a model or a branch combination."""
    if _is_branch(name):
        return None
    base = name.removesuffix("+xs").split(SEED_MARK)[0].split(MEAN_MARK)[0]
    return base if base in BASELINES else None


def baseline_retrievers(names: Sequence[str] = ("popularity", "sasrec_ce", "sasrec_bce"),
                        sasrec: SASRecConfig | None = None, itemcf: ItemCFConfig | None = None,
                        progress: bool = True, exclude_seen: bool = False,
                        cache_dir: Path | None = None,
                        device: torch.device | None = None,
                        sasrec_seeds: int = 1) -> list[ItemIdRetriever]:
    """The named baselines (:data:`BASELINES`), restricted to active ads. ``cache_dir``:
    where fitted SASRec weights are kept per (split, settings); ``device``: where SASRec
    trains and scores (default: the CPU); ``sasrec_seeds``: each SASRec baseline is fitted
    this many times, with seeds ``seed``, ``seed + 1``, … (the others named
    ``sasrec_ce@seed1``, …; :func:`evaluate` adds their mean)."""
    if sasrec_seeds < 1:
        raise UsageError(f"sasrec_seeds must be at least 1, not {sasrec_seeds}")
    sas = sasrec or SASRecConfig()
    icf = itemcf or ItemCFConfig()
    settings = {"sasrec_ce": sas.model_copy(update={"loss": "ce"}).model_dump(),
                "sasrec_bce": sas.model_copy(update={"loss": "bce"}).model_dump(),
                "itemcf": icf.model_dump()}
    makers: dict[str, Callable[[EvalData], ItemRecommender]] = {
        "popularity": lambda d: Popularity(len(d.ad_ids), allowed=d.active),
        "recent": lambda d: Recent(len(d.ad_ids), allowed=d.active),
        "popularity_ecpm": lambda d: Popularity(len(d.ad_ids), ecpm=d.ecpm, allowed=d.active),
        "itemcf": lambda d: ItemCF(len(d.ad_ids), itemcf, allowed=d.active),
        "sasrec_ce": lambda d: SASRec(len(d.ad_ids), sas.model_copy(update={"loss": "ce"}),
                                      allowed=d.active, progress=progress, device=device),
        "sasrec_bce": lambda d: SASRec(len(d.ad_ids), sas.model_copy(update={"loss": "bce"}),
                                       allowed=d.active, progress=progress, device=device),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise UsageError(f"unknown baselines {sorted(unknown)}; expected among {BASELINES}")
    out = [ItemIdRetriever(n, makers[n], exclude_seen, cache_dir, settings.get(n))
           for n in names]
    for n in (n for n in names if n.startswith("sasrec")):
        for i in range(1, sasrec_seeds):
            seeded = baseline_retrievers([n], sas.model_copy(update={"seed": sas.seed + i}),
                                         icf, progress, exclude_seen, cache_dir, device)[0]
            seeded.name = f"{n}{SEED_MARK}{i}"
            out.append(seeded)
    return out


def build_eval_data(world: Path, cfg: EvalConfig | None = None) -> EvalData:
    cfg = cfg or EvalConfig()
    ads = load_ads(world)
    ad_ids = [a.ad_id for a in ads]
    index = {a: i for i, a in enumerate(ad_ids)}
    _, category = np.unique([getattr(a, cfg.category_field) for a in ads], return_inverse=True)
    train, vh, vt, cases, th, tt = [], [], [], [], [], []
    skipped = 0
    holdout = (holdout_users(world, cfg.holdout_users, cfg.merge_conversions)
               if cfg.holdout_users else None)
    users = iter_user_histories(world, positive_only=True)
    for h in tqdm(users, desc="split", unit=" users", disable=not cfg.progress):
        split = leave_one_out(h, cfg.merge_conversions, holdout)
        targets = target_indices(h, cfg.merge_conversions)
        known = [i for i in targets if h.behaviors[i].item_id in index]
        skipped += len(targets) - len(known)
        seq = {i: index[h.behaviors[i].item_id] for i in known}
        train.append([seq[i] for i in split.train_targets if i in seq])
        if split.valid in seq:
            vh.append(train[-1])
            vt.append(seq[split.valid])
        if split.test in seq:
            before = [j for j in known if j < split.test]
            cases.append(EvalCase(h.user, h.behaviors[: split.test], h.behaviors[split.test].ts,
                                  before))
            th.append([seq[j] for j in before])
            tt.append(seq[split.test])
    if cfg.max_test_users is not None and len(cases) > cfg.max_test_users:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(cases), cfg.max_test_users,
                                                               replace=False))
        cases, th, tt = [cases[i] for i in keep], [th[i] for i in keep], [tt[i] for i in keep]
    active = np.array([a.status is AdStatus.ACTIVE for a in ads], dtype=bool)
    tt_arr = np.asarray(tt, dtype=np.int64)
    return EvalData(
        ad_ids=ad_ids, index=index, active=active,
        ecpm=np.array([a.ecpm for a in ads], dtype=np.float64), category=category,
        train_sequences=train, valid_histories=vh, valid_targets=vt,
        test_cases=cases, test_histories=th, test_targets=tt_arr,
        stats={"users": len(train), "ads": len(ads), "active_ads": int(active.sum()),
               "train_targets": sum(map(len, train)), "valid": len(vt), "test": len(cases),
               "test_targets_inactive": int((~active[tt_arr]).sum()) if len(tt) else 0,
               "targets_outside_catalog": skipped},
    )


def _ranked(out: list[list[str]], data: EvalData, k: int) -> np.ndarray:
    """Ad ids → integer ids, ``-1`` for anything that is not an active ad; padded to ``k``."""
    r = np.full((len(out), k), M.INVALID, dtype=np.int64)
    for u, row in enumerate(out):
        for j, a in enumerate(row[:k]):
            i = data.index.get(a, M.INVALID)
            r[u, j] = i if i != M.INVALID and data.active[i] else M.INVALID
    return r


def score(out: list[list[str]], r: np.ndarray, data: EvalData, labels: np.ndarray,
          cfg: EvalConfig) -> dict:
    """Every figure of one retriever's test outputs (module doc); ``r``: the outputs as
    :func:`_ranked` gives them."""
    t = data.test_targets
    res: dict[str, float] = {}
    for k in cfg.hr_ks:
        res[f"hr@{k}"] = M.hit_rate_at_k(r, t, k)
        # one binary outcome per test user: the standard error of a proportion
        res[f"hr@{k}_se"] = float(np.sqrt(res[f"hr@{k}"] * (1 - res[f"hr@{k}"]) / max(len(t), 1)))
    for k in cfg.ndcg_ks:
        res[f"ndcg@{k}"] = M.ndcg_at_k(r, t, k)
    for k in cfg.recall_ks:
        res[f"recall@{k}"] = M.recall_at_k(r, t, k)
    if len(np.unique(data.category)) > 1:  # meaningless on a catalog without categories
        res[f"concentration@{cfg.list_k}"] = M.concentration_at_k(r, data.category, cfg.list_k)
        res[f"abundance@{cfg.list_k}"] = M.abundance_at_k(r, data.category, cfg.list_k)
    for k in cfg.ltrr_ks:
        res[f"ltrr@{k}"] = M.ltrr_at_k(r, labels[:, :k], k)
    if np.ptp(data.ecpm) > 0:  # no eCPM in the data: no business value to report
        res[f"ecpm@{cfg.list_k}"] = M.business_value_at_k(r, data.ecpm, cfg.list_k)
    res["invalid_rate"] = M.invalid_output_rate(out, data.active_ids)
    return res


def evaluate(world: Path, retrievers: Sequence[Retriever], cfg: EvalConfig | None = None,
             data: EvalData | None = None, fit: bool = True) -> dict:
    """Split ``world``, train what is :class:`Trainable`, test every retriever; returns
    ``{"config", "data", "ltrr_labels", "retrievers": {name: {figure: value}}}``. Pass
    ``data`` (from :func:`build_eval_data` with the same config) to reuse a split, and
    ``fit=False`` to test retrievers already trained on it (e.g. again with other options)."""
    cfg = cfg or EvalConfig()
    data = data or build_eval_data(Path(world), cfg)
    cf = ItemCF(len(data.ad_ids), cfg.itemcf, allowed=data.active).fit(data.train_sequences)
    # Asked for max_k like every retriever, so ties at the cut fall the same way.
    labels = cf.recommend(data.test_histories, cfg.max_k)[:, : max(cfg.ltrr_ks)]
    results: dict = {
        "world": str(world), "config": cfg.model_dump(mode="json"), "data": data.stats,
        "ltrr_labels": f"itemcf top-K from training targets ({cfg.itemcf.model_dump()})",
        "retrievers": {}, "fits": {},
    }
    hits: dict[str, dict[int, np.ndarray]] = {}
    for r in retrievers:
        t0 = time.perf_counter()
        if fit and isinstance(r, Trainable):
            r.fit_eval(data)
        t1 = time.perf_counter()
        out = r.recommend(data.test_cases, cfg.max_k)
        t2 = time.perf_counter()
        ranked = _ranked(out, data, cfg.max_k)
        res = score(out, ranked, data, labels, cfg)
        hits[r.name] = {k: M.hits_at_k(ranked, data.test_targets, k) for k in cfg.recall_ks}
        full = [row[: cfg.dice_k] for row in out]
        for d in cfg.dice_drops:
            # Fig. 5: only users who keep at least one behaviour after the cut.
            keep = [u for u, c in enumerate(data.test_cases) if len(c.behaviors) > d]
            cut = r.recommend([data.test_cases[u].truncated(d) for u in keep], cfg.dice_k)
            res[f"dice_drop{d}@{cfg.dice_k}"] = M.mean_dice([full[u] for u in keep], cut)
        res.update(fit_s=t1 - t0, recommend_s=t2 - t1)
        results["retrievers"][r.name] = res
        if getattr(r, "info", None):
            results["fits"][r.name] = r.info
    for name, row in seed_means(hits).items():
        results["retrievers"][name] = row
    results["paired"] = paired_differences(hits)
    return results


def seed_means(hits: dict[str, dict[int, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """For every baseline fitted with several seeds (``name``, ``name@seed1``, …): a row
    ``name@meanN`` with each Recall@K averaged over the fits, its standard error (of the
    per-user mean hit) and the fits' spread (``recall@K_sd``, standard deviation over
    seeds). Its per-user mean hits are added to ``hits`` so models are paired against it."""
    groups: dict[str, list[str]] = {}
    for n in hits:
        if baseline_kind(n) is not None and MEAN_MARK not in n:
            groups.setdefault(n.split(SEED_MARK)[0], []).append(n)
    rows: dict[str, dict[str, Any]] = {}
    for base, fits in groups.items():
        if len(fits) < 2:
            continue
        name = f"{base}{MEAN_MARK}{len(fits)}"
        hits[name] = {k: np.mean([hits[f][k] for f in fits], axis=0) for k in hits[fits[0]]}
        row: dict[str, Any] = {}
        for k, mean_hits in hits[name].items():
            per_fit = [float(hits[f][k].mean()) for f in fits]
            row[f"recall@{k}"] = float(mean_hits.mean())
            row[f"recall@{k}_se"] = float(mean_hits.std(ddof=1) / np.sqrt(max(len(mean_hits), 1)))
            row[f"recall@{k}_sd"] = float(np.std(per_fit, ddof=1))
        rows[name] = row
    return rows


def paired_differences(hits: dict[str, dict[int, np.ndarray]]) -> dict[str, dict[str, float]]:
    """``"model - baseline"`` → Recall@K difference and its paired standard error, for every
    retriever that is neither a baseline nor a branch combination against every baseline
    tested beside it (per-user hits from :func:`~leadre_model.eval.metrics.hits_at_k`;
    a baseline's seed mean from :func:`seed_means` included)."""
    baselines = [n for n in hits if baseline_kind(n) is not None]
    models = [n for n in hits if baseline_kind(n) is None and not _is_branch(n)]
    out: dict[str, dict[str, float]] = {}
    for m in models:
        for b in baselines:
            row: dict[str, float] = {}
            for k in hits[m]:
                row[f"recall@{k}"], row[f"recall@{k}_se"] = M.paired_difference(hits[m][k],
                                                                                hits[b][k])
            out[f"{m} - {b}"] = row
    return out


def _is_branch(name: str) -> bool:
    """A branch combination's row (eval/branches.py names them ``A@k∪B@k`` and ``mixer(…)``)."""
    return "∪" in name or name.startswith("mixer(")


def evaluate_both(world: Path, retrievers: Sequence[Retriever], cfg: EvalConfig | None = None,
                  exclude_seen: Literal["off", "on", "both"] = "both",
                  data: EvalData | None = None) -> dict:
    """:func:`evaluate` with every retriever's ``exclude_seen`` off, on, or both (fitted
    once; the second pass reports as ``name+xs``)."""
    cfg = cfg or EvalConfig()
    data = data or build_eval_data(Path(world), cfg)
    passes = {"off": [False], "on": [True], "both": [False, True]}[exclude_seen]
    results: dict = {}
    for i, on in enumerate(passes):
        for r in retrievers:
            r.exclude_seen = on  # type: ignore[attr-defined]
        res = evaluate(world, retrievers, cfg, data=data, fit=i == 0)
        if on and len(passes) > 1:
            res["retrievers"] = {f"{n}+xs": v for n, v in res["retrievers"].items()}
            res["paired"] = {" - ".join(f"{n}+xs" for n in pair.split(" - ")): v
                             for pair, v in res["paired"].items()}
            res["fits"] = {}
        if not results:
            results = res
        else:
            results["retrievers"].update(res["retrievers"])
            results["paired"].update(res["paired"])
    results["exclude_seen"] = exclude_seen
    return results


def render_table(results: dict, digits: int = 4) -> str:
    """Markdown table: one row per retriever, one column per figure; then, where models were
    tested beside baselines, their paired Recall@K differences (± paired standard error)."""
    rows = results["retrievers"]
    if not rows:
        return "(no retrievers)"
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    lines = ["| retriever | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = [("" if c not in r else f"{r[c]:.1f}" if c.endswith("_s") else f"{r[c]:.{digits}f}")
                 for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paired = results.get("paired") or {}
    if paired:
        ks = [c for c in next(iter(paired.values())) if not c.endswith("_se")]
        lines += ["", "Paired differences on the same test users (± paired standard error):", "",
                  "| model - baseline | " + " | ".join(ks) + " |", "|---" * (len(ks) + 1) + "|"]
        for name, d in paired.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{d[c]:+.{digits}f} ± {d[c + '_se']:.{digits}f}" for c in ks) + " |")
    return "\n".join(lines)


__all__ = [
    "BASELINES",
    "EvalCase",
    "EvalConfig",
    "EvalData",
    "ItemIdRetriever",
    "Retriever",
    "Trainable",
    "baseline_retrievers",
    "build_eval_data",
    "evaluate",
    "evaluate_both",
    "render_table",
    "score",
]
