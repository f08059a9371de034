"""CPU threads for the index build's torch and ONNX Runtime work.

On a 2-core machine that another job shares, two threads per op are slower than one: every
parallel region waits for the thread that the other job's process displaced. Measured with a
training job beside it: the encoder 68 vs 49 texts/s (torch fp32), 200 vs 61 (bf16), the
RQ-VAE 2.9 vs 16.6 s per epoch (30k ads). On an idle machine every core is used. Results do
not depend on the thread count (same embeddings and codes with 1 and 2 threads).
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


def free_cores(sample_s: float = 0.2) -> int:
    """Cores of this process's affinity that are idle right now (at least 1)."""
    usable = len(os.sched_getaffinity(0))
    try:
        idle0, total0 = _cpu_times()
        time.sleep(sample_s)
        idle1, total1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return usable
    online = os.cpu_count() or usable
    idle = (idle1 - idle0) / max(total1 - total0, 1) * online
    return max(1, min(usable, round(idle)))


def resolve_threads(threads: int) -> int:
    """``threads`` if set, else one per free core (0 = auto)."""
    return threads if threads > 0 else free_cores()


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
