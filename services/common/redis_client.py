"""The one place a Redis client is built. Every process and command asks
:func:`redis_client` (or :func:`async_redis_client`) with its settings, so the AUTH password
(``LEADRE_REDIS_PASSWORD``) and, for ``rediss://`` URLs, the CA file
(``LEADRE_REDIS_TLS_CA``) always apply."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from services.common.settings import Settings


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
    the URL's password win over the argument; here the setting wins)."""
    parts = urlsplit(settings.redis_url)
    if settings.redis_password is None or parts.password is None:
        return settings.redis_url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}" if user else hostport))


def redis_client(settings: Settings, *, decode_responses: bool = True,
                 **extra: Any) -> redis.Redis:
    """A client for ``settings.redis_url`` with the password/TLS options; ``extra`` are
    further ``redis.Redis`` arguments (timeouts, …)."""
    return redis.Redis.from_url(redis_url(settings), decode_responses=decode_responses,
                                **redis_options(settings), **extra)


def async_redis_client(settings: Settings, *, decode_responses: bool = True,
                       **extra: Any) -> aioredis.Redis:
    """The asyncio twin of :func:`redis_client`."""
    return aioredis.from_url(redis_url(settings), decode_responses=decode_responses,
                             **redis_options(settings), **extra)
