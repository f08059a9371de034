"""Prompts for the nearline worker, built by the offline ``PromptBuilder`` with the
``PromptConfig`` the served model was trained with (from its manifest), on the index of
the served version plus the ads added live since (catalog stream).

``now`` is the time of the user's newest behaviour: the worker reacts to that event, and
a replayed world (whose clock is not the wall clock) then reads the same as a live one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import redis

from leadre_model.data.records import Ad, ContentItem
from leadre_model.index.sid_index import SidIndex, load_index
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig
from services.common import keys
from services.common.contracts import CATALOG_STREAM, CatalogEvent, CatalogOp
from services.common.userstate import UserSnapshot

log = logging.getLogger(__name__)


def train_config(model_dir: Path) -> dict[str, Any]:
    """The TrainConfig dump saved in the model's manifest (``{}`` when absent)."""
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    return manifest.get("extra", {}).get("train", {}).get("config", {}) or {}


def prompt_config(model_dir: Path) -> PromptConfig:
    """The PromptConfig the model was trained with (defaults when the manifest has none).
    Read as JSON: building prompts must not load torch or transformers."""
    cfg = train_config(model_dir).get("prompts")
    return PromptConfig.model_validate(cfg) if cfg else PromptConfig()


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
        self.index: SidIndex = load_index(self.version_dir / "index")
        self.cfg = prompt_config(self.version_dir / "model")
        curriculum = str(train_config(self.version_dir / "model").get("curriculum", ""))
        self.with_advertiser = "adv" in curriculum
        self.ads: dict[str, Ad] = _hash_records(r, keys.ADS, Ad)
        self.content: dict[str, ContentItem] = _hash_records(r, keys.CONTENT, ContentItem)
        self.builder = PromptBuilder(self.cfg, self.index, self.ads, self.content)
        self.catalog_pos = "0"  # replay the whole catalog stream onto the version's index

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
        new_ids, new_codes = [], []
        for f in fields:
            try:
                ev = CatalogEvent.from_fields(f)
            except ValueError as exc:
                log.warning("bad catalog event", extra={"fields": f, "error": str(exc)[:200]})
                continue
            raw = self.r.hget(keys.ADS, ev.ad_id)
            if raw:
                self.ads[ev.ad_id] = Ad.model_validate_json(raw)
            if (ev.op is CatalogOp.ADD and ev.codes is not None and ev.ad_id not in self.index
                    and ev.ad_id not in new_ids and len(ev.codes) == self.index.codes.shape[1]):
                new_ids.append(ev.ad_id)
                new_codes.append(ev.codes)
        if new_ids:
            idx = self.index
            self.index = SidIndex(
                ad_ids=idx.ad_ids + new_ids,
                codes=np.concatenate([idx.codes, np.asarray(new_codes, dtype=np.int64)]),
                active=np.concatenate([idx.active, np.ones(len(new_ids), dtype=bool)]),
                config=idx.config)
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
