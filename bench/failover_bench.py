"""A Redis Cluster master killed with SIGKILL while behaviour events and retrievals flow
(issue 22): a local cluster of 3 masters + 3 replicas (``tests/services/common/cluster.py``),
``leadre serve user-server`` and ``leadre serve mixer`` as processes on it, behaviour events
partitioned over 3 streams. Writers call RecordBehaviors (one behaviour a call, retried
until acknowledged); readers call ``POST /v1/retrieve``. Then the replica of the master
that owns partition 0 lags (SIGSTOP for ``--lag`` s: writes pile up unreplicated, as behind
a slow link), the master is SIGKILLed, the replica resumes and is promoted after
``cluster-node-timeout``. Run twice: without a durability setting and with
``LEADRE_DURABLE_REPLICAS=1`` (RecordBehaviors WAITs for one replica before it answers).
One ``name: value`` a line, per run (``_wait0`` / ``_wait1``):

  events_acked         behaviours RecordBehaviors acknowledged
  events_lost          acknowledged behaviours without a stream entry after the failover
  history_lost         acknowledged behaviours missing from the user's history
  mixer_error_window_s seconds (1 s buckets) in which a retrieval got a 5xx or no answer
  mixer_5xx            such retrievals
  record_error_window_s  seconds in which a RecordBehaviors call failed (then retried)
  mixer_slowest_s      the slowest retrieval from 1 s before the kill on
  failover_s           from the SIGKILL to the replica serving as master
  replica_back_s       from the SIGKILL to the killed node back as the new master's replica
                       (restarted at once, as its pod would be): until then a durable write
                       to that shard cannot get its replica's WAIT

    python bench/failover_bench.py [--seconds-after 6] [--lag 1.0]
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leadre_model.data.synth import SynthConfig, generate_world
from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.events import BehaviorEvent, parse_fields
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.launcher import LocalStack, free_port
from services.nearline.writer import ListWriter
from services.user_server.seed import seed_world
from tests.services.common.cluster import LocalCluster
from tests.services.helpers import wait_until

T0 = 1_900_000_000


class Load:
    """Writer and reader threads against the user server and the mixer."""

    def __init__(self, s: Settings, users: list[str], ads: list[str], writers: int,
                 readers: int) -> None:
        self.s, self.users, self.ads = s, users, ads
        self.ts = itertools.count(T0)
        self.lock = threading.Lock()
        self.acked: list[tuple[str, int, str]] = []
        self.record_errors: list[float] = []
        self.reads: list[tuple[float, int, float]] = []  # (time, status (0: none), seconds)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._write, args=(i,), daemon=True)
                        for i in range(writers)]
        self.threads += [threading.Thread(target=self._read, args=(i,), daemon=True)
                         for i in range(readers)]

    def _write(self, i: int) -> None:
        rng = random.Random(i)
        stub = pb_grpc.UserServerStub(grpc.insecure_channel(self.s.user_server_addr))
        while not self.stop.is_set():
            with self.lock:
                ts = next(self.ts)
            b = pb.Behavior(user_id=rng.choice(self.users), ts=ts, domain="ad", action="click",
                            item_id=rng.choice(self.ads))
            while True:  # retried until acknowledged: RecordBehaviors is idempotent
                try:
                    stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=[b]), timeout=5)
                    with self.lock:
                        self.acked.append((b.user_id, b.ts, b.item_id))
                    break
                except grpc.RpcError:
                    self.record_errors.append(time.monotonic())
                    if self.stop.wait(0.1):
                        return
            time.sleep(0.01)

    def _read(self, i: int) -> None:
        rng = random.Random(100 + i)
        with httpx.Client(base_url=f"http://127.0.0.1:{self.s.mixer_http_port}", timeout=5) as http:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    status = http.post("/v1/retrieve", json={"user_id": rng.choice(self.users),
                                                             "k": 10}).status_code
                except httpx.HTTPError:
                    status = 0
                self.reads.append((t0, status, time.monotonic() - t0))
                time.sleep(0.01)

    def start(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def window(times: list[float]) -> int:
    """Distinct whole seconds in which something happened."""
    return len({int(t) for t in times})


def lost(r: object, acked: list[tuple[str, int, str]], partitions: int) -> tuple[int, int]:
    """(acknowledged behaviours without a stream entry, … missing from the history)."""
    seen = set()
    for stream, _ in keys.behavior_streams(partitions):
        for _, fields in r.xrange(stream):  # type: ignore[attr-defined]
            ev = parse_fields(BehaviorEvent, fields)
            if isinstance(ev, BehaviorEvent):
                seen.add((ev.user_id, ev.ts))
    by_user = defaultdict(list)
    for u, ts, item in acked:
        by_user[u].append((ts, item))
    history_lost = 0
    for u, items in by_user.items():
        members = set(r.zrange(keys.user_key(u, "hist"), 0, -1))  # type: ignore[attr-defined]
        history_lost += sum(1 for ts, item in items if f"{ts}|ad|click|{item}" not in members)
    return sum(1 for u, ts, _ in acked if (u, ts) not in seen), history_lost


def run(cluster: LocalCluster, base: Settings, world: Path, durable: int, a: argparse.Namespace,
        log_dir: Path) -> dict[str, str]:
    s = base.model_copy(update={"durable_replicas": durable, "durable_timeout_ms": 500,
                                "user_server_port": free_port(), "mixer_http_port": free_port(),
                                "mixer_grpc_port": free_port()})
    s = s.model_copy(update={"user_server_addr": f"127.0.0.1:{s.user_server_port}"})
    r = redis_client(s)
    r.flushall()
    seed_world(r, world, s)
    users = sorted(r.smembers(keys.USERS))
    ads = r.zrevrange(keys.FALLBACK_GLOBAL, 0, 99)
    writer = ListWriter(redis_client(s, decode_responses=False), s.list_ttl_s, 20)
    for u in users:
        writer.write(u, 1, Retrieval(ads=[RetrievedAd(ad_id=x, score=-0.1 * (i + 1))
                                          for i, x in enumerate(ads[:20])], model_version="fo"))
    stack = LocalStack(s, log_dir=log_dir / f"wait{durable}")
    stack.start(("user-server", "mixer"))
    out: dict[str, str] = {}
    try:
        wait_until(stack.mixer_ready, 60, "mixer ready")
        load = Load(s, users, ads, a.writers, a.readers).start()
        time.sleep(a.seconds_before)
        victim = cluster.master_of(keys.behavior_streams(s.behavior_partitions)[0][0])
        replica = cluster.replica_of(victim)
        replica_proc = cluster.procs[cluster.ports.index(replica)]
        replica_proc.send_signal(signal.SIGSTOP)
        time.sleep(a.lag)
        victim_proc = cluster.procs[cluster.ports.index(victim)]
        victim_proc.kill()
        killed = time.monotonic()
        replica_proc.send_signal(signal.SIGCONT)
        wait_until(lambda: cluster.role(replica) == "master", 60, "replica promoted")
        promoted = time.monotonic()
        victim_proc.wait(10)
        # the killed node restarts (as its pod would) and rejoins as the promoted one's replica
        cluster.procs[cluster.ports.index(victim)] = subprocess.Popen(
            victim_proc.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(cluster.healthy, 60, "cluster healthy again")
        healed = time.monotonic()
        time.sleep(a.seconds_after)
        load.join()
        r.close()
        r = redis_client(s)
        events_lost, history_lost = lost(r, load.acked, s.behavior_partitions)
        bad = [t - killed for t, status, _ in load.reads if status == 0 or status >= 500]
        slowest = max(took for t, _, took in load.reads if t >= killed - 1)
        sfx = f"_wait{durable}"
        out = {f"events_acked{sfx}": str(len(load.acked)),
               f"events_lost{sfx}": str(events_lost),
               f"history_lost{sfx}": str(history_lost),
               f"mixer_error_window_s{sfx}": str(window(bad)),
               f"mixer_5xx{sfx}": str(len(bad)),
               f"retrievals{sfx}": str(len(load.reads)),
               f"record_error_window_s{sfx}": str(window([t - killed for t in load.record_errors])),
               f"mixer_slowest_s{sfx}": f"{slowest:.2f}",
               f"failover_s{sfx}": f"{promoted - killed:.1f}",
               f"replica_back_s{sfx}": f"{healed - killed:.1f}"}
    finally:
        stack.stop(timeout_s=20)
        r.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--readers", type=int, default=2)
    ap.add_argument("--seconds-before", type=float, default=3.0)
    ap.add_argument("--seconds-after", type=float, default=6.0)
    ap.add_argument("--lag", type=float, default=1.0, help="seconds the replica lags (SIGSTOP) "
                    "before its master is killed")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="leadre-failover-"))
    (tmp / "cluster").mkdir()
    cluster = LocalCluster(tmp / "cluster", password="pw-failover")
    figures: dict[str, str] = {}
    try:
        cluster.start()
        base = Settings(redis_url=cluster.url, redis_cluster=True,
                        redis_cluster_nodes=cluster.other_nodes, redis_password=cluster.password,
                        log_json=True, log_level="WARNING", user_metrics_port=0,
                        behavior_partitions=3, mixer_timeout_s=1.0, bind_host="127.0.0.1")
        world = tmp / "world"
        generate_world(world, SynthConfig(n_users=a.users, n_ads=600, n_content=150, seed=13),
                       progress=False)
        for durable in (0, 1):
            figures.update(run(cluster, base, world, durable, a, tmp / "logs"))
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in figures.items():
        print(f"{k}: {v}")
    print(f"config: users={a.users} writers={a.writers} readers={a.readers} lag={a.lag}s "
          f"cluster-node-timeout=2000ms cpus={os.cpu_count()} load_avg_1m={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
