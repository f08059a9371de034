"""Merging the LEADRE branch with the fallback branch (deduplicated), and counting each
branch's exclusive share of what is served (§5.3's consumption)."""

from __future__ import annotations

from collections.abc import Sequence

from services.mixer.models import Consumption


def merge(leadre: Sequence[dict], fallback: Sequence[dict], k: int,
          leadre_share: float) -> tuple[list[dict], Consumption]:
    """Up to ``round(k * leadre_share)`` LEADRE ads first (in their order), then fallback
    ads, then more LEADRE ads if the fallback runs short; no ad twice. Ads are dicts with
    :class:`~services.mixer.models.ServedAd`'s fields (the response validates them)."""
    in_leadre = {a["ad_id"] for a in leadre}
    in_fallback = {a["ad_id"] for a in fallback}
    quota = min(k, round(k * leadre_share)) if fallback else k
    out: list[dict] = []
    seen: set[str] = set()

    def take(items: Sequence[dict], limit: int) -> None:
        for a in items:
            if len(out) >= limit:
                return
            ad_id = a["ad_id"]
            if ad_id not in seen:
                seen.add(ad_id)
                other = in_fallback if a["provenance"] == "leadre" else in_leadre
                out.append({**a, "also_in_other_branch": ad_id in other})

    take(leadre, quota)
    take(fallback, k)
    take(leadre, k)
    both = leadre_only = 0  # counted in ints: a pydantic attribute update per ad cost more
    for a in out:
        if a["ad_id"] in in_leadre and a["ad_id"] in in_fallback:
            both += 1
        elif a["ad_id"] in in_leadre:
            leadre_only += 1
    return out, Consumption(leadre_exclusive=leadre_only, both=both,
                            fallback_exclusive=len(out) - both - leadre_only)
