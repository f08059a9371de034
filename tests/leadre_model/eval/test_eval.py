"""Evaluation: metric values by hand, baselines that must learn, the harness end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.errors import UsageError
from leadre_model.eval import metrics as M
from leadre_model.eval.baselines import ItemCF, Popularity, Recent, SASRec, SASRecConfig
from leadre_model.eval.harness import (
    EvalCase,
    EvalConfig,
    baseline_retrievers,
    build_eval_data,
    evaluate,
    evaluate_both,
    render_table,
)

X = M.INVALID
RANKED = np.array([[3, 1, 2, 0], [0, 1, 2, 3], [5, X, 4, 1]])
TARGETS = np.array([1, 3, 9])


# -- metrics ----------------------------------------------------------------------------
def test_hit_rate_recall_ndcg_by_hand() -> None:
    assert M.hit_rate_at_k(RANKED, TARGETS, 1) == 0.0
    assert M.hit_rate_at_k(RANKED, TARGETS, 2) == pytest.approx(1 / 3)
    assert M.hit_rate_at_k(RANKED, TARGETS, 4) == pytest.approx(2 / 3)
    assert M.recall_at_k(RANKED, TARGETS, 4) == M.hit_rate_at_k(RANKED, TARGETS, 4)
    # user 0 hits at rank 1 (1/log2 3), user 1 at rank 3 (1/log2 5), user 2 misses
    assert M.ndcg_at_k(RANKED, TARGETS, 2) == pytest.approx((1 / math.log2(3)) / 3)
    assert M.ndcg_at_k(RANKED, TARGETS, 4) == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / 3)
    assert M.ndcg_at_k(np.array([[7]]), np.array([7]), 1) == 1.0
    assert M.hit_rate_at_k(np.array([[X, 4]]), np.array([4]), 1) == 0.0  # invalid slot: a miss


def test_diversity_by_hand() -> None:
    cat = np.array([0, 0, 1, 1, 2, 2])  # items 0,1 → cat 0; 2,3 → 1; 4,5 → 2
    # user 0: cats [1,0,1,0] → max share 2/4, 2 categories
    # user 1: cats [0,0,1,1] → 2/4, 2 categories
    # user 2: valid items 5,4,1 → cats [2,2,0] → 2/3, 2 categories
    assert M.concentration_at_k(RANKED, cat, 4) == pytest.approx((0.5 + 0.5 + 2 / 3) / 3)
    assert M.abundance_at_k(RANKED, cat, 4) == pytest.approx(2.0)
    assert M.concentration_at_k(RANKED, cat, 1) == 1.0
    assert M.abundance_at_k(RANKED, cat, 1) == 1.0
    # a list of nothing but invalid outputs is skipped by concentration, 0 for abundance
    assert M.concentration_at_k(np.array([[X, X], [0, 2]]), cat, 2) == 0.5
    assert M.abundance_at_k(np.array([[X, X], [0, 2]]), cat, 2) == 1.0


def test_ltrr_business_value_invalid_dice_by_hand() -> None:
    labels = np.array([[1, 0], [9, 8], [4, X]])
    # user 0: {1,0} ∩ top4 = 2/2; user 1: 0/2; user 2: {4} → 1/1
    assert M.ltrr_at_k(RANKED, labels, 4) == pytest.approx((1 + 0 + 1) / 3)
    assert M.ltrr_at_k(RANKED, labels, 1) == pytest.approx(0.0)
    assert M.ltrr_at_k(RANKED, np.array([[X], [X], [X]]), 4) == 0.0  # no labels: skipped
    ecpm = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    # top-2: user 0 (4+2)/2=3, user 1 (1+2)/2=1.5, user 2 only item 5 → 6
    assert M.business_value_at_k(RANKED, ecpm, 2) == pytest.approx((3 + 1.5 + 6) / 3)
    valid = {"a", "b", "c"}
    assert M.invalid_output_rate([["a", "b"], ["c", "fake"]], valid) == 0.25
    assert M.invalid_output_rate([], valid) == 0.0
    assert M.dice(["a", "b", "c", "d"], ["c", "d", "e", "f"]) == 0.5
    assert M.dice([], []) == 1.0 and M.dice(["a"], []) == 0.0
    assert M.mean_dice([["a"], ["a", "b"]], [["a"], ["b", "c"]]) == pytest.approx(0.75)


# -- baselines --------------------------------------------------------------------------
def _chain(n_items: int, n_seq: int, length: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_items, n_seq)
    return [[(s + j) % n_items for j in range(length)] for s in starts]


def test_popularity_order_ecpm_and_mask() -> None:
    seqs = [[2, 2, 1], [2, 1, 0], [3]]
    pop = Popularity(5).fit(seqs)
    assert pop.recommend([[0], []], 3).tolist() == [[2, 1, 0], [2, 1, 0]]  # ties → lower id
    ecpm = np.array([10.0, 1.0, 1.0, 1.0, 1.0])
    assert Popularity(5, ecpm=ecpm).fit(seqs).recommend([[]], 2).tolist() == [[0, 2]]
    masked = Popularity(5, allowed=np.array([1, 1, 0, 1, 1], dtype=bool)).fit(seqs)
    assert masked.recommend([[]], 5).tolist() == [[1, 0, 3, 4, X]]  # 2 never; no 5th item
    assert pop.recommend([[2, 1]], 2, exclude_seen=True).tolist() == [[0, 3]]


def test_itemcf_follows_co_visitation() -> None:
    seqs = _chain(30, 300, 6, seed=0)
    cf = ItemCF(30).fit(seqs)
    # history 3,4,5: item 6 gets 1 + 0.8/2 + 0.64/3, item 2 gets 0.64 + 0.8/2 + 1/3
    r = cf.recommend([[3, 4, 5], [27, 28, 29]], 2, exclude_seen=True)
    assert r[:, 0].tolist() == [6, 0]  # the chain wraps around


@pytest.mark.parametrize(("loss", "positions"), [("ce", "recency"), ("bce", "recency"),
                                                  ("ce", "forward")])
def test_sasrec_learns_successor(loss: str, positions: str) -> None:
    n = 40
    train = _chain(n, 400, 8, seed=1)
    vh = _chain(n, 100, 5, seed=2)
    valid = ([s[:-1] for s in vh], [s[-1] for s in vh])
    cfg = SASRecConfig(loss=loss, positions=positions, max_len=8, hidden=32, dropout=0.1,
                       lr=1e-2, epochs=30, batch_size=64, eval_every=2, patience=3, seed=0)
    model = SASRec(n, cfg, progress=False).fit(train, valid)
    test = _chain(n, 200, 6, seed=3)
    r = model.recommend([s[:-1] for s in test], 1)
    assert M.hit_rate_at_k(r, np.array([s[-1] for s in test]), 1) > 0.9
    assert model.log and model.log[-1]["epoch"] <= cfg.epochs
    # seeded: a second run gives the same lists
    again = SASRec(n, cfg, progress=False).fit(train, valid).recommend([s[:-1] for s in test], 3)
    assert np.array_equal(again, model.recommend([s[:-1] for s in test], 3))


def test_sasrec_empty_history_falls_back_to_popularity() -> None:
    model = SASRec(6, SASRecConfig(epochs=1, hidden=8), progress=False).fit([[1, 1, 1, 2]])
    assert model.recommend([[]], 2).tolist() == [[1, 2]]


# -- harness ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(out, SynthConfig(n_users=60, n_ads=100, n_content=100), progress=False)
    return out


class FakeRetriever:
    """Returns a made-up id first, then real ads: invalid-output rate = 1/k."""

    name = "fake"

    def __init__(self, ads: list[str]) -> None:
        self.ads = ads

    def recommend(self, histories: list[EvalCase], k: int) -> list[list[str]]:
        return [["no_such_ad", *self.ads[: k - 1]] for _ in histories]


def test_harness_on_synthetic_world(world: Path) -> None:
    cfg = EvalConfig(progress=False)
    data = build_eval_data(world, cfg)
    assert data.stats["test"] == len(data.test_cases) == len(data.test_targets) > 0
    case = data.test_cases[0]
    assert all(b.ts <= case.now_ts for b in case.behaviors)
    assert data.to_ints(case.ad_history) == data.test_histories[0]
    fast = SASRecConfig(epochs=4, eval_every=2, hidden=16)
    active = [a for a, ok in zip(data.ad_ids, data.active) if ok]
    names = ["popularity", "popularity_ecpm", "itemcf", "sasrec_ce", "sasrec_bce"]
    retrievers = [*baseline_retrievers(names, sasrec=fast, progress=False), FakeRetriever(active)]
    res = evaluate(world, retrievers, cfg, data=data)
    assert list(res["retrievers"]) == [*names, "fake"]
    for name, figs in res["retrievers"].items():
        for key, v in figs.items():
            if key.startswith(("abundance", "ecpm")) or key.endswith("_s"):
                assert v >= 0, (name, key)
            else:
                assert 0.0 <= v <= 1.0, (name, key, v)
        assert figs["hr@1"] <= figs["hr@4"] <= figs["hr@8"]
        assert 1 <= figs["abundance@8"] <= 8
    assert res["retrievers"]["popularity"]["invalid_rate"] == 0.0
    assert res["retrievers"]["fake"]["invalid_rate"] == pytest.approx(1 / cfg.max_k)
    assert res["retrievers"]["itemcf"]["ltrr@8"] == pytest.approx(1.0)  # it is the label branch
    assert res["retrievers"]["popularity"]["dice_drop1@8"] == 1.0  # history-independent
    figs = res["retrievers"]
    assert figs["popularity_ecpm"]["ecpm@8"] > figs["popularity"]["ecpm@8"]
    sas = retrievers[3]
    sas.exclude_seen = True  # same trained model, history ads masked; no refit
    again = evaluate(world, [sas], cfg, data=data, fit=False)["retrievers"]["sasrec_ce"]
    assert again["fit_s"] < 0.01
    for case, row in zip(data.test_cases, sas.recommend(data.test_cases, 8)):
        assert not set(row) & set(case.ad_history)
    table, _, paired = render_table(res).partition("\n\n")
    assert table.count("\n") == 1 + len(retrievers) and "| sasrec_ce |" in table
    # the model row against every baseline, its difference taken per test user
    assert list(res["paired"]) == [f"fake - {n}" for n in names]
    for n in names:
        d = res["paired"][f"fake - {n}"]
        for k in cfg.recall_ks:
            assert d[f"recall@{k}"] == pytest.approx(figs["fake"][f"recall@{k}"]
                                                     - figs[n][f"recall@{k}"])
            assert d[f"recall@{k}_se"] >= 0
    assert "| fake - sasrec_ce | " in paired


def test_paired_difference_cancels_the_users_both_retrievers_share() -> None:
    hits = np.array([1.0, 1, 0, 0])
    # d = [0, 1, 0, 0]: mean 0.25, sample sd 0.5, se 0.5 / sqrt(4)
    assert M.paired_difference(hits, np.array([1.0, 0, 0, 0])) == pytest.approx((0.25, 0.25))
    assert M.paired_difference(hits, hits) == (0.0, 0.0)  # the same hits: no difference, no doubt
    assert M.paired_difference(np.array([]), np.array([])) == (0.0, 0.0)
    assert M.hits_at_k(RANKED, TARGETS, 4).tolist() == [1.0, 1.0, 0.0]


def test_refit_split_trains_baselines_on_every_other_users_validation_target(world: Path) -> None:
    classic = build_eval_data(world, EvalConfig(progress=False))
    refit = build_eval_data(world, EvalConfig(progress=False, holdout_users=10))
    assert refit.stats["valid"] == len(refit.valid_targets) == 10 < classic.stats["valid"]
    # every validation target outside the holdout moved into training; test cases unchanged
    moved = classic.stats["valid"] - refit.stats["valid"]
    assert refit.stats["train_targets"] == classic.stats["train_targets"] + moved
    assert refit.test_histories == classic.test_histories
    assert (refit.test_targets == classic.test_targets).all()
    longer = [len(a) - len(b) for a, b in zip(refit.train_sequences, classic.train_sequences)]
    assert sorted(set(longer)) == [0, 1] and longer.count(1) == moved
    assert refit.fingerprint != classic.fingerprint  # baselines are refitted, not reused


def test_recent_lists_last_distinct_items_then_popularity() -> None:
    model = Recent(6).fit([[1, 1, 1, 2, 2, 0]])
    assert model.recommend([[4, 3, 4]], 4).tolist() == [[4, 3, 1, 2]]
    assert model.recommend([[4, 3, 4]], 3, exclude_seen=True).tolist() == [[1, 2, 0]]
    assert model.recommend([[]], 2).tolist() == [[1, 2]]


def test_sasrec_records_its_fit_and_is_cached_per_split(world: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(progress=False, dice_drops=())
    data = build_eval_data(world, cfg)
    fast = SASRecConfig(epochs=4, eval_every=2, hidden=16)
    first = baseline_retrievers(["sasrec_ce"], sasrec=fast, progress=False, cache_dir=tmp_path)[0]
    first.fit_eval(data)
    info = first.info
    assert info["epochs_run"] == 4 and info["stopped_by"] in ("epochs", "early_stopping")
    assert info["config"]["hidden"] == 16 and info["train_s"] > 0 and "from_cache" not in info
    again = baseline_retrievers(["sasrec_ce"], sasrec=fast, progress=False, cache_dir=tmp_path)[0]
    again.fit_eval(data)
    assert again.info["from_cache"] and again.info["epochs_run"] == 4
    cases = data.test_cases[:20]
    assert again.recommend(cases, 5) == first.recommend(cases, 5)
    other = baseline_retrievers(["sasrec_ce"], sasrec=fast.model_copy(update={"hidden": 8}),
                                progress=False, cache_dir=tmp_path)[0]
    other.fit_eval(data)  # other settings: another cache entry, trained afresh
    assert "from_cache" not in other.info and len(list(tmp_path.glob("*.pt"))) == 2
    fake = FakeRetriever([a for a, ok in zip(data.ad_ids, data.active) if ok])
    res = evaluate_both(world, [first, *baseline_retrievers(["recent"], progress=False), fake],
                        cfg, data=data)
    assert set(res["retrievers"]) == {"sasrec_ce", "recent", "fake", "sasrec_ce+xs", "recent+xs",
                                      "fake+xs"}
    # each pass compares its own rows: masked model against masked baseline
    assert set(res["paired"]) == {"fake - sasrec_ce", "fake - recent", "fake+xs - sasrec_ce+xs",
                                  "fake+xs - recent+xs"}
    figs = res["retrievers"]
    assert res["paired"]["fake+xs - recent+xs"]["recall@10"] == pytest.approx(
        figs["fake+xs"]["recall@10"] - figs["recent+xs"]["recall@10"])
    assert res["fits"]["sasrec_ce"]["epochs_run"] == 4
    for figs in res["retrievers"].values():
        p = figs["hr@8"]
        assert figs["hr@8_se"] == pytest.approx(math.sqrt(p * (1 - p) / len(data.test_cases)))


def test_sasrec_seeds_are_fitted_apart_and_models_paired_against_their_mean(
        world: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(progress=False, dice_drops=())
    data = build_eval_data(world, cfg)
    fast = SASRecConfig(epochs=4, eval_every=2, hidden=16, seed=5)
    sas = baseline_retrievers(["sasrec_ce"], sasrec=fast, progress=False, cache_dir=tmp_path,
                              sasrec_seeds=3)
    assert [r.name for r in sas] == ["sasrec_ce", "sasrec_ce@seed1", "sasrec_ce@seed2"]
    fake = FakeRetriever([a for a, ok in zip(data.ad_ids, data.active) if ok])
    res = evaluate_both(world, [*sas, fake], cfg, data=data)
    assert [res["fits"][r.name]["config"]["seed"] for r in sas] == [5, 6, 7]
    assert len(list(tmp_path.glob("*.pt"))) == 3  # one cache entry per seed
    figs = res["retrievers"]
    for xs in ("", "+xs"):
        mean = figs[f"sasrec_ce@mean3{xs}"]
        for k in cfg.recall_ks:
            per_fit = [figs[f"{r.name}{xs}"][f"recall@{k}"] for r in sas]
            assert mean[f"recall@{k}"] == pytest.approx(np.mean(per_fit))
            assert mean[f"recall@{k}_sd"] == pytest.approx(np.std(per_fit, ddof=1))
            assert 0 <= mean[f"recall@{k}_se"] <= 0.5
            d = res["paired"][f"fake{xs} - sasrec_ce@mean3{xs}"]
            assert d[f"recall@{k}"] == pytest.approx(figs[f"fake{xs}"][f"recall@{k}"]
                                                     - np.mean(per_fit))
    # the fits are baselines, not models: nothing is paired against itself or its siblings
    assert not [p for p in res["paired"] if p.startswith("sasrec")]
    with pytest.raises(UsageError, match="at least 1"):
        baseline_retrievers(["sasrec_ce"], sasrec_seeds=0)


def test_new_ads_are_hidden_from_baselines_and_branches_merge(world: Path) -> None:
    from leadre_model.eval.new_ads import MergedRetriever, hold_out, new_ad_mask, pick_new_ads

    data = build_eval_data(world, EvalConfig(progress=False))
    new = pick_new_ads(data.ad_ids, 0.2, seed=1)
    known = hold_out(data, new)
    new_ints = {data.index[a] for a in new}
    assert not any(set(s) & new_ints for s in known.train_sequences + known.valid_histories)
    assert not set(known.valid_targets) & new_ints
    assert len(known.test_cases) == len(data.test_cases)  # every case is still scored
    assert new_ad_mask(known, new).sum() == known.stats["test_targets_new"]
    for c in known.test_cases:
        assert not set(known.to_ints(c.ad_history)) & new_ints
    a, b = baseline_retrievers(["popularity", "recent"], progress=False)
    for r in (a, b):
        r.fit_eval(known)
    merged = MergedRetriever("m", b, a).recommend(known.test_cases[:5], 6)
    for row, ra, rb in zip(merged, a.recommend(known.test_cases[:5], 6),
                           b.recommend(known.test_cases[:5], 6)):
        assert len(row) == len(set(row)) == 6 and row[0] == rb[0]
        assert set(row) <= set(ra) | set(rb)
