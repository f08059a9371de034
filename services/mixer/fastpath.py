"""``POST /v1/retrieve`` without FastAPI's per-request machinery, for well-formed requests.

The retrieve route is the hot path; FastAPI's routing, dependency solving, request
object and exception layers cost about as much CPU as the rest of a retrieval (serving
profile, docs/benchmarks.md). This pure-ASGI layer sits inside :class:`~services.mixer.guard.Guard`
and :class:`~services.mixer.timing.Timing` (API key, body limit and latency metrics apply
as before) and answers a JSON body that :class:`~services.mixer.models.RetrieveRequest`
accepts; everything else — bad JSON, a field out of range, another content type, every
other route — goes to the FastAPI app unchanged, so error answers and the OpenAPI schema
are FastAPI's own. Errors of the retrieval itself get the same bodies as the app's
exception handlers (422 / 503 / 500 ``{"detail": ...}``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.errors import BadRequest, Unavailable
from services.mixer.core import MixerCore
from services.mixer.models import RetrieveRequest

log = logging.getLogger(__name__)
PATH = "/v1/retrieve"
_JSON = [(b"content-type", b"application/json")]


class RetrieveFastPath:
    def __init__(self, app: ASGIApp, core: MixerCore, routes: Sequence[object]) -> None:
        """``routes``: the FastAPI app's routes (the retrieve route labels the metrics)."""
        self.app, self.core = app, core
        self.routes = routes
        self.route: object | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
                or (dict(scope["headers"]).get(b"content-type") or b"").split(b";")[0].strip()
                != b"application/json"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        body, more = b"", True
        while more:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":  # the client went away: let the app see it
                break
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        try:
            req = RetrieveRequest.model_validate_json(body)
        except ValidationError:  # FastAPI answers it (its own 422 body)
            async def replay() -> Message:
                return messages.pop(0) if messages else await receive()

            await self.app(scope, replay, send)
            return
        if self.route is None:
            self.route = next(r for r in self.routes if getattr(r, "path", None) == PATH)
        scope["route"] = self.route  # the latency metric's label (Timing)
        try:
            resp = await self.core.retrieve_json(req.user_id, req.k)
            status = 200
        except BadRequest as exc:
            resp, status = json.dumps({"detail": str(exc)}).encode(), 422
        except Unavailable as exc:
            resp, status = json.dumps({"detail": str(exc)}).encode(), 503
        except Exception as exc:  # the app's catch-all handler: the same body
            log.exception("request failed")
            resp = json.dumps({"detail": f"internal error ({type(exc).__name__})"}).encode()
            status = 500
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-length", str(len(resp)).encode()), *_JSON]})
        await send({"type": "http.response.body", "body": resp})
