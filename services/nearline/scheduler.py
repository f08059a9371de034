"""Per-user coalescing and ARPU-tiered priority under a capacity budget (the paper's
Adaptive Resource Distribution, §4.4.1). Pure logic, no I/O: the worker feeds it stream
entries and takes jobs from it.

* **Coalescing**: all pending entries of a user form one job; the job is run once, on the
  user's state as it is when it runs, so it reflects their latest behaviour. A job waits
  ``coalesce_s`` after its first entry (bursts arrive together), and never runs while the
  same user's previous job is in flight.
* **Priority**: 25 tiers, 24 = highest ARPU; :meth:`take` serves higher tiers first, FIFO
  within a tier.
* **Capacity budget**: a token bucket of ``capacity_per_s`` inferences per second (None:
  only the worker's concurrency limits). When eligible demand exceeds what may run now,
  the jobs left waiting are counted as *deferred* (once per job). With ``skip_after_s``,
  a job of a tier below ``protected_tier`` that has waited longer than that is *skipped*:
  the worker acks it without inference and the user keeps their previous list.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from services.common.events import TIERS


@dataclass
class Job:
    user_id: str
    tier: int
    first_s: float  # clock time of the first entry
    entry_ids: set[str] = field(default_factory=set)
    seq: int = 0  # highest state version announced by the entries
    deferred: bool = False


@dataclass
class TierStats:
    """Cumulative counts per tier (the worker turns them into Prometheus counters)."""

    queued: list[int] = field(default_factory=lambda: [0] * TIERS)
    coalesced: list[int] = field(default_factory=lambda: [0] * TIERS)
    deferred: list[int] = field(default_factory=lambda: [0] * TIERS)
    skipped: list[int] = field(default_factory=lambda: [0] * TIERS)
    taken: list[int] = field(default_factory=lambda: [0] * TIERS)


class TokenBucket:
    def __init__(self, rate: float | None, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, max(1.0, burst), clock
        self.tokens, self.at = self.burst, clock()

    def available(self) -> int:
        if self.rate is None:
            return 1 << 30
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return int(self.tokens)

    def spend(self, n: int) -> None:
        if self.rate is not None:
            self.tokens -= n


class TierScheduler:
    def __init__(self, coalesce_s: float = 0.05, capacity_per_s: float | None = None,
                 burst: float | None = None, skip_after_s: float | None = None,
                 protected_tier: int = 20, clock: Callable[[], float] = time.monotonic) -> None:
        self.coalesce_s, self.skip_after_s, self.protected_tier = coalesce_s, skip_after_s, protected_tier
        self.clock = clock
        self.bucket = TokenBucket(capacity_per_s, burst or (capacity_per_s or 1.0), clock)
        self.queues: list[OrderedDict[str, Job]] = [OrderedDict() for _ in range(TIERS)]
        self.pending: dict[str, Job] = {}
        self.in_flight: set[str] = set()
        self.stats = TierStats()

    def add(self, user_id: str, tier: int, entry_id: str, seq: int) -> Job:
        """Queue an entry; merged into the user's waiting job if there is one."""
        job = self.pending.get(user_id)
        if job is None:
            job = Job(user_id, tier, self.clock())
            self.pending[user_id] = job
            self.queues[tier][user_id] = job
            self.stats.queued[tier] += 1
        elif entry_id not in job.entry_ids:
            self.stats.coalesced[job.tier] += 1
            if tier > job.tier:  # the user moved up: serve them at the higher priority
                del self.queues[job.tier][user_id]
                job.tier = tier
                self.queues[tier][user_id] = job
        job.entry_ids.add(entry_id)
        job.seq = max(job.seq, seq)
        return job

    def _eligible(self, job: Job, now: float) -> bool:
        return job.user_id not in self.in_flight and now - job.first_s >= self.coalesce_s

    def take(self, max_jobs: int) -> list[Job]:
        """Up to ``max_jobs`` eligible jobs (and no more than the budget allows), highest
        tier first; the eligible jobs left behind are marked deferred."""
        now = self.clock()
        limit = min(max_jobs, self.bucket.available())
        out: list[Job] = []
        for tier in range(TIERS - 1, -1, -1):
            for job in list(self.queues[tier].values()):
                if not self._eligible(job, now):
                    continue
                if len(out) < limit:
                    del self.queues[tier][job.user_id]
                    del self.pending[job.user_id]
                    self.in_flight.add(job.user_id)
                    self.stats.taken[tier] += 1
                    out.append(job)
                elif not job.deferred:
                    job.deferred = True
                    self.stats.deferred[tier] += 1
        self.bucket.spend(len(out))
        return out

    def expire(self) -> list[Job]:
        """Jobs of unprotected tiers that waited past ``skip_after_s``: removed, to be acked
        without inference."""
        if self.skip_after_s is None:
            return []
        now, out = self.clock(), []
        for tier in range(min(self.protected_tier, TIERS)):
            for job in list(self.queues[tier].values()):
                if now - job.first_s > self.skip_after_s and job.user_id not in self.in_flight:
                    del self.queues[tier][job.user_id]
                    del self.pending[job.user_id]
                    self.stats.skipped[tier] += 1
                    out.append(job)
        return out

    def done(self, user_id: str) -> None:
        """The user's job finished (written, or failed and left for redelivery)."""
        self.in_flight.discard(user_id)

    def depth(self) -> list[int]:
        return [len(q) for q in self.queues]

    def idle(self) -> bool:
        return not self.pending and not self.in_flight
