"""Load balancing over inference instances, one ``name: value`` a line:

  max_share_deviation   max over instances of |share of calls - 1/N| (target <= 0.05)
  throughput_vs_ideal   calls/s / (N / service time) (target >= 0.90)

    python bench/balance_bench.py [--instances 4] [--requests 2000] [--workers 8]
    python bench/balance_bench.py --triton [--instances 4] [--service-ms 40] [--requests 800]

The real :class:`InstanceBalancer` (Redis global counter, heartbeats in the instances
hash, real Redis db 15 flushed before and after) in ``--workers`` threads, each its own
balancer like separate worker processes. The instances serve one call at a time, each
taking a fixed service time:

* default: **in-process stand-ins** (a lock and a sleep): the balancing alone;
* ``--triton``: **real PyTriton instances**, one process each (Triton server, gRPC, dynamic
  batching, the ``leadre_retrieval`` model's real input/output tensors and request
  parsing), serving a model that sleeps the service time per request, one request at a
  time; the workers call them with the real ``TritonRetrievalClient`` (tritonclient gRPC).
  This adds what a real deployment adds around the model: client and server gRPC, the
  Triton queue, PyTriton's proxy to the Python model. Each instance's share is counted
  by the bench (the URL the balancer returns) and checked against the requests the
  instance's model itself served (``served_by_instances``). A shortfall of
  ``throughput_vs_ideal`` is instances left idle (balancing, too few callers) plus the
  per-request time outside the model (gRPC, Triton's queue, PyTriton's proxy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from services.common.contracts import INSTANCES_KEY, TRITON_MODEL, Retrieval, RetrievedAd
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.nearline.balancer import InstanceBalancer, RetrievalClient


class FixedTimeInstance:
    """Serves one call at a time, each taking ``service_s``."""

    def __init__(self, url: str, service_s: float) -> None:
        self.url, self.service_s, self.lock = url, service_s, threading.Lock()

    def retrieve(self, prompts: list[str], beam_width: int, top_k: int,
                 advertiser_prompts: list[str] | None = None,
                 exclude: list[list[str]] | None = None) -> list[Retrieval]:
        with self.lock:
            time.sleep(self.service_s)
        return [Retrieval(ads=[], model_version="standin") for _ in prompts]


# -- a real PyTriton instance with a fixed-service-time model ----------------------------------
def serve_fixed(grpc_port: int, service_ms: float, count_file: Path) -> None:
    """Run one Triton server (this process) whose ``leadre_retrieval`` model takes
    ``service_ms`` per request, one request at a time, and answers one ad per row; the
    number of requests it served so far is kept in ``count_file`` (PyTriton restricts
    Triton's statistics endpoint)."""
    import numpy as np  # noqa: F401 (pytriton needs it loaded)
    from pytriton.model_config import DynamicBatcher, ModelConfig
    from pytriton.triton import Triton, TritonConfig

    from services.inference.bundle import Result
    from services.inference.tensors import INPUTS, OUTPUTS, pack_response, parse_request

    answer = Result(ads=[RetrievedAd(ad_id="ad_fixed", score=-1.0)], advertisers=[])

    served = 0

    def infer(requests: list[Any]) -> list[dict[str, Any]]:
        nonlocal served
        out = []
        for r in requests:  # one at a time: the fixed service time per request
            rows = parse_request(r.data, 256)
            time.sleep(service_ms / 1000)
            out.append(pack_response([answer] * len(rows), max(x.top_k for x in rows), "fixed"))
        served += len(requests)
        tmp = count_file.with_suffix(".tmp")
        tmp.write_text(str(served))
        tmp.replace(count_file)
        return out

    config = TritonConfig(grpc_port=grpc_port, http_port=grpc_port + 1, metrics_port=grpc_port + 2,
                          grpc_address="127.0.0.1", http_address="127.0.0.1",
                          metrics_address="127.0.0.1", log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(TRITON_MODEL, infer, inputs=INPUTS, outputs=OUTPUTS, strict=True,
                    config=ModelConfig(max_batch_size=16,
                                       batcher=DynamicBatcher(max_queue_delay_microseconds=100)))
        triton.serve()


def free_port_triple() -> int:
    """A port p with p, p+1, p+2 free (gRPC, HTTP, metrics)."""
    from services.launcher import free_port

    while True:
        p = free_port()
        try:
            import socket

            for q in (p + 1, p + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue


def start_tritons(n: int, service_ms: float, count_dir: Path, timeout_s: float = 240
                  ) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    """``n`` instance processes, each ready (model loaded) before this returns; instance
    ``url`` counts its requests in ``count_dir / <its port>``."""
    from services.inference.client import TritonRetrievalClient

    procs, urls = [], []
    for _ in range(n):
        port = free_port_triple()
        procs.append(subprocess.Popen([sys.executable, __file__, "--serve-fixed", str(port),
                                       "--service-ms", str(service_ms),
                                       "--count-file", str(count_dir / str(port))],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        urls.append(f"grpc://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout_s
    for p, url in zip(procs, urls):
        client = TritonRetrievalClient(url, timeout_s=5)
        while not client.is_ready():
            if p.poll() is not None or time.monotonic() > deadline:
                stop_all(procs)
                raise RuntimeError(f"PyTriton instance {url} did not become ready")
            time.sleep(0.5)
        client.close()
    return procs, urls


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def served_counts(urls: list[str], count_dir: Path) -> dict[str, int]:
    """Requests each instance's model answered so far."""
    out = {}
    for url in urls:
        f = count_dir / url.rsplit(":", 1)[1]
        out[url] = int(f.read_text()) if f.exists() else 0
    return out


def run(s: Settings, urls: list[str], factory: Callable[[str], RetrievalClient], requests: int,
        workers: int) -> tuple[Counter[str], float]:
    """``requests`` balanced calls from ``workers`` threads; (calls per URL, wall seconds)."""
    r = redis_client(s)
    r.hset(INSTANCES_KEY, mapping={u: time.time() + 3600 for u in urls})
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    per_worker = [requests // workers + (i < requests % workers) for i in range(workers)]

    def work(n: int) -> None:
        bal = InstanceBalancer(redis_client(s), factory)
        for _ in range(n):
            _, url = bal.call(lambda c: c.retrieve(["p"], 20, 20))
            with lock:
                counts[url] += 1

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, per_worker))
    return counts, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--service-ms", type=float, default=10.0)
    ap.add_argument("--triton", action="store_true",
                    help="real PyTriton instances (one process each) instead of stand-ins")
    ap.add_argument("--serve-fixed", type=int, default=None, metavar="GRPC_PORT",
                    help=argparse.SUPPRESS)  # internal: run one fixed-time instance
    ap.add_argument("--count-file", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_fixed is not None:
        serve_fixed(a.serve_fixed, a.service_ms, a.count_file)
        return

    s = Settings(redis_url=a.redis)
    r = redis_client(s)
    r.flushdb()
    procs: list[subprocess.Popen[bytes]] = []
    served: dict[str, int] = {}
    try:
        if a.triton:
            from services.inference.client import TritonRetrievalClient

            count_dir = Path(tempfile.mkdtemp(prefix="balance-"))
            procs, urls = start_tritons(a.instances, a.service_ms, count_dir)
            for u in urls:  # first calls set up channels and the model's proxy
                TritonRetrievalClient(u).retrieve(["p"], 20, 20)
            before = served_counts(urls, count_dir)
            counts, wall = run(s, urls, lambda u: TritonRetrievalClient(u), a.requests, a.workers)
            after = served_counts(urls, count_dir)
            served = {u: after[u] - before[u] for u in urls}
        else:
            urls = [f"grpc://standin-{i}:1" for i in range(a.instances)]
            instances = {u: FixedTimeInstance(u, a.service_ms / 1000) for u in urls}
            counts, wall = run(s, urls, instances.__getitem__, a.requests, a.workers)
    finally:
        stop_all(procs)
        r.flushdb()

    total = sum(counts.values())
    shares = [counts[u] / total for u in urls]
    ideal_rps = a.instances / (a.service_ms / 1000)
    print(f"instances_kind: {'pytriton' if a.triton else 'standin'}")
    print(f"requests: {total}")
    print(f"instances: {a.instances}")
    print(f"workers: {a.workers}")
    print(f"service_ms: {a.service_ms:g}")
    print("shares: " + ",".join(f"{s:.3f}" for s in shares))
    if served:
        print("served_by_instances: " + ",".join(str(served[u]) for u in urls))
    print(f"max_share_deviation: {max(abs(s - 1 / a.instances) for s in shares):.3f}")
    print(f"calls_per_s: {total / wall:.1f}")
    print(f"ideal_calls_per_s: {ideal_rps:.1f}")
    print(f"throughput_vs_ideal: {total / wall / ideal_rps:.3f}")
    print(f"cpu_cores: {os.cpu_count()}")
    print(f"load_avg_1m: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
