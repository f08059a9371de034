"""Serving figures of issue 6, one ``name: value`` a line, all from one run:

  mixer_http_rps       POST /v1/retrieve at saturation (keep-alive connections, closed loop)
  mixer_grpc_rps       Retrieve at saturation (grpc.aio, concurrent calls on one channel)
  floor_http_rps       a minimal FastAPI endpoint on the same uvicorn setup (one process, like
                       the mixer), same client
  ratio_http           mixer_http_rps / floor_http_rps (target >= 0.5)
  p99_ms_at_half_load  open loop at half of mixer_http_rps; latency from the scheduled send
                       time, so queueing counts (target <= 10)
  mixer_share_under_10ms_at_half_load  the same phase seen by the mixer's own latency
                       histogram (ASGI entry to response): the load client's and the
                       kernel's queueing left out
  redis_get_rps        redis-benchmark -t get
  bytes_per_user_list  Redis MEMORY USAGE of one user's 20-ad list key (target <= 160)
  bytes_per_user_serving  the same for every key a retrieval of the user reads or the list
                       write guards: list, its version guard ``lv``, fallback inputs ``fb``
  *_cpu_ms_per_req     CPU time (user + system, from /proc) each server process spent per
                       request during the saturation run: unlike the rates, it does not
                       depend on what else the shared machine is running

    python bench/serving_bench.py [--redis redis://127.0.0.1:6379/15] [--seconds 5]

A small synthetic world is seeded into the given Redis db (flushed first and after); every
seeded user gets a 20-ad LEADRE list, so retrievals are list hits + fallback. The user server,
the mixer and the floor app are separate processes; the load client runs in this one (on a
small shared machine it competes with them: read ratio_http, not the absolute figures).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import httpx

from leadre_model.data.synth import SynthConfig, generate_world
from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.launcher import free_port
from services.nearline.writer import ListWriter
from services.user_server.seed import seed_world

FLOOR_APP = """
from fastapi import FastAPI
from pydantic import BaseModel
import uvicorn, sys

class Req(BaseModel):
    user_id: str
    k: int = 10

app = FastAPI()

@app.post("/v1/retrieve")
async def retrieve(req: Req) -> dict:
    return {"user_id": req.user_id, "ads": []}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=None, access_log=False)
"""


# -- a cheap keep-alive HTTP/1.1 client (httpx would be the bottleneck) ------------------------
class Conn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        assert self.r is not None
        self.w.write(b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(),
                                                         len(body), body))
        head = await self.r.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        m = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
        await self.r.readexactly(int(m.group(1)) if m else 0)
        return status


def _bodies(users: list[str], n: int = 512) -> list[bytes]:
    return [json.dumps({"user_id": random.choice(users), "k": 10}).encode() for _ in range(n)]


async def http_closed_loop(port: int, bodies: list[bytes], conns: int, seconds: float
                           ) -> tuple[float, int]:
    """Requests/s over ``seconds`` with ``conns`` connections each sending back to back."""
    done, errors = 0, 0
    end = time.perf_counter() + seconds

    async def one(c: Conn, i: int) -> None:
        nonlocal done, errors
        while time.perf_counter() < end:
            status = await c.post("/v1/retrieve", bodies[i % len(bodies)])
            i += 1
            done += 1
            errors += status != 200

    t0 = time.perf_counter()
    await asyncio.gather(*(one(Conn("127.0.0.1", port), i * 7) for i in range(conns)))
    return done / (time.perf_counter() - t0), errors


async def http_open_loop(port: int, bodies: list[bytes], rate: float, seconds: float,
                         conns: int = 64) -> list[float]:
    """Send at ``rate``/s; latency (ms) from each request's scheduled time."""
    pool: asyncio.Queue[Conn] = asyncio.Queue()
    for _ in range(conns):
        pool.put_nowait(Conn("127.0.0.1", port))
    lat: list[float] = []

    async def one(t_sched: float, body: bytes) -> None:
        c = await pool.get()
        try:
            await c.post("/v1/retrieve", body)
        finally:
            pool.put_nowait(c)
        lat.append((time.perf_counter() - t_sched) * 1000)

    tasks = []
    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        t = t0 + i / rate
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(t, bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    return lat


async def grpc_closed_loop(target: str, users: list[str], concurrency: int, seconds: float
                           ) -> float:
    done = 0
    end = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as ch:
        stub = pb_grpc.MixerStub(ch)

        async def one(i: int) -> None:
            nonlocal done
            while time.perf_counter() < end:
                await stub.Retrieve(pb.RetrieveRequest(user_id=users[i % len(users)], k=10),
                                    timeout=5)
                i += 1
                done += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i * 13) for i in range(concurrency)))
        return done / (time.perf_counter() - t0)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def redis_get_rps(url: str) -> float:
    u = urlparse(url)
    out = subprocess.run(["redis-benchmark", "-h", u.hostname or "127.0.0.1", "-p",
                          str(u.port or 6379), "-t", "get", "-n", "100000", "-q"],
                         check=False, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r"GET: ([\d.]+) requests per second", out)
    return float(m.group(1)) if m else float("nan")


def _spy(out: Path, procs: list[subprocess.Popen[bytes]], seconds: float
         ) -> list[subprocess.Popen[bytes]]:
    out.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    # --gil: samples of the thread holding the GIL, i.e. Python's own work (a socket write
    # waiting in the kernel, or preempted by other processes, is not counted)
    return [subprocess.Popen([spy, "record", "-p", str(p.pid), "-d", str(int(seconds)), "-r", "200",
                              "--gil", "-f", fmt, "-o", str(out / f"{name}.{ext}")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for p, name in zip(procs, ("user_server", "mixer"))
            for fmt, ext in (("speedscope", "speedscope.json"),)]


def under_10ms(port: int) -> tuple[float, float]:
    """(retrieve requests answered within 10 ms, all retrieve requests) so far, from the
    mixer's own latency histogram (ASGI entry to response: no client or socket queueing)."""
    under = total = 0.0
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if 'method="POST /v1/retrieve"' not in line or 'code="200"' not in line:
            continue
        if line.startswith("leadre_mixer_request_seconds_bucket") and 'le="0.01"' in line:
            under = float(line.rsplit(" ", 1)[1])
        elif line.startswith("leadre_mixer_request_seconds_count"):
            total = float(line.rsplit(" ", 1)[1])
    return under, total


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, timeout: float = 60) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def stop_procs(procs: list[subprocess.Popen[bytes]], timeout_s: float = 20) -> None:
    """SIGTERM to all (they drain at once), SIGKILL to any still running after ``timeout_s``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--profile", type=Path, default=None,
                    help="py-spy flame graphs of the mixer and user server under HTTP saturation")
    a = ap.parse_args()

    s = Settings(redis_url=a.redis, log_json=False, user_metrics_port=0)
    r = redis_client(s)
    r.flushdb()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            world = Path(tmp) / "world"
            generate_world(world, SynthConfig(n_users=a.users, n_ads=600, n_content=150, seed=5),
                           progress=False)
            seed_world(r, world, s)
            users = sorted(r.smembers(keys.USERS))
            ads = list(r.hkeys(keys.ADS))
            writer = ListWriter(redis_client(s, decode_responses=False), s.list_ttl_s, 20)
            for u in users:
                picked = random.sample(ads, 20)
                writer.write(u, 1, Retrieval(
                    ads=[RetrievedAd(ad_id=x, score=-0.1 * (i + 1)) for i, x in enumerate(picked)],
                    model_version="bench"))
            bytes_per_list = r.memory_usage(keys.user_key(users[0], "l")) or 0
            serving_bytes = sum(r.memory_usage(keys.user_key(users[0], part)) or 0
                                for part in ("l", "lv", "fb"))

            us_port, http_port, grpc_port, floor_port = (free_port() for _ in range(4))
            env = {**os.environ, "LEADRE_REDIS_URL": a.redis, "LEADRE_LOG_LEVEL": "WARNING",
                   "LEADRE_USER_METRICS_PORT": "0", "LEADRE_USER_SERVER_ADDR": f"127.0.0.1:{us_port}",
                   "LEADRE_API_KEYS": ""}
            leadre = str(Path(sys.executable).parent / "leadre")
            procs.append(subprocess.Popen([leadre, "serve", "user-server", "--port", str(us_port)],
                                          env=env))
            procs.append(subprocess.Popen([leadre, "serve", "mixer", "--http-port", str(http_port),
                                           "--grpc-port", str(grpc_port)], env=env))
            procs.append(subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(floor_port)], env=env))
            wait_http(f"http://127.0.0.1:{http_port}/readyz")
            wait_http(f"http://127.0.0.1:{floor_port}/docs")
            probe = httpx.post(f"http://127.0.0.1:{http_port}/v1/retrieve",
                               json={"user_id": users[0], "k": 10}, timeout=5).json()
            assert probe["list_hit"], probe

            bodies = _bodies(users)
            # The world and seeding left a large heap in this (client) process: without this
            # a full collection pauses the load client and shows up as server latency.
            gc.collect()
            gc.freeze()
            asyncio.run(http_closed_loop(http_port, bodies, a.connections, 1.0))  # warm up
            spies = [] if a.profile is None else _spy(a.profile, procs[:2], a.seconds)
            cpu0 = [cpu_s(p.pid) for p in procs]
            mixer_rps, errors = asyncio.run(http_closed_loop(http_port, bodies, a.connections,
                                                             a.seconds))
            cpu1 = [cpu_s(p.pid) for p in procs]
            for spy in spies:
                spy.wait(30)
            floor_rps, _ = asyncio.run(http_closed_loop(floor_port, bodies, a.connections,
                                                        a.seconds))
            cpu2 = [cpu_s(p.pid) for p in procs]
            n_mixer, n_floor = mixer_rps * a.seconds, floor_rps * a.seconds
            cpu_ms = {"user_server": 1000 * (cpu1[0] - cpu0[0]) / n_mixer,
                      "mixer": 1000 * (cpu1[1] - cpu0[1]) / n_mixer,
                      "floor": 1000 * (cpu2[2] - cpu1[2]) / n_floor}
            grpc_rps = asyncio.run(grpc_closed_loop(f"127.0.0.1:{grpc_port}", users,
                                                    a.connections, a.seconds))
            u0, n0 = under_10ms(http_port)
            lat = asyncio.run(http_open_loop(http_port, bodies, mixer_rps / 2, a.seconds))
            u1, n1 = under_10ms(http_port)
            get_rps = redis_get_rps(a.redis)
    finally:
        stop_procs(procs)
        r.flushdb()

    print(f"mixer_http_rps: {mixer_rps:.0f}")
    print(f"mixer_http_errors: {errors}")
    print(f"mixer_grpc_rps: {grpc_rps:.0f}")
    print(f"floor_http_rps: {floor_rps:.0f}")
    print(f"ratio_http: {mixer_rps / floor_rps:.2f}")
    print(f"p50_ms_at_half_load: {percentile(lat, 0.5):.2f}")
    print(f"p99_ms_at_half_load: {percentile(lat, 0.99):.2f}")
    print(f"mixer_share_under_10ms_at_half_load: {(u1 - u0) / max(1.0, n1 - n0):.4f}")
    print(f"redis_get_rps: {get_rps:.0f}")
    print(f"bytes_per_user_list: {bytes_per_list}")
    print(f"bytes_per_user_serving: {serving_bytes}")
    for name, ms in cpu_ms.items():
        print(f"{name}_cpu_ms_per_req: {ms:.3f}")
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"load_avg_1m: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
