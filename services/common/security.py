"""Security plumbing shared by the servers: API keys (constant-time), gRPC TLS credentials
and message-size limits (Redis AUTH/TLS options: ``services.common.redis_client``).

API keys are checked against every configured key with :func:`hmac.compare_digest` (no
early exit, so timing says nothing about which key or how much of it matched). A rejected
request learns only "missing or invalid API key"."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from services.common.settings import Settings

DENIED = "missing or invalid API key"
API_KEY_HEADER = "x-api-key"
OPEN_GRPC_PREFIX = "/grpc.health.v1.Health/"  # health checks never need a key


def api_keys(settings: Settings) -> tuple[bytes, ...]:
    """The configured keys (``LEADRE_API_KEYS``, comma-separated); empty: auth off."""
    return tuple(k.strip().encode() for k in settings.api_keys.split(",") if k.strip())


def key_ok(presented: str | None, keys: tuple[bytes, ...]) -> bool:
    """True when ``presented`` equals one of ``keys``; compares against all of them."""
    if not keys:
        return True
    given = (presented or "").encode()
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(given, k)
    return ok and bool(presented)


def presented_key(header: str | None, authorization: str | None) -> str | None:
    """``x-api-key: K`` or ``authorization: Bearer K``."""
    if header:
        return header
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


# -- gRPC -------------------------------------------------------------------------------------
def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    n = settings.grpc_max_message_bytes
    return [("grpc.max_receive_message_length", n), ("grpc.max_send_message_length", n)]


def add_port(server: grpc.aio.Server, address: str, settings: Settings) -> int:
    """Bind ``address``: TLS when ``grpc_tls_cert`` and ``grpc_tls_key`` are set."""
    if settings.grpc_tls_cert and settings.grpc_tls_key:
        creds = grpc.ssl_server_credentials([(Path(settings.grpc_tls_key).read_bytes(),
                                              Path(settings.grpc_tls_cert).read_bytes())])
        return server.add_secure_port(address, creds)
    return server.add_insecure_port(address)


def client_channel(target: str, settings: Settings) -> grpc.aio.Channel:
    """A channel to one of our servers: TLS when ``grpc_tls_ca`` is set."""
    if settings.grpc_tls_ca:
        creds = grpc.ssl_channel_credentials(Path(settings.grpc_tls_ca).read_bytes())
        return grpc.aio.secure_channel(target, creds, options=grpc_options(settings))
    return grpc.aio.insecure_channel(target, options=grpc_options(settings))


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED unless the call's metadata carries a valid ``x-api-key`` (or
    ``authorization: Bearer``); the health service stays open."""

    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self.keys = keys

        async def deny(_: object, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        if details.method.startswith(OPEN_GRPC_PREFIX):
            return await continuation(details)
        md = dict(details.invocation_metadata or ())
        key = presented_key(md.get(API_KEY_HEADER), md.get("authorization"))  # type: ignore[arg-type]
        if key_ok(key, self.keys):
            return await continuation(details)
        return self._deny
