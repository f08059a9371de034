"""Inference instance choice: a Redis global counter (``contracts.BALANCE_COUNTER``) over
the healthy instances (heartbeat in ``contracts.INSTANCES_KEY`` younger than ``ttl_s``),
so every worker process spreads its calls over the same pool evenly; a failed call is
retried on the next instance. Calls in flight are counted per instance (:meth:`in_flight`):
a call that fails, an instance killed mid-batch included, gives its count back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol, TypeVar

import redis

from services.common.contracts import BALANCE_COUNTER, INSTANCES_KEY, Retrieval

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetrievalClient(Protocol):
    """What the worker needs of an inference client (services/inference/client.py)."""

    def retrieve(self, prompts: list[str], beam_width: int, top_k: int,
                 advertiser_prompts: list[str] | None = None,
                 exclude: list[list[str]] | None = None) -> list[Retrieval]: ...


class NoInstance(RuntimeError):
    """No inference instance has sent a heartbeat recently."""


class InstanceBalancer:
    def __init__(self, r: redis.Redis, client_factory: Callable[[str], RetrievalClient],
                 ttl_s: float = 10.0, refresh_s: float = 1.0, cooldown_s: float = 2.0,
                 on_failure: Callable[[str, Exception], None] | None = None) -> None:
        self.r, self.factory = r, client_factory
        self.ttl_s, self.refresh_s, self.cooldown_s = ttl_s, refresh_s, cooldown_s
        self.on_failure = on_failure
        self._clients: dict[str, RetrievalClient] = {}
        self._urls: list[str] = []
        self._urls_at = -1e9
        self._bad: dict[str, float] = {}  # url -> monotonic time until which it is avoided
        self._in_flight: Counter[str] = Counter()
        self._lock = threading.Lock()  # calls run on the worker's pool threads

    def in_flight(self) -> dict[str, int]:
        """Calls in flight per instance (instances with none are left out)."""
        with self._lock:
            return {u: n for u, n in self._in_flight.items() if n}

    def healthy(self) -> list[str]:
        """Instances with a fresh heartbeat (sorted, so every worker sees the same order)."""
        now = time.monotonic()
        if now - self._urls_at > self.refresh_s:
            beats = self.r.hgetall(INSTANCES_KEY)
            wall = time.time()
            self._urls = sorted(u for u, hb in beats.items() if wall - float(hb) <= self.ttl_s)
            self._urls_at = now
        return self._urls

    def client(self, url: str) -> RetrievalClient:
        if url not in self._clients:
            self._clients[url] = self.factory(url)
        return self._clients[url]

    def call(self, fn: Callable[[RetrievalClient], T], max_attempts: int = 3) -> tuple[T, str]:
        """``fn`` on the instance the global counter picks; on failure on the next one
        (instances that just failed are tried last). Raises the last error."""
        urls = self.healthy()
        if not urls:
            raise NoInstance(f"no inference instance with a heartbeat in the last {self.ttl_s:g}s")
        start = int(self.r.incr(BALANCE_COUNTER)) % len(urls)
        now = time.monotonic()
        order = urls[start:] + urls[:start]
        order.sort(key=lambda u: self._bad.get(u, 0.0) > now)  # stable: healthy first
        last: Exception | None = None
        for attempt in range(max_attempts):
            url = order[attempt % len(order)]
            with self._lock:
                self._in_flight[url] += 1
            try:
                return fn(self.client(url)), url
            except Exception as exc:  # noqa: BLE001 — any failure of one instance: try another
                last = exc
                self._bad[url] = time.monotonic() + self.cooldown_s
                log.warning("inference call failed", extra={"instance": url, "error": str(exc)[:200],
                                                           "attempt": attempt + 1})
                if self.on_failure is not None:
                    self.on_failure(url, exc)
                self._urls_at = -1e9  # re-read heartbeats: the instance may be gone
            finally:
                with self._lock:
                    self._in_flight[url] -= 1
        assert last is not None
        raise last
