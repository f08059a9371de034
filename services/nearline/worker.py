"""The nearline worker: a consumer of the behaviour stream that keeps every user's LEADRE
list fresh.

At-least-once: entries are read with a consumer group and acked only after the user's
list is written (or found already newer); a restarted worker first re-reads its own
pending entries, and every worker periodically takes over entries idle for
``worker_claim_idle_ms`` from dead consumers (XAUTOCLAIM). Malformed entries, and entries
whose computation failed ``MAX_FAILURES`` times, go to the dead-letter stream with the
reason. Scheduling (coalescing, ARPU tiers, capacity budget): :mod:`.scheduler`.

Backpressure: a worker holds at most ``worker_max_pending`` entries read and not yet
acked (reads, recovery and claims ask for no more than the room left); when inference is
slow the rest waits in the stream, for this worker or another one.

Partitions (``behavior_partitions`` N > 1, :func:`keys.behavior_streams`): every worker
reads every partition stream, one command each (on a cluster they are in different slots),
starting at a rotating one; when none had anything it blocks on one of them for its share
of the block time. An entry is named ``<id>/<partition>`` inside the worker (stream ids
are unique per stream only; partition 0 keeps the bare id). A user's events are all in one
partition, so their order holds.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import redis

from services.common import keys
from services.common.events import TIERS, BehaviorEvent, dead_letter_fields, parse_fields
from services.common.metrics import AGE_BUCKETS, Metrics
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.common.userstate import UserSnapshot, read_snapshot
from services.nearline.balancer import InstanceBalancer, RetrievalClient
from services.nearline.prompts import PromptSource
from services.nearline.scheduler import Job, TierScheduler
from services.nearline.writer import ListWriter

log = logging.getLogger(__name__)
MAX_FAILURES = 5  # computations of one entry before it is dead-lettered
VERSION_POLL_S, CATALOG_POLL_S, CLAIM_EVERY_S = 5.0, 1.0, 2.0
VersionResolver = Callable[[], Path | None]


class WorkerMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("leadre_worker")
        self.events = self.counter("events_total", "stream entries", ("result",))
        self.depth = self.gauge("queue_depth", "users waiting, per ARPU tier", ("tier",))
        self.tier_jobs = self.counter("tier_jobs_total", "jobs per tier and outcome",
                                      ("tier", "outcome"))
        self.in_flight = self.gauge("in_flight_users", "users being inferred now")
        self.inference = self.histogram("inference_seconds", "one inference call (a batch)")
        self.batch = self.histogram("batch_users", "users per inference call",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
        self.failures = self.counter("inference_failures_total", "failed calls", ("instance",))
        self.writes = self.counter("list_writes_total", "list writes", ("result",))
        self.freshness = self.histogram("event_to_list_seconds",
                                        "from a behaviour event to its user's new list",
                                        buckets=AGE_BUCKETS)
        self.instances = self.gauge("healthy_instances", "inference instances with a heartbeat")
        self.instance_calls = self.gauge("instance_calls_in_flight",
                                         "inference calls in flight per instance", ("instance",))


class NearlineWorker:
    def __init__(self, settings: Settings, client_factory: Callable[[str], RetrievalClient],
                 resolve_version: VersionResolver) -> None:
        s = self.s = settings
        self.r = redis_client(s)
        self.name = s.worker_name or socket.gethostname()
        self.m = WorkerMetrics()
        self.scheduler = TierScheduler(coalesce_s=s.worker_coalesce_ms / 1000,
                                       capacity_per_s=s.worker_capacity_per_s,
                                       burst=max(s.worker_batch_size, s.worker_capacity_per_s or 1),
                                       skip_after_s=s.worker_skip_after_s,
                                       protected_tier=s.worker_protected_tier)
        self.balancer = InstanceBalancer(
            self.r, client_factory, ttl_s=s.instance_ttl_s,
            on_failure=lambda url, _: self.m.failures.labels(url).inc())
        self.writer = ListWriter(self.r, s.list_ttl_s, s.list_size)
        self.resolve_version = resolve_version
        self.source: PromptSource | None = None
        self.pool = ThreadPoolExecutor(s.worker_concurrency, thread_name_prefix="infer")
        self.futures: set[Future[None]] = set()
        self.held: set[str] = set()  # entries read and not yet acked (≤ worker_max_pending)
        self.done: queue.SimpleQueue[tuple[list[Job], bool]] = queue.SimpleQueue()
        self.failures: Counter[str] = Counter()  # entry id -> failed computations
        self._failures_lock = threading.Lock()
        self.stopping = threading.Event()
        self._reported = TierStatsCursor()
        self._polled = {"version": -1e9, "catalog": -1e9, "claim": -1e9}
        self.streams = keys.behavior_streams(s.behavior_partitions)
        self._reported_instances: set[str] = set()
        self._next_partition = 0

    # -- lifecycle ----------------------------------------------------------------------
    def run(self) -> None:
        """Consume until :meth:`stop`; then finish in-flight work (up to worker_drain_s).
        Redis going away is waited out (logged), not fatal."""
        started = False
        while not self.stopping.is_set():
            try:
                if not started:
                    started = self.start()
                    if not started:
                        log.info("waiting for a published model version")
                        self.stopping.wait(1.0)
                    continue
                self.tick()
            except redis.RedisError as exc:
                log.warning("redis unavailable; retrying", extra={"error": str(exc)[:200]})
                self.stopping.wait(1.0)
        self.drain()

    def start(self) -> bool:
        """Join the group, load the served version, take back this consumer's own pending
        entries. False while no version is published."""
        self._ensure_group()
        self._refresh_version()
        if self.source is None:
            return False
        self._recover_own()
        return True

    def stop(self) -> None:
        self.stopping.set()

    def drain(self) -> None:
        """Wait for in-flight inference, write and ack what finishes; what is still queued
        stays pending in the group for the next worker (or this one after a restart)."""
        wait(self.futures, timeout=self.s.worker_drain_s)
        self._collect()
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("drained", extra={"queued_users": len(self.scheduler.pending)})

    def tick(self) -> None:
        """One round: completions, periodic upkeep, dispatch, read new entries, dispatch."""
        self._collect()
        now = time.monotonic()
        if now - self._polled["version"] > VERSION_POLL_S:
            self._refresh_version()
        if now - self._polled["catalog"] > CATALOG_POLL_S and self.source is not None:
            self._polled["catalog"] = now
            self.source.follow_catalog()
        if now - self._polled["claim"] > CLAIM_EVERY_S:
            self._polled["claim"] = now
            self._reclaim()
        self._dispatch()
        busy = not self.scheduler.idle()
        block = max(1, min(self.s.worker_block_ms, 10 if busy else self.s.worker_block_ms))
        if self._room():
            self._read_new(block)
        else:  # full: wait for completions instead of reading more
            self.stopping.wait(block / 1000)
        self._dispatch()
        self._report()

    def _read_new(self, block_ms: int) -> None:
        """New entries of every partition, up to the room left (see the module doc)."""
        n = len(self.streams)
        first = self._next_partition
        self._next_partition = (first + 1) % n
        if n > 1:
            got_any = False
            for p in [(first + i) % n for i in range(n)]:
                if room := self._room():
                    got = self.r.xreadgroup(keys.WORKER_GROUP, self.name,
                                            {self.streams[p][0]: ">"}, count=room)
                    got_any |= self._ingest_reply(got, p, "new")
            if got_any or not self._room():
                return
            block_ms = max(1, block_ms // n)
        got = self.r.xreadgroup(keys.WORKER_GROUP, self.name, {self.streams[first][0]: ">"},
                                count=self._room(), block=block_ms)
        self._ingest_reply(got, first, "new")

    def _ingest_reply(self, got: Sequence[Any] | None, p: int, how: str) -> bool:
        entries = [e for _, es in got or [] for e in es]
        self._ingest(entries, how, p)
        return bool(entries)

    # -- stream -------------------------------------------------------------------------
    def _ensure_group(self) -> None:
        for stream, _ in self.streams:
            try:
                self.r.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def _room(self) -> int:
        """Entries this worker may still read (``worker_read_count`` at most)."""
        return max(0, min(self.s.worker_read_count, self.s.worker_max_pending - len(self.held)))

    def _release(self, entry_ids: Iterable[str]) -> None:
        with self._failures_lock:
            self.held.difference_update(entry_ids)

    def _recover_own(self) -> None:
        """Entries delivered to this consumer name before a crash and never acked (up to
        the bound; the rest are claimed back later, see :meth:`_reclaim`)."""
        for p, (stream, _) in enumerate(self.streams):
            last = "0"
            while room := self._room():
                got = self.r.xreadgroup(keys.WORKER_GROUP, self.name, {stream: last}, count=room)
                entries = got[0][1] if got else []
                if not entries:
                    break
                self._ingest(entries, "recovered", p)
                last = entries[-1][0]

    def _reclaim(self) -> None:
        """XAUTOCLAIM entries idle past worker_claim_idle_ms (their consumer died)."""
        for p, (stream, _) in enumerate(self.streams):
            start = "0-0"
            for _ in range(100):  # bounded per round
                room = self._room()
                if not room:
                    return
                cursor, entries, *_ = self.r.xautoclaim(
                    stream, keys.WORKER_GROUP, self.name,
                    min_idle_time=self.s.worker_claim_idle_ms, start_id=start, count=room)
                self._ingest([e for e in entries if e and e[1]], "reclaimed", p)
                if cursor in ("0-0", b"0-0") or not entries:
                    break
                start = cursor

    def _ingest(self, entries: Sequence[tuple[str, dict[str, str]]], how: str, p: int = 0) -> None:
        for entry_id, fields in entries:
            ref = entry_id if p == 0 else f"{entry_id}/{p}"
            if not fields:  # deleted from the stream (trimmed) while pending
                self.r.xack(self.streams[p][0], keys.WORKER_GROUP, entry_id)
                continue
            ev = parse_fields(BehaviorEvent, fields)
            if isinstance(ev, str):
                self._dead_letter(ref, fields, ev)
                continue
            with self._failures_lock:
                self.held.add(ref)
            self.scheduler.add(ev.user_id, ev.tier, ref, ev.seq)
            self.m.events.labels(how).inc()

    def _xack(self, refs: Iterable[str]) -> None:
        """XACK entries (``<id>`` or ``<id>/<partition>``), one command per partition."""
        by_partition: dict[int, list[str]] = {}
        for ref in refs:
            entry_id, _, p = ref.partition("/")
            by_partition.setdefault(int(p or 0), []).append(entry_id)
        for p, ids in by_partition.items():
            self.r.xack(self.streams[p][0], keys.WORKER_GROUP, *ids)

    def _dead_letter(self, ref: str, fields: dict[str, str], reason: str) -> None:
        entry_id, _, p = ref.partition("/")
        stream, dead = self.streams[int(p or 0)]
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(dead, dead_letter_fields(entry_id, fields, reason),
                  maxlen=self.s.behavior_stream_maxlen, approximate=True)
        pipe.xack(stream, keys.WORKER_GROUP, entry_id)
        pipe.execute()
        self._release([ref])
        self.m.events.labels("dead_letter").inc()
        log.warning("dead-lettered", extra={"entry": entry_id, "reason": reason})

    # -- scheduling ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        for job in self.scheduler.expire():  # skipped under pressure: the old list stays
            self._xack(job.entry_ids)
            self._release(job.entry_ids)
        while len(self.futures) < self.s.worker_concurrency and not self.stopping.is_set():
            jobs = self.scheduler.take(self.s.worker_batch_size)
            if not jobs:
                break
            fut = self.pool.submit(self._run_batch, jobs)
            self.futures.add(fut)
            fut.add_done_callback(self.futures.discard)

    def _collect(self) -> None:
        while True:
            try:
                jobs, ok = self.done.get_nowait()
            except queue.Empty:
                return
            for job in jobs:
                self.scheduler.done(job.user_id)
                if not ok:
                    self._retry_later(job)

    def _retry_later(self, job: Job) -> None:
        """Re-queue a failed job after a backoff; dead-letter entries that keep failing."""
        with self._failures_lock:
            fails = {e: self.failures[e] for e in job.entry_ids}
        for e, n in fails.items():
            if n >= MAX_FAILURES:
                self._dead_letter(e, {"user_id": job.user_id}, f"failed {n} times")
                with self._failures_lock:
                    self.failures.pop(e, None)
            else:
                requeued = self.scheduler.add(job.user_id, job.tier, e, job.seq)
                requeued.first_s = max(requeued.first_s, time.monotonic() + n)

    # -- one batch (pool thread) --------------------------------------------------------
    def _run_batch(self, jobs: list[Job]) -> None:
        ok = False
        try:
            self._compute(jobs)
            ok = True
        except Exception as exc:  # noqa: BLE001 — instances down: retried, then dead-lettered
            with self._failures_lock:
                self.failures.update(e for job in jobs for e in job.entry_ids)
            log.warning("batch failed", extra={"users": len(jobs), "error": str(exc)[:300]})
        finally:
            self.done.put((jobs, ok))

    def _compute(self, jobs: list[Job]) -> None:
        source = self.source
        assert source is not None
        ready: list[tuple[Job, UserSnapshot, str, str | None]] = []
        for job in jobs:
            snap = read_snapshot(self.r, job.user_id)
            if not snap.behaviors:  # history gone (trimmed, re-seeded): nothing to compute
                self._ack(job)
                continue
            try:
                prompt, adv = source.build(snap)
            except Exception as exc:  # noqa: BLE001 — unrenderable state: park it, go on
                for e in job.entry_ids:
                    self._dead_letter(e, {"user_id": job.user_id}, f"prompt: {exc}"[:300])
                continue
            ready.append((job, snap, prompt, adv))
        if not ready:
            return
        prompts = [p for _, _, p, _ in ready]
        with_adv = source.with_advertiser and self.s.advertiser_priors
        advs = [a or "" for _, _, _, a in ready] if with_adv else None
        excl = ([converted_ads(snap) for _, snap, _, _ in ready] if self.s.exclude_converted
                else None)
        t0 = time.perf_counter()
        results, _ = self.balancer.call(
            lambda c: c.retrieve(prompts, self.s.list_beam_width,
                                 min(self.s.list_size, self.s.list_beam_width), advs, excl),
            max_attempts=self.s.worker_max_attempts)
        self.m.inference.observe(time.perf_counter() - t0)
        self.m.batch.observe(len(ready))
        for (job, snap, _, _), res in zip(ready, results, strict=True):
            written = self.writer.write(job.user_id, snap.seq, res)
            self.m.writes.labels("written" if written else "stale").inc()
            self._ack(job)

    def _ack(self, job: Job) -> None:
        self._xack(job.entry_ids)
        self._release(job.entry_ids)
        now_ms = time.time() * 1000
        for e in job.entry_ids:
            with self._failures_lock:
                self.failures.pop(e, None)
            self.m.freshness.observe(max(0.0, now_ms - int(e.split("-")[0])) / 1000)

    # -- upkeep ---------------------------------------------------------------------------
    def _refresh_version(self) -> None:
        self._polled["version"] = time.monotonic()
        version_dir = self.resolve_version()
        if version_dir is None or (self.source is not None
                                   and self.source.version_dir == Path(version_dir)):
            return
        self.source = PromptSource(self.r, Path(version_dir))
        self.source.follow_catalog()
        log.info("serving version", extra={"version_dir": str(version_dir),
                                            "ads": len(self.source.index)})

    def _report(self) -> None:
        for tier, n in enumerate(self.scheduler.depth()):
            self.m.depth.labels(str(tier)).set(n)
        self.m.in_flight.set(len(self.scheduler.in_flight))
        healthy = self.balancer.healthy()
        self.m.instances.set(len(healthy))
        in_flight = self.balancer.in_flight()
        for url in {*healthy, *in_flight, *self._reported_instances}:
            self.m.instance_calls.labels(url).set(in_flight.get(url, 0))
        self._reported_instances = {*healthy, *in_flight}
        self._reported.push(self.scheduler.stats, self.m)


class TierStatsCursor:
    """Turns the scheduler's cumulative per-tier counts into counter increments."""

    OUTCOMES = ("queued", "coalesced", "deferred", "skipped", "taken")

    def __init__(self) -> None:
        self.seen = {o: [0] * TIERS for o in self.OUTCOMES}

    def push(self, stats: object, m: WorkerMetrics) -> None:
        for outcome in self.OUTCOMES:
            now: list[int] = getattr(stats, outcome)
            for tier in range(TIERS):
                if now[tier] != self.seen[outcome][tier]:
                    m.tier_jobs.labels(str(tier), outcome).inc(now[tier] - self.seen[outcome][tier])
                    self.seen[outcome][tier] = now[tier]


def converted_ads(snap: UserSnapshot) -> list[str]:
    """The ads the user converted on (the worker never re-serves them)."""
    return sorted({b.item_id for b in snap.behaviors
                   if b.domain.value == "ad" and b.action.value == "conversion"})
