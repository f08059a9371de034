"""Every process's Redis client over TLS: a private TLS-only ``redis-server`` (self-signed
CA, ``requirepass``; see conftest.py) reached through ``rediss://`` + ``LEADRE_REDIS_TLS_CA``
+ ``LEADRE_REDIS_PASSWORD``. Real components, each running its own code against it: the
User Server, the nearline worker (with its balancing counter), the Mixer (both list
sources), the catalog applier loop, an inference instance (registration + catalog tail),
``leadre pipeline daily`` (the CLI, settings from the environment), the live demo and the
child processes the launcher starts. A plain-text client, one without the CA and one
without the password are refused."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis
from rich.console import Console

from leadre_model.data.records import Ad, Behavior
from leadre_model.data.store import load_ads, read_table
from leadre_model.index.sid_index import load_index
from services.common import keys
from services.common.contracts import (
    BALANCE_COUNTER,
    CATALOG_STREAM,
    INSTANCES_KEY,
    CatalogEvent,
    CatalogOp,
)
from services.common.convert import ad_to_pb
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.redis_client import async_redis_client, redis_client
from services.common.settings import Settings
from services.launcher import LocalStack, free_port_block, require_redis, settings_env
from services.replay import post_behaviors
from services.user_server.seed import seed_world
from tests.services.common.conftest import TlsRedis
from tests.services.helpers import (
    BackgroundLoop,
    StandInClient,
    one_registry_version,
    retrieve_via_mixer,
    wait_until,
)


@pytest.fixture
def settings(tls_redis: TlsRedis, tmp_path: Path) -> Iterator[Settings]:
    """The service fixtures' settings (tests/services/conftest.py), on the TLS Redis: the
    ``user_server`` and ``standins`` fixtures run on it too. Flushed before and after."""
    s = Settings(redis_url=tls_redis.url, redis_password=tls_redis.password,
                 redis_tls_ca=str(tls_redis.ca), user_metrics_port=0, worker_metrics_port=0,
                 bind_host="127.0.0.1", log_json=False, worker_coalesce_ms=0,
                 worker_claim_idle_ms=500, registry_dir=str(tmp_path / "registry"),
                 live_index_dir=str(tmp_path / "live_index"))
    r = redis_client(s)
    r.flushdb()
    yield s
    r.flushdb()
    r.close()


@pytest.fixture
def rds(settings: Settings) -> Iterator[redis.Redis]:
    r = redis_client(settings)
    yield r
    r.close()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """A child's environment: exactly the three Redis settings an operator sets, no more."""
    assert settings.redis_password is not None
    return {**os.environ, "LEADRE_REDIS_URL": settings.redis_url,
            "LEADRE_REDIS_PASSWORD": settings.redis_password.get_secret_value(),
            "LEADRE_REDIS_TLS_CA": str(settings.redis_tls_ca), "LEADRE_LOG_JSON": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra}


def test_plain_text_unverified_and_unauthenticated_clients_are_refused(
        tls_redis: TlsRedis, settings: Settings) -> None:
    plain = tls_redis.url.replace("rediss://", "redis://")
    with pytest.raises((redis.ConnectionError, redis.TimeoutError)):
        redis.Redis.from_url(plain, password=tls_redis.password, socket_timeout=3,
                             socket_connect_timeout=3).ping()
    no_ca = settings.model_copy(update={"redis_tls_ca": None})  # the system CAs only
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(no_ca, socket_timeout=3).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_client(settings.model_copy(update={"redis_password": None})).ping()

    r = redis_client(settings)
    assert r.ping() and r.connection_pool.connection_class.__name__ == "SSLConnection"
    r.close()

    async def ping() -> bool:
        r = async_redis_client(settings)
        try:
            return bool(await r.ping())
        finally:
            await r.aclose()

    assert asyncio.run(ping())
    assert require_redis(settings).ping()  # `leadre serve all|seed` and the launcher


def test_user_server_worker_and_mixer_over_tls(
        settings: Settings, rds: redis.Redis, bg: BackgroundLoop, user_server: str,
        standins: dict[str, StandInClient], version_dir: Path, svc_world) -> None:
    from services.nearline.worker import NearlineWorker

    seed_world(rds, svc_world[0], settings)
    users = sorted(rds.smembers(keys.USERS))[:4]
    ads = rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 9)
    # User Server (async client): behaviours → history + stream over TLS.
    post_behaviors(user_server, [Behavior(user_id=u, ts=1_900_000_000 + i, domain="ad",
                                          action="click", item_id=ads[(i + j) % len(ads)])
                                 for i in range(2) for j, u in enumerate(users)])
    assert rds.xlen(keys.BEHAVIOR_STREAM) == 2 * len(users)

    # Nearline worker: consumer group, snapshots, prompts, balancing counter, list writes.
    w = NearlineWorker(settings.model_copy(update={"worker_name": "w-tls"}), standins.__getitem__,
                       lambda: version_dir)
    assert w.start()
    deadline = time.monotonic() + 20
    while not all(rds.get(keys.user_key(u, "lv")) == rds.get(keys.user_key(u, "seq"))
                  for u in users):
        assert time.monotonic() < deadline, "lists not fresh after 20 s"
        w.tick()
    w.drain()
    assert int(rds.get(BALANCE_COUNTER) or 0) >= 1
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(user_server))
    assert all(stub.GetList(pb.GetListRequest(user_id=u)).hit for u in users)

    # Mixer: lists read in process (its own UserStore) and through the user server.
    served = retrieve_via_mixer(bg, settings, user_server, svc_world[1],
                                {"redis": users[:1], "grpc": users[:1]}, k=5)
    for source, (got,) in served.items():
        assert got["list_hit"] and got["model_version"] == "standin", (source, got)
        assert len(got["ads"]) == 5


def test_catalog_loop_over_tls(settings: Settings, rds: redis.Redis, user_server: str,
                               svc_world, version_dir: Path) -> None:
    from services.nearline.run import catalog_loop

    one_registry_version(settings, version_dir)
    base = load_ads(svc_world[0])[3]
    new = Ad.model_validate({**base.model_dump(), "ad_id": "ad_tls_1", "name": "TLS kettle"})
    pb_grpc.UserServerStub(grpc.insecure_channel(user_server)).UpdateAds(
        pb.UpdateAdsRequest(ads=[ad_to_pb(new)]))
    stop = threading.Event()
    t = threading.Thread(target=catalog_loop, args=(settings, "w-tls", stop), daemon=True)
    t.start()
    try:
        wait_until(lambda: rds.xlen(CATALOG_STREAM) >= 1, 25, "the catalog event")
    finally:
        stop.set()
        t.join(10)
    event = CatalogEvent.from_fields(rds.xrange(CATALOG_STREAM)[0][1])
    assert (event.op, event.ad_id) == (CatalogOp.ADD, "ad_tls_1")
    assert rds.xpending(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP)["pending"] == 0


def test_inference_instance_registers_and_follows_the_catalog_over_tls(
        settings: Settings, rds: redis.Redis, svc_world, tiny_model: Path, tmp_path: Path) -> None:
    from services.inference.registry import publish_version
    from services.inference.server import InferenceService, instance_ports

    world, index_dir = svc_world
    publish_version(settings.registry_dir, tiny_model, index_dir, world=world)
    index = load_index(index_dir)
    first, later = [a for a, on in zip(index.ad_ids, index.active) if on][:2]
    rds.xadd(CATALOG_STREAM, CatalogEvent(op=CatalogOp.PAUSE, ad_id=first).to_fields())
    s = settings.model_copy(update={"inference_poll_s": 0.2, "inference_heartbeat_s": 0.3,
                                    "inference_drain_s": 1, "inference_log_dir": str(tmp_path)})
    service = InferenceService(s, settings.registry_dir, *instance_ports(free_port_block(3), 0))
    service.start()  # catches up with the catalog stream before serving
    try:
        wait_until(lambda: rds.hget(INSTANCES_KEY, service.url) is not None, 20, "a heartbeat")
        assert not service.bundle.active[service.bundle.row_of[first]]
        rds.xadd(CATALOG_STREAM, CatalogEvent(op=CatalogOp.PAUSE, ad_id=later).to_fields())
        wait_until(lambda: not service.bundle.active[service.bundle.row_of[later]], 20,
                   "the tailed pause")
    finally:
        service.stop()
    assert rds.hget(INSTANCES_KEY, service.url) is None  # deregistered over TLS


def test_daily_pipeline_cli_exports_over_tls(settings: Settings, rds: redis.Redis,
                                             tmp_path: Path) -> None:
    rds.sadd(keys.USERS, "u_tls")
    (Path(settings.registry_dir) / "versions" / "v1").mkdir(parents=True)
    (Path(settings.registry_dir) / "CURRENT").write_text("v1")
    env = _env(settings, LEADRE_REGISTRY_DIR=settings.registry_dir,
               LEADRE_LIVE_INDEX_DIR=settings.live_index_dir)
    done = subprocess.run([sys.executable, "-m", "leadre", "pipeline", "daily", "--workdir",
                           str(tmp_path / "day")], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    # The export ran over TLS; the step after it fails: the version has no index.
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    users = read_table(tmp_path / "day" / "world", "users", columns=["user_id"])
    assert users["user_id"].to_pylist() == ["u_tls"]


def test_live_demo_and_the_launchers_children_over_tls(
        settings: Settings, rds: redis.Redis, version_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from services.demo_live import live_settings, run_live_demo

    for name, value in _env(settings).items():
        if name.startswith("LEADRE_"):
            monkeypatch.setenv(name, value)
    rds.set("leadre:stale", "1")
    with pytest.raises(FileNotFoundError):  # after the flush: the demo has no model yet
        run_live_demo(tmp_path / "demo", Console(quiet=True))
    assert not rds.exists("leadre:stale")

    # The demo's processes: children of the launcher, settings passed as LEADRE_* variables.
    s = live_settings(tmp_path / "demo")
    assert settings_env(s)["LEADRE_REDIS_PASSWORD"] == _env(settings)["LEADRE_REDIS_PASSWORD"]
    one_registry_version(s, version_dir)
    stack = LocalStack(s, log_dir=tmp_path / "logs", worker_name="w-tls-child")
    stack.start(("worker", "user-server"))
    try:
        wait_until(stack.worker_joined, 60, "the worker child joining its consumer group")
        with grpc.insecure_channel(s.user_server_addr) as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
            pb_grpc.UserServerStub(ch).RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=[
                pb.Behavior(user_id="u_child", ts=1_900_000_000, domain="ad", action="click",
                            item_id="a0001")]))
        assert rds.xlen(keys.BEHAVIOR_STREAM) == 1 and not stack.dead()
    finally:
        codes = stack.stop(timeout_s=20)
    logs = {p.name: p.read_text(errors="replace")[-1500:] for p in (tmp_path / "logs").iterdir()}
    assert codes == {"user-server": 0, "worker": 0}, logs
