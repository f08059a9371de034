"""The Mixer over real uvicorn + gRPC, with a real User Server and Redis: branch merge,
consumption counts, ranking features, bad input → 422 / INVALID_ARGUMENT, the user
server down → 503 / UNAVAILABLE. The behaviour tests run with both list sources (lists
read in process, and through the user server's gRPC API)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
import redis

from leadre_model.data.records import Ad
from leadre_model.index.sid_index import load_index
from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.mixer.server import MixerProcess, start_mixer
from services.nearline.writer import ListWriter
from tests.services.helpers import BackgroundLoop, seed


def _start(bg: BackgroundLoop, settings: Settings, index_dir: Path) -> MixerProcess:
    proc, _ = bg.run(start_mixer(settings, lambda: index_dir, http_port=0, grpc_port=0))
    return proc


@pytest.fixture(params=["redis", "grpc"])
def mixer(request: pytest.FixtureRequest, bg: BackgroundLoop, settings: Settings, user_server: str,
          svc_world) -> Iterator[tuple[httpx.Client, pb_grpc.MixerStub]]:
    s = settings.model_copy(update={"user_server_addr": user_server, "mixer_max_k": 50,
                                    "mixer_list_source": request.param})
    seed(s, svc_world[0])
    proc = _start(bg, s, svc_world[1])
    with httpx.Client(base_url=f"http://127.0.0.1:{proc.http_port}", timeout=10) as http:
        yield http, pb_grpc.MixerStub(grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}"))
    bg.run(proc.stop(0.5))


def _write_list(settings: Settings, user: str, ads: list[str], advertisers: dict[str, float]) -> None:
    ListWriter(redis.Redis.from_url(settings.redis_url), settings.list_ttl_s, 50).write(
        user, 3, Retrieval(ads=[RetrievedAd(ad_id=a, score=-0.1 * (i + 1)) for i, a in enumerate(ads)],
                           advertisers=[RetrievedAd(ad_id=a, score=p) for a, p in advertisers.items()],
                           model_version="m-test"))


def test_miss_is_served_from_the_fallback(mixer, rds: redis.Redis) -> None:
    http, _ = mixer
    user = min(rds.smembers(keys.USERS))
    body = http.post("/v1/retrieve", json={"user_id": user, "k": 8}).json()
    assert body["list_hit"] is False and body["list_age_s"] is None
    assert len(body["ads"]) == 8 and {a["provenance"] for a in body["ads"]} == {"fallback"}
    assert body["consumption"] == {"leadre_exclusive": 0, "fallback_exclusive": 8, "both": 0}


def test_hit_merges_dedupes_and_counts_consumption(mixer, rds: redis.Redis, settings: Settings) -> None:
    http, stub = mixer
    user = sorted(rds.smembers(keys.USERS))[1]
    fallback_top = [a["ad_id"] for a in http.post("/v1/retrieve", json={"user_id": user, "k": 10})
                    .json()["ads"]]
    others = [a for a in rds.zrange(keys.FALLBACK_GLOBAL, 0, 40) if a not in fallback_top][:6]
    leadre = [fallback_top[0], *others]  # one ad in both branches
    _write_list(settings, user, leadre, {})
    body = http.post("/v1/retrieve", json={"user_id": user, "k": 8}).json()
    ids = [a["ad_id"] for a in body["ads"]]
    assert body["list_hit"] and body["list_version"] == 3 and body["model_version"] == "m-test"
    assert len(ids) == len(set(ids)) == 8
    assert ids[:6] == leadre[:6]  # round(8 * 0.75) = 6 LEADRE slots first
    assert body["ads"][0]["also_in_other_branch"] and body["ads"][0]["name"]
    assert body["consumption"] == {"leadre_exclusive": 5, "fallback_exclusive": 2, "both": 1}
    assert 0 <= body["list_age_s"] < 60
    # The same over gRPC.
    g = stub.Retrieve(pb.RetrieveRequest(user_id=user, k=8))
    assert [a.ad_id for a in g.ads] == ids and (g.leadre_exclusive, g.both) == (5, 1)
    metrics = http.get("/metrics").text
    assert 'leadre_mixer_served_ads_total{branch="both"}' in metrics
    assert "leadre_mixer_list_age_seconds_bucket" in metrics
    assert 'method="POST /v1/retrieve"' in metrics


def test_retrieve_fast_path_answers_like_the_fastapi_route(mixer, rds: redis.Redis,
                                                           settings: Settings) -> None:
    """application/json goes through services/mixer/fastpath.py, another JSON type
    (``+json``) through FastAPI's route: the same answer, the same metric label, FastAPI's
    own 422 for a bad body on either (and for a body without a content type)."""
    http, _ = mixer
    user = sorted(rds.smembers(keys.USERS))[3]
    _write_list(settings, user, sorted(rds.hkeys(keys.ADS))[:5], {})
    body = json.dumps({"user_id": user, "k": 7}).encode()
    fast = http.post("/v1/retrieve", content=body, headers={"content-type": "application/json"})
    slow = http.post("/v1/retrieve", content=body, headers={"content-type": "application/x+json"})
    assert fast.status_code == slow.status_code == 200
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    a, b = fast.json(), slow.json()
    assert a.pop("list_age_s") >= 0 and b.pop("list_age_s") >= 0 and a == b and a["list_hit"]
    bad = json.dumps({"user_id": user, "k": 0}).encode()
    errors = [http.post("/v1/retrieve", content=bad, headers={"content-type": ct})
              for ct in ("application/json", "application/x+json")]
    assert [e.status_code for e in errors] == [422, 422] and errors[0].json() == errors[1].json()
    assert http.post("/v1/retrieve", content=body, headers={"content-type": ""}).status_code == 422
    assert http.post("/v1/retrieve", content=b"{not json",
                     headers={"content-type": "application/json"}).status_code == 422
    metrics = http.get("/metrics").text
    assert 'code="200",method="POST /v1/retrieve"' in metrics
    assert 'code="422",method="POST /v1/retrieve"' in metrics


def test_rank_features(mixer, rds: redis.Redis, settings: Settings, svc_world) -> None:
    http, stub = mixer
    index = load_index(svc_world[1])
    user = sorted(rds.smembers(keys.USERS))[2]
    retrieved = index.ad_ids[:5]
    adv = Ad.model_validate_json(rds.hget(keys.ADS, retrieved[0])).advertiser_id
    _write_list(settings, user, retrieved, {adv: 0.7, "adv_other": 0.3})
    cands = [retrieved[0], index.ad_ids[300], "not_an_ad"]
    body = http.post("/v1/rank-features", json={"user_id": user, "candidate_ad_ids": cands}).json()
    feats = {c["ad_id"]: c for c in body["candidates"]}
    levels = body["sid_levels"]
    assert [a["ad_id"] for a in body["retrieved"]] == retrieved
    me = feats[retrieved[0]]
    assert me["retrieved"] and me["max_prefix_overlap"] == levels and me["max_cosine"] > 0.99
    assert me["advertiser_prior"] == pytest.approx(0.7)
    assert 0 <= feats[index.ad_ids[300]]["max_prefix_overlap"] < levels
    assert feats["not_an_ad"]["known"] is False and feats["not_an_ad"]["max_cosine"] == 0
    g = stub.RankFeatures(pb.RankFeaturesRequest(user_id=user, candidate_ad_ids=cands))
    assert g.candidates[0].max_prefix_overlap == levels


@pytest.mark.parametrize("path,payload,field", [
    ("/v1/retrieve", {"user_id": "u1", "k": 0}, "k"),
    ("/v1/retrieve", {"user_id": "u1", "k": 51}, "k"),
    ("/v1/retrieve", {"user_id": "bad id", "k": 3}, "user_id"),
    ("/v1/retrieve", {"k": 3}, "user_id"),
    ("/v1/retrieve", {"user_id": "u1", "k": 3, "extra": 1}, "extra"),
    ("/v1/rank-features", {"user_id": "u1", "candidate_ad_ids": []}, "candidate_ad_ids"),
])
def test_bad_input_is_422_with_a_message(mixer, path: str, payload: dict, field: str) -> None:
    http, _ = mixer
    r = http.post(path, json=payload)
    assert r.status_code == 422 and field in r.text and "Traceback" not in r.text


def test_bad_grpc_input_is_invalid_argument(mixer) -> None:
    _, stub = mixer
    for req in (pb.RetrieveRequest(user_id="u1", k=0), pb.RetrieveRequest(user_id="a b", k=1)):
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(req)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_user_server_down_is_503_and_not_ready(bg: BackgroundLoop, settings: Settings, svc_world) -> None:
    s = settings.model_copy(update={"user_server_addr": "127.0.0.1:1", "mixer_timeout_s": 0.3,
                                    "mixer_list_source": "grpc"})
    proc = _start(bg, s, svc_world[1])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{proc.http_port}") as http:
            r = http.post("/v1/retrieve", json={"user_id": "u1", "k": 3})
            assert r.status_code == 503 and "user server" in r.json()["detail"]
            assert http.get("/readyz").status_code == 503
            assert http.get("/healthz").status_code == 200
        stub = pb_grpc.MixerStub(grpc.insecure_channel(f"127.0.0.1:{proc.grpc_port}"))
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(pb.RetrieveRequest(user_id="u1", k=3))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        bg.run(proc.stop(0.5))
