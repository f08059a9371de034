"""Thread choice of the index build (leadre_model/index/cpu.py)."""

from __future__ import annotations

import os

import torch

from leadre_model.index import cpu


def test_free_cores_is_between_one_and_the_usable_cores():
    assert 1 <= cpu.free_cores(0.05) <= len(os.sched_getaffinity(0))


def test_free_cores_counts_idle_time(monkeypatch):
    online = os.cpu_count()
    ticks = iter([(0, 0), (50 * online, 100 * online)])  # half of every CPU idle
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(ticks))
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _: set(range(online)))
    assert cpu.free_cores(0) == max(1, round(online / 2))
    busy = iter([(0, 0), (0, 100)])
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(busy))
    assert cpu.free_cores(0) == 1  # never fewer than one


def test_explicit_threads_win_and_torch_threads_are_restored():
    assert cpu.resolve_threads(3) == 3
    before = torch.get_num_threads()
    with cpu.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
