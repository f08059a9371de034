"""Fault: Redis restarts under a running User Server + Mixer. While it is down the Mixer
answers 503 (HTTP) / UNAVAILABLE (gRPC) with a one-line reason and no traceback; once it is
back, retrievals succeed again within 5 s without restarting anything.

The test runs its own throwaway ``redis-server`` on a free port (never the shared one),
with ``requirepass``: the services reach it through ``LEADRE_REDIS_PASSWORD``.

Oversized and malformed behaviour events reach the dead-letter stream, truncated (shared
Redis, db 15)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from services.common import keys
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.launcher import free_port
from services.mixer.server import start_mixer
from services.user_server.server import start_user_server
from tests.services.helpers import BackgroundLoop, seed

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


class OwnRedis:
    """A private redis-server (RDB in ``dir`` so a restart keeps the seeded data)."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.port, self.dir, self.password = free_port(), workdir, password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--save", "", "--appendonly", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = redis.Redis.from_url(self.url, password=self.password)
        for _ in range(100):
            try:
                r.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def stop(self) -> None:
        """SAVE then SIGKILL: the next start reloads the data, the clients see a dead socket."""
        redis.Redis.from_url(self.url, password=self.password).save()
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path, password="pw-" + tmp_path.name)
    r.start()
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait(10)


def test_redis_restart_503_then_recovery(own_redis: OwnRedis, bg: BackgroundLoop, svc_world) -> None:
    pw = own_redis.password
    s = Settings(redis_url=own_redis.url, redis_password=pw, user_metrics_port=0,
                 bind_host="127.0.0.1", log_json=False, mixer_timeout_s=1.0)
    with pytest.raises(redis.AuthenticationError):  # the private Redis requires AUTH
        redis.Redis.from_url(own_redis.url).ping()
    seed(s.model_copy(update={"redis_url": own_redis.url.replace("//", f"//:{pw}@")}),
         svc_world[0])
    user = min(redis.Redis.from_url(s.redis_url, password=pw, decode_responses=True)
               .smembers(keys.USERS))
    us, us_port, store, _ = bg.run(start_user_server(s, port=0))
    proc, _ = bg.run(start_mixer(s.model_copy(update={"user_server_addr": f"127.0.0.1:{us_port}"}),
                                 lambda: svc_world[1], http_port=0, grpc_port=0))
    body = {"user_id": user, "k": 5}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{proc.http_port}", timeout=10) as http, \
                grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
            stub = pb_grpc.MixerStub(ch)
            assert http.post("/v1/retrieve", json=body).status_code == 200

            own_redis.stop()
            r = http.post("/v1/retrieve", json=body)
            assert r.status_code == 503, r.text
            detail = r.json()["detail"]
            assert detail.startswith("user server: UNAVAILABLE") and "Traceback" not in detail
            assert "\n" not in detail
            with pytest.raises(grpc.RpcError) as e:
                stub.Retrieve(pb.RetrieveRequest(user_id=user, k=5), timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert http.get("/healthz").status_code == 200  # alive, only degraded

            own_redis.start()
            t0 = time.monotonic()
            while True:
                r = http.post("/v1/retrieve", json=body)
                if r.status_code == 200:
                    break
                assert time.monotonic() - t0 < 5, f"no recovery within 5 s: {r.text}"
                time.sleep(0.1)
            assert len(r.json()["ads"]) == 5
            assert len(stub.Retrieve(pb.RetrieveRequest(user_id=user, k=5), timeout=5).ads) == 5
    finally:
        bg.run(proc.stop(0.5))
        bg.run(us.stop(grace=0.5))
        bg.run(store.close())


@pytest.fixture
def settings() -> Iterator[Settings]:
    """Shared-Redis tests of this module use db 15 (flushed before and after)."""
    s = Settings(redis_url="redis://127.0.0.1:6379/15", user_metrics_port=0,
                 worker_metrics_port=0, bind_host="127.0.0.1", log_json=False,
                 worker_coalesce_ms=0, worker_claim_idle_ms=500)
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    yield s
    r.flushdb()
    r.close()


def test_oversized_and_malformed_events_are_dead_lettered_truncated(
        settings: Settings, rds: redis.Redis, standins, version_dir: Path) -> None:
    from services.common.events import DEAD_MAX_CHARS
    from services.nearline.worker import NearlineWorker

    w = NearlineWorker(settings.model_copy(update={"worker_name": "w1"}), standins.__getitem__,
                       lambda: version_dir)
    assert w.start()
    huge = "u" * 200_000
    rds.xadd(keys.BEHAVIOR_STREAM, {"user_id": huge, "seq": "1", "tier": "0", "ts": "1",
                                    "domain": "ad", "action": "click", "item_id": "a1"})
    rds.xadd(keys.BEHAVIOR_STREAM, {f"f{i}": "x" * 5000 for i in range(100)})
    w.tick()
    dead = rds.xrange(keys.BEHAVIOR_DEAD)
    assert len(dead) == 2
    assert dead[0][1]["reason"].startswith("user_id")
    assert dead[0][1]["orig_user_id"] == huge[:DEAD_MAX_CHARS] and dead[0][1]["truncated"] == "1"
    assert len(dead[1][1]) <= 32 + 3 and dead[1][1]["truncated"] == "1"
    assert rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0
    w.stop()
    w.drain()
