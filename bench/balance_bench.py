"""Load balancing over inference instances, one ``name: value`` a line:

  max_share_deviation   max over instances of |share of calls - 1/N| (target <= 0.05)
  throughput_vs_ideal   calls/s / (N / service time) (target >= 0.90)

    python bench/balance_bench.py [--instances 4] [--requests 2000] [--workers 8]

The real :class:`InstanceBalancer` (Redis global counter, heartbeats in the instances
hash, real Redis db 15 flushed before and after) in ``--workers`` threads, each its own
balancer like separate worker processes. The instances are **stand-ins with a fixed
service time** (one call at a time each, like a Triton instance with one model instance):
this measures the balancing, not the model; with real instances the service time varies
with the batch and beam width.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from services.common.contracts import INSTANCES_KEY, Retrieval
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.nearline.balancer import InstanceBalancer


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--service-ms", type=float, default=10.0)
    a = ap.parse_args()

    s = Settings(redis_url=a.redis)
    r = redis_client(s)
    r.flushdb()
    try:
        instances = {f"grpc://standin-{i}:1": FixedTimeInstance(f"grpc://standin-{i}:1",
                                                                a.service_ms / 1000)
                     for i in range(a.instances)}
        r.hset(INSTANCES_KEY, mapping={u: time.time() + 3600 for u in instances})
        counts: Counter[str] = Counter()
        lock = threading.Lock()
        per_worker = [a.requests // a.workers + (i < a.requests % a.workers)
                      for i in range(a.workers)]

        def work(n: int) -> None:
            bal = InstanceBalancer(redis_client(s),
                                   instances.__getitem__)
            for _ in range(n):
                _, url = bal.call(lambda c: c.retrieve(["p"], 20, 20))
                with lock:
                    counts[url] += 1

        t0 = time.perf_counter()
        with ThreadPoolExecutor(a.workers) as pool:
            list(pool.map(work, per_worker))
        wall = time.perf_counter() - t0
    finally:
        r.flushdb()

    total = sum(counts.values())
    shares = [counts[u] / total for u in instances]
    ideal_rps = a.instances / (a.service_ms / 1000)
    print(f"requests: {total}")
    print(f"instances: {a.instances}")
    print(f"workers: {a.workers}")
    print("shares: " + ",".join(f"{s:.3f}" for s in shares))
    print(f"max_share_deviation: {max(abs(s - 1 / a.instances) for s in shares):.3f}")
    print(f"calls_per_s: {total / wall:.1f}")
    print(f"ideal_calls_per_s: {ideal_rps:.1f}")
    print(f"throughput_vs_ideal: {total / wall / ideal_rps:.3f}")


if __name__ == "__main__":
    main()
