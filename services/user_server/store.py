"""The user server's Redis operations (async): lists, fallback, behaviours, ad features.

Every method takes validated records (pydantic) and returns plain models; the gRPC layer
(:mod:`services.user_server.server`) only converts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from leadre_model.data.records import (
    Ad,
    AdStatus,
    Behavior,
    ContentItem,
    Domain,
    User,
)
from services.common import keys
from services.common.errors import Unavailable
from services.common.events import AdChange, AdUpdateEvent, BehaviorEvent
from services.common.idregistry import Names, refresh_async
from services.common.listcodec import decode_list
from services.common.liststore import ListView, resolve, stale_namespaces, unpack_parts, view_of
from services.common.redis_client import async_redis_client, is_cluster, mget
from services.common.redis_lane import ReadLane
from services.common.settings import Settings
from services.common.userstate import (
    NEWEST_LUA,
    POSITIVE,
    RECORD_LUA,
    WRITE_FALLBACK_LUA,
    behavior_member,
    fallback_value,
    member_fields,
    parse_bounds,
    parse_fallback_value,
    parse_member,
    tier_of,
    user_categories,
)
from services.user_server.hotcache import HotCache

log = logging.getLogger(__name__)

FALLBACK_HISTORY = 50  # newest behaviours whose categories drive the fallback branch


class ListedAd(NamedTuple):  # a tuple: ~30 are built per request (a frozen dataclass cost 3x)
    """A list entry joined with its catalog record (the API's ad is mixer.models.ServedAd)."""
    ad_id: str
    score: float
    ad: Ad | None  # catalog record; None when the ad is unknown to Redis


@dataclass(frozen=True)
class ListResult:
    stored: ListView | None  # None: miss or expired
    ads: list[ListedAd]  # the LEADRE list without paused or unknown ads
    fallback: list[ListedAd]


@dataclass(frozen=True)
class UserView:
    user: User
    known: bool
    tier: int
    recent: list[tuple[Behavior, str]]  # (behaviour, item name), newest first
    seq: int
    list_version: int


def fallback_score(ad: Ad, clicks: int) -> float:
    """eCPM-weighted popularity: every click adds one eCPM; a new ad starts at its eCPM."""
    return ad.ecpm * (1 + clicks)


class UserStore:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.r = async_redis_client(settings)
        self.rb = async_redis_client(settings, decode_responses=False)  # list blobs
        # the per-request MGET on one pipelined connection (redis-py's cluster client on a cluster)
        self.lane = None if settings.redis_cluster else ReadLane(settings, settings.mixer_timeout_s)
        self._record = self.r.register_script(RECORD_LUA)
        self._newest = self.r.register_script(NEWEST_LUA)
        self._write_fallback = self.r.register_script(WRITE_FALLBACK_LUA)
        self.names = Names()  # the id registry's numbers seen so far (format-3 lists)
        self.cache = HotCache(settings.hot_cache_ttl_s, settings.hot_cache_max_items)
        self._bounds: tuple[float, list[float]] = (0.0, [])

    async def close(self) -> None:
        await self.r.aclose()
        await self.rb.aclose()
        if self.lane is not None:
            await self.lane.close()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    # -- catalog lookups --------------------------------------------------------------
    async def ads(self, ad_ids: Sequence[str]) -> list[Ad | None]:
        if not ad_ids:
            return []
        raw = await self.r.hmget(keys.ADS, list(ad_ids))
        return [Ad.model_validate_json(x) if x else None for x in raw]

    async def tier_bounds(self) -> list[float]:
        """ARPU cut points, re-read at most every 10 s (seed may rewrite them)."""
        at, bounds = self._bounds
        if not bounds or time.monotonic() - at > 10:
            bounds = parse_bounds(await self.r.get(keys.TIER_BOUNDS))
            self._bounds = (time.monotonic(), bounds)
        return bounds

    # -- lists --------------------------------------------------------------------------
    async def get_list(self, user_id: str, k: int, fallback_k: int,
                       advertisers: bool = True) -> ListResult:
        """The user's LEADRE list (without paused or unknown ads) and the fallback branch.
        One round trip when the list is in format 3, the fallback inputs were precomputed
        (``fb``, by RecordBehaviors and seed) and the hot cache has the ads and rankings
        involved; ``advertisers=False`` skips the advertiser priors (retrieve needs none)."""
        names = [keys.user_key(user_id, "l"), keys.user_key(user_id, "fb"), keys.CATALOG_VERSION]
        if advertisers:
            names.append(keys.user_key(user_id, "adv"))
        # one MGET (a pipeline of GETs cost ~40 % more CPU); per slot on a cluster
        blob, fb, catalog_version, *adv = await (self.lane.mget(names) if self.lane is not None
                                                 else mget(self.rb, names))
        self.cache.sync(catalog_version)
        if blob is not None:
            stored = await self._resolve(blob, adv[0] if adv else None)
        else:  # formats 1-2 (written before format 3) are still read
            old = await self.rb.hget(keys.user_key(user_id, "list"), "d")
            stored = view_of(decode_list(old)) if old else None
        n_fb = max(fallback_k, k if stored is None else 0)
        ads: list[ListedAd] = []
        if stored is not None:
            cached = self.cache.ads
            missing = [a.ad_id for a in stored.ads if a.ad_id not in cached]
            records = dict(zip(missing, await self.cached_ads(missing))) if missing else cached
            for a in stored.ads:  # the first k active ones (k = 0: all)
                rec = records.get(a.ad_id) or cached.get(a.ad_id)
                if rec is not None and rec.status is AdStatus.ACTIVE:
                    ads.append(ListedAd(a.ad_id, a.score, rec))
                    if len(ads) == k:
                        break
        fallback: list[ListedAd] = []
        if n_fb:
            if fb is not None:
                cats = parse_fallback_value(fb)[1]
            else:  # no precomputed inputs (a user seeded before they existed)
                members = await self.r.zrevrange(keys.user_key(user_id, "hist"), 0,
                                                 FALLBACK_HISTORY - 1)
                cats = await self._user_categories(members)
            fallback = await self._fallback(cats, n_fb)
        return ListResult(stored, ads, fallback)

    async def _resolve(self, blob: bytes, adv: bytes | None) -> ListView | None:
        """A format-3 list with its numbers resolved (the registry's new numbers fetched
        first); None for a list of another registry epoch."""
        parts = unpack_parts(blob, adv)
        for ns in stale_namespaces(self.names, parts):
            await refresh_async(self.rb, self.names, ns)
        view = resolve(self.names, parts)
        if view is None:
            log.warning("list of another id registry epoch: served as a miss",
                        extra={"epoch": parts[0][1].epoch, "registry_epoch": self.names.epoch})
        return view

    async def cached_ads(self, ad_ids: Sequence[str]) -> list[Ad | None]:
        """Ad records through the hot cache (call after ``cache.sync``); misses in one HMGET."""
        cached = self.cache.ads
        missing = [a for a in dict.fromkeys(ad_ids) if a not in cached]
        if missing:
            for ad in await self.ads(missing):
                if ad is not None:
                    self.cache.put_ad(ad)
        return [cached.get(a) for a in ad_ids]

    def stale_fallback(self, n: int) -> list[ListedAd]:
        """The fallback as the hot cache last read it, however old, without asking Redis
        (an answer when Redis is too slow); empty before the first fallback was read."""
        rankings = sorted(self.cache.ranked.items(), key=lambda kv: kv[0] != keys.FALLBACK_GLOBAL)
        out: dict[str, ListedAd] = {}  # the catalog's ranking first, then the categories'
        for _, ranked in rankings:
            for ad_id, score in ranked.entries:
                rec = self.cache.ads.get(ad_id)  # only ads whose record is cached
                if rec is not None and rec.status is AdStatus.ACTIVE and ad_id not in out:
                    out[ad_id] = ListedAd(ad_id, score, rec)
                    if len(out) == n:
                        return list(out.values())
        return list(out.values())

    async def _fallback(self, cats: list[tuple[str, int]], n: int) -> list[ListedAd]:
        """Top eCPM x popularity ads of the user's most frequent recent categories
        (``cats``: category, count), then of the whole catalog; categories share the slots
        by their frequency. Users with the same categories share one cached answer."""
        wanted = [(keys.fallback_key(c), n) for c, _ in cats] + [(keys.FALLBACK_GLOBAL, 2 * n)]
        cached = self.cache.fallback(cats, n, wanted)
        if cached is not None:
            return cached
        ranked = [self.cache.ranking(key, depth) for key, depth in wanted]
        stale = [i for i, r in enumerate(ranked) if r is None]
        if stale:
            for i, entries in zip(stale, await self._tops([wanted[i] for i in stale])):
                self.cache.put_ranking(wanted[i][0], wanted[i][1], entries)
                ranked[i] = entries
            cached = self.cache.fallback(cats, n, wanted)  # the refresh read the same tops
            if cached is not None:
                return cached
        total = sum(w for _, w in cats) or 1
        quotas = [max(1, round(n * w / total)) for _, w in cats] + [n]
        chosen: dict[str, float] = {}
        for quota, entries in zip(quotas, ranked):
            taken = 0
            for ad_id, score in entries or ():
                if len(chosen) >= n or taken >= quota:
                    break
                if ad_id not in chosen:
                    chosen[ad_id], taken = score, taken + 1
        records = await self.cached_ads(list(chosen))
        out = [ListedAd(a, s, rec) for (a, s), rec in zip(chosen.items(), records)]
        self.cache.put_fallback(cats, n, out, wanted)
        return out

    async def _tops(self, rankings: Sequence[tuple[str, int]]) -> list[list[tuple[str, float]]]:
        """The top ``depth`` (ad, score) of each (zset, depth), in one round trip."""
        if self.lane is not None:  # concurrent commands on the lane go out in one write
            flat = await asyncio.gather(*(self.lane.command(
                "ZREVRANGE", key, "0", str(depth - 1), "WITHSCORES") for key, depth in rankings))
            return [[(f[j].decode(), float(f[j + 1])) for j in range(0, len(f), 2)] for f in flat]
        pipe = self.r.pipeline(transaction=False)
        for key, depth in rankings:
            pipe.zrevrange(key, 0, depth - 1, withscores=True)
        return [[(a, float(sc)) for a, sc in entries] for entries in await pipe.execute()]

    async def _user_categories(self, members: Sequence[str]) -> list[tuple[str, int]]:
        """Most frequent categories of the positive behaviours among ``members`` (history
        zset members, newest first), through the hot cache."""
        ad_ids: list[str] = []
        content_ids: list[str] = []
        for m in members:
            _, domain, action, item_id = member_fields(m)
            if action in POSITIVE:
                (ad_ids if domain == Domain.AD.value else content_ids).append(item_id)
        ad_category = {ad.ad_id: ad.category_l2 for ad in await self.cached_ads(ad_ids) if ad}
        known = self.cache.content_category
        missing = [c for c in dict.fromkeys(content_ids) if c not in known]
        if missing:
            for cid, cat in zip(missing, await self.r.hmget(keys.CONTENT_CATEGORY, missing)):
                if cat:
                    self.cache.put_content_category(cid, cat)
        return user_categories(members, ad_category, known, self.s.fallback_categories)

    async def refresh_fallback_inputs(self, user_ids: Sequence[str]) -> None:
        """Recompute the ``fb`` key (the fallback branch's categories) of each user from their
        newest behaviours, so a retrieval reads it instead of the history; a write of an
        older state never replaces a newer one (concurrent user servers)."""
        async def one(user_id: str) -> None:
            seq, *members = await self._newest(
                keys=[keys.user_key(user_id, "hist"), keys.user_key(user_id, "seq")],
                args=[FALLBACK_HISTORY])
            cats = await self._user_categories(members)
            await self._write_fallback(keys=[keys.user_key(user_id, "fb")],
                                       args=[int(seq), fallback_value(int(seq), cats)])

        self.cache.sync(await self.rb.get(keys.CATALOG_VERSION))
        await asyncio.gather(*(one(u) for u in dict.fromkeys(user_ids)))

    # -- users --------------------------------------------------------------------------
    async def get_user(self, user_id: str, recent: int) -> UserView:
        pipe = self.r.pipeline(transaction=True)
        pipe.get(keys.user_key(user_id, "profile"))
        pipe.zrevrange(keys.user_key(user_id, "hist"), 0, recent - 1)
        pipe.get(keys.user_key(user_id, "seq"))
        pipe.get(keys.user_key(user_id, "lv"))
        profile, members, seq, lv = await pipe.execute()
        user = User.model_validate_json(profile) if profile else User(user_id=user_id)
        behaviors = [parse_member(user_id, m) for m in members]
        names = await self._item_names(behaviors)
        return UserView(user, profile is not None, tier_of(user.arpu, await self.tier_bounds()),
                        list(zip(behaviors, names)), int(seq or 0), int(lv or 0))

    async def _item_names(self, behaviors: Sequence[Behavior]) -> list[str]:
        ad_ids = [b.item_id for b in behaviors if b.domain is Domain.AD]
        content_ids = [b.item_id for b in behaviors if b.domain is Domain.CONTENT]
        names: dict[tuple[Domain, str], str] = {}
        for ad in await self.ads(ad_ids):
            if ad is not None:
                names[Domain.AD, ad.ad_id] = ad.name
        if content_ids:
            for raw in await self.r.hmget(keys.CONTENT, content_ids):
                if raw:
                    item = ContentItem.model_validate_json(raw)
                    names[Domain.CONTENT, item.content_id] = item.title
        return [names.get((b.domain, b.item_id), "") for b in behaviors]

    async def record_behaviors(self, behaviors: Sequence[Behavior]) -> list[str]:
        """Add each behaviour to its user's history and append one stream event for each
        new one; returns the event ids ("" for a behaviour recorded before)."""
        users = sorted({b.user_id for b in behaviors})
        profiles = await mget(self.r, [keys.user_key(u, "profile") for u in users])
        bounds = await self.tier_bounds()
        tier = {u: tier_of(User.model_validate_json(p).arpu if p else 0.0, bounds)
                for u, p in zip(users, profiles)}
        window = self.s.history_window_days * 86_400
        pipe = self.r.pipeline(transaction=False)
        for b in behaviors:
            user_keys = [keys.user_key(b.user_id, "hist"), keys.user_key(b.user_id, "seq")]
            args = [behavior_member(b), b.ts, window, self.s.history_max]
            if is_cluster(pipe):  # a cluster pipeline loads no script: EVAL, not EVALSHA
                pipe.eval(RECORD_LUA, len(user_keys), *user_keys, *args)
            else:
                await self._record(keys=user_keys, args=args, client=pipe)
        results = await self._durably(pipe, [keys.user_key(b.user_id, "seq") for b in behaviors])
        pipe = self.r.pipeline(transaction=False)
        added, streams = [], keys.behavior_streams(self.s.behavior_partitions)
        # Durable mode emits an event for a behaviour recorded before too: a client retrying
        # after UNAVAILABLE may find its history write replicated but its event lost with
        # the master (at least once: a duplicate event only recomputes a list).
        emitted = []
        for b, (seq, new) in zip(behaviors, results):
            if new or self.s.durable_replicas:
                event = BehaviorEvent.of(b, int(seq), tier[b.user_id])
                stream = streams[keys.partition_of(b.user_id, len(streams))][0]
                pipe.xadd(stream, event.to_fields(),
                          maxlen=self.s.behavior_stream_maxlen, approximate=True)
                emitted.append(stream)
            added.append(bool(new))
        ids = iter(await self._durably(pipe, emitted))
        await self.refresh_fallback_inputs([b.user_id for b, new in zip(behaviors, added) if new])
        out = []
        for new in added:  # "" for a behaviour recorded before, even when it got an event
            event_id = next(ids) if new or self.s.durable_replicas else ""
            out.append(event_id if new else "")
        return out

    async def _durably(self, pipe: Any, written: Sequence[str]) -> list[Any]:
        """Execute ``pipe``; with ``durable_replicas`` n > 0, a WAIT n is sent after the
        writes on the same connection to every master that owns one of the ``written`` keys,
        and an answer short of n replicas within ``durable_timeout_ms`` raises Unavailable
        (the write may still be there: RecordBehaviors is idempotent, the client retries)."""
        n, ms = self.s.durable_replicas, self.s.durable_timeout_ms
        waits = 0
        if n and written:
            if is_cluster(pipe):
                nodes = {node.name: node for node in (self.r.get_node_from_key(k) for k in written)}
                for node in nodes.values():
                    pipe.execute_command("WAIT", n, ms, target_nodes=node)
                waits = len(nodes)
            else:
                pipe.execute_command("WAIT", n, ms)
                waits = 1
        results = await pipe.execute()
        if waits:
            acked = results[-waits:]
            if min(int(x) for x in acked) < n:
                raise Unavailable(f"redis: a write reached {min(acked)} of {n} replicas "
                                  f"within {ms} ms; retry")
            results = results[:-waits]
        return list(results)

    # -- ads ----------------------------------------------------------------------------
    async def update_ads(self, ads: Sequence[Ad]) -> tuple[int, int]:
        """Store ad features, keep the fallback zsets in step and emit an update event for
        each new ad and each status change. Returns (new, status changes)."""
        old = dict(zip([a.ad_id for a in ads], await self.ads([a.ad_id for a in ads])))
        clicks = await self.r.hmget(keys.AD_CLICKS, [a.ad_id for a in ads])
        pipe = self.r.pipeline(transaction=True)
        n_new = n_status = 0
        for ad, n_clicks in zip(ads, clicks):
            prev = old[ad.ad_id]
            pipe.hset(keys.ADS, ad.ad_id, ad.model_dump_json())
            pipe.hset(keys.AD_CATEGORY, ad.ad_id, ad.category_l2)
            if prev is not None and prev.category_l2 != ad.category_l2:
                pipe.zrem(keys.fallback_key(prev.category_l2), ad.ad_id)
            for zkey in (keys.fallback_key(ad.category_l2), keys.FALLBACK_GLOBAL):
                if ad.status is AdStatus.ACTIVE:
                    pipe.zadd(zkey, {ad.ad_id: fallback_score(ad, int(n_clicks or 0))})
                else:
                    pipe.zrem(zkey, ad.ad_id)
            change = (AdChange.NEW if prev is None
                      else AdChange.STATUS if prev.status is not ad.status else None)
            if change is not None:
                n_new += change is AdChange.NEW
                n_status += change is AdChange.STATUS
                pipe.xadd(keys.AD_UPDATES_STREAM, AdUpdateEvent(ad_id=ad.ad_id, change=change)
                          .to_fields())
        pipe.incr(keys.CATALOG_VERSION)  # every user server's hot cache drops its ad copies
        await pipe.execute()
        return n_new, n_status
