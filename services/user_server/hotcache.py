"""What GetList reads on every call, kept in the user server's process so that a list hit
costs one Redis round trip instead of six (profile: sequential round trips and JSON
parsing of ad records were ~70 % of the user server's time).

* Ad records and content categories: dropped whenever the catalog version in Redis
  (``keys.CATALOG_VERSION``, bumped by every catalog write) moves; the version is read in
  the same pipeline as the list, so a paused ad is never served from a stale copy.
* The top of each fallback zset: refreshed after ``ttl_s`` (popularity scores drift
  slowly; the fallback branch is allowed to be that stale).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from leadre_model.data.records import Ad


@dataclass(frozen=True)
class Ranked:
    expires: float  # time.monotonic()
    depth: int  # how many entries were asked for
    entries: list[tuple[str, float]]


class HotCache:
    def __init__(self, ttl_s: float, max_items: int) -> None:
        self.ttl_s, self.max_items = ttl_s, max_items
        self.catalog_version: bytes | None = None
        self.ads: dict[str, Ad] = {}
        self.content_category: dict[str, str] = {}
        self.ranked: dict[str, Ranked] = {}

    def sync(self, catalog_version: bytes | None) -> None:
        """Forget ad records and rankings when the catalog changed since they were read."""
        if catalog_version != self.catalog_version:
            self.catalog_version = catalog_version
            self.ads.clear()
            self.content_category.clear()
            self.ranked.clear()

    def put_ad(self, ad: Ad) -> None:
        if len(self.ads) >= self.max_items:
            self.ads.clear()
        self.ads[ad.ad_id] = ad

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
        self.ranked[key] = Ranked(time.monotonic() + self.ttl_s, depth, entries)
