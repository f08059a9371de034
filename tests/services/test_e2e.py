"""End to end on real processes: Triton inference instances (PyTriton, random-init tiny
model), nearline worker, User Server and Mixer, Redis db 14. Behaviour events in → fresh
lists served by the Mixer out; a worker killed with SIGKILL mid-run loses nothing; a paused
ad leaves the live trie without a restart; SIGTERM drains every process (exit 0)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from leadre_model.data.records import Ad
from services.common import keys
from services.common.contracts import CATALOG_STREAM
from services.common.convert import ad_to_pb
from services.common.liststore import read_list
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.launcher import LocalStack, free_port, free_port_block
from services.replay import post_behaviors, stale_users, wait_fresh
from services.user_server.seed import seed_world
from tests.services.helpers import REDIS_BASE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, svc_world, tiny_model: Path
         ) -> Iterator[tuple[LocalStack, Settings, list]]:
    from services.inference.registry import publish_version

    work = tmp_path_factory.mktemp("e2e")
    s = Settings(redis_url=f"{REDIS_BASE}/14", registry_dir=str(work / "registry"),
                 live_index_dir=str(work / "live_index"), inference_log_dir=str(work / "logs"),
                 user_server_port=free_port(), mixer_http_port=free_port(),
                 mixer_grpc_port=free_port(), user_metrics_port=0, worker_metrics_port=0,
                 list_beam_width=6, list_size=6, worker_claim_idle_ms=1000,
                 inference_threads=1, worker_drain_s=10, inference_drain_s=5)
    s = s.model_copy(update={"user_server_addr": f"127.0.0.1:{s.user_server_port}"})
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    r.flushdb()
    world, index = svc_world
    publish_version(s.registry_dir, tiny_model, index, world=world)
    seeded = seed_world(r, world, s, holdout=3)
    stack = LocalStack(s, instances=1, base_port=free_port_block(3), log_dir=work / "logs")
    stack.start()
    try:
        stack.wait_ready(300)
        yield stack, s, seeded.held_out
    finally:
        codes = stack.stop()
        r.flushdb()
        shutil.rmtree(work, ignore_errors=True)
    assert all(c == 0 for c in codes.values()), f"unclean exits {codes}"


def test_events_to_fresh_lists_served_by_the_mixer_surviving_a_worker_kill(live) -> None:
    stack, s, events = live
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    users = sorted({b.user_id for b in events})[:12]
    mine = [b for b in events if b.user_id in set(users)]

    def kill_half_way(n: int) -> None:
        if n == 20:  # SIGKILL mid-run: entries delivered but not acked stay pending
            stack.kill9("worker")
            stack.start(("worker",))

    assert post_behaviors(s.user_server_addr, mine, batch=10, between=kill_half_way) == len(mine)
    wait_fresh(r, users, timeout_s=120)
    assert stale_users(r, users) == []
    assert r.xpending(keys.BEHAVIOR_STREAM, keys.WORKER_GROUP)["pending"] == 0
    with httpx.Client(base_url=f"http://127.0.0.1:{s.mixer_http_port}", timeout=10) as http:
        for u in users:
            body = http.post("/v1/retrieve", json={"user_id": u, "k": 8}).json()
            state = http.get(f"/v1/users/{u}").json()
            assert body["list_hit"] and body["list_version"] == state["state_version"]
            assert body["consumption"]["leadre_exclusive"] + body["consumption"]["both"] >= 1
            leadre = [a for a in body["ads"] if a["provenance"] == "leadre"]
            assert all(a["score"] <= 0 and a["name"] for a in leadre)


def test_a_paused_ad_leaves_the_live_trie_without_a_restart(live) -> None:
    """UpdateAds → catalog applier → pause event → the inference instance's trie: the ad is
    gone from the *stored* list (what inference returned), not only from what the user
    server serves (it filters paused ads itself)."""
    _, s, events = live
    r = redis.Redis.from_url(s.redis_url, decode_responses=True)
    user = max({b.user_id for b in events})
    mine = [b for b in events if b.user_id == user]
    post_behaviors(s.user_server_addr, mine[:1])
    wait_fresh(r, [user], timeout_s=60)
    top = _stored(user)[0]
    ad = Ad.model_validate_json(r.hget(keys.ADS, top))
    paused = Ad.model_validate({**ad.model_dump(), "status": "paused"})
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(s.user_server_addr))
    assert stub.UpdateAds(pb.UpdateAdsRequest(ads=[ad_to_pb(paused)])).status_changes == 1
    deadline = time.monotonic() + 60
    while not r.xlen(CATALOG_STREAM):
        assert time.monotonic() < deadline, "no catalog event"
        time.sleep(0.2)
    assert [f for _, f in r.xrange(CATALOG_STREAM)] == [{"op": "pause", "ad_id": top}]
    time.sleep(2 * s.inference_poll_s + 0.5)  # the instance tails the catalog stream
    post_behaviors(s.user_server_addr, mine[1:2])
    wait_fresh(r, [user], timeout_s=60)
    assert top not in _stored(user)


def _stored(user: str) -> list[str]:
    """The list as the worker wrote it (binary: read without decoding responses)."""
    stored = read_list(redis.Redis(connection_pool=redis.ConnectionPool.from_url(
        f"{REDIS_BASE}/14")), user)
    assert stored is not None
    return [a.ad_id for a in stored.ads]
