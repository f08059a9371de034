"""Branch combinations for `leadre eval` (eval/branches.py): exact lists on hand-made
branches, the Mixer's rule mirrored exactly, and one decode per branch."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from leadre_model.data.records import User
from leadre_model.eval.branches import (
    MIXER_LEADRE_SHARE,
    Memoized,
    MixerRetriever,
    UnionRetriever,
    branch_retrievers,
    mixer_merge,
    union_merge,
)
from leadre_model.eval.harness import EvalCase


class Fixed:
    """Returns the same ranked list for every case; counts its calls."""

    def __init__(self, name: str, ranked: list[str]) -> None:
        self.name, self.ranked, self.calls, self.exclude_seen = name, ranked, 0, False

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        self.calls += 1
        return [self.ranked[:k] for _ in histories]


CASES = [EvalCase(User(user_id="u1"), [], 0, []), EvalCase(User(user_id="u2"), [], 0, [])]


def test_union_keeps_first_top_k_then_second_new_ads_refilled_or_strict() -> None:
    a = [f"a{i}" for i in range(30)]
    b = ["a0", "b1", "a3", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11", "a15"]
    filled = union_merge(a, b, 10, 10)
    assert filled[:10] == a[:10]
    # a0, a3 duplicate: two slots go to b's 11th and 12th; a15 (not in a's top 10) counts
    assert filled[10:] == ["b1", "b3", "b4", "b5", "b6", "b7", "b8", "b9", "b10", "b11"]
    strict = union_merge(a, b, 10, 10, refill=False)
    assert strict[10:] == ["b1", "b3", "b4", "b5", "b6", "b7", "b8", "b9"]
    # through the retriever: asked for 20 (Recall@20), and for 8 (its first branch's top 8)
    u = UnionRetriever("u", Fixed("a", a), Fixed("b", b))
    assert u.recommend(CASES, 20) == [filled, filled]
    assert u.recommend(CASES, 8) == [a[:8], a[:8]]


def test_mixer_merge_quota_then_fallback_then_more_leadre() -> None:
    leadre = ["l1", "l2", "f1", "l3", "l4", "l5", "l6", "l7", "l8", "l9"]
    fallback = ["f1", "f2", "f3", "f4"]
    # quota round(10 * 0.75) = 8 LEADRE ads first (f1 is one of them), then fallback
    assert mixer_merge(leadre, fallback, 10) == [*leadre[:8], "f2", "f3"]
    # the fallback runs short: more LEADRE ads
    assert mixer_merge(leadre, ["f1"], 10, 0.5) == ["l1", "l2", "f1", "l3", "l4", "l5", "l6",
                                                    "l7", "l8", "l9"]
    assert mixer_merge(leadre, [], 4) == leadre[:4]
    m = MixerRetriever("m", Fixed("l", leadre), Fixed("f", fallback), 0.5)
    # a list of 10 whatever k the harness asks for (its quota depends on it)
    assert m.recommend(CASES, 20)[0] == ["l1", "l2", "f1", "l3", "l4", "f2", "f3", "f4", "l5",
                                         "l6"]
    assert m.recommend(CASES, 5)[0] == ["l1", "l2", "f1", "l3", "l4"]


def test_mixer_merge_mirrors_the_services_mixer() -> None:
    from services.common.settings import Settings
    from services.mixer.merge import merge

    assert Settings.model_fields["mixer_leadre_share"].default == MIXER_LEADRE_SHARE
    rng = random.Random(0)
    for _ in range(300):
        pool = [f"ad{i}" for i in range(15)]
        leadre = rng.sample(pool, rng.randint(0, 12))
        fallback = rng.sample(pool, rng.randint(0, 12))
        k, share = rng.randint(1, 12), rng.choice([0.0, 0.25, 0.5, 0.75, 1.0])
        served, _ = merge([{"ad_id": a, "provenance": "leadre"} for a in leadre],
                          [{"ad_id": a, "provenance": "fallback"} for a in fallback], k, share)
        assert mixer_merge(leadre, fallback, k, share) == [a["ad_id"] for a in served]


def test_memoized_branch_decodes_once_for_itself_and_its_combinations() -> None:
    lead, cf = Fixed("leadre", ["x", "y"]), Fixed("itemcf", ["y", "z"])
    ml, mc = Memoized(lead), Memoized(cf)
    combos = branch_retrievers("itemcf|leadre,leadre>itemcf:0.5,itemcf|leadre:strict",
                               {"leadre": ml, "itemcf": mc})
    assert [c.name for c in combos] == ["itemcf@10∪leadre@10", "mixer(leadre>itemcf,0.5)",
                                        "itemcf@10∪leadre@10(strict)"]
    ml.recommend(CASES, 20)
    mc.recommend(CASES, 20)
    for c in combos:
        c.recommend(CASES, 20)
    assert ml.recommend(CASES, 1) == [["x"], ["x"]]  # cut from the kept lists
    split = object()
    ml.fit_eval(split)  # type: ignore[arg-type]
    ml.recommend(CASES, 20)
    assert lead.calls == 2  # a new split: decoded again
    for c in combos:  # the harness fits combinations after their branches: no refit
        c.fit_eval(split)  # type: ignore[arg-type]
        c.recommend(CASES, 20)
    assert lead.calls == 2 and cf.calls == 2
    combos[0].exclude_seen = True  # reaches the branches, and a new key decodes again
    assert lead.exclude_seen and cf.exclude_seen
    ml.recommend(CASES, 20)
    assert lead.calls == 3
    with pytest.raises(ValueError):
        branch_retrievers("itemcf|sasrec", {"itemcf": mc})
