"""Fault: Redis restarts under a running User Server + Mixer. While it is down the Mixer
answers 503 (HTTP) / UNAVAILABLE (gRPC) with a one-line reason and no traceback; once it is
back, retrievals succeed again within 5 s without restarting anything.

The test runs its own throwaway ``redis-server`` on a free port (never the shared one),
with ``requirepass``: the services reach it through ``LEADRE_REDIS_PASSWORD``.

Oversized and malformed behaviour events reach the dead-letter stream, truncated (shared
Redis, db 15).

Nearline faults on real processes (shared Redis db 15; two real Triton instances started
once for the module with ``leadre serve inference --instances 1``, each its own process,
serving a random-init tiny model):

* the worker (``leadre serve worker``, two of them) is SIGKILLed at seeded random points of
  a behaviour replay and restarted: nothing is lost, no list version ever goes back;
* one inference instance is SIGKILLed under load: the calls move to the other one, no
  event fails;
* slow inference (a TCP proxy holding the instances' answers past
  ``inference_timeout_s``): calls time out, are retried elsewhere or re-queued, nothing is
  lost, and the worker holds at most ``worker_max_pending`` un-acked entries."""

from __future__ import annotations

import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from services.common import keys
from services.common.contracts import INSTANCES_KEY
from services.common.liststore import read_list
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.common.versions import current_version_dir
from services.inference.server import instance_ports
from services.launcher import free_port, free_port_block
from services.mixer.server import start_mixer
from services.nearline.balancer import RetrievalClient
from services.nearline.worker import NearlineWorker
from services.replay import wait_fresh
from services.user_server.server import start_user_server
from tests.services.helpers import (
    BackgroundLoop,
    DelayProxy,
    ServeProc,
    VersionSampler,
    seed,
    wait_until,
)

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
            assert detail.startswith("redis: ") and "Traceback" not in detail
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


def test_slow_redis_gets_the_fallback_within_the_deadline_then_recovery(
        own_redis: OwnRedis, bg: BackgroundLoop, svc_world) -> None:
    """Redis made slow (a proxy holding its answers 3 s; the Mixer's deadline is 0.5 s):
    every retrieval still answers 200 within the deadline (+0.4 s) with the fallback as the
    hot cache last read it (``list_hit`` false, counted as degraded), over HTTP and gRPC;
    once Redis is fast again the user's LEADRE list is served within 5 s."""
    from services.common.contracts import Retrieval, RetrievedAd
    from services.common.redis_client import redis_client
    from services.nearline.writer import ListWriter

    pw, deadline = own_redis.password, 0.5
    direct = Settings(redis_url=own_redis.url, redis_password=pw)
    seed(direct.model_copy(update={"redis_url": own_redis.url.replace("//", f"//:{pw}@")}),
         svc_world[0])
    r = redis_client(direct, decode_responses=False)
    user = min(x.decode() for x in r.smembers(keys.USERS))
    ads = [a.decode() for a in r.zrevrange(keys.FALLBACK_GLOBAL, 10, 19)]
    ListWriter(r, 3600, 10).write(user, 1, Retrieval(
        ads=[RetrievedAd(ad_id=a, score=-0.1 * (i + 1)) for i, a in enumerate(ads)],
        model_version="v-slow"))
    proxy = DelayProxy(f"127.0.0.1:{own_redis.port}")
    s = direct.model_copy(update={"redis_url": f"redis://{proxy.addr}/0", "mixer_timeout_s": deadline,
                                  "user_metrics_port": 0, "bind_host": "127.0.0.1", "log_json": False})
    proc, _ = bg.run(start_mixer(s, lambda: svc_world[1], http_port=0, grpc_port=0))
    body = {"user_id": user, "k": 5}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{proc.http_port}", timeout=10) as http, \
                grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}") as ch:
            stub = pb_grpc.MixerStub(ch)
            got = http.post("/v1/retrieve", json=body).json()
            assert got["list_hit"] and got["model_version"] == "v-slow"
            proxy.delay = 3.0
            for _ in range(3):  # a read timing out, then reconnects timing out
                t0 = time.monotonic()
                r1 = http.post("/v1/retrieve", json=body)
                took = time.monotonic() - t0
                assert r1.status_code == 200 and took < deadline + 0.4, (r1.text, took)
                assert not r1.json()["list_hit"] and len(r1.json()["ads"]) == 5
                assert {a["provenance"] for a in r1.json()["ads"]} == {"fallback"}
            g = stub.Retrieve(pb.RetrieveRequest(user_id=user, k=5), timeout=5)
            assert not g.list_hit and len(g.ads) == 5
            assert "leadre_mixer_degraded_total 4.0" in http.get("/metrics").text
            proxy.delay = 0.0
            t0 = time.monotonic()
            while not http.post("/v1/retrieve", json=body).json()["list_hit"]:
                assert time.monotonic() - t0 < 5, "no recovery within 5 s"
                time.sleep(0.1)
    finally:
        bg.run(proc.stop(0.5))
        proxy.close()
        r.close()


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


# ------------------------------------------------------------------------- nearline faults
FAULT_DB = "redis://127.0.0.1:6379/15"
T0 = 1_900_000_000  # behaviour times after every seeded history


@dataclass
class Tritons:
    """Real Triton inference instances, one ``leadre serve inference`` process each."""

    procs: list[ServeProc]
    base_ports: list[int]
    registry: Path
    version: str

    @property
    def urls(self) -> list[str]:
        return [f"grpc://127.0.0.1:{p}" for p in self.base_ports]

    def metrics_url(self, i: int) -> str:
        return f"http://127.0.0.1:{instance_ports(self.base_ports[i], 0)[2]}/metrics"

    def served(self, i: int) -> int:
        """Successful requests of instance ``i`` (Triton's own counter)."""
        text = httpx.get(self.metrics_url(i), timeout=5).text
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("nv_inference_request_success{"))

    def ensure(self, timeout: float = 120) -> None:
        """Every instance running, ready and heartbeating into db 15 (restarts dead ones)."""
        from services.inference.client import TritonRetrievalClient

        for p in self.procs:
            if not p.alive():
                p.start()
        r = redis.Redis.from_url(FAULT_DB, decode_responses=True)
        for p, url in zip(self.procs, self.urls, strict=True):
            client = TritonRetrievalClient(url, timeout_s=2)
            try:
                wait_until(lambda c=client, u=url, p=p: c.is_ready() and r.hexists(INSTANCES_KEY, u)
                           or not p.alive(), timeout, f"{url} ready", poll=0.2)
            finally:
                client.close()
            assert p.alive(), f"inference instance exited; see {p.log}"
        r.close()


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory, svc_world, tiny_model: Path) -> Iterator[Tritons]:
    from services.inference.registry import publish_version

    root = tmp_path_factory.mktemp("faults")
    version = publish_version(root / "registry", tiny_model, svc_world[1], world=svc_world[0])
    s = Settings(redis_url=FAULT_DB, inference_heartbeat_s=0.5, inference_threads=1,
                 inference_queue_delay_us=500, inference_drain_s=2, inference_poll_s=0.5,
                 inference_log_dir=str(root / "logs"), user_metrics_port=0, worker_metrics_port=0)
    base = free_port_block(6, start=random.randint(20_000, 30_000))  # below ephemeral ports
    ports = [base, base + 3]
    procs = [ServeProc(["inference", "--registry", str(root / "registry"), "--instances", "1",
                        "--base-port", str(p)], s, root / "logs" / f"inference-{i}.log")
             for i, p in enumerate(ports)]
    t = Tritons(procs, ports, root / "registry", version)
    try:
        t.ensure()
        yield t
    finally:
        for p in procs:  # both drain at once
            p.terminate()
        for p in procs:
            p.stop(timeout=20)


def _nearline_settings(settings: Settings, tritons: Tritons, tmp_path: Path, **kw: object) -> Settings:
    return settings.model_copy(update={
        "registry_dir": str(tritons.registry), "live_index_dir": str(tmp_path / "live_index"),
        "list_beam_width": 6, "list_size": 6, "instance_ttl_s": 5.0, "worker_drain_s": 2.0,
        "worker_claim_idle_ms": 500, "worker_coalesce_ms": 20, "worker_batch_size": 4,
        "worker_read_count": 16, "inference_timeout_s": 10.0, **kw})


class Replay:
    """Behaviour events through the real User Server's RecordBehaviors, on a thread: every
    ``every`` seconds ``per_round`` distinct users (seeded choice) click an existing ad,
    each event newer than the last, until :meth:`stop`."""

    def __init__(self, addr: str, users: list[str], ads: list[str], seed: int,
                 per_round: int = 6, every: float = 0.05) -> None:
        self.stub = pb_grpc.UserServerStub(grpc.insecure_channel(addr))
        self.users, self.ads, self.rng = users, ads, random.Random(seed)
        self.per_round, self.every = per_round, every
        self.recorded, self.rounds = 0, 0
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.post_round()
            self._stop.wait(self.every)

    def post_round(self) -> None:
        batch = [pb.Behavior(user_id=u, ts=T0 + self.rounds, domain="ad", action="click",
                             item_id=self.rng.choice(self.ads))
                 for u in self.rng.sample(self.users, self.per_round)]
        try:
            self.recorded += self.stub.RecordBehaviors(
                pb.RecordBehaviorsRequest(behaviors=batch), timeout=10).recorded
        except grpc.RpcError as exc:
            self.errors.append(exc)
        self.rounds += 1

    def start(self) -> Replay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _replay_setup(settings: Settings, rds: redis.Redis, svc_world) -> tuple[list[str], list[str]]:
    seed(settings, svc_world[0])
    return sorted(rds.smembers(keys.USERS)), rds.zrevrange(keys.FALLBACK_GLOBAL, 0, 40)


def _consumer_pending(rds: redis.Redis) -> dict[str, int]:
    return {c["name"]: int(c["pending"])
            for c in rds.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["consumers"]}


def _group(rds: redis.Redis) -> dict:
    return next(g for g in rds.xinfo_groups(keys.BEHAVIOR_STREAM) if g["name"] == keys.WORKER_GROUP)


def _assert_nothing_lost(rds: redis.Redis, users: list[str], version: str, timeout: float) -> None:
    """Every user's list reflects their newest state; every stream entry was delivered and
    acked (none dead-lettered); each stored list is the served version's."""
    wait_fresh(rds, users, timeout_s=timeout)
    wait_until(lambda: _group(rds)["pending"] == 0, timeout, "every entry acked")
    g = _group(rds)
    assert g["lag"] == 0 and g["last-delivered-id"] == rds.xinfo_stream(keys.BEHAVIOR_STREAM)["last-generated-id"]
    assert rds.xlen(keys.BEHAVIOR_DEAD) == 0, rds.xrange(keys.BEHAVIOR_DEAD, count=3)
    raw = redis.Redis.from_url(FAULT_DB)
    for u in users:
        seq = int(rds.get(keys.user_key(u, "seq")))
        stored = read_list(raw, u)
        assert stored is not None
        assert int(rds.get(keys.user_key(u, "lv"))) == stored.version == seq
        assert stored.model_version == version and stored.ads
    raw.close()


@pytest.mark.slow
def test_worker_sigkilled_at_random_points_loses_nothing_and_never_goes_back(
        settings: Settings, rds: redis.Redis, user_server: str, tritons: Tritons, svc_world,
        tmp_path: Path) -> None:
    """Two worker processes; four times one of them (seeded choice) is SIGKILLed a seeded
    random delay after it started serving — three times mid-replay, the last time just
    after the replay's last events — and restarted under its name (it re-reads its own
    pending entries; the other worker may XAUTOCLAIM them first)."""
    tritons.ensure()
    users, ads = _replay_setup(settings, rds, svc_world)
    s = _nearline_settings(settings, tritons, tmp_path, log_json=True)
    workers = [ServeProc(["worker", "--name", f"w{i}"], s, tmp_path / f"w{i}.log") for i in range(2)]
    rng = random.Random(1105)
    killed_holding: list[int] = []  # un-acked entries the killed worker held
    try:
        for w in workers:
            w.start()
        with VersionSampler(redis.Redis.from_url(FAULT_DB), users) as sampler:
            replay = Replay(user_server, users, ads, seed=7).start()
            try:
                for k in range(4):
                    i = rng.randrange(2)
                    w = workers[i]
                    wait_until(lambda w=w: w.logged("serving version") > 0 or not w.alive(), 60,
                               "worker serving")
                    assert w.alive(), f"worker exited; see {w.log}"
                    time.sleep(rng.uniform(0.2, 1.5))
                    if k == 3:
                        replay.stop()
                        time.sleep(rng.uniform(0.0, 0.2))
                    w.kill9()
                    killed_holding.append(_consumer_pending(rds).get(f"w{i}", 0))
                    w.start()
            finally:
                replay.stop()
            assert not replay.errors and replay.recorded > 100
            _assert_nothing_lost(rds, users, tritons.version, timeout=60)
        assert sampler.samples > 50 and not sampler.decreases, sampler.decreases[:5]
        assert any(killed_holding), f"no kill hit un-acked work: {killed_holding}"
        # a worker restarted last may still be importing (no SIGTERM handler yet): a drain
        # test needs it serving first, else SIGTERM's default action exits it with -15
        for w in workers:
            wait_until(lambda w=w: w.logged("serving version") > 0 or not w.alive(), 60,
                       "restarted worker serving")
        codes = [w.stop(timeout=30) for w in workers]
        assert codes == [0, 0], f"unclean worker exits {codes}; see {tmp_path}"
    finally:
        for w in workers:
            w.stop(timeout=5)


def _in_process_worker(s: Settings, factory: Callable[[str], RetrievalClient],
                       tritons: Tritons) -> tuple[NearlineWorker, threading.Thread]:
    """A NearlineWorker running on a thread (stop it with ``w.stop()``)."""
    w = NearlineWorker(s, factory, lambda: current_version_dir(tritons.registry))
    t = threading.Thread(target=w.run, name="worker", daemon=True)
    t.start()
    return w, t


@pytest.mark.slow
def test_slow_inference_times_out_retries_elsewhere_and_holds_a_bounded_backlog(
        settings: Settings, rds: redis.Redis, user_server: str, tritons: Tritons, svc_world,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Both instances answer 4 s late (timeout 2 s): every call times out, the batch is
    re-queued, and the worker holds no more than ``worker_max_pending`` un-acked entries
    while the rest waits in the stream. Then instance 0 is fast again and instance 1 stays
    slow: calls that time out on 1 are retried on 0, no batch fails, every list is fresh."""
    from services.inference.client import TritonRetrievalClient

    tritons.ensure()
    users, ads = _replay_setup(settings, rds, svc_world)
    bound, timeout = 24, 2.0
    s = _nearline_settings(settings, tritons, tmp_path, worker_name="slow", worker_max_pending=bound,
                           inference_timeout_s=timeout, worker_max_attempts=2,
                           worker_concurrency=2, worker_read_count=8, worker_coalesce_ms=0)
    proxies = {url: DelayProxy(url.removeprefix("grpc://"), delay=2 * timeout) for url in tritons.urls}
    fast, slow = tritons.urls
    samples: list[tuple[int, int, int]] = []  # (worker's un-acked entries, calls in flight, lag)
    stop_sampling = threading.Event()
    w, thread = _in_process_worker(
        s, lambda url: TritonRetrievalClient(proxies[url].addr, timeout_s=s.inference_timeout_s),
        tritons)

    def sample() -> None:
        while not stop_sampling.wait(0.01):
            samples.append((_consumer_pending(rds).get("slow", 0), len(w.futures),
                            _group(rds)["lag"] or 0))

    def batch_failures() -> int:
        return sum(r.getMessage() == "batch failed" for r in caplog.records)

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        wait_until(lambda: rds.exists(keys.BEHAVIOR_STREAM) and bool(_group(rds)), 30,
                   "worker joined")
        sampler.start()
        replay = Replay(user_server, users, ads, seed=3, per_round=10, every=0.2)
        for _ in range(12):  # 120 events at once: far more than the worker may hold
            replay.post_round()
        wait_until(lambda: batch_failures() > 0, 30, "a batch timed out on both instances")
        slow_phase = {u: _failures(w, u) for u in tritons.urls}
        proxies[fast].delay = 0.0
        time.sleep(timeout + 0.5)  # calls started before the switch have ended
        fast_failures, batches_failed, slow_failures = _failures(w, fast), batch_failures(), _failures(w, slow)
        replay.start()  # load while instance 1 stays slow, past its 2 s cooldown
        wait_until(lambda: _failures(w, slow) > slow_failures, 30, "instance 1 tried again")
        replay.stop()
        _assert_nothing_lost(rds, users, tritons.version, timeout=60)
    finally:
        stop_sampling.set()
        w.stop()
        thread.join(30)
        for p in proxies.values():
            p.close()
    held, in_flight, lag = (max(col) for col in zip(*samples, strict=True))
    assert held <= bound, f"the worker held {held} un-acked entries (bound {bound})"
    assert in_flight <= s.worker_concurrency
    assert any(h == bound and lg > 0 for h, _, lg in samples), f"no backpressure seen ({lag=})"
    assert all(n >= 1 for n in slow_phase.values()), slow_phase  # both timed out
    # Instance 1 timed out again, and every such call was retried on 0 (no batch failed).
    assert _failures(w, fast) == fast_failures and batch_failures() == batches_failed
    timeouts = [r for r in caplog.records if r.getMessage() == "inference call failed"]
    assert all("Deadline Exceeded" in r.error for r in timeouts), {r.error for r in timeouts}


def _failures(w: NearlineWorker, url: str) -> int:
    """Failed inference calls of the worker on ``url`` (its Prometheus counter)."""
    value = w.m.registry.get_sample_value("leadre_worker_inference_failures_total", {"instance": url})
    return int(value or 0)


@pytest.mark.slow
def test_a_killed_inference_instance_moves_the_traffic_to_the_other(
        settings: Settings, rds: redis.Redis, user_server: str, tritons: Tritons, svc_world,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under a steady replay both instances serve the worker; instance 1 (its answers held
    0.3 s by a proxy, so a batch is in flight on it for that long) is SIGKILLed — its whole
    process group, tritonserver included — while a batch is in flight on it. The batch fails
    at once and is retried on instance 0; the worker's in-flight count for instance 1 goes
    back to 0; once its heartbeat is stale it is not tried any more. No batch fails, nothing
    is dead-lettered, every list is fresh."""
    from services.inference.client import TritonRetrievalClient

    tritons.ensure()
    users, ads = _replay_setup(settings, rds, svc_world)
    s = _nearline_settings(settings, tritons, tmp_path, worker_name="load", inference_timeout_s=5.0,
                           instance_ttl_s=3.0)  # heartbeats every 0.5 s
    survivor, victim = tritons.urls
    proxy = DelayProxy(victim.removeprefix("grpc://"), delay=0.3)
    w, thread = _in_process_worker(s, lambda url: TritonRetrievalClient(
        proxy.addr if url == victim else url, timeout_s=s.inference_timeout_s), tritons)
    served = [tritons.served(i) for i in range(2)]
    replay = Replay(user_server, users, ads, seed=11, per_round=6, every=0.05).start()
    try:
        wait_until(lambda: all(tritons.served(i) > served[i] + 2 for i in range(2)), 60,
                   "both instances serving the worker")
        time.sleep(random.Random(29).uniform(0.1, 1.0))
        wait_until(lambda: w.balancer.in_flight().get(victim, 0) > 0, 20,
                   "a batch in flight on instance 1")
        served_before, recorded_before = tritons.served(0), replay.recorded
        # The instance dies with the batch: answers its proxy still holds die with it (else
        # an answer computed before the kill would arrive 0.3 s later and the batch succeed).
        proxy.dies_with(tritons.procs[1].kill9)
        wait_until(lambda: not w.balancer.in_flight().get(victim), 5,
                   "instance 1's in-flight count back to 0")
        assert _failures(w, victim) >= 1  # the batch in flight failed there
        time.sleep(s.instance_ttl_s + 1.5)  # heartbeat stale, and the worker re-read them
        gone = _failures(w, victim)
        assert w.balancer.healthy() == [survivor]
        time.sleep(1.5)  # more load on the survivor alone
    finally:
        replay.stop()
    try:
        assert not replay.errors and replay.recorded > recorded_before + 50
        _assert_nothing_lost(rds, users, tritons.version, timeout=60)
        assert tritons.served(0) > served_before + 10  # the traffic moved to instance 0
        assert _failures(w, victim) == gone  # not tried after its heartbeat went stale
        assert _failures(w, survivor) == 0
        assert not any(r.getMessage() == "batch failed" for r in caplog.records)
        assert not w.failures  # no entry is waiting for a retry
        wait_until(lambda: not w.balancer.in_flight() and not w.futures, 10, "worker idle")
        time.sleep(0.5)  # a tick reports the gauges
        calls = w.m.registry.get_sample_value("leadre_worker_instance_calls_in_flight",
                                              {"instance": victim})
        assert calls == 0.0 and w.m.registry.get_sample_value("leadre_worker_in_flight_users") == 0
    finally:
        proxy.close()
        w.stop()
        thread.join(30)
