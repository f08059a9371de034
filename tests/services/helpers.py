"""Helpers of the service tests (imported by conftest.py and the tests): Redis locations, a
background event loop for async servers, an in-process stand-in inference client (for the
worker's scheduling tests only) and Redis seeding."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis

from leadre_model.index.sid_index import SidIndex
from services.common.contracts import Retrieval, RetrievedAd
from services.common.settings import Settings

T = TypeVar("T")
TEST_DB = 13  # unit and integration tests; the end-to-end test uses 14
REDIS_BASE = "redis://127.0.0.1:6379"


class StandInClient:
    """Deterministic retrievals (active ads picked by a hash of the prompt), so the worker's
    scheduling, balancing and writes can be tested without a model. ``fail`` makes every
    call raise, like an instance that is down."""

    def __init__(self, url: str, index: SidIndex, fail: bool = False) -> None:
        self.url, self.index, self.fail, self.calls = url, index, fail, 0
        self.active = [a for a, on in zip(index.ad_ids, index.active) if on]

    def retrieve(self, prompts: list[str], beam_width: int, top_k: int,
                 advertiser_prompts: list[str] | None = None) -> list[Retrieval]:
        self.calls += 1
        if self.fail:
            raise ConnectionError(f"{self.url} is down")
        out = []
        for p in prompts:
            h = int(hashlib.sha256(p.encode()).hexdigest(), 16)
            ads = [self.active[(h + 7 * i) % len(self.active)] for i in range(top_k)]
            out.append(Retrieval(ads=[RetrievedAd(ad_id=a, score=-0.5 * (i + 1))
                                      for i, a in enumerate(dict.fromkeys(ads))],
                                 model_version="standin"))
        return out


class BackgroundLoop:
    """An asyncio loop on a thread: async servers run there while a test talks to them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def seed(settings: Settings, world: Path, **kw: Any) -> Any:
    from services.user_server.seed import seed_world

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return seed_world(r, world, settings, **kw)
