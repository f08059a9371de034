"""Every key layout and process path on a real Redis Cluster (3 masters + 3 replicas with a
password, see cluster.py), reached through ``LEADRE_REDIS_CLUSTER`` + the startup nodes:
the key groups that share a transaction or a script share a slot; the User Server
(RecordBehaviors' scripts and stream appends, UpdateAds' MULTI), the nearline worker (consumer
group, snapshots, balancing counter, versioned writes, dead letters), the catalog applier,
the Mixer (both list sources, real uvicorn), the daily export and the seed's flush all run on it; the
master that holds the behaviour stream fails over to its replica while behaviours are being
recorded and consumed, and no event is lost. And the same settings in real `leadre serve`
processes (user server, worker, mixer), across a second failover."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from leadre_model.data.records import Ad, AdStatus, Behavior
from services.common import keys
from services.common.contracts import BALANCE_COUNTER, CATALOG_STREAM, CatalogEvent, CatalogOp
from services.common.convert import ad_to_pb
from services.common.events import BehaviorEvent, parse_fields
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.redis_client import async_redis_client, mget, redis_client
from services.common.settings import Settings
from services.common.userstate import read_snapshot
from services.launcher import LocalStack, free_port, settings_env
from services.replay import post_behaviors
from services.user_server.seed import flush_leadre_keys, seed_world
from tests.services.common.cluster import LocalCluster
from tests.services.helpers import (
    BackgroundLoop,
    StandInClient,
    one_registry_version,
    retrieve_via_mixer,
    wait_until,
)

USERS = 12


@pytest.fixture
def settings(redis_cluster: LocalCluster, tmp_path: Path) -> Iterator[Settings]:
    """The service fixtures' settings (tests/services/conftest.py) on the cluster: the
    ``user_server`` and ``standins`` fixtures run on it too. Flushed before and after."""
    s = Settings(redis_url=redis_cluster.url, redis_cluster=True,
                 redis_cluster_nodes=redis_cluster.other_nodes,
                 redis_password=redis_cluster.password, user_metrics_port=0,
                 worker_metrics_port=0, bind_host="127.0.0.1", log_json=False,
                 worker_coalesce_ms=0, worker_claim_idle_ms=500, worker_block_ms=100,
                 registry_dir=str(tmp_path / "registry"), live_index_dir=str(tmp_path / "live"))
    def flush() -> None:  # every master; a new client each time (masters may have moved)
        r = redis_client(s)
        r.flushdb()
        r.close()

    flush()
    yield s
    flush()


@pytest.fixture
def rds(settings: Settings) -> Iterator[redis.RedisCluster]:
    r = redis_client(settings)
    yield r
    r.close()


def test_key_groups_share_a_slot_and_users_spread() -> None:
    def slots(*names: str) -> set[int]:
        return {key_slot(n.encode()) for n in names}

    # RecordBehaviors' and the list writer's scripts, the worker's snapshot MULTI.
    assert len(slots(*(keys.user_key("u0001", p) for p in ("profile", "hist", "seq", "list",
                                                           "lv")))) == 1
    # UpdateAds' MULTI; the catalog applier's MULTI (catalog events + acks of updates).
    assert len(slots(keys.ADS, keys.AD_CATEGORY, keys.AD_CLICKS, keys.CATALOG_VERSION,
                     keys.FALLBACK_GLOBAL, keys.fallback_key("Pet Care"), keys.AD_UPDATES_STREAM,
                     keys.AD_UPDATES_DEAD, CATALOG_STREAM)) == 1
    assert len(slots(keys.BEHAVIOR_STREAM, keys.BEHAVIOR_DEAD)) == 1  # dead letter + ack
    assert len(slots(*(keys.user_key(f"u{i:04d}", "hist") for i in range(200)))) > 190


def test_cluster_settings() -> None:
    s = Settings(redis_url="redis://127.0.0.1:1/3", redis_cluster=True)
    with pytest.raises(ValueError, match="db 0 only"):
        redis_client(s)
    env = settings_env(s.model_copy(update={"redis_cluster_nodes": "h1:7001,h2:7002"}))
    assert env["LEADRE_REDIS_CLUSTER"] == "true"  # the launcher's children join the cluster
    assert Settings(**{k[7:].lower(): v for k, v in env.items()}).redis_cluster_nodes == "h1:7001,h2:7002"
    with pytest.raises(ValueError):
        Settings(redis_cluster_nodes="h1")


def test_clients_start_from_any_node_and_need_the_password(
        settings: Settings, redis_cluster: LocalCluster) -> None:
    r = redis_client(settings)
    assert isinstance(r, redis.RedisCluster) and r.ping()
    assert len(r.get_primaries()) == 3 and len(r.get_replicas()) == 3
    r.close()
    # The URL's node is down: the other startup nodes are asked.
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:7099/0"})
    assert redis_client(down).ping()

    async def cross_slot_mget() -> list[str | None]:  # RecordBehaviors' profile read
        async with async_redis_client(down) as ar:
            await ar.set(keys.user_key("u7", "profile"), "{}")
            return await mget(ar, [keys.user_key(f"u{i}", "profile") for i in range(10)])

    assert asyncio.run(cross_slot_mget()) == [None] * 7 + ["{}"] + [None] * 2
    with pytest.raises((redis.RedisError, RedisClusterException)):
        redis_client(settings.model_copy(update={"redis_password": None})).ping()


def test_services_on_the_cluster_across_a_failover(
        settings: Settings, rds: redis.RedisCluster, redis_cluster: LocalCluster,
        bg: BackgroundLoop, user_server: str, standins: dict[str, StandInClient],
        version_dir: Path, svc_world: tuple[Path, Path], tmp_path: Path) -> None:
    from services.nearline.catalog import CatalogApplier
    from services.nearline.worker import NearlineWorker
    from services.pipeline.daily import export_world

    seed_world(rds, svc_world[0], settings)
    users = sorted(rds.smembers(keys.USERS))[:USERS]
    assert {redis_cluster.master_of(keys.user_key(u, "hist")) for u in users} == set(
        redis_cluster.masters())  # the users' state is spread over the three shards
    ads = rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 9)
    seq0 = {u: int(rds.get(keys.user_key(u, "seq")) or 0) for u in users}

    def behaviors(round_: int, n: int) -> list[Behavior]:
        return [Behavior(user_id=u, ts=1_900_000_000 + 10 * round_ + i, domain="ad",
                         action="click", item_id=ads[(i + j + round_) % len(ads)])
                for i in range(n) for j, u in enumerate(users)]

    w = NearlineWorker(settings.model_copy(update={"worker_name": "w-cluster"}),
                       standins.__getitem__, lambda: version_dir)
    worker = threading.Thread(target=w.run, daemon=True)
    worker.start()
    try:
        post_behaviors(user_server, behaviors(0, 1))
        # The behaviour stream's master fails over while behaviours are recorded (one per
        # call) and consumed; then more behaviours, and a malformed entry (dead letter).
        old = redis_cluster.master_of(keys.BEHAVIOR_STREAM)
        during = threading.Thread(target=post_behaviors, args=(user_server, behaviors(1, 2)),
                                  kwargs={"batch": 1, "between": lambda _: time.sleep(0.05)})
        during.start()
        promoted = redis_cluster.failover(old)
        during.join(30)
        assert redis_cluster.master_of(keys.BEHAVIOR_STREAM) == promoted != old
        post_behaviors(user_server, behaviors(2, 1))
        rds.xadd(keys.BEHAVIOR_STREAM, {"not": "an event"})

        def settled() -> bool:
            return (all(rds.get(keys.user_key(u, "lv")) == str(seq0[u] + 4) for u in users)
                    and rds.xlen(keys.BEHAVIOR_DEAD) == 1
                    and rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0)

        wait_until(settled, 30, "every list written from its user's last event")
    finally:
        w.stop()
        worker.join(30)
    # No lost event: one stream entry per recorded behaviour, every seq of every user.
    events = [parse_fields(BehaviorEvent, f) for _, f in rds.xrange(keys.BEHAVIOR_STREAM)]
    good = sorted((e.user_id, e.seq) for e in events if isinstance(e, BehaviorEvent))
    assert good == sorted((u, seq0[u] + i) for u in users for i in range(1, 5))
    assert int(rds.get(keys.user_key(users[0], "seq"))) == seq0[users[0]] + 4
    assert int(rds.get(BALANCE_COUNTER) or 0) >= 1

    # UpdateAds (one MULTI on the {ads} slot) pauses an ad; the applier turns it into a
    # catalog event; the Mixer serves every user's list without it.
    paused = rds.hget(keys.ADS, ads[0])
    ad = Ad.model_validate_json(paused).model_copy(update={"status": AdStatus.PAUSED})
    with grpc.insecure_channel(user_server) as ch:
        pb_grpc.UserServerStub(ch).UpdateAds(pb.UpdateAdsRequest(ads=[ad_to_pb(ad)]))
    applier = CatalogApplier(rds, "c-cluster", Path(settings.live_index_dir),
                             lambda: version_dir / "index")
    assert applier.run_once(block_ms=100) == 1
    event = CatalogEvent.from_fields(rds.xrange(CATALOG_STREAM)[-1][1])
    assert (event.op, event.ad_id) == (CatalogOp.PAUSE, ads[0])
    assert rds.xpending(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP)["pending"] == 0
    served = retrieve_via_mixer(bg, settings, user_server, svc_world[1],
                                {"redis": users, "grpc": users[:2]}, k=8)
    for source, got in served.items():
        assert all(g["list_hit"] and g["model_version"] == "standin" for g in got), (source, got[0])
        assert not any(a["ad_id"] == ads[0] for g in got for a in g["ads"]), source

    # The daily export scans every master; the seed's flush deletes across slots.
    assert export_world(rds, tmp_path / "export")["users"] == 30
    assert flush_leadre_keys(rds) > 0 and not list(rds.scan_iter("leadre:*"))


def test_partitioned_ingest_on_three_masters_keeps_each_users_order(
        settings: Settings, rds: redis.RedisCluster, redis_cluster: LocalCluster,
        bg: BackgroundLoop, standins: dict[str, StandInClient], version_dir: Path,
        svc_world: tuple[Path, Path]) -> None:
    """``behavior_partitions=3``: the three partition streams live on the three masters;
    RecordBehaviors (with ``durable_replicas=1``: a WAIT on each master it wrote to) puts
    each user's events in one partition, in order; one worker consumes every partition and
    every list reflects its user's last event, nothing pending anywhere."""
    from services.nearline.worker import NearlineWorker
    from services.user_server.server import start_user_server

    s = settings.model_copy(update={"behavior_partitions": 3, "durable_replicas": 1})
    streams = keys.behavior_streams(3)
    assert len({redis_cluster.master_of(stream) for stream, _ in streams}) == 3
    assert all(key_slot(a.encode()) == key_slot(b.encode()) for a, b in streams)
    seed_world(rds, svc_world[0], s)
    users = sorted(rds.smembers(keys.USERS))
    ads = rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 9)
    seq0 = {u: int(rds.get(keys.user_key(u, "seq")) or 0) for u in users}
    us, port, store, _ = bg.run(start_user_server(s, port=0))
    w = NearlineWorker(s.model_copy(update={"worker_name": "w-parts"}), standins.__getitem__,
                       lambda: version_dir)
    worker = threading.Thread(target=w.run, daemon=True)
    worker.start()
    behaviors = [Behavior(user_id=u, ts=1_900_000_000 + i, domain="ad", action="click",
                          item_id=ads[(i + j) % len(ads)])
                 for i in range(3) for j, u in enumerate(users)]
    try:
        post_behaviors(f"127.0.0.1:{port}", behaviors, batch=16)
        wait_until(lambda: all(rds.get(keys.user_key(u, "lv")) == str(seq0[u] + 3)
                               for u in users), 30, "every list written from the last event")
        wait_until(lambda: sum(rds.xpending(stream, keys.WORKER_GROUP)["pending"]
                               for stream, _ in streams) == 0, 10, "every entry acked")
        # Durable mode: a retried behaviour found recorded still gets an event (its event
        # may have been lost with a master while its history write survived).
        last = behaviors[-1]
        stream = streams[keys.partition_of(last.user_id, 3)][0]
        n = rds.xlen(stream)
        assert post_behaviors(f"127.0.0.1:{port}", [last]) == 0 and rds.xlen(stream) == n + 1
        dup = rds.xrevrange(stream, count=1)[0]
        rds.xdel(stream, dup[0])  # the checks below count the original events
    finally:
        w.stop()
        worker.join(30)
        bg.run(us.stop(grace=0.5))
        bg.run(store.close())
    seen: dict[str, list[int]] = {}
    for p, (stream, _) in enumerate(streams):
        events = [parse_fields(BehaviorEvent, f) for _, f in rds.xrange(stream)]
        assert events and all(keys.partition_of(e.user_id, 3) == p for e in events)
        for e in events:
            seen.setdefault(e.user_id, []).append(e.seq)
    assert seen == {u: [seq0[u] + i for i in (1, 2, 3)] for u in users}  # all, in order
    assert not rds.exists(keys.BEHAVIOR_STREAM)


def test_real_processes_on_the_cluster_across_a_failover(
        settings: Settings, rds: redis.RedisCluster, redis_cluster: LocalCluster,
        version_dir: Path, tmp_path: Path) -> None:
    """`leadre serve user-server|worker|mixer` as the launcher's children (the cluster
    settings passed as LEADRE_* variables): the worker joins its group, behaviours recorded
    before and after a failover of the stream's master all reach the stream, the Mixer
    answers, and every process drains and exits 0 on SIGTERM."""
    s = settings.model_copy(update={"user_server_port": free_port(), "mixer_http_port": free_port(),
                                    "mixer_grpc_port": free_port()})
    s = s.model_copy(update={"user_server_addr": f"127.0.0.1:{s.user_server_port}"})
    one_registry_version(s, version_dir)
    stack = LocalStack(s, log_dir=tmp_path / "logs", worker_name="w-cluster-child")
    stack.start(("worker", "user-server", "mixer"))
    try:
        wait_until(lambda: stack.worker_joined() and stack.mixer_ready(), 60,
                   "the worker in its group and the mixer ready")
        with grpc.insecure_channel(s.user_server_addr) as ch:
            record = pb_grpc.UserServerStub(ch).RecordBehaviors
            for i in range(2):
                if i:
                    redis_cluster.failover(redis_cluster.master_of(keys.BEHAVIOR_STREAM))
                record(pb.RecordBehaviorsRequest(behaviors=[pb.Behavior(
                    user_id="u_child", ts=1_900_000_000 + i, domain="ad", action="click",
                    item_id="a0001")]), timeout=10)
        wait_until(lambda: rds.xlen(keys.BEHAVIOR_STREAM) == 2, 10, "both events")
        got = httpx.post(f"http://127.0.0.1:{s.mixer_http_port}/v1/retrieve", timeout=10,
                         json={"user_id": "u_child", "k": 3})
        assert got.status_code == 200 and not got.json()["list_hit"]  # no inference here
        assert not stack.dead()
    finally:
        codes = stack.stop(timeout_s=20)
    logs = {p.name: p.read_text(errors="replace")[-1500:] for p in (tmp_path / "logs").iterdir()}
    assert codes == {"mixer": 0, "user-server": 0, "worker": 0}, logs


def test_tls_cluster(tls_cluster: LocalCluster) -> None:
    """rediss:// + the CA + the password on a TLS-only cluster (client port, cluster bus and
    replication): every node's connection is TLS; the user server's scripts (a cluster
    pipeline, asyncio) and the worker's snapshot MULTI (sync) run over it; a client without
    the CA is refused."""
    from services.user_server.store import UserStore

    s = Settings(redis_url=tls_cluster.url, redis_cluster=True,
                 redis_cluster_nodes=tls_cluster.other_nodes, redis_password=tls_cluster.password,
                 redis_tls_ca=str(tls_cluster.ca))
    r = redis_client(s)
    assert r.ping() and len(r.get_nodes()) == 6
    assert {n.redis_connection.connection_pool.connection_class.__name__
            for n in r.get_nodes()} == {"SSLConnection"}
    users = [f"u_tls_{i}" for i in range(6)]

    async def record() -> list[str]:
        store = UserStore(s)
        try:
            return await store.record_behaviors([
                Behavior(user_id=u, ts=1_900_000_000, domain="ad", action="click", item_id="a1")
                for u in users])
        finally:
            await store.close()

    assert all(asyncio.run(record()))
    assert [read_snapshot(r, u).seq for u in users] == [1] * len(users)
    with pytest.raises((redis.RedisError, RedisClusterException)):
        redis_client(s.model_copy(update={"redis_tls_ca": None}), socket_timeout=3).ping()
    r.flushdb()
    r.close()
