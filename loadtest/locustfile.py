"""Locust load test of the Mixer: HTTP users (``/v1/retrieve``, ``/v1/rank-features``) and
gRPC users (``leadre.v1.Mixer``), user ids drawn hot / cold / unknown.

    locust -f loadtest/locustfile.py --headless -u 32 -r 32 -t 20s --host http://127.0.0.1:8080

Environment (all optional):
  LEADRE_REDIS_URL           where the known user ids are read (set ``leadre:users``)
  LEADRE_API_KEY             sent as ``x-api-key`` (HTTP header, gRPC metadata)
  LOADTEST_GRPC_TARGET       gRPC address of the mixer (default 127.0.0.1:50051)
  LOADTEST_HOT_USERS         size of the hot set (default 20)
  LOADTEST_MIX               hot,cold,unknown shares (default 0.7,0.2,0.1)
  LOADTEST_K                 ads per retrieve (default 10)
  LOADTEST_GRPC_WEIGHT / LOADTEST_HTTP_WEIGHT   user class weights (default 1 / 1)

At the end one line per request type: ``req/s``, ``p50/p95/p99`` (ms), ``errors``.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc's C core must cooperate with locust's gevent loop

import grpc
import redis
from locust import HttpUser, User, between, events, task
from locust.env import Environment

from services.common import keys
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.redis_client import redis_client
from services.common.settings import Settings


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class UserPool:
    """Known ids from Redis split into a small hot set and the cold rest; unknown ids are
    valid but never seeded (the fallback path)."""

    def __init__(self, known: list[str], hot: int, mix: tuple[float, float, float]) -> None:
        known = sorted(known)
        self.hot, self.cold = known[:hot], known[hot:] or known[:hot]
        self.mix = mix

    def draw(self) -> tuple[str, str]:
        x = random.random() * sum(self.mix)
        if self.hot and x < self.mix[0]:
            return "hot", random.choice(self.hot)
        if self.cold and x < self.mix[0] + self.mix[1]:
            return "cold", random.choice(self.cold)
        return "unknown", f"lt-unknown-{random.randrange(1_000_000)}"


POOL = UserPool([], 0, (0.0, 0.0, 1.0))
ADS: list[str] = ["ad_unknown"]  # candidate ids for rank-features (sampled from Redis)
API_KEY = os.environ.get("LEADRE_API_KEY")
K = int(_env("LOADTEST_K", "10"))


@events.test_start.add_listener
def _load_users(environment: Environment, **_: Any) -> None:
    global POOL, ADS
    settings = Settings()  # LEADRE_REDIS_URL, _PASSWORD, _TLS_CA
    url = settings.redis_url
    try:
        r = redis_client(settings)
        known = list(r.smembers(keys.USERS))
        ADS = list(r.hrandfield(keys.ADS, 2000) or ADS)  # type: ignore[arg-type]
    except redis.RedisError as exc:
        print(f"loadtest: no user ids from {url} ({exc}); every id is unknown")
        known = []
    mix = tuple(float(x) for x in _env("LOADTEST_MIX", "0.7,0.2,0.1").split(","))
    POOL = UserPool(known, int(_env("LOADTEST_HOT_USERS", "20")), mix)  # type: ignore[arg-type]
    print(f"loadtest: {len(POOL.hot)} hot, {len(POOL.cold)} cold known users; mix {mix}")


@events.quitting.add_listener
def _summary(environment: Environment, **_: Any) -> None:
    stats = environment.stats
    print("\nloadtest summary")
    for entry in [*sorted(stats.entries.values(), key=lambda e: (e.method or "", e.name)),
                  stats.total]:
        n = entry.num_requests
        err = entry.num_failures / n if n else 0.0
        p = entry.get_response_time_percentile
        print(f"{entry.method or 'ALL':>5} {entry.name:<24} req/s {entry.total_rps:8.1f}  "
              f"p50/p95/p99 ms {p(0.5):.0f}/{p(0.95):.0f}/{p(0.99):.0f}  "
              f"errors {err:.2%} ({entry.num_failures}/{n})")


class MixerHttpUser(HttpUser):
    weight = int(_env("LOADTEST_HTTP_WEIGHT", "1"))
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        if API_KEY:
            self.client.headers["x-api-key"] = API_KEY

    @task(8)
    def retrieve(self) -> None:
        _, user = POOL.draw()
        self.client.post("/v1/retrieve", json={"user_id": user, "k": K}, name="/v1/retrieve")

    @task(1)
    def rank_features(self) -> None:
        _, user = POOL.draw()
        cands = random.sample(ADS, min(20, len(ADS)))
        self.client.post("/v1/rank-features", json={"user_id": user, "candidate_ad_ids": cands},
                         name="/v1/rank-features")


class MixerGrpcUser(User):
    """A locust user over a blocking gRPC stub; every call is reported as request_type
    ``grpc`` with the method name."""

    weight = int(_env("LOADTEST_GRPC_WEIGHT", "1"))
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(_env("LOADTEST_GRPC_TARGET", "127.0.0.1:50051"))
        self.stub = pb_grpc.MixerStub(self.channel)
        self.md = (("x-api-key", API_KEY),) if API_KEY else ()

    def on_stop(self) -> None:
        self.channel.close()

    def _call(self, name: str, fn: Any, request: Any) -> None:
        t0 = time.perf_counter()
        exc: Exception | None = None
        size = 0
        try:
            size = fn(request, timeout=5, metadata=self.md).ByteSize()
        except grpc.RpcError as e:
            exc = e
        self.environment.events.request.fire(
            request_type="grpc", name=name, response_time=(time.perf_counter() - t0) * 1000,
            response_length=size, exception=exc, context={})

    @task(8)
    def retrieve(self) -> None:
        _, user = POOL.draw()
        self._call("Retrieve", self.stub.Retrieve, pb.RetrieveRequest(user_id=user, k=K))

    @task(1)
    def rank_features(self) -> None:
        _, user = POOL.draw()
        cands = random.sample(ADS, min(20, len(ADS)))
        self._call("RankFeatures", self.stub.RankFeatures,
                   pb.RankFeaturesRequest(user_id=user, candidate_ad_ids=cands))
