"""ASGI guard in front of the Mixer's HTTP API: API key (when keys are configured) and
request-body size limit. Pure ASGI (no BaseHTTPMiddleware) so it costs little per request.

``/healthz``, ``/readyz`` and ``/metrics`` stay open (probes and Prometheus carry no key).
401 says only "missing or invalid API key"; 413 names the limit."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.security import DENIED, key_ok, presented_key

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


async def _reply(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None
                 ) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], max_body: int) -> None:
        self.app, self.keys, self.max_body = app, keys, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = dict(scope["headers"])
        if self.keys and scope["path"] not in OPEN_PATHS:
            key = presented_key(_s(headers.get(b"x-api-key")), _s(headers.get(b"authorization")))
            if not key_ok(key, self.keys):
                await _reply(send, 401, DENIED, [(b"www-authenticate", b"ApiKey")])
                return
        too_big = f"request body larger than {self.max_body} bytes"
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_body:
                await _reply(send, 413, too_big)
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        # Chunked: read (at most the limit) before the app sees anything, then replay.
        messages: list[Message] = []
        size, more = 0, True
        while more:
            msg = await receive()
            messages.append(msg)
            size += len(msg.get("body", b""))
            more = msg.get("more_body", False)
            if size > self.max_body:
                await _reply(send, 413, too_big)
                return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


def _s(v: bytes | None) -> str | None:
    return None if v is None else v.decode("latin-1")
