"""Prompts for the nearline worker, built by the offline ``PromptBuilder`` with the
``PromptConfig`` the served model was trained with (from its manifest), on the index of
the served version plus the ads added live since (catalog stream).

``now`` is the time of the user's newest behaviour: the worker reacts to that event, and
a replayed world (whose clock is not the wall clock) then reads the same as a live one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import redis

from leadre_model.data.records import Ad, ContentItem
from leadre_model.index.live import LiveIndex
from leadre_model.index.sid_index import SidIndex
from leadre_model.llm.manifest import Manifest
from leadre_model.prompts.builder import PromptBuilder
from services.common import keys
from services.common.contracts import CATALOG_STREAM, CatalogEvent
from services.common.userstate import UserSnapshot

log = logging.getLogger(__name__)


def _hash_records(r: redis.Redis, key: str, model: type) -> dict[str, Any]:
    out = {}
    for k, v in r.hscan_iter(key, count=1000):
        out[k] = model.model_validate_json(v)
    return out


class PromptSource:
    """Index + catalogs + builder of one served version; follows catalog events."""

    def __init__(self, r: redis.Redis, version_dir: Path) -> None:
        self.r = r
        self.version_dir = Path(version_dir)
        self.live = LiveIndex.load(self.version_dir / "index")
        manifest = Manifest.read(self.version_dir / "model", check_format=False)
        self.cfg = manifest.prompt_config
        self.with_advertiser = "adv" in str(manifest.train_config.get("curriculum", ""))
        self.ads: dict[str, Ad] = _hash_records(r, keys.ADS, Ad)
        self.content: dict[str, ContentItem] = _hash_records(r, keys.CONTENT, ContentItem)
        self.builder = PromptBuilder(self.cfg, self.index, self.ads, self.content)
        self.catalog_pos = "0"  # replay the whole catalog stream onto the version's index

    @property
    def index(self) -> SidIndex:
        return self.live.index

    def follow_catalog(self, count: int = 10_000) -> int:
        """Apply catalog events since the last call: new ads get their S-IDs (history items
        render as S-IDs), and every event refreshes the ad's record. Returns events read."""
        n = 0
        while True:
            got = self.r.xread({CATALOG_STREAM: self.catalog_pos}, count=count)
            if not got:
                return n
            entries = got[0][1]
            self._apply([e for _, e in entries])
            self.catalog_pos = entries[-1][0]
            n += len(entries)

    def _apply(self, fields: list[dict[str, str]]) -> None:
        events = []
        for f in fields:
            try:
                ev = CatalogEvent.from_fields(f)
            except ValueError as exc:
                log.warning("bad catalog event", extra={"fields": f, "error": str(exc)[:200]})
                continue
            raw = self.r.hget(keys.ADS, ev.ad_id)
            if raw:
                self.ads[ev.ad_id] = Ad.model_validate_json(raw)
            events.append(ev)
        if self.live.apply(events).added:
            self.builder = PromptBuilder(self.cfg, self.index, self.ads, self.content)

    def _ensure_items(self, snap: UserSnapshot) -> None:
        """Ads or content created after load (UpdateAds) are read once from Redis."""
        for b in snap.behaviors:
            table, key, model = ((self.ads, keys.ADS, Ad) if b.domain.value == "ad"
                                 else (self.content, keys.CONTENT, ContentItem))
            if b.item_id not in table:
                raw = self.r.hget(key, b.item_id)
                if raw:
                    table[b.item_id] = model.model_validate_json(raw)

    def build(self, snap: UserSnapshot) -> tuple[str, str | None]:
        """(ad prompt, advertiser prompt or None) for the user's current state."""
        self._ensure_items(snap)
        now = max((b.ts for b in snap.behaviors), default=0)
        prompt = self.builder.build(snap.user, snap.behaviors, now)
        adv = (self.builder.build(snap.user, snap.behaviors, now, question="advertiser")
               if self.with_advertiser else None)
        return prompt, adv
