"""What GetList reads on every call, kept in the user server's process so that a list hit
costs one Redis round trip instead of six (profile: sequential round trips and JSON
parsing of ad records were ~70 % of the user server's time).

* Ad records and content categories: dropped whenever the catalog version in Redis
  (``keys.CATALOG_VERSION``, bumped by every catalog write) moves; the version is read in
  the same pipeline as the list, so a paused ad is never served from a stale copy.
* The top of each fallback zset: refreshed after ``ttl_s`` (popularity scores drift
  slowly; the fallback branch is allowed to be that stale).
* The fallback branch's answer per (user categories, n): users with the same categories
  get the same ads; valid while every ranking it was built from is fresh and unchanged (a
  refresh that reads the same entries keeps the ranking's generation, so the answer
  outlives ``ttl_s`` as long as popularity does not move).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from leadre_model.data.records import Ad


@dataclass(frozen=True)
class Ranked:
    expires: float  # time.monotonic()
    depth: int  # how many entries were asked for
    entries: list[tuple[str, float]]
    gen: int  # changes when a refresh reads other entries


class HotCache:
    def __init__(self, ttl_s: float, max_items: int) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self.catalog_version: bytes | None = None
        self.ads: dict[str, Ad] = {}
        self.served: dict[str, dict[str, Any]] = {}  # ad_id -> the fields a served ad shows
        self.content_category: dict[str, str] = {}
        self.ranked: dict[str, Ranked] = {}
        self.fallbacks: dict[tuple[Any, ...], tuple[tuple[int, ...], list[Any]]] = {}
        self._gens = itertools.count()

    def sync(self, catalog_version: bytes | None) -> None:
        """Forget ad records and rankings when the catalog changed since they were read."""
        if catalog_version != self.catalog_version:
            self.catalog_version = catalog_version
            self.ads.clear()
            self.served.clear()
            self.content_category.clear()
            self.ranked.clear()
            self.fallbacks.clear()

    def put_ad(self, ad: Ad) -> None:
        if len(self.ads) >= self.max_items:
            self.ads.clear()
            self.served.clear()
        self.ads[ad.ad_id] = ad
        self.served[ad.ad_id] = {"ad_id": ad.ad_id, "name": ad.name, "category": ad.category_l2,
                                 "advertiser_id": ad.advertiser_id, "ecpm": ad.ecpm}

    def put_content_category(self, content_id: str, category: str) -> None:
        if len(self.content_category) >= self.max_items:
            self.content_category.clear()
        self.content_category[content_id] = category

    def ranking(self, key: str, depth: int) -> list[tuple[str, float]] | None:
        r = self.ranked.get(key)
        if r is None or r.depth < depth or time.monotonic() > r.expires:
            return None
        return r.entries[:depth]

    def put_ranking(self, key: str, depth: int, entries: list[tuple[str, float]]) -> None:
        prev = self.ranked.get(key)
        same = prev is not None and prev.depth == depth and prev.entries == entries
        self.ranked[key] = Ranked(time.monotonic() + self.ttl_s, depth, entries,
                                  prev.gen if same and prev else next(self._gens))

    def _gens_of(self, rankings: Sequence[tuple[str, int]]) -> tuple[int, ...] | None:
        """Generations of the (key, depth) rankings; None if one is missing or stale."""
        now, out = time.monotonic(), []
        for key, depth in rankings:
            r = self.ranked.get(key)
            if r is None or r.depth < depth or now > r.expires:
                return None
            out.append(r.gen)
        return tuple(out)

    def fallback(self, cats: Sequence[tuple[str, int]], n: int,
                 rankings: Sequence[tuple[str, int]]) -> list[Any] | None:
        """The answer built for these categories from these (key, depth) rankings, if they
        are all fresh and unchanged since."""
        hit = self.fallbacks.get((*cats, n))
        if hit is None or hit[0] != self._gens_of(rankings):
            return None
        return hit[1]

    def put_fallback(self, cats: Sequence[tuple[str, int]], n: int, served: list[Any],
                     rankings: Sequence[tuple[str, int]]) -> None:
        gens = self._gens_of(rankings)
        if gens is None:
            return
        if len(self.fallbacks) >= self.max_items:
            self.fallbacks.clear()
        self.fallbacks[(*cats, n)] = (gens, served)
