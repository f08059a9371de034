"""The nearline worker on real Redis and a real User Server, with in-process stand-in
inference clients (the end-to-end test uses the real Triton service): fresh lists, acks
after writes, failover, dead letters, reclaiming a dead consumer's entries."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import redis

from services.common import keys
from services.common.contracts import BALANCE_COUNTER
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.nearline.worker import NearlineWorker
from tests.services.helpers import StandInClient, seed


def _worker(settings: Settings, standins: dict[str, StandInClient], version_dir: Path,
            **overrides: object) -> NearlineWorker:
    s = settings.model_copy(update={"worker_name": "w1", "worker_batch_size": 4, **overrides})
    w = NearlineWorker(s, standins.__getitem__, lambda: version_dir)
    assert w.start()
    return w


def _until(cond: Callable[[], bool], w: NearlineWorker, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        w.tick()


def _record(addr: str, users: list[str], per_user: int, rds: redis.Redis) -> None:
    """Each user clicks ``per_user`` ads that exist, newer than their seeded history."""
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(addr))
    ads = rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 20)
    behaviors = [pb.Behavior(user_id=u, ts=1_900_000_000 + i, domain="ad", action="click",
                             item_id=ads[(j + i) % len(ads)])
                 for i in range(per_user) for j, u in enumerate(users)]
    assert stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=behaviors)).recorded == len(behaviors)


def _fresh(rds: redis.Redis, users: list[str]) -> bool:
    return all(rds.get(keys.user_key(u, "lv")) == rds.get(keys.user_key(u, "seq")) for u in users)


def test_bursts_are_coalesced_and_every_list_reflects_the_last_event(
        settings, rds, user_server, standins, version_dir, svc_world) -> None:
    seed(settings, svc_world[0])
    users = sorted(rds.smembers(keys.USERS))[:6]
    w = _worker(settings, standins, version_dir)
    _record(user_server, users, per_user=5, rds=rds)
    _until(lambda: _fresh(rds, users), w)
    w.drain()
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0
    calls = sum(c.calls for c in standins.values())
    assert calls < 30 / 4  # 30 events → far fewer users × batches than events
    assert all(c.calls for c in standins.values())  # the global counter used both instances
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(user_server))
    for u in users:
        lst = stub.GetList(pb.GetListRequest(user_id=u))
        assert lst.hit and lst.model_version == "standin" and len(lst.ads) >= 10


def test_a_failing_instance_is_skipped(settings, rds, user_server, standins, version_dir,
                                       svc_world) -> None:
    seed(settings, svc_world[0], histories=False)
    users = sorted(rds.smembers(keys.USERS))[:4]
    standins["grpc://a:1"].fail = True
    rds.set(BALANCE_COUNTER, 1)  # the next INCR picks instance a (index 2 % 2 = 0)
    w = _worker(settings, standins, version_dir)
    _record(user_server, users, per_user=1, rds=rds)
    _until(lambda: _fresh(rds, users), w)
    assert standins["grpc://a:1"].calls >= 1 and standins["grpc://b:2"].calls >= 1
    assert b'inference_failures_total{instance="grpc://a:1"} 1.0' in w.m.exposition()[0]


def test_malformed_events_go_to_the_dead_letter_stream(settings, rds, standins, version_dir) -> None:
    w = _worker(settings, standins, version_dir)
    rds.xadd(keys.BEHAVIOR_STREAM, {"user_id": "u1", "seq": "x"})
    rds.xadd(keys.BEHAVIOR_STREAM, {"junk": "1"})
    w.tick()
    dead = rds.xrange(keys.BEHAVIOR_DEAD)
    assert len(dead) == 2 and "seq" in dead[0][1]["reason"] and dead[1][1]["orig_junk"] == "1"
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0


def test_entries_of_a_dead_consumer_are_reclaimed(settings, rds, user_server, standins,
                                                  version_dir, svc_world) -> None:
    seed(settings, svc_world[0], histories=False)
    users = sorted(rds.smembers(keys.USERS))[:3]
    _worker(settings, standins, version_dir)  # creates the group
    _record(user_server, users, per_user=2, rds=rds)
    # A consumer reads everything and dies before acking.
    rds.xreadgroup(keys.WORKER_GROUP, "dead", {keys.BEHAVIOR_STREAM: ">"}, count=100)
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 6
    time.sleep(settings.worker_claim_idle_ms / 1000 + 0.1)
    w = _worker(settings, standins, version_dir, worker_name="w2")
    _until(lambda: _fresh(rds, users), w)
    w.drain()
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0


def test_ads_the_user_converted_on_are_never_served_again(
        settings, rds, user_server, standins, version_dir, svc_world) -> None:
    seed(settings, svc_world[0])
    users = sorted(rds.smembers(keys.USERS))[:3]
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(user_server))
    ads = rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 5)
    conv = [pb.Behavior(user_id=u, ts=1_900_000_000 + i, domain="ad", action=a, item_id=ads[i])
            for u in users for i, a in enumerate(("click", "conversion", "conversion"))]
    assert stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=conv)).recorded == len(conv)
    w = _worker(settings, standins, version_dir)
    _until(lambda: _fresh(rds, users), w)
    w.drain()
    for u in users:
        served = {a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=u)).ads}
        assert served and not served & {ads[1], ads[2]}  # converted: masked per request


def test_partitions_on_one_node_dead_letters_and_a_write_no_replica_confirms(
        settings, rds, bg, standins, version_dir, svc_world) -> None:
    """``behavior_partitions=3`` on one Redis: every partition gets events, one worker
    consumes all three (a malformed entry in partition 2 goes to that partition's dead
    letters); ``durable_replicas=1`` on a Redis without replicas: UNAVAILABLE, saying why."""
    from services.user_server.server import start_user_server

    s = settings.model_copy(update={"behavior_partitions": 3})
    streams = keys.behavior_streams(3)
    seed(s, svc_world[0], histories=False)
    users = sorted(rds.smembers(keys.USERS))[:9]
    for durable in (0, 1):
        us, port, store, _ = bg.run(start_user_server(
            s.model_copy(update={"durable_replicas": durable, "durable_timeout_ms": 50}), port=0))
        try:
            if not durable:
                w = _worker(s, standins, version_dir)
                _record(f"127.0.0.1:{port}", users, per_user=2, rds=rds)
                rds.xadd(streams[2][0], {"junk": "1"})
                _until(lambda: _fresh(rds, users) and rds.xlen(streams[2][1]) == 1, w)
                w.drain()
                assert all(rds.xlen(st) and not rds.xpending(st, keys.WORKER_GROUP)["pending"]
                           for st, _ in streams)
                continue
            stub = pb_grpc.UserServerStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
            with pytest.raises(grpc.RpcError) as e:
                stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=[pb.Behavior(
                    user_id=users[0], ts=1_900_000_100, domain="ad", action="click",
                    item_id=rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 0)[0])]), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "0 of 1 replicas" in e.value.details()
        finally:
            bg.run(us.stop(grace=0.5))
            bg.run(store.close())
