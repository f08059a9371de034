"""gRPC plumbing shared by the servers: validation → INVALID_ARGUMENT, unexpected errors →
INTERNAL without a traceback, standard health service, graceful stop (the error types:
``services.common.errors``)."""

from __future__ import annotations

import functools
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


async def add_health(server: grpc.aio.Server, services: Sequence[str]) -> health_aio.HealthServicer:
    """Standard grpc.health.v1 service; every name in ``services`` (and "") SERVING."""
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health


async def set_not_serving(health: health_aio.HealthServicer, services: Sequence[str]) -> None:
    """Before a drain: load balancers stop sending new work, in-flight calls finish."""
    for name in ("", *services):
        await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

