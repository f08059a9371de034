"""One inference instance: the Triton model ``leadre_retrieval`` served by PyTriton, the
model and the decoder's trie on the instance's device (``LEADRE_DEVICE``: the CPU or a GPU).

* **Model**: dynamic batching (``inference_max_batch``, ``inference_queue_delay_us``);
  requests of a batch are grouped by beam width and decoded together; Triton's own
  ``/v2/health/live|ready`` and model readiness are the health checks (the model is bound
  only once a version is loaded).
* **Hot swap**: a watcher thread polls ``<registry>/CURRENT`` every ``inference_poll_s``;
  a new version is loaded completely (and brought up to date with the catalog stream)
  beside the old one, then the bundle reference is swapped. A request takes its bundle
  when it starts, so requests in flight finish on the old version. A version whose model
  does not match its index is refused with a logged reason; the old one keeps serving.
* **Catalog**: the same thread tails ``CATALOG_STREAM`` (``CatalogEvent``: add / pause /
  resume) and applies it to the live trie — from the stream's start at boot and for every
  newly loaded version, so a version never misses a pause.
* **Registration**: a heartbeat thread writes ``INSTANCES_KEY[url] = now`` every
  ``inference_heartbeat_s``; :meth:`InferenceService.stop` (SIGTERM) removes the entry
  first, waits for in-flight requests (≤ ``inference_drain_s``), then stops Triton, which
  drains what it still holds.

PyTriton 0.7 answers a model error for a whole dynamic batch: a malformed request fails
the requests batched with it too (their clients retry). The client validates its input
before sending, so only foreign clients can cause that.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from pydantic import ValidationError
from pytriton.model_config import DynamicBatcher, ModelConfig
from pytriton.triton import Triton, TritonConfig

from leadre_model.device import resolve_device
from leadre_model.errors import UsageError
from services.common.contracts import CATALOG_STREAM, INSTANCES_KEY, TRITON_MODEL, CatalogEvent
from services.common.errors import BadRequest
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.inference.bundle import Bundle, Result
from services.inference.registry import current_version, version_dir
from services.inference.tensors import INPUTS, OUTPUTS, Row, pack_response, parse_request

log = logging.getLogger(__name__)
STREAM_PAGE = 1000


def instance_ports(base_port: int, i: int) -> tuple[int, int, int]:
    """(gRPC, HTTP, metrics) ports of instance ``i``: three consecutive ports each."""
    return base_port + 3 * i, base_port + 3 * i + 1, base_port + 3 * i + 2


class InferenceService:
    """One Triton server with the ``leadre_retrieval`` model (module doc)."""

    def __init__(self, settings: Settings, registry: str | Path, grpc_port: int,
                 http_port: int, metrics_port: int) -> None:
        self.settings, self.registry = settings, Path(registry)
        self.ports = (grpc_port, http_port, metrics_port)
        self.url = f"grpc://{settings.inference_advertise_host}:{grpc_port}"
        self.redis = redis_client(settings, socket_timeout=5, socket_connect_timeout=5)
        self._bundle: Bundle | None = None
        self._refused: dict[str, str] = {}
        self._last_id = "0"
        self._stop = threading.Event()
        self._inflight, self._inflight_lock = 0, threading.Lock()
        self._threads: list[threading.Thread] = []
        self._triton: Triton | None = None
        self._redis_warned = 0.0
        self.device = resolve_device(settings.device)

    @property
    def refused_versions(self) -> dict[str, str]:
        """Versions this instance would not serve, with the reason."""
        return dict(self._refused)

    @property
    def bundle(self) -> Bundle:
        if self._bundle is None:
            raise RuntimeError("no version loaded")
        return self._bundle

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Load the current version, start Triton and the background threads. ValueError
        (clear message) when the registry has no usable current version."""
        if self.settings.inference_threads:
            torch.set_num_threads(self.settings.inference_threads)
        version = current_version(self.registry)
        if version is None:
            raise UsageError(f"{self.registry}: no current version to serve; publish one first "
                             "(services.inference.registry.publish_version)")
        bundle = Bundle.load(version_dir(self.registry, version), version, self.device)
        self._catch_up(bundle, upto="+")
        self._bundle = bundle
        grpc, http, metrics = self.ports
        log_dir = Path(self.settings.inference_log_dir or tempfile.gettempdir())
        log_dir.mkdir(parents=True, exist_ok=True)
        host = self.settings.bind_host
        self._triton = Triton(config=TritonConfig(
            grpc_port=grpc, http_port=http, metrics_port=metrics, grpc_address=host,
            http_address=host, metrics_address=host, log_verbose=0,
            log_file=log_dir / f"leadre-triton-{grpc}.log"))
        self._triton.bind(TRITON_MODEL, self._infer, inputs=INPUTS, outputs=OUTPUTS, strict=True,
                          config=ModelConfig(max_batch_size=self.settings.inference_max_batch,
                                             batcher=DynamicBatcher(max_queue_delay_microseconds=(
                                                 self.settings.inference_queue_delay_us))))
        try:
            self._triton.run()
        except Exception:
            self._triton.stop()
            raise
        for target, name in ((self._watch, "watch"), (self._heartbeat, "heartbeat")):
            t = threading.Thread(target=target, name=f"inference-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        log.info("inference instance ready", extra={"url": self.url, "version": version})

    def stop(self) -> None:
        """Deregister, drain in-flight requests, stop Triton and the threads."""
        self._stop.set()
        try:
            self.redis.hdel(INSTANCES_KEY, self.url)
        except redis.RedisError as exc:
            log.warning("could not deregister", extra={"error": str(exc)})
        deadline = time.monotonic() + self.settings.inference_drain_s
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._triton is not None:
            self._triton.stop()
        for t in self._threads:
            t.join(timeout=10)
        self.redis.close()
        log.info("inference instance stopped", extra={"url": self.url})

    def serve_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """Start, block until SIGTERM/SIGINT, then stop (main thread only)."""
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        if on_ready is not None:
            on_ready()
        try:
            while not done.wait(0.5):
                if self._triton is not None and not self._triton.is_alive():
                    raise RuntimeError("the Triton server process died (see its log)")
        finally:
            self.stop()

    # -- requests -------------------------------------------------------------------------
    @contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._inflight_lock:
            self._inflight += 1
        try:
            yield
        finally:
            with self._inflight_lock:
                self._inflight -= 1

    def _infer(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        bundle = self.bundle  # this batch's version, whatever a swap does meanwhile
        with self._tracked():
            per_request = [parse_request(r.data, self.settings.inference_max_beam) for r in requests]
            rows = [row for rs in per_request for row in rs]
            try:
                ids = bundle.token_ids([r.prompt for r in rows])
                adv_at = [i for i, r in enumerate(rows) if r.advertiser_prompt]
                adv_ids = dict(zip(adv_at, bundle.token_ids([rows[i].advertiser_prompt or ""
                                                             for i in adv_at])))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            results = self._decode(bundle, rows, ids, adv_ids)
            out, start = [], 0
            for rs in per_request:
                k = max(r.top_k for r in rs)
                out.append(pack_response(results[start:start + len(rs)], k, bundle.version))
                start += len(rs)
            return out

    def _decode(self, bundle: Bundle, rows: list[Row], ids: list[list[int]],
                adv_ids: dict[int, list[int]]) -> list[Result]:
        by_beam: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_beam[r.beam_width].append(i)
        results: list[Result | None] = [None] * len(rows)
        for beam, idx in by_beam.items():
            advs = [adv_ids.get(i) for i in idx]
            excl = [rows[i].exclude for i in idx]
            got = bundle.retrieve([ids[i] for i in idx], beam, [rows[i].top_k for i in idx],
                                  advs if any(a is not None for a in advs) else None,
                                  exclude=excl if any(excl) else None)
            for i, res in zip(idx, got):
                results[i] = res
        return results  # type: ignore[return-value]

    # -- background -----------------------------------------------------------------------
    def _heartbeat(self) -> None:
        while not self._stop.is_set():
            try:
                self.redis.hset(INSTANCES_KEY, self.url, f"{time.time():.3f}")
            except redis.RedisError as exc:
                self._warn_redis(exc)
            self._stop.wait(self.settings.inference_heartbeat_s)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._maybe_swap()
                self._tail(int(self.settings.inference_poll_s * 1000))
            except redis.RedisError as exc:
                self._warn_redis(exc)
                self._stop.wait(self.settings.inference_poll_s)
            except Exception:  # keep serving the current version whatever went wrong
                log.exception("inference watcher round failed")
                self._stop.wait(self.settings.inference_poll_s)

    def _maybe_swap(self) -> None:
        version = current_version(self.registry)
        if version is None or version == self.bundle.version or version in self._refused:
            return
        try:
            new = Bundle.load(version_dir(self.registry, version), version, self.device)
        except Exception as exc:  # noqa: BLE001 — any load failure means: refuse, keep serving
            self._refused[version] = str(exc)
            log.error("refusing version", extra={"version": version, "reason": str(exc),
                                                 "serving": self.bundle.version})
            return
        self._catch_up(new, upto=self._last_id)
        self._bundle = new
        log.info("serving new version", extra={"version": version})

    def _catch_up(self, bundle: Bundle, upto: str) -> None:
        """Replay the catalog stream from its start up to ``upto`` onto ``bundle``."""
        if upto == "0":
            return
        start = "-"
        try:
            while True:
                page = self.redis.xrange(CATALOG_STREAM, min=start, max=upto, count=STREAM_PAGE)
                self._apply(bundle, page)
                if upto == "+" and page:
                    self._last_id = page[-1][0]
                if len(page) < STREAM_PAGE:
                    return
                start = "(" + page[-1][0]
        except redis.RedisError as exc:
            self._warn_redis(exc)

    def _tail(self, block_ms: int) -> None:
        got = self.redis.xread({CATALOG_STREAM: self._last_id}, count=STREAM_PAGE, block=block_ms)
        for _, entries in got or []:
            self._apply(self.bundle, entries)
            if entries:
                self._last_id = entries[-1][0]

    def _apply(self, bundle: Bundle, entries: list[tuple[str, dict[str, str]]]) -> None:
        events = []
        for entry_id, fields in entries:
            try:
                events.append(CatalogEvent.from_fields(fields))
            except (ValidationError, ValueError) as exc:
                log.warning("skipping malformed catalog event", extra={"id": entry_id,
                                                                       "error": str(exc)[:200]})
        for ev, reason in bundle.apply(events):
            log.warning("skipping catalog event", extra={"op": ev.op.value, "ad_id": ev.ad_id,
                                                         "reason": reason, "version": bundle.version})

    def _warn_redis(self, exc: Exception) -> None:
        if time.monotonic() - self._redis_warned > 30:  # once per 30 s, not per round
            self._redis_warned = time.monotonic()
            log.warning("redis unavailable; serving without catalog updates/heartbeat",
                        extra={"error": str(exc)})


__all__ = ["InferenceService", "instance_ports"]
