"""Redis key schema of the online and nearline services (the inference service's keys are
in :mod:`services.common.contracts`).

Per-user keys carry the user id in a hash tag (``{u0001}``), so every key of one user lands
in the same Redis Cluster slot and the Lua scripts that touch several of them stay legal.
"""

from __future__ import annotations

# Streams
BEHAVIOR_STREAM = "leadre:behaviors"  # one entry per recorded behaviour (BehaviorEvent)
BEHAVIOR_DEAD = "leadre:behaviors:dead"  # malformed behaviour events, with the reason
AD_UPDATES_STREAM = "leadre:ads:updates"  # ads created or whose status changed (AdUpdateEvent)
AD_UPDATES_DEAD = "leadre:ads:updates:dead"
WORKER_GROUP = "nearline"  # consumer group of the workers on BEHAVIOR_STREAM
CATALOG_GROUP = "catalog"  # consumer group of the catalog applier on AD_UPDATES_STREAM

# Catalog state (written by `leadre serve seed` and UpdateAds)
ADS = "leadre:ads"  # hash ad_id -> Ad JSON
AD_CATEGORY = "leadre:ads:category"  # hash ad_id -> category_l2 (fallback lookups)
AD_CLICKS = "leadre:ads:clicks"  # hash ad_id -> positive ad events counted at seed (popularity)
CATALOG_VERSION = "leadre:ads:version"  # bumped by every ad write (user servers' hot caches)
CONTENT = "leadre:content"  # hash content_id -> ContentItem JSON
CONTENT_CATEGORY = "leadre:content:category"  # hash content_id -> category
TIER_BOUNDS = "leadre:tiers:bounds"  # JSON list of the 24 ARPU cut points between 25 tiers
FALLBACK_GLOBAL = "leadre:fallback:global"  # zset ad_id -> eCPM x popularity
USERS = "leadre:users"  # set of user ids with a profile (daily export)
CATALOG_LOCK = "leadre:catalog:lock"  # one applier at a time adds ads to the live index


def fallback_key(category: str) -> str:
    """zset ad_id -> eCPM x popularity of the active ads of one second-level category."""
    return f"leadre:fallback:cat:{category}"


def user_key(user_id: str, part: str) -> str:
    """``profile`` (User JSON), ``hist`` (zset of behaviours by time), ``seq`` (behaviours
    recorded: the state version), ``list`` (hash v, d: the encoded LEADRE list, with TTL),
    ``lv`` (version of the last list written; no TTL, so expiry never re-opens the guard)."""
    return f"leadre:u:{{{user_id}}}:{part}"
