"""``services.mixer.merge``: the LEADRE branch's share first, then the fallback, no ad twice,
and each branch's exclusive share counted (no server, no Redis)."""

from __future__ import annotations

from services.mixer.merge import merge
from services.mixer.models import Consumption


def _ads(branch: str, *ids: str) -> list[dict]:
    return [{"ad_id": a, "provenance": branch, "score": -float(i)} for i, a in enumerate(ids)]


def _ids(out: list[dict]) -> list[str]:
    return [a["ad_id"] for a in out]


def test_leadre_share_first_then_fallback() -> None:
    out, c = merge(_ads("leadre", "l1", "l2", "l3", "l4"), _ads("fallback", "f1", "f2", "f3"),
                   k=4, leadre_share=0.5)
    assert _ids(out) == ["l1", "l2", "f1", "f2"]
    assert c == Consumption(leadre_exclusive=2, fallback_exclusive=2, both=0)
    assert [a["provenance"] for a in out] == ["leadre", "leadre", "fallback", "fallback"]


def test_an_ad_in_both_branches_is_served_once_and_counted_as_both() -> None:
    leadre, fallback = _ads("leadre", "x", "l1"), _ads("fallback", "f1", "x", "f2")
    out, c = merge(leadre, fallback, k=4, leadre_share=0.5)
    assert _ids(out) == ["x", "l1", "f1", "f2"]
    assert [a["also_in_other_branch"] for a in out] == [True, False, False, False]
    assert c == Consumption(leadre_exclusive=1, fallback_exclusive=2, both=1)
    # from the fallback side: its copy is skipped, the LEADRE one (first) stays
    out, c = merge(_ads("leadre", "l1", "x"), _ads("fallback", "x", "f1"), k=3, leadre_share=1 / 3)
    assert _ids(out) == ["l1", "x", "f1"] and out[1]["provenance"] == "fallback"
    assert out[1]["also_in_other_branch"] and c.both == 1


def test_a_short_branch_is_topped_up_from_the_other() -> None:
    out, c = merge(_ads("leadre", "l1", "l2", "l3", "l4"), _ads("fallback", "f1"), k=4,
                   leadre_share=0.25)
    assert _ids(out) == ["l1", "f1", "l2", "l3"]
    assert (c.leadre_exclusive, c.fallback_exclusive) == (3, 1)
    out, _ = merge([], _ads("fallback", "f1", "f2", "f3"), k=2, leadre_share=0.9)
    assert _ids(out) == ["f1", "f2"]


def test_without_fallback_leadre_fills_all_k() -> None:
    out, c = merge(_ads("leadre", "l1", "l2", "l3"), [], k=2, leadre_share=0.0)
    assert _ids(out) == ["l1", "l2"] and c == Consumption(leadre_exclusive=2)


def test_share_bounds_and_empty_inputs() -> None:
    leadre, fallback = _ads("leadre", "l1", "l2", "l3"), _ads("fallback", "f1", "f2", "f3")
    assert _ids(merge(leadre, fallback, k=3, leadre_share=1.0)[0]) == ["l1", "l2", "l3"]
    assert _ids(merge(leadre, fallback, k=3, leadre_share=0.0)[0]) == ["f1", "f2", "f3"]
    assert merge([], [], k=5, leadre_share=0.5) == ([], Consumption())


def test_inputs_are_not_changed_and_fields_are_kept() -> None:
    leadre = [{"ad_id": "l1", "provenance": "leadre", "score": -0.5, "name": "Lamp"}]
    out, _ = merge(leadre, [], k=1, leadre_share=1.0)
    assert out == [{**leadre[0], "also_in_other_branch": False}]
    assert "also_in_other_branch" not in leadre[0]
