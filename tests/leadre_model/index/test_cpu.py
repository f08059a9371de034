"""Thread choice of the index build (leadre_model/index/cpu.py)."""

from __future__ import annotations

import os

import torch

from leadre_model.index import cpu


def test_free_cores_is_between_one_and_the_usable_cores():
    assert 1 <= cpu.free_cores() <= len(os.sched_getaffinity(0))


def test_free_cores_counts_the_other_processes_busy_time(monkeypatch):
    # 4 CPUs, 100 ticks each: 150 busy ticks, 50 of them this process's own → the others
    # used one core, three are free; later the others use all four → still one thread.
    stat = iter([(0, 0), (250, 400), (250, 800)])
    own = iter([0, 50, 50])
    monkeypatch.setattr(cpu, "_cpu_times", lambda: next(stat))
    monkeypatch.setattr(cpu, "_own_jiffies", lambda: next(own))
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _: {0, 1, 2, 3})
    monkeypatch.setattr(cpu.FreeCores, "MIN_SPAN_S", 0.0)
    cores = cpu.FreeCores()
    assert cores() == 3
    assert cores() == 1  # never fewer than one
    assert cpu.FreeCores(fixed=2)() == 2  # a configured count always wins


def test_torch_threads_are_restored():
    before = torch.get_num_threads()
    with cpu.torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
