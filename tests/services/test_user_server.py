"""User Server over real gRPC and real Redis: validation, history bounds, one stream event
per behaviour, lists with version and TTL, fallback on a miss, ad updates."""

from __future__ import annotations

import grpc
import pytest
import redis

from leadre_model.data.records import Ad
from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.convert import ad_to_pb
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.nearline.writer import ListWriter
from tests.services.helpers import seed


@pytest.fixture
def stub(user_server: str) -> pb_grpc.UserServerStub:
    return pb_grpc.UserServerStub(grpc.insecure_channel(user_server))


def _b(user: str, ts: int, item: str = "a0001", action: str = "click", domain: str = "ad") -> pb.Behavior:
    return pb.Behavior(user_id=user, ts=ts, domain=domain, action=action, item_id=item)


def test_bad_input_is_invalid_argument_with_the_field(stub: pb_grpc.UserServerStub) -> None:
    cases = [
        (stub.RecordBehaviors, pb.RecordBehaviorsRequest(behaviors=[_b("u1", 5), _b("u1", 6, action="play")]),
         "behaviors[1]"),
        (stub.RecordBehaviors, pb.RecordBehaviorsRequest(), "behaviors (count)"),
        (stub.RecordBehaviors, pb.RecordBehaviorsRequest(behaviors=[_b("bad id!", 1)]), "user_id"),
        (stub.GetList, pb.GetListRequest(user_id="x" * 65), "user_id"),
        (stub.GetList, pb.GetListRequest(user_id="u1", k=-1), "k"),
        (stub.UpdateAds, pb.UpdateAdsRequest(ads=[pb.AdFeatures(ad_id="n1", name="x")]), "ads[0]"),
        (stub.GetAds, pb.GetAdsRequest(ad_ids=["ok", "no way"]), "ad_ids[1]"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            method(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in err.value.details(), err.value.details()


def test_behaviours_are_bounded_windowed_and_streamed(stub: pb_grpc.UserServerStub,
                                                      rds: redis.Redis, settings: Settings) -> None:
    day = 86_400
    old = [_b("u1", 1_000_000 + i, item=f"c{i}", action="play", domain="content") for i in range(3)]
    resp = stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=old))
    assert resp.recorded == 3 and all(resp.event_ids)
    # The same behaviour again (a producer retry) is recorded once and not streamed again.
    again = stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=old[:1]))
    assert again.recorded == 0 and list(again.event_ids) == [""]
    # 91 days later: the old ones leave the 90-day window.
    new = stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=[_b("u1", 1_000_000 + 91 * day)]))
    assert new.recorded == 1
    st = stub.GetUser(pb.GetUserRequest(user_id="u1"))
    assert [b.ts for b in st.recent] == [1_000_000 + 91 * day]
    assert st.state_version == 4  # every recorded behaviour counts, trimmed or not
    events = rds.xrange(keys.BEHAVIOR_STREAM)
    assert len(events) == 4 and events[-1][1]["seq"] == "4" and events[-1][1]["item_id"] == "a0001"
    # Bounded length: history_max newest.
    many = [_b("u2", 2_000_000 + i) for i in range(settings.history_max + 20)]
    stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=many))
    assert rds.zcard(keys.user_key("u2", "hist")) == settings.history_max


def test_list_hit_miss_fallback_and_paused_ads(stub: pb_grpc.UserServerStub, rds: redis.Redis,
                                                settings: Settings, svc_world) -> None:
    world, _ = svc_world
    seed(settings, world)
    user = min(rds.smembers(keys.USERS))
    miss = stub.GetList(pb.GetListRequest(user_id=user, k=5))
    assert not miss.hit and len(miss.fallback) == 5 and not miss.ads
    assert all(a.provenance == pb.FALLBACK and a.name for a in miss.fallback)
    # The fallback favours the user's own categories.
    cats = {rds.hget(keys.AD_CATEGORY, a.ad_id) for a in miss.fallback}
    hist = [m.split("|")[3] for m in rds.zrange(keys.user_key(user, "hist"), -50, -1)]
    user_cats = {rds.hget(keys.AD_CATEGORY, i) or rds.hget(keys.CONTENT_CATEGORY, i) for i in hist}
    assert cats & user_cats

    ads = rds.zrange(keys.FALLBACK_GLOBAL, 0, 3)  # the least popular: not in the fallback top
    writer = ListWriter(redis.Redis.from_url(settings.redis_url), settings.list_ttl_s, 20)
    res = Retrieval(ads=[RetrievedAd(ad_id=a, score=-1.0 - i) for i, a in enumerate(ads)],
                    advertisers=[RetrievedAd(ad_id="adv1", score=-0.1)], model_version="m1")
    assert writer.write(user, 7, res)
    assert not writer.write(user, 6, res)  # older: refused
    hit = stub.GetList(pb.GetListRequest(user_id=user, k=0))
    assert hit.hit and hit.version == 7 and hit.model_version == "m1" and not hit.fallback
    assert [a.ad_id for a in hit.ads] == ads and hit.advertisers[0].advertiser_id == "adv1"
    assert 0 < rds.pttl(keys.user_key(user, "l")) <= settings.list_ttl_s * 1000
    # A paused ad leaves the served list at once.
    paused = Ad.model_validate({**Ad.model_validate_json(rds.hget(keys.ADS, ads[0])).model_dump(),
                                "status": "paused"})
    upd = stub.UpdateAds(pb.UpdateAdsRequest(ads=[ad_to_pb(paused)]))
    assert upd.status_changes == 1 and upd.new_ads == 0
    assert [a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=user)).ads] == ads[1:]
    assert rds.zscore(keys.FALLBACK_GLOBAL, ads[0]) is None


def test_update_ads_new_ad_emits_an_update_event(stub: pb_grpc.UserServerStub, rds: redis.Redis) -> None:
    ad = pb.AdFeatures(ad_id="new1", name="Brand new", product_type="gadget", category_l1="Tech",
                       category_l2="Audio", advertiser_id="adv9", ecpm=3.0, bid=1.0)
    assert stub.UpdateAds(pb.UpdateAdsRequest(ads=[ad])).new_ads == 1
    assert stub.UpdateAds(pb.UpdateAdsRequest(ads=[ad])).new_ads == 0  # now known
    assert [e[1] for e in rds.xrange(keys.AD_UPDATES_STREAM)] == [{"ad_id": "new1", "change": "new"}]
    assert stub.GetAds(pb.GetAdsRequest(ad_ids=["new1", "nope"])).ads[0].name == "Brand new"
    assert rds.zscore(keys.fallback_key("Audio"), "new1") == 3.0


def test_health_and_redis_down_is_unavailable(bg, settings: Settings) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.user_server.server import start_user_server

    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    server, port, store, _ = bg.run(start_user_server(down, port=0))
    try:
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="leadre.v1.UserServer"))
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.UserServerStub(ch).GetList(pb.GetListRequest(user_id="u1"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Traceback" not in err.value.details()
    finally:
        bg.run(server.stop(grace=0))
        bg.run(store.close())
