"""The one place a Redis client is built. Every process and command asks
:func:`redis_client` (or :func:`async_redis_client`) with its settings, so the AUTH password
(``LEADRE_REDIS_PASSWORD``) and, for ``rediss://`` URLs, the CA file
(``LEADRE_REDIS_TLS_CA``) always apply.

With ``LEADRE_REDIS_CLUSTER=true`` the URL names one node of a Redis Cluster (db 0) and the
clients are redis-py's ``RedisCluster`` (the same password/TLS options on every node; more
startup nodes in ``LEADRE_REDIS_CLUSTER_NODES``). The key schema (:mod:`services.common.keys`)
keeps every transaction, Lua script and multi-key command in one hash slot; the two helpers
at the end cover what a cluster client does differently."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.cluster import ClusterNode

from services.common.settings import Settings

SyncRedis = redis.Redis | redis.RedisCluster
AsyncRedis = aioredis.Redis | aioredis.RedisCluster


def redis_options(settings: Settings) -> dict[str, Any]:
    """Extra ``from_url`` arguments: AUTH password and, for ``rediss://`` URLs, the CA file."""
    opts: dict[str, Any] = {}
    if settings.redis_password is not None:
        opts["password"] = settings.redis_password.get_secret_value()
    if settings.redis_url.startswith("rediss://") and settings.redis_tls_ca:
        opts["ssl_ca_certs"] = settings.redis_tls_ca
    return opts


def redis_url(settings: Settings) -> str:
    """``redis_url``, less any password in it when ``redis_password`` is set (redis-py lets
    the URL's password win over the argument; here the setting wins). For a cluster, less
    the db path too (a cluster has db 0 only; another db is refused)."""
    parts = urlsplit(settings.redis_url)
    if settings.redis_cluster:
        db = parts.path.strip("/")
        if db not in ("", "0"):
            raise ValueError(f"Redis Cluster has db 0 only; LEADRE_REDIS_URL names db {db}")
        parts = parts._replace(path="")
    if settings.redis_password is not None and parts.password is not None:
        userinfo, _, hostport = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}@{hostport}" if user else hostport)
    return urlunsplit(parts)


def cluster_nodes(settings: Settings) -> list[tuple[str, int]]:
    """``redis_cluster_nodes`` as (host, port) pairs: startup nodes besides the URL's."""
    pairs = [n.rsplit(":", 1) for n in settings.redis_cluster_nodes.split(",") if n]
    return [(host, int(port)) for host, port in pairs]


def redis_client(settings: Settings, *, decode_responses: bool = True,
                 **extra: Any) -> SyncRedis:
    """A client for ``settings.redis_url`` with the password/TLS options; ``extra`` are
    further ``redis.Redis`` arguments (timeouts, …)."""
    opts = {"decode_responses": decode_responses, **redis_options(settings), **extra}
    if settings.redis_cluster:
        nodes = [ClusterNode(h, p) for h, p in cluster_nodes(settings)]
        return redis.RedisCluster.from_url(redis_url(settings), startup_nodes=nodes, **opts)
    return redis.Redis.from_url(redis_url(settings), **opts)


def async_redis_client(settings: Settings, *, decode_responses: bool = True,
                       **extra: Any) -> AsyncRedis:
    """The asyncio twin of :func:`redis_client`."""
    opts = {"decode_responses": decode_responses, **redis_options(settings), **extra}
    if settings.redis_cluster:
        nodes = [AsyncClusterNode(h, p) for h, p in cluster_nodes(settings)]
        # redis-py's async cluster client raises MaxConnectionsError beyond 100 connections
        # a node instead of waiting; RecordBehaviors' per-user reads under 8 concurrent calls
        # of 20 users went past it (bench/ingest_bench.py). Redis's own maxclients: 10,000.
        opts.setdefault("max_connections", 10_000)
        return aioredis.RedisCluster.from_url(redis_url(settings), startup_nodes=nodes, **opts)
    return aioredis.from_url(redis_url(settings), **opts)


def is_cluster(r: SyncRedis | AsyncRedis | Any) -> bool:
    """A cluster client, or a pipeline of one."""
    return isinstance(r, (redis.RedisCluster, aioredis.RedisCluster,
                          redis.cluster.ClusterPipeline, aioredis.cluster.ClusterPipeline))


async def mget(r: AsyncRedis, names: Sequence[str]) -> list[Any]:
    """MGET of keys in any slots: one MGET on a single node; per-slot MGETs on a cluster
    (a cross-slot MGET is refused there)."""
    if isinstance(r, aioredis.RedisCluster):
        return await r.mget_nonatomic(list(names))
    return await r.mget(list(names))
