"""Redis key schema of the online and nearline services (the inference service's keys are
in :mod:`services.common.contracts`).

Redis Cluster: every transaction, Lua script and multi-key command stays in one hash slot.
Per-user keys carry the user id in a hash tag (``{u0001}``): a user's keys share a slot and
the users spread over the shards. The catalog keys share the tag ``{ads}`` (UpdateAds writes
the ad, its fallback rankings, the update event and the catalog version in one MULTI; the
catalog applier acks updates and appends catalog events in one MULTI). The behaviour stream
and its dead letters share ``{behaviors}`` (a dead letter is appended and acked in one
MULTI): the stream, its consumer group and its pending entries live on the shard that owns
that slot (docs/serving.md, "Redis Cluster"). With ``behavior_partitions`` N > 1 there are N
such streams, one per slot range (:func:`behavior_streams`), and a user's events all go to one
of them (:func:`partition_of`). Other keys are only read or written one at a time.
"""

from __future__ import annotations

from functools import lru_cache
from zlib import crc32

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

# Streams
BEHAVIOR_STREAM = "leadre:{behaviors}"  # one entry per recorded behaviour (BehaviorEvent)
BEHAVIOR_DEAD = "leadre:{behaviors}:dead"  # malformed behaviour events, with the reason
AD_UPDATES_STREAM = "leadre:{ads}:updates"  # ads created or whose status changed (AdUpdateEvent)
AD_UPDATES_DEAD = "leadre:{ads}:updates:dead"
WORKER_GROUP = "nearline"  # consumer group of the workers on BEHAVIOR_STREAM
CATALOG_GROUP = "catalog"  # consumer group of the catalog applier on AD_UPDATES_STREAM

# Catalog state (written by `leadre serve seed` and UpdateAds)
ADS = "leadre:{ads}"  # hash ad_id -> Ad JSON
AD_CATEGORY = "leadre:{ads}:category"  # hash ad_id -> category_l2 (fallback lookups)
AD_CLICKS = "leadre:{ads}:clicks"  # hash ad_id -> positive ad events counted at seed (popularity)
CATALOG_VERSION = "leadre:{ads}:version"  # bumped by every ad write (user servers' hot caches)
CONTENT = "leadre:content"  # hash content_id -> ContentItem JSON
CONTENT_CATEGORY = "leadre:content:category"  # hash content_id -> category
TIER_BOUNDS = "leadre:tiers:bounds"  # JSON list of the 24 ARPU cut points between 25 tiers
FALLBACK_GLOBAL = "leadre:{ads}:fallback:global"  # zset ad_id -> eCPM x popularity
USERS = "leadre:users"  # set of user ids with a profile (daily export)
CATALOG_LOCK = "leadre:catalog:lock"  # one applier at a time adds ads to the live index


def fallback_key(category: str) -> str:
    """zset ad_id -> eCPM x popularity of the active ads of one second-level category."""
    return f"leadre:{{ads}}:fallback:cat:{category}"


def user_key(user_id: str, part: str) -> str:
    """``profile`` (User JSON), ``hist`` (zset of behaviours by time), ``seq`` (behaviours
    recorded: the state version), ``l`` (string: the LEADRE list, compact format 3, TTL),
    ``adv`` (string: its advertiser priors, same format and TTL), ``list`` (hash v, d: a list
    of format 1/2, still read), ``lv`` (version of the last list written; no TTL, so expiry
    never re-opens the guard), ``fb`` (the fallback branch's inputs: ``seq`` newline JSON
    [[category, count], …], rewritten by each RecordBehaviors)."""
    return f"leadre:u:{{{user_id}}}:{part}"


# Id registry (services/common/idregistry.py): one slot, written together by one Lua script.
ID_EPOCH = "leadre:{ids}:epoch"


def id_keys(ns: str) -> tuple[str, str]:
    """(hash string -> number, list number -> string) of one id namespace."""
    return f"leadre:{{ids}}:{ns}", f"leadre:{{ids}}:{ns}:names"


# Partitioned behaviour streams (setting behavior_partitions).
@lru_cache(maxsize=8)
def behavior_streams(partitions: int) -> tuple[tuple[str, str], ...]:
    """(stream, dead-letter stream) of each partition. One partition: ``BEHAVIOR_STREAM``
    and ``BEHAVIOR_DEAD``. N > 1: partition p's hash tag is the first ``behaviors:p:i`` whose
    slot lies in the p-th of N equal slot ranges, so the partitions spread over the masters
    as evenly as the slots do (a cluster made by ``redis-cli --cluster create`` gives each
    master one contiguous range); its dead letters share the tag (one MULTI)."""
    if partitions == 1:
        return ((BEHAVIOR_STREAM, BEHAVIOR_DEAD),)
    out = []
    for p in range(partitions):
        lo, hi = (REDIS_CLUSTER_HASH_SLOTS * p // partitions,
                  REDIS_CLUSTER_HASH_SLOTS * (p + 1) // partitions)
        i = 0
        while not lo <= key_slot(f"behaviors:{p}:{i}".encode()) < hi:
            i += 1
        out.append((f"leadre:{{behaviors:{p}:{i}}}", f"leadre:{{behaviors:{p}:{i}}}:dead"))
    return tuple(out)


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user's behaviour events (all of them: their order is kept)."""
    return crc32(user_id.encode()) % partitions if partitions > 1 else 0
