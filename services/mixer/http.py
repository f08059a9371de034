"""The Mixer's HTTP API (FastAPI). Routers are thin: :class:`MixerCore` does the work.
Bad input → 422 with a message, the user server down → 503, never a traceback."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Path, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from leadre_model.data.records import ID_PATTERN
from services.common.errors import BadRequest, Unavailable
from services.common.security import api_keys
from services.mixer.core import MixerCore
from services.mixer.fastpath import RetrieveFastPath
from services.mixer.guard import Guard
from services.mixer.models import (
    ErrorOut,
    RankFeaturesRequest,
    RankFeaturesResponse,
    RetrieveRequest,
    RetrieveResponse,
    UserOut,
)
from services.mixer.timing import Timing

log = logging.getLogger(__name__)
ERRORS = {401: {"model": ErrorOut}, 413: {"model": ErrorOut}, 422: {"model": ErrorOut},
          503: {"model": ErrorOut}}


def create_app(core: MixerCore) -> FastAPI:
    app = FastAPI(title="LEADRE Mixer", version="1",
                  description="LEADRE retrieval merged with a fallback branch; ranking features.")
    # Innermost: well-formed retrieve requests without FastAPI's per-request machinery.
    app.add_middleware(RetrieveFastPath, core=core, routes=app.routes)
    # Outside it: API key (when LEADRE_API_KEYS is set) and body size, before any parsing.
    app.add_middleware(Guard, keys=api_keys(core.s), max_body=core.s.max_request_bytes)

    app.add_middleware(Timing, latency=core.m.latency)  # outside Guard: 401/413 are timed too

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 body, but an input it echoes back may be NaN or Infinity
        # (Python's json reads them), which strict JSON cannot carry: sent as text.
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(BadRequest)
    async def bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Unavailable)
    async def unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"detail": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=ERRORS)
    async def retrieve(req: RetrieveRequest) -> Response:
        """Top-k ads for a user: LEADRE list merged with the fallback branch."""
        # Serialized here: FastAPI would validate the response model a second time.
        return Response(await core.retrieve_json(req.user_id, req.k),
                        media_type="application/json")

    @app.post("/v1/rank-features", response_model=RankFeaturesResponse, responses=ERRORS)
    async def rank_features(req: RankFeaturesRequest) -> RankFeaturesResponse:
        """User-side retrieved ads, per-candidate match scores, advertiser priors."""
        return await core.rank_features(req.user_id, req.candidate_ad_ids)

    @app.get("/v1/users/{user_id}", response_model=UserOut, responses=ERRORS)
    async def user(user_id: str = Path(pattern=ID_PATTERN),
                   recent: int = 10) -> UserOut:
        """Profile and newest behaviours (what the list is computed from)."""
        if not 1 <= recent <= 500:
            raise BadRequest(f"recent: must be in [1, 500] (got {recent})")
        return await core.user(user_id, recent)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorOut}})
    async def readyz() -> JSONResponse:
        if await core.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"detail": "user server not serving"}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = core.m.exposition()
        return Response(body, media_type=content_type)

    return app


def _finite(v: object) -> object:
    """``v`` with every NaN / ±Infinity float replaced by its text (``"nan"``, ``"inf"``)."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v
