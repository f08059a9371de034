"""Partitioned ingest on a local Redis Cluster (issue 22): 3 masters + 3 replicas
(``tests/services/common/cluster.py``), a seeded synthetic world, behaviour events recorded
with the User Server's own code (``UserStore.record_behaviors``: history scripts + stream
appends), then consumed by nearline workers. One ``name: value`` a line:

  events_per_s_1_master    events recorded per second with one behaviour stream (every
                           append on the master that owns ``{behaviors}``)
  events_per_s_3_masters   the same events with ``behavior_partitions=3`` (one stream per
                           master)
  client_cpu_share, busiest_master_cpu_share_*   CPU seconds per wall second of the client
                           process and of the busiest master during each run: which side
                           is the limit (a share near 1.0 is a saturated core)
  xadd_per_s_one_master    redis-benchmark's pipelined XADD of a behaviour event's fields to
                           one partition stream on its master: what one master appends
                           when the client is not the limit
  partition_max_share_deviation   the busiest master's share of the partitioned run's stream
                           events minus an even third
  order_violations         a user's stream entries out of seq order, plus any list version
                           that went back while the workers consumed (sampled)
  events_lost              recorded behaviours without a stream entry, plus users whose list
                           misses their last event once the workers are done
  pending_after            stream entries left un-acked
  redis_bytes_per_user     MEMORY USAGE of every key of a user (profile, history, seq, list,
                           list version, fallback inputs), mean over 200 users once the
                           workers are done (the synthetic world's histories)
  stream_bytes_per_event   MEMORY USAGE of the partition streams per entry
  worker_cpu_ms_per_refresh  CPU of this process (the workers' threads, the sampler) while
                           consuming, per list written: the worker's own cost of a refresh
                           (snapshot read, prompt, write, acks), inference not included

    python bench/ingest_bench.py [--users 2000] [--events 20000] [--workers 2]

The workers run in this process (threads) with a stand-in inference client (a hash of the
prompt picks the ads): the bench measures ingest and consumption, not the model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from leadre_model.data.records import Behavior
from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.build import build_index
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig, load_index
from leadre_model.prompts.config import PromptConfig
from services.common import keys
from services.common.contracts import INSTANCES_KEY
from services.common.events import BehaviorEvent, parse_fields
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.replay import stale_users
from services.user_server.seed import seed_world
from services.user_server.store import UserStore
from tests.services.common.cluster import LocalCluster
from tests.services.helpers import StandInClient, VersionSampler

T0 = 1_900_000_000


def version_dir(root: Path, world: Path) -> Path:
    """A registry-style version: a tiny index of the world's ads and a manifest naming the
    prompt config (the stand-in client needs no weights)."""
    vdir = root / "v1"
    build_index(load_ads(world), vdir / "index", IndexConfig(rqvae=PRESETS["tiny"]), progress=False)
    (vdir / "model").mkdir(parents=True)
    cfg = {"prompts": PromptConfig(max_behaviors=10, token_budget=384).model_dump(),
           "curriculum": "ex>im>main"}
    (vdir / "model" / "manifest.json").write_text(json.dumps({"extra": {"train": {"config": cfg}}}))
    return vdir


def events(users: list[str], ads: list[str], n: int, seed: int) -> list[Behavior]:
    """``n`` clicks by random users, each user's in time order."""
    rng = random.Random(seed)
    return [Behavior(user_id=rng.choice(users), ts=T0 + i, domain="ad", action="click",
                     item_id=rng.choice(ads)) for i in range(n)]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def record_all(s: Settings, evs: list[Behavior], batch: int, concurrency: int) -> float:
    """Record ``evs`` through the User Server's store, ``concurrency`` calls in flight of
    ``batch`` behaviours each; a user's events stay in order (a user's events go to one
    lane). Returns the wall seconds."""
    lanes: list[list[Behavior]] = [[] for _ in range(concurrency)]
    for b in evs:
        lanes[hash(b.user_id) % concurrency].append(b)

    async def run() -> float:
        store = UserStore(s)
        try:
            await store.tier_bounds()
            t0 = time.perf_counter()

            async def lane(items: list[Behavior]) -> None:
                for i in range(0, len(items), batch):
                    await store.record_behaviors(items[i:i + batch])

            await asyncio.gather(*(lane(x) for x in lanes))
            return time.perf_counter() - t0
        finally:
            await store.close()

    return asyncio.run(run())


def xadd_rate(cluster: LocalCluster, stream: str, n: int = 200_000) -> float:
    """redis-benchmark: XADD of one event's fields (MAXLEN ~ as the user server) to
    ``stream`` on its master, 50 connections, 32 commands pipelined."""
    import re
    import subprocess

    fields = ["user_id", "u0001", "seq", "17", "tier", "12", "ts", str(T0), "domain", "ad",
              "action", "click", "item_id", "ad_0001"]
    out = subprocess.run(["redis-benchmark", "-p", str(cluster.master_of(stream)), "-a",
                          cluster.password, "-n", str(n), "-c", "50", "-P", "32", "-q",
                          "XADD", stream, "MAXLEN", "~", "1000000", "*", *fields],
                         check=False, capture_output=True, text=True, timeout=300).stdout
    m = re.search(r"([\d.]+) requests per second", out)
    return float(m.group(1)) if m else float("nan")


def master_cpu(cluster: LocalCluster) -> dict[int, float]:
    out = {}
    for p in cluster.masters():
        info = cluster.node(p).info("cpu")
        out[p] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return out


def measure(cluster: LocalCluster, s: Settings, evs: list[Behavior], a: argparse.Namespace
            ) -> tuple[float, float, float]:
    """(events/s, client CPU share, busiest master's CPU share) of one ingest run."""
    c0, m0 = cpu_s(os.getpid()), master_cpu(cluster)
    wall = record_all(s, evs, a.batch, a.concurrency)
    c1, m1 = cpu_s(os.getpid()), master_cpu(cluster)
    busiest = max(m1[p] - m0.get(p, m1[p]) for p in m1)
    return len(evs) / wall, (c1 - c0) / wall, busiest / wall


def stream_check(r: redis.RedisCluster, cluster: LocalCluster, s: Settings,
                 seq0: dict[str, int]) -> tuple[float, int, int, Counter[str]]:
    """(max share deviation over masters, order violations, entries missing, entries per
    user) of the partition streams."""
    per_master: Counter[int] = Counter()
    per_user: Counter[str] = Counter()
    last: dict[str, int] = {}
    violations = 0
    for stream, _ in keys.behavior_streams(s.behavior_partitions):
        master = cluster.master_of(stream)
        for _, fields in r.xrange(stream):
            ev = parse_fields(BehaviorEvent, fields)
            assert isinstance(ev, BehaviorEvent), ev
            per_master[master] += 1
            per_user[ev.user_id] += 1
            violations += ev.seq <= last.get(ev.user_id, -1)
            last[ev.user_id] = ev.seq
    total = sum(per_master.values())
    deviation = max(per_master.values()) / total - 1 / len(cluster.masters())
    recorded = {u: int(r.get(keys.user_key(u, "seq")) or 0) - seq0[u] for u in seq0}
    missing = sum(max(0, recorded[u] - per_user[u]) for u in seq0)
    return deviation, violations, missing, per_user


def consume(s: Settings, r: redis.RedisCluster, vdir: Path, users: list[str], n_workers: int,
            timeout_s: float) -> tuple[float, int, int, float]:
    """Workers (threads) until every list is fresh: (seconds, list version decreases
    sampled, entries left pending, this process's CPU ms per list written)."""
    from services.nearline.worker import NearlineWorker

    index = load_index(vdir / "index")
    clients = {u: StandInClient(u, index) for u in ("grpc://a:1", "grpc://b:2")}
    r.hset(INSTANCES_KEY, mapping={u: time.time() + 3600 for u in clients})
    workers = [NearlineWorker(s.model_copy(update={"worker_name": f"w{i}"}), clients.__getitem__,
                              lambda: vdir) for i in range(n_workers)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    sampled = users[:200]
    t0, cpu0 = time.perf_counter(), cpu_s(os.getpid())
    with VersionSampler(redis_client(s, decode_responses=False), sampled, every=0.1) as sampler:
        for t in threads:
            t.start()
        deadline = time.monotonic() + timeout_s
        while stale_users(r, users) and time.monotonic() < deadline:
            time.sleep(0.5)
        took, cpu = time.perf_counter() - t0, cpu_s(os.getpid()) - cpu0
        for w in workers:
            w.stop()
        for t in threads:
            t.join(60)
    written = sum(w.m.registry.get_sample_value("leadre_worker_list_writes_total",
                                                {"result": "written"}) or 0 for w in workers)
    pending = sum(r.xpending(stream, keys.WORKER_GROUP)["pending"]
                  for stream, _ in keys.behavior_streams(s.behavior_partitions))
    return took, len(sampler.decreases), pending, 1000 * cpu / max(1.0, written)


def bytes_per_user(r: redis.RedisCluster, users: list[str]) -> float:
    parts = ("profile", "hist", "seq", "l", "adv", "list", "lv", "fb")
    total = sum(r.memory_usage(keys.user_key(u, part)) or 0 for u in users for part in parts)
    return total / len(users)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=20, help="behaviours per RecordBehaviors")
    ap.add_argument("--concurrency", type=int, default=8, help="calls in flight")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="leadre-ingest-"))
    cluster = LocalCluster(tmp / "cluster", password="pw-ingest")
    (tmp / "cluster").mkdir()
    try:
        cluster.start()
        base = Settings(redis_url=cluster.url, redis_cluster=True,
                        redis_cluster_nodes=cluster.other_nodes, redis_password=cluster.password,
                        log_json=False, log_level="WARNING", worker_coalesce_ms=20,
                        worker_claim_idle_ms=5000, worker_block_ms=100)
        r = redis_client(base)
        world = tmp / "world"
        generate_world(world, SynthConfig(n_users=a.users, n_ads=600, n_content=150, seed=11),
                       progress=False)
        vdir = version_dir(tmp / "registry", world)
        figures: dict[str, str] = {}
        for partitions in (1, 3):
            r.flushall()
            s = base.model_copy(update={"behavior_partitions": partitions})
            seed_world(r, world, s)
            users = sorted(r.smembers(keys.USERS))
            ads = r.zrevrange(keys.FALLBACK_GLOBAL, 0, 199)
            seq0 = {u: int(r.get(keys.user_key(u, "seq")) or 0) for u in users}
            evs = events(users, ads, a.events, seed=partitions)
            rate, client, master = measure(cluster, s, evs, a)
            name = "1_master" if partitions == 1 else "3_masters"
            figures[f"events_per_s_{name}"] = f"{rate:.0f}"
            figures[f"client_cpu_share_{name}"] = f"{client:.2f}"
            figures[f"busiest_master_cpu_share_{name}"] = f"{master:.2f}"
            if partitions == 1:
                continue
            deviation, violations, missing, per_user = stream_check(r, cluster, s, seq0)
            active = sorted(per_user)  # users without an event have no list to wait for
            took, decreases, pending, cpu_ms = consume(s, r, vdir, active, a.workers, a.timeout)
            figures["worker_cpu_ms_per_refresh"] = f"{cpu_ms:.2f}  # stand-in inference"
            stale = len(stale_users(r, active))
            figures["partition_max_share_deviation"] = f"{deviation:.4f}"
            figures["order_violations"] = str(violations + decreases)
            figures["events_lost"] = str(missing + stale)
            figures["pending_after"] = str(pending)
            figures["users_with_events"] = str(len(per_user))
            figures["consume_s"] = f"{took:.1f}  # {a.workers} workers, stand-in inference"
            figures["redis_bytes_per_user"] = f"{bytes_per_user(r, active[:200]):.0f}"
            n_entries = sum(per_user.values())
            stream_bytes = sum(r.memory_usage(st) or 0 for st, _ in keys.behavior_streams(3))
            figures["stream_bytes_per_event"] = f"{stream_bytes / n_entries:.0f}"
            figures["xadd_per_s_one_master"] = f"{xadd_rate(cluster, keys.behavior_streams(3)[0][0]):.0f}"
        r.close()
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    for k, v in figures.items():
        print(f"{k}: {v}")
    print(f"config: users={a.users} events={a.events} batch={a.batch} "
          f"concurrency={a.concurrency} cpus={os.cpu_count()} load_avg_1m={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
