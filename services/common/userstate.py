"""A user's state in Redis — profile, bounded behaviour history, state version — and the
Lua scripts that change it atomically. Shared by the user server (writes), the nearline
worker (reads a consistent snapshot) and the daily pipeline (exports).

History: a zset scored by behaviour time, member ``ts|domain|action|item_id``; a repeated
identical event (a producer's retry) is recorded once. After each write the history keeps
the behaviours less than ``window_days`` older than its newest one, at most ``max_len``.
``seq`` counts recorded behaviours: it is the state version a list is computed from.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from leadre_model.data.records import POSITIVE_ACTIONS, Behavior, User
from services.common.events import TIERS
from services.common.keys import user_key

DAY = 86_400
POSITIVE = frozenset(a.value for a in POSITIVE_ACTIONS)

# KEYS: hist, seq. ARGV: member, ts, window seconds, max entries.
# Returns {seq, added}: added = 0 when the identical behaviour was already recorded.
RECORD_LUA = """
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (tonumber(newest[2]) - tonumber(ARGV[3]) + 1))
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[4]) + 1))
if added == 1 then
  return {redis.call('INCR', KEYS[2]), 1}
end
return {tonumber(redis.call('GET', KEYS[2]) or '0'), 0}
"""

# KEYS: list, lv. ARGV: version, encoded list, ttl ms. Writes only a newer version.
WRITE_LIST_LUA = """
local cur = tonumber(redis.call('GET', KEYS[2]) or '-1')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


# KEYS: l, lv, adv, list (formats 1-2). ARGV: version, list (format 3), ttl ms, advertiser
# priors (format 3; "" = none). Writes only a newer version; the old-format key goes.
WRITE_PACKED_LUA = """
local cur = tonumber(redis.call('GET', KEYS[2]) or '-1')
if cur >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if ARGV[4] == '' then redis.call('DEL', KEYS[3])
else redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[3]) end
redis.call('DEL', KEYS[4])
return 1
"""

# KEYS: fb. ARGV: seq, value ("<seq>\n<json>"). Writes only inputs of a newer state.
WRITE_FALLBACK_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and tonumber(string.match(cur, '^(%d+)')) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: hist, seq. ARGV: n. Returns {seq, the n newest history members}: one consistent read.
NEWEST_LUA = """
local out = {tonumber(redis.call('GET', KEYS[2]) or '0')}
for _, m in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)) do
  out[#out + 1] = m
end
return out
"""


def behavior_member(b: Behavior) -> str:
    return f"{b.ts}|{b.domain.value}|{b.action.value}|{b.item_id}"


def member_fields(member: str) -> tuple[str, str, str, str]:
    """(ts, domain, action, item_id) of a history member, without building a record (the
    list read path parses 50 of them per request)."""
    ts, domain, action, item_id = member.split("|", 3)
    return ts, domain, action, item_id


def user_categories(members: Sequence[str], ad_category: Mapping[str, str],
                    content_category: Mapping[str, str], n: int) -> list[tuple[str, int]]:
    """The ``n`` most frequent categories (with their counts) of the positive behaviours
    among ``members`` (history members): the fallback branch's per-user input."""
    cats: Counter[str] = Counter()
    for m in members:
        _, domain, action, item_id = member_fields(m)
        if action in POSITIVE:
            cat = (ad_category if domain == "ad" else content_category).get(item_id)
            if cat:
                cats[cat] += 1
    return cats.most_common(n)


def fallback_value(seq: int, cats: Sequence[tuple[str, int]]) -> str:
    """The ``fb`` key's value: the state version, then the categories as JSON."""
    return f"{seq}\n{json.dumps([list(c) for c in cats], separators=(',', ':'))}"


def parse_fallback_value(raw: str | bytes) -> tuple[int, list[tuple[str, int]]]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    seq, _, cats = text.partition("\n")
    return int(seq), [(str(c), int(k)) for c, k in json.loads(cats)]


def parse_member(user_id: str, member: str) -> Behavior:
    ts, domain, action, item_id = member_fields(member)
    return Behavior(user_id=user_id, ts=int(ts), domain=domain, action=action, item_id=item_id)


@dataclass(frozen=True)
class UserSnapshot:
    """What the worker builds a prompt from: one consistent read of a user's state."""

    user: User
    behaviors: list[Behavior]  # oldest first
    seq: int
    known: bool  # a profile was stored (otherwise an empty profile)


def snapshot(user_id: str, profile_json: str | None, members: Sequence[str],
             seq: str | int | None) -> UserSnapshot:
    user = User.model_validate_json(profile_json) if profile_json else User(user_id=user_id)
    return UserSnapshot(user, [parse_member(user_id, m) for m in members], int(seq or 0),
                        profile_json is not None)


def snapshot_keys(user_id: str) -> tuple[str, str, str]:
    return user_key(user_id, "profile"), user_key(user_id, "hist"), user_key(user_id, "seq")


def read_snapshot(redis_client: redis.Redis, user_id: str) -> UserSnapshot:
    """Profile, history and seq in one MULTI, so the seq matches the history read."""
    profile, hist, seq = snapshot_keys(user_id)
    pipe = redis_client.pipeline(transaction=True)
    pipe.get(profile)
    pipe.zrange(hist, 0, -1)
    pipe.get(seq)
    p, members, s = pipe.execute()
    return snapshot(user_id, p, members, s)


# -- ARPU tiers -------------------------------------------------------------------------
def default_bounds() -> list[float]:
    """Log-spaced ARPU cut points from 0.5 to 500 (used until `serve seed` stores quantiles)."""
    lo, hi = math.log(0.5), math.log(500.0)
    return [round(math.exp(lo + (hi - lo) * i / (TIERS - 2)), 4) for i in range(TIERS - 1)]


def quantile_bounds(arpus: Sequence[float]) -> list[float]:
    """24 cut points so that each of the 25 tiers holds about the same number of users."""
    xs = sorted(arpus)
    if not xs:
        return default_bounds()
    return [xs[min(len(xs) - 1, (len(xs) * i) // TIERS)] for i in range(1, TIERS)]


def tier_of(arpu: float, bounds: Sequence[float]) -> int:
    """0 (lowest ARPU) .. 24 (highest)."""
    return min(TIERS - 1, bisect.bisect_right(list(bounds), arpu))


def parse_bounds(raw: str | None) -> list[float]:
    if not raw:
        return default_bounds()
    bounds = [float(x) for x in json.loads(raw)]
    if len(bounds) != TIERS - 1 or bounds != sorted(bounds):
        raise ValueError(f"tier bounds must be {TIERS - 1} ascending numbers")
    return bounds
