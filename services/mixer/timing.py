"""Request latency of the Mixer's HTTP API into ``leadre_mixer_request_seconds{method,code}``
(method: ``POST /v1/retrieve``, the route template; ``unmatched`` otherwise). Pure ASGI:
Starlette's ``BaseHTTPMiddleware`` spawns a task and a stream per request, which showed in
the serving profile."""

from __future__ import annotations

import time

from prometheus_client import Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Timing:
    def __init__(self, app: ASGIApp, latency: Histogram) -> None:
        self.app, self.latency = app, latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.latency.labels(f"{scope['method']} {path}", str(status)).observe(
                time.perf_counter() - t0)
