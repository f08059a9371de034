"""Seed Redis from an offline world directory: profiles and ARPU tiers, ad features and the
fallback branch, content items, and (optionally) behaviour histories.

``holdout`` keeps each user's newest behaviours out of Redis and returns them, so a demo
or a benchmark can replay them through RecordBehaviors as live events.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TypeVar

import redis

from leadre_model.data.records import Ad, AdStatus, Behavior, ContentItem
from leadre_model.data.split import iter_user_histories
from leadre_model.data.store import iter_records, load_ads, read_table
from services.common import keys
from services.common.settings import Settings
from services.common.userstate import (
    DAY,
    behavior_member,
    fallback_value,
    quantile_bounds,
    user_categories,
)
from services.user_server.store import FALLBACK_HISTORY, fallback_score

T = TypeVar("T")
CHUNK = 2000  # commands per pipeline round trip


@dataclass
class SeedResult:
    users: int = 0
    ads: int = 0
    content: int = 0
    behaviors: int = 0
    held_out: list[Behavior] = field(default_factory=list)  # oldest first


def _chunks(items: Iterable[T], n: int = CHUNK) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, n)):
        yield chunk


def seed_catalog(r: redis.Redis, ads: Sequence[Ad], content: Iterable[ContentItem],
                 clicks: Counter[str]) -> int:
    """Ad features, categories, popularity and the fallback zsets; content items."""
    for chunk in _chunks(ads):
        pipe = r.pipeline(transaction=False)
        for ad in chunk:
            pipe.hset(keys.ADS, ad.ad_id, ad.model_dump_json())
            pipe.hset(keys.AD_CATEGORY, ad.ad_id, ad.category_l2)
            pipe.hset(keys.AD_CLICKS, ad.ad_id, clicks.get(ad.ad_id, 0))
            if ad.status is AdStatus.ACTIVE:
                score = fallback_score(ad, clicks.get(ad.ad_id, 0))
                pipe.zadd(keys.fallback_key(ad.category_l2), {ad.ad_id: score})
                pipe.zadd(keys.FALLBACK_GLOBAL, {ad.ad_id: score})
        pipe.incr(keys.CATALOG_VERSION)
        pipe.execute()
    n_content = 0
    for chunk in _chunks(content):
        pipe = r.pipeline(transaction=False)
        for item in chunk:
            pipe.hset(keys.CONTENT, item.content_id, item.model_dump_json())
            pipe.hset(keys.CONTENT_CATEGORY, item.content_id, item.category)
        pipe.incr(keys.CATALOG_VERSION)
        pipe.execute()
        n_content += len(chunk)
    return n_content


def seed_world(r: redis.Redis, world: Path, settings: Settings, *, users: Sequence[str] | None = None,
               histories: bool = True, holdout: int = 0) -> SeedResult:
    """Write ``world`` into Redis (see module doc). ``users`` restricts profiles and
    histories; ``holdout`` newest behaviours per user are returned, not written."""
    out = SeedResult()
    wanted = set(users) if users is not None else None
    profiles = [u for u in iter_records(world, "users") if wanted is None or u.user_id in wanted]
    r.set(keys.TIER_BOUNDS, json.dumps(quantile_bounds([u.arpu for u in profiles])))
    for chunk in _chunks(profiles):
        pipe = r.pipeline(transaction=False)
        for u in chunk:
            pipe.set(keys.user_key(u.user_id, "profile"), u.model_dump_json())
            pipe.sadd(keys.USERS, u.user_id)
        pipe.execute()
    out.users = len(profiles)

    clicks = _ad_clicks(world)
    ads = load_ads(world)
    out.ads = len(ads)
    out.content = seed_catalog(r, ads, iter_records(world, "content"), clicks)
    categories = Categories({a.ad_id: a.category_l2 for a in ads},
                            {c.content_id: c.category for c in iter_records(world, "content")})
    if histories or holdout:
        for h in iter_user_histories(world, users):
            keep = h.behaviors[:len(h.behaviors) - holdout] if holdout else h.behaviors
            out.held_out += h.behaviors[len(keep):]
            if histories:
                out.behaviors += _write_history(r, h.user.user_id, keep, settings, categories)
    out.held_out.sort(key=lambda b: b.ts)
    return out


@dataclass(frozen=True)
class Categories:
    """Category of every ad and content item of the seeded world."""

    ads: dict[str, str]
    content: dict[str, str]


def _write_history(r: redis.Redis, user_id: str, behaviors: Sequence[Behavior],
                   settings: Settings, categories: Categories) -> int:
    """The same window and bound RecordBehaviors applies, and the fallback inputs it
    writes, in one round trip. The user's state restarts: their list and its version
    guard go too (a list computed from another state must not survive, nor block the next
    write)."""
    if not behaviors:
        return 0
    newest = max(b.ts for b in behaviors)
    kept = [b for b in behaviors if newest - b.ts < settings.history_window_days * DAY]
    kept = kept[-settings.history_max:]
    members = {behavior_member(b): b.ts for b in kept}
    newest = sorted(members, key=lambda m: (members[m], m), reverse=True)[:FALLBACK_HISTORY]
    cats = user_categories(newest, categories.ads, categories.content,
                           settings.fallback_categories)
    pipe = r.pipeline(transaction=True)
    pipe.delete(*(keys.user_key(user_id, part) for part in ("hist", "list", "l", "adv", "lv")))
    pipe.zadd(keys.user_key(user_id, "hist"), members)
    pipe.set(keys.user_key(user_id, "seq"), len(members))
    pipe.set(keys.user_key(user_id, "fb"), fallback_value(len(members), cats))
    pipe.execute()
    return len(members)


def _ad_clicks(world: Path) -> Counter[str]:
    """Positive ad events per ad in the world: the popularity of the fallback branch."""
    t = read_table(world, "behaviors", columns=["domain", "action", "item_id"]).to_pydict()
    counts: Counter[str] = Counter()
    for d, a, i in zip(t["domain"], t["action"], t["item_id"]):
        if d == "ad" and a in ("click", "conversion"):
            counts[i] += 1
    return counts


def flush_leadre_keys(r: redis.Redis) -> int:
    """Delete every ``leadre:*`` key (a re-seed starts clean); returns how many."""
    n = 0
    for chunk in _chunks(r.scan_iter("leadre:*", count=1000), 500):
        n += r.delete(*chunk)
    return n


__all__ = ["SeedResult", "flush_leadre_keys", "seed_catalog", "seed_world"]
