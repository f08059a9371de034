"""Coalescing, ARPU-tier priority and the capacity budget, on a fake clock."""

from __future__ import annotations

from services.nearline.scheduler import TierScheduler


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_burst_of_one_user_is_one_job_on_the_latest_state() -> None:
    clock = Clock()
    s = TierScheduler(coalesce_s=0.1, clock=clock)
    for i in range(5):
        s.add("u1", 3, f"1-{i}", seq=i + 1)
    assert s.take(10) == []  # still inside the coalescing window
    clock.t = 0.2
    (job,) = s.take(10)
    assert job.entry_ids == {f"1-{i}" for i in range(5)} and job.seq == 5
    assert s.stats.coalesced[3] == 4
    # A new event while the job is in flight waits for it, then runs once more.
    s.add("u1", 3, "1-9", seq=6)
    clock.t = 1.0
    assert s.take(10) == []
    s.done("u1")
    assert [j.seq for j in s.take(10)] == [6]


def test_high_tiers_first_and_low_tiers_deferred_then_skipped() -> None:
    clock = Clock()
    s = TierScheduler(coalesce_s=0, capacity_per_s=2, burst=2, skip_after_s=5,
                      protected_tier=20, clock=clock)
    for u, tier in [("low", 0), ("mid", 12), ("top", 24), ("vip", 21)]:
        s.add(u, tier, f"e-{u}", seq=1)
    taken = [j.user_id for j in s.take(10)]
    assert taken == ["top", "vip"]  # the budget allows 2: highest tiers first
    assert s.stats.deferred[12] == 1 and s.stats.deferred[0] == 1
    clock.t = 0.5  # half a second refills one token
    assert [j.user_id for j in s.take(10)] == ["mid"]
    assert s.stats.deferred[0] == 1  # counted once per job
    clock.t = 10.0
    skipped = s.expire()
    assert [j.user_id for j in skipped] == ["low"] and s.stats.skipped[0] == 1
    assert s.idle() is False  # top, vip, mid still in flight
    for u in ("top", "vip", "mid"):
        s.done(u)
    assert s.idle()


def test_protected_tiers_are_never_skipped_and_a_user_moving_up_is_promoted() -> None:
    clock = Clock()
    s = TierScheduler(coalesce_s=0, capacity_per_s=1, burst=1, skip_after_s=1,
                      protected_tier=20, clock=clock)
    s.add("a", 22, "1", 1)
    s.add("b", 2, "2", 1)
    s.add("b", 23, "3", 2)  # b's ARPU tier rose: its job moves to tier 23
    assert [j.user_id for j in s.take(1)] == ["b"]
    clock.t = 100.0
    assert s.expire() == []  # a is protected
    assert s.depth()[22] == 1
