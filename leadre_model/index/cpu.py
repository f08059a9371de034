"""CPU threads for the index build's torch and ONNX Runtime work.

On a 2-core machine that another job shares, two threads per op are slower than one: every
parallel region waits for the thread that the other job's process displaced. Measured with a
training job beside it: the encoder 68 vs 49 texts/s (torch fp32), 200 vs 61 (bf16), the
RQ-VAE 2.9 vs 16.6 s per epoch (30k ads). On an idle machine every core is used. Results do
not depend on the thread count (same embeddings and codes with 1 and 2 threads), so the
count follows the load: ``FreeCores`` is asked again every few seconds of work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait; user..steal


def _own_jiffies() -> int:
    """CPU time of this process, all threads (utime + stime of /proc/self/stat)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class FreeCores:
    """Cores that other processes left idle since the previous measurement (at least 1, at
    most this process's affinity); ``fixed`` > 0 always answers ``fixed``. Calls closer
    together than ``MIN_SPAN_S`` get the previous answer (the first call waits that long)."""

    MIN_SPAN_S = 0.1

    def __init__(self, fixed: int = 0) -> None:
        self.fixed = fixed
        affinity = getattr(os, "sched_getaffinity", None)  # Linux only
        self.usable = len(affinity(0)) if affinity else os.cpu_count() or 1
        self.online = os.cpu_count() or self.usable
        self._last = None if fixed else self._sample()
        self._answer: int | None = None

    @staticmethod
    def _sample() -> tuple[float, int, int, int] | None:
        try:
            idle, total = _cpu_times()
            return time.monotonic(), idle, total, _own_jiffies()
        except (OSError, ValueError, IndexError):
            return None

    def __call__(self) -> int:
        if self.fixed:
            return self.fixed
        if self._last is None:
            return self.usable
        waited = time.monotonic() - self._last[0]
        if waited < self.MIN_SPAN_S:
            if self._answer is not None:
                return self._answer
            time.sleep(self.MIN_SPAN_S - waited)
        now, last = self._sample(), self._last
        if now is None or now[2] <= last[2]:
            return self._answer or self.usable
        self._last = now
        ticks = now[2] - last[2]  # summed over all CPUs
        busy = ticks - (now[1] - last[1])
        others = max(0, busy - (now[3] - last[3])) / (ticks / self.online)
        self._answer = max(1, min(self.usable, round(self.online - others)))
        return self._answer


def free_cores() -> int:
    """Cores idle right now (sampled over ``FreeCores.MIN_SPAN_S``), at least 1."""
    return FreeCores()()


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (0: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
