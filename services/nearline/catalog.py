"""Catalog applier: ad updates (UpdateAds) → S-IDs → ``CatalogEvent`` on
``contracts.CATALOG_STREAM``, which every inference instance (and every worker's prompt
source) applies to its live trie without a restart.

New ads get S-IDs from the trained RQ-VAE with ``leadre_model.index.build.add_ads`` on
the *live index* (``live_index_dir``): the served version's index plus every ad added
since. It is the one lineage of S-IDs — existing ads never change theirs — and the daily
pipeline builds the next version from it. A Redis lock keeps one applier writing it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis

from leadre_model.data.records import Ad
from leadre_model.index.build import add_ads
from leadre_model.index.sid_index import load_index
from services.common import keys
from services.common.contracts import CATALOG_STREAM, CatalogEvent, CatalogOp
from services.common.events import AdUpdateEvent, dead_letter_fields, parse_fields

log = logging.getLogger(__name__)
LOCK_MS = 120_000
UNLOCK_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def ensure_live_index(live: Path, version_index: Path) -> None:
    """Start the live index from the served version's index the first time."""
    if not (live / "index.json").exists():
        live.parent.mkdir(parents=True, exist_ok=True)
        tmp = live.with_name(live.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(version_index, tmp)
        tmp.rename(live)


def catalog_events(before: dict[str, bool], index_dir: Path, ad_ids: list[str]) -> list[CatalogEvent]:
    """Events that bring a trie from ``before`` (ad id → active, for ads already indexed)
    to the live index's state for ``ad_ids``."""
    index = load_index(index_dir)
    out = []
    for ad_id in ad_ids:
        if ad_id not in index:
            continue
        row = index.row_of(ad_id)
        active = bool(index.active[row])
        if ad_id not in before:
            out.append(CatalogEvent(op=CatalogOp.ADD, ad_id=ad_id,
                                    codes=tuple(int(c) for c in index.codes[row])))
            if not active:
                out.append(CatalogEvent(op=CatalogOp.PAUSE, ad_id=ad_id))
        elif before[ad_id] != active:
            out.append(CatalogEvent(op=CatalogOp.RESUME if active else CatalogOp.PAUSE, ad_id=ad_id))
    return out


class CatalogApplier:
    def __init__(self, r: redis.Redis, name: str, live_index: Path,
                 version_index: Callable[[], Path | None], cache_path: Path | None = None) -> None:
        self.r, self.name, self.live = r, name, Path(live_index)
        self.version_index, self.cache_path = version_index, cache_path
        try:
            r.xgroup_create(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run_once(self, block_ms: int = 500, count: int = 500) -> int:
        """Apply one batch of ad updates; returns the catalog events emitted. Entries are
        this consumer's own pending ones first (after a crash), then those idle past
        LOCK_MS at a dead consumer, then new ones. The lock is held only while applying;
        without it the entries stay pending for the next round."""
        entries = self._pending(count) or self._claimed(count) or self._new(count, block_ms)
        if not entries:
            return 0
        if not self._lock():
            time.sleep(block_ms / 1000)
            return 0
        try:
            return self._apply(entries)
        finally:
            self._unlock()

    def _pending(self, count: int) -> list[tuple[str, dict[str, str]]]:
        got = self.r.xreadgroup(keys.CATALOG_GROUP, self.name, {keys.AD_UPDATES_STREAM: "0"},
                                count=count)
        return got[0][1] if got else []

    def _claimed(self, count: int) -> list[tuple[str, dict[str, str]]]:
        _, entries, *_ = self.r.xautoclaim(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP, self.name,
                                           min_idle_time=LOCK_MS, count=count)
        return [e for e in entries if e and e[1]]

    def _new(self, count: int, block_ms: int) -> list[tuple[str, dict[str, str]]]:
        got = self.r.xreadgroup(keys.CATALOG_GROUP, self.name, {keys.AD_UPDATES_STREAM: ">"},
                                count=count, block=block_ms)
        return got[0][1] if got else []

    def _lock(self) -> bool:
        """One applier writes the live index. A lock left by this consumer name (its
        previous process died holding it) is taken over at once, not after LOCK_MS."""
        if self.r.set(keys.CATALOG_LOCK, self.name, nx=True, px=LOCK_MS):
            return True
        return self.r.get(keys.CATALOG_LOCK) == self.name and bool(
            self.r.set(keys.CATALOG_LOCK, self.name, xx=True, px=LOCK_MS))

    def _unlock(self) -> None:
        self.r.eval(UNLOCK_LUA, 1, keys.CATALOG_LOCK, self.name)

    def _apply(self, entries: list[tuple[str, dict[str, str]]]) -> int:
        version_index = self.version_index()
        if version_index is None:
            return 0  # nothing served yet: keep the entries pending
        ensure_live_index(self.live, version_index)
        ids, good = [], []
        for entry_id, fields in entries:
            ev = parse_fields(AdUpdateEvent, fields)
            raw = None if isinstance(ev, str) else self.r.hget(keys.ADS, ev.ad_id)
            if isinstance(ev, str) or raw is None:
                reason = ev if isinstance(ev, str) else "ad is not in the ad feature store"
                self.r.xadd(keys.AD_UPDATES_DEAD, dead_letter_fields(entry_id, fields, reason))
                self.r.xack(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP, entry_id)
                continue
            ids.append(entry_id)
            good.append(Ad.model_validate_json(raw))
        if not good:
            return 0
        index = load_index(self.live)
        before = {a.ad_id: bool(index.active[index.row_of(a.ad_id)]) for a in good if a.ad_id in index}
        add_ads(self.live, good, cache_path=self.cache_path, progress=False)
        events = catalog_events(before, self.live, list(dict.fromkeys(a.ad_id for a in good)))
        pipe = self.r.pipeline(transaction=True)
        for ev in events:
            pipe.xadd(CATALOG_STREAM, ev.to_fields())
        pipe.xack(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP, *ids)
        pipe.execute()
        log.info("catalog applied", extra={"ads": len(good), "events": len(events),
                                           "added": int(np.sum([e.op is CatalogOp.ADD for e in events]))})
        return len(events)
