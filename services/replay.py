"""Replaying behaviour events into a running system and waiting for fresh lists (the live
demo, the end-to-end benchmark and test share these)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc
import redis

from leadre_model.data.records import Behavior
from services.common import keys
from services.common.convert import behavior_to_pb
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc


def post_behaviors(addr: str, behaviors: Sequence[Behavior], batch: int = 20,
                   between: Callable[[int], None] | None = None) -> int:
    """RecordBehaviors in batches, in the given order; ``between(n_posted)`` runs after
    each batch (the benchmark kills the worker from there). Returns behaviours recorded."""
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(addr))
    recorded = 0
    for start in range(0, len(behaviors), batch):
        chunk = [behavior_to_pb(b) for b in behaviors[start:start + batch]]
        recorded += stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=chunk),
                                         timeout=10).recorded
        if between is not None:
            between(start + len(chunk))
    return recorded


def stale_users(r: redis.Redis, users: Sequence[str]) -> list[str]:
    """Users whose last written list version is behind their state version."""
    pipe = r.pipeline(transaction=False)
    for u in users:
        pipe.get(keys.user_key(u, "seq"))
        pipe.get(keys.user_key(u, "lv"))
    vals = pipe.execute()
    return [u for u, seq, lv in zip(users, vals[::2], vals[1::2]) if int(lv or 0) < int(seq or 0)]


def wait_fresh(r: redis.Redis, users: Sequence[str], timeout_s: float,
               poll_s: float = 0.1) -> dict[str, float]:
    """Poll until every user's list reflects their newest behaviour; returns the monotonic
    time at which each user was first seen fresh. TimeoutError names how many are stale."""
    fresh_at: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    pending = list(users)
    while pending:
        now = time.monotonic()
        stale = set(stale_users(r, pending))
        for u in pending:
            if u not in stale:
                fresh_at[u] = now
        pending = [u for u in pending if u in stale]
        if pending and now > deadline:
            raise TimeoutError(f"{len(pending)} of {len(users)} users still stale after "
                               f"{timeout_s:g} s")
        if pending:
            time.sleep(poll_s)
    return fresh_at
