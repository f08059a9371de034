"""gRPC plumbing shared by the servers: validation → INVALID_ARGUMENT, unexpected errors →
INTERNAL without a traceback, malformed request bytes → INVALID_ARGUMENT (not grpc's
UNKNOWN "Unexpected DecodeError"), standard health service, graceful stop (the error types:
``services.common.errors``)."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import Histogram
from pydantic import ValidationError

from services.common.errors import BadRequest, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


def validation_message(where: str, exc: ValidationError) -> str:
    """``behaviors[2].action: Input should be 'ad' or 'content'`` (first error, + count)."""
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}{'.' + loc if loc else ''}: {first['msg']}{more}"


def rpc(method: str) -> Callable[[Handler[T]], Handler[T]]:
    """Wrap a servicer method: time it into ``self.latency`` (labels method, code);
    BadRequest/ValidationError → INVALID_ARGUMENT; Redis or a dependency down →
    UNAVAILABLE; anything unexpected → INTERNAL with a one-line message (the traceback
    goes to the log only)."""

    def deco(fn: Handler[T]) -> Handler[T]:
        @functools.wraps(fn)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            t0, code = time.perf_counter(), "OK"
            try:
                return await fn(self, request, context)
            except BadRequest as exc:
                code = "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ValidationError as exc:
                code = "INVALID_ARGUMENT"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, validation_message("request", exc))
            except (Unavailable, redis.exceptions.ConnectionError,
                    redis.exceptions.TimeoutError) as exc:
                code = "UNAVAILABLE"
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: {exc}")
            except grpc.aio.AbortError:
                code = "ABORTED_BY_HANDLER"
                raise
            except Exception as exc:  # the client gets one line, the log the traceback
                code = "INTERNAL"
                log.exception("rpc failed", extra={"method": method})
                await context.abort(grpc.StatusCode.INTERNAL, f"{method} failed: {type(exc).__name__}")
            finally:
                latency: Histogram = self.latency
                latency.labels(method, code).observe(time.perf_counter() - t0)
            raise AssertionError("unreachable")  # abort() always raises

        return wrapper

    return deco


class _Malformed:
    """What a request deserializer returns for bytes that are no valid message."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _checked(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and a behaviour that answers
    INVALID_ARGUMENT, naming the method and the parse error, for a malformed message
    (grpc would answer UNKNOWN). Streaming requests are left as they are (none here)."""
    deserialize = handler.request_deserializer
    if handler.request_streaming or deserialize is None:
        return handler

    def parse(raw: bytes) -> object:
        try:
            return deserialize(raw)
        except Exception as exc:  # noqa: BLE001 — DecodeError, a string field not UTF-8, …
            return _Malformed(f"{type(exc).__name__}: {exc}")

    async def refuse(request: _Malformed, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"{method}: malformed request message ({request.reason})")

    if handler.unary_unary is not None:
        inner = handler.unary_unary

        async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if type(request) is _Malformed:
                await refuse(request, context)
            return await inner(request, context)

        return handler._replace(request_deserializer=parse, unary_unary=unary)
    inner_stream = handler.unary_stream
    if inspect.isasyncgenfunction(inner_stream):
        async def stream_gen(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if type(request) is _Malformed:
                await refuse(request, context)
            async for item in inner_stream(request, context):
                yield item

        return handler._replace(request_deserializer=parse, unary_stream=stream_gen)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:  # context.write
        if type(request) is _Malformed:
            await refuse(request, context)
        return await inner_stream(request, context)

    return handler._replace(request_deserializer=parse, unary_stream=stream)


class _CheckedGeneric(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self.inner = inner
        self.cache: dict[str, grpc.RpcMethodHandler | None] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if details.method not in self.cache:
            handler = self.inner.service(details)
            self.cache[details.method] = None if handler is None else _checked(handler, details.method)
        return self.cache[details.method]


class _CheckedRegistrar:
    """What a generated ``add_*Servicer_to_server`` sees as the server: every handler it
    registers goes to the real server through :func:`_checked`."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(tuple(_CheckedGeneric(h) for h in handlers))

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.server.add_registered_method_handlers(
            service, {name: _checked(h, f"/{service}/{name}") for name, h in handlers.items()})


def add_servicer(add: Callable[[T, Any], None], servicer: T, server: grpc.aio.Server) -> None:
    """``add(servicer, server)`` (a generated ``add_*Servicer_to_server``) with every method
    answering malformed request bytes with INVALID_ARGUMENT."""
    add(servicer, _CheckedRegistrar(server))


class _Health(health_aio.HealthServicer):
    """grpc's health service, whose NOT_FOUND for an unknown service name says so (grpc's
    own answers it without a message)."""

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if request.service not in self._server_status:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service[:100]!r}")
        return await super().Check(request, context)  # type: ignore[no-any-return]


async def add_health(server: grpc.aio.Server, services: Sequence[str]) -> health_aio.HealthServicer:
    """Standard grpc.health.v1 service; every name in ``services`` (and "") SERVING."""
    health = _Health()
    add_servicer(health_pb2_grpc.add_HealthServicer_to_server, health, server)
    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health


async def set_not_serving(health: health_aio.HealthServicer, services: Sequence[str]) -> None:
    """Before a drain: load balancers stop sending new work, in-flight calls finish."""
    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

