"""End to end, the issue's "done when": post behaviour events for many users through the
User Server, kill the worker with SIGKILL half-way and restart it, and measure until every
user's list is fresh in Redis and served by the Mixer (HTTP). One `name: value` a line.

    python bench/e2e_nearline.py --run runs/svc --users 200 --events 1000
    python bench/e2e_nearline.py --run runs/demo --users 500 --events 10000 --kills 10 --rate 100

``--kills N`` (N > 1): the worker is SIGKILLed at N seeded random points of the replay, each
once the restarted worker is serving again; every user's list versions are sampled the
whole time (``list_version_decreases``: any that went back), and the duplicates counted
from the worker's metrics, read just before each kill and at the end: entries delivered
again after a crash (``events_redelivered``: recovered + reclaimed) and list computations
the version guard refused (``stale_list_writes``).

``--run`` holds ``world/``, ``index/`` and ``model/`` (``leadre data synth``, ``leadre
index build``, ``leadre train``). Redis db 14 is flushed (``--redis``). Events are each
user's newest behaviours, held out when Redis is seeded, posted oldest first.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from leadre_model.data.store import read_table
from services.common import keys
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.inference.registry import publish_version
from services.launcher import LocalStack, free_port, free_port_block
from services.replay import post_behaviors, stale_users, wait_fresh
from services.user_server.seed import seed_world

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services.helpers import VersionSampler


def worker_figures(url: str) -> list[str]:
    """From the (restarted) worker's /metrics: event → list latency quantiles (bucket upper
    bounds), lists written, users per inference call."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    buckets: list[tuple[float, float]] = []
    for fam in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for smp in fam.samples:
            if smp.name == "leadre_worker_event_to_list_seconds_bucket":
                buckets.append((float(smp.labels["le"]), smp.value))
            elif not smp.labels or "result" in smp.labels:
                samples[(smp.name, smp.labels.get("result", ""))] = smp.value
    out = []
    total = max((c for _, c in buckets), default=0)
    for q in (0.5, 0.95):
        le = next((b for b, c in sorted(buckets) if c >= q * total), float("nan"))
        out.append(f"event_to_list_s_p{int(q * 100)}: <= {le:g}  # restarted worker's events")
    calls = samples.get(("leadre_worker_batch_users_count", ""), 0)
    users = samples.get(("leadre_worker_batch_users_sum", ""), 0)
    out.append(f"inference_calls: {calls:.0f}  # restarted worker; {users:.0f} user prompts")
    out.append(f"lists_written: {samples.get(('leadre_worker_list_writes_total', 'written'), 0):.0f}")
    return out


def duplicates(url: str) -> dict[str, float]:
    """This worker incarnation's re-delivered entries and refused (stale) list writes."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"redelivered": 0.0, "stale": 0.0}
    for fam in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for smp in fam.samples:
            if smp.name == "leadre_worker_events_total" and smp.labels.get("result") in (
                    "recovered", "reclaimed"):
                out["redelivered"] += smp.value
            elif smp.name == "leadre_worker_list_writes_total" and smp.labels.get("result") == "stale":
                out["stale"] += smp.value
    return out


def wait_serving(url: str, timeout_s: float) -> None:
    """Until the (restarted) worker answers on its metrics port."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"worker not serving at {url}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/svc"))
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--beam", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16, help="prompts per inference call")
    ap.add_argument("--post-batch", type=int, default=20, help="behaviours per RecordBehaviors")
    ap.add_argument("--rate", type=float, default=50.0, help="events per second posted (0: "
                    "as fast as possible)")
    ap.add_argument("--kill-at", type=float, default=0.5, help="fraction posted when the worker "
                    "is killed with SIGKILL (0: never)")
    ap.add_argument("--kills", type=int, default=1, help="SIGKILLs of the worker at seeded "
                    "random points of the replay (1: once, at --kill-at)")
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--workdir", type=Path, default=None, help="registry + logs (default: temp)")
    args = ap.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="leadre-e2e-"))
    shutil.rmtree(work / "registry", ignore_errors=True)
    shutil.rmtree(work / "live_index", ignore_errors=True)
    s = Settings(redis_url=args.redis, registry_dir=str(work / "registry"),
                 live_index_dir=str(work / "live_index"), log_json=True,
                 user_server_port=free_port(), mixer_http_port=free_port(),
                 mixer_grpc_port=free_port(), user_metrics_port=0, worker_metrics_port=free_port(),
                 list_beam_width=args.beam, list_size=args.beam, worker_batch_size=args.batch,
                 worker_concurrency=max(2, args.instances), worker_claim_idle_ms=5000,
                 inference_threads=max(1, (os.cpu_count() or 2) // args.instances),
                 inference_log_dir=str(work / "logs"))
    s = s.model_copy(update={"user_server_addr": f"127.0.0.1:{s.user_server_port}"})
    r = redis_client(s)
    r.flushdb()

    world = args.run / "world"
    t0 = time.perf_counter()
    version = publish_version(s.registry_dir, args.run / "model", args.run / "index", world=world)
    users = sorted(read_table(world, "users", columns=["user_id"])["user_id"].to_pylist())[:args.users]
    holdout = 2 * -(-args.events // len(users))  # twice: some users have short histories
    seeded = seed_world(r, world, s, users=users, holdout=holdout)
    events = seeded.held_out[-args.events:] if len(seeded.held_out) > args.events else seeded.held_out
    event_users = sorted({b.user_id for b in events})
    print(f"setup_s: {time.perf_counter() - t0:.1f}  # publish {version}, seed {seeded.users} users")

    stack = LocalStack(s, instances=args.instances, base_port=free_port_block(3 * args.instances),
                       log_dir=work / "logs")
    try:
        t0 = time.perf_counter()
        stack.start()
        stack.wait_ready(600)
        print(f"startup_s: {time.perf_counter() - t0:.1f}")

        killed: dict[str, float] = {}
        rng = random.Random(args.seed)
        points = (sorted(rng.uniform(0.05, 0.95) * len(events) for _ in range(args.kills))
                  if args.kills > 1 else [args.kill_at * len(events)] if args.kill_at else [])
        dupes = {"redelivered": 0.0, "stale": 0.0, "held": 0}
        metrics_url = f"http://127.0.0.1:{s.worker_metrics_port}/metrics"

        def pace_and_kill(n: int) -> None:
            if args.rate:
                time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            while points and n >= points[0]:
                points.pop(0)
                wait_serving(metrics_url, 120)
                for key, v in duplicates(metrics_url).items():
                    dupes[key] += v
                dupes["held"] += r.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"]
                stack.kill9("worker")
                killed["at"] = time.monotonic()
                killed["posted"] = n
                killed["pending"] = dupes["held"]
                killed["kills"] = killed.get("kills", 0) + 1
                stack.start(("worker",))

        sampler = VersionSampler(redis_client(s, decode_responses=False), event_users, every=0.2)
        sampler.__enter__()
        start = time.monotonic()
        recorded = post_behaviors(s.user_server_addr, events, args.post_batch, pace_and_kill)
        posted = time.monotonic()
        fresh = wait_fresh(r, event_users, args.timeout)
        all_fresh = max(fresh.values())
        sampler.__exit__()
        # Served by the Mixer: list hit and list version = the user's state version.
        http = httpx.Client(base_url=f"http://127.0.0.1:{s.mixer_http_port}", timeout=10)
        served_ok, ages = 0, []
        for u in event_users:
            body = http.post("/v1/retrieve", json={"user_id": u, "k": 10}).json()
            state = http.get(f"/v1/users/{u}").json()
            if body["list_hit"] and body["list_version"] == state["state_version"]:
                served_ok += 1
                ages.append(body["list_age_s"])
        served = time.monotonic()
        pending = r.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"]
        print(f"events_posted: {recorded}")
        print(f"users: {len(event_users)}")
        print(f"post_s: {posted - start:.1f}")
        print(f"all_lists_fresh_s: {all_fresh - start:.1f}  # from the first post")
        print(f"all_served_by_mixer_s: {served - start:.1f}")
        print(f"users_served_fresh: {served_ok}/{len(event_users)}")
        print(f"lost_events: {len(stale_users(r, event_users))}  # users whose list misses their last event")
        print(f"pending_entries_after: {pending}")
        print(f"dead_letters: {r.xlen(keys.BEHAVIOR_DEAD)}")
        if killed.get("kills", 0) > 1:
            wait_serving(metrics_url, 60)
            for key, v in duplicates(metrics_url).items():
                dupes[key] += v
            print(f"worker_kills: {int(killed['kills'])}  # SIGKILL at seeded random points, "
                  f"restarted at once; {dupes['held']} entries were pending at the kills")
            print(f"events_redelivered: {dupes['redelivered']:.0f}  # duplicates: entries "
                  "delivered again after a crash")
            print(f"stale_list_writes: {dupes['stale']:.0f}  # duplicates the version guard refused")
            print(f"list_version_decreases: {len(sampler.decreases)}  # in {sampler.samples} samples")
        elif killed:
            print(f"worker_killed_after_events: {int(killed['posted'])}  # SIGKILL, restarted at once; "
                  f"{killed['pending']} entries were pending")
        if ages:
            print(f"list_age_at_serve_s_p50: {statistics.median(ages):.1f}")
        for line in worker_figures(f"http://127.0.0.1:{s.worker_metrics_port}/metrics"):
            print(line)
        print(f"config: instances={args.instances} beam={args.beam} batch={args.batch} "
              f"rate={args.rate:g}/s "
              f"model={args.run / 'model'} cpus={os.cpu_count()}")
    finally:
        codes = stack.stop()
        print(f"stop_exit_codes: {codes}")


if __name__ == "__main__":
    main()
