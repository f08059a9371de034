"""Compact lists and precomputed fallback inputs on real Redis, with a real User Server:
the id registry (stable, append-only, shared by concurrent writers), format-3 lists read
back with their ads and priors, lists of formats 1 and 2 still served, a list of another
registry epoch served as a miss, ``MEMORY USAGE`` of a 20-ad list, and the fallback
branch's per-user inputs written by seed and RecordBehaviors (same answer as computing
them from the history)."""

from __future__ import annotations

import struct
import threading
import time

import grpc
import pytest
import redis

from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.idregistry import IdRegistry, Names, refresh_sync
from services.common.listcodec import StoredList, encode_list
from services.common.liststore import read_list
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.common.userstate import (
    WRITE_FALLBACK_LUA,
    fallback_value,
    parse_fallback_value,
    user_categories,
)
from services.nearline.writer import ListWriter
from services.user_server.hotcache import HotCache
from tests.services.helpers import seed


@pytest.fixture
def raw(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)  # bytes: lists are binary


@pytest.fixture
def stub(user_server: str) -> pb_grpc.UserServerStub:
    return pb_grpc.UserServerStub(grpc.insecure_channel(user_server))


def _retrieval(ads: list[str], advertisers: dict[str, float] | None = None) -> Retrieval:
    return Retrieval(ads=[RetrievedAd(ad_id=a, score=-6.9 - 0.03 * i) for i, a in enumerate(ads)],
                     advertisers=[RetrievedAd(ad_id=a, score=p) for a, p in (advertisers or {}).items()],
                     model_version="m-compact")


def test_registry_numbers_are_stable_append_only_and_shared(raw: redis.Redis,
                                                           settings: Settings) -> None:
    reg = IdRegistry(raw)
    epoch, first = reg.assign({"ad": ["a1", "a2", "a3"], "model": ["m1"]})
    assert first == {"ad": [0, 1, 2], "model": [0]} and epoch > 0
    assert reg.assign({"ad": ["a3", "a4", "a1"]}) == (epoch, {"ad": [2, 3, 0]})
    # Writers racing on new ids (each its own client, like worker processes) agree.
    got: list[dict[str, list[int]]] = []
    new = [f"n{i}" for i in range(200)]

    def write(order: list[str]) -> None:
        got.append(dict(zip(order, IdRegistry(redis.Redis.from_url(settings.redis_url))
                                .assign({"ad": order})[1]["ad"])))

    threads = [threading.Thread(target=write, args=(new[::step],)) for step in (1, -1, 1, -1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g in got:
        assert all(got[0].get(k, v) == v for k, v in g.items())
    assert sorted(got[0].values()) == list(range(4, 204))  # dense, none handed out twice
    # A reader copies the names once, then fetches only the new ones.
    names = Names()
    refresh_sync(raw, names, "ad")
    assert names.lookup("ad", [0, 3]) == ["a1", "a4"] and names.epoch == epoch
    reg.assign({"ad": ["late"]})
    assert not names.covers("ad", [204])
    refresh_sync(raw, names, "ad")
    assert names.lookup("ad", [204]) == ["late"]
    with pytest.raises(ValueError, match="unknown id namespace"):
        reg.assign({"users": ["u1"]})


def test_compact_list_round_trip_size_and_priors(raw: redis.Redis, settings: Settings,
                                                 svc_world) -> None:
    seed(settings, svc_world[0])
    ads = sorted(x.decode() for x in raw.hkeys(keys.ADS))
    ListWriter(raw, settings.list_ttl_s, 20).write("u_warm", 1, _retrieval(ads))  # all numbered
    picked = ads[-20:]  # numbers >= 128: two bytes each
    writer = ListWriter(raw, settings.list_ttl_s, 20)
    assert writer.write("u1", 5, _retrieval(picked, {"adv_1": 0.7, "adv_2": 0.3}))
    view = read_list(raw, "u1")
    assert view is not None and (view.version, view.model_version) == (5, "m-compact")
    assert [a.ad_id for a in view.ads] == picked
    assert all(abs(a.score - (-6.9 - 0.03 * i)) <= 0.57 / 255 + 1e-6 for i, a in enumerate(view.ads))
    assert view.advertisers == [("adv_1", pytest.approx(0.7)), ("adv_2", pytest.approx(0.3))]
    assert struct.unpack(">f", struct.pack(">f", 0.3))[0] == view.advertisers[1].score  # exact
    assert raw.memory_usage(keys.user_key("u1", "l")) <= 160
    # Without priors the adv key goes; an older version is refused.
    assert writer.write("u1", 6, _retrieval(picked))
    assert raw.exists(keys.user_key("u1", "adv")) == 0
    assert not writer.write("u1", 6, _retrieval(picked[:3]))
    assert read_list(raw, "u1").version == 6


def _write_old(raw: redis.Redis, user: str, blob: bytes, version: int) -> None:
    """What the writer of formats 1-2 did: a hash with v and d, and the version guard."""
    raw.hset(keys.user_key(user, "list"), mapping={"v": version, "d": blob})
    raw.pexpire(keys.user_key(user, "list"), 60_000)
    raw.set(keys.user_key(user, "lv"), version)


def test_lists_of_formats_1_and_2_are_still_served(stub: pb_grpc.UserServerStub, raw: redis.Redis,
                                                   settings: Settings, svc_world) -> None:
    seed(settings, svc_world[0])
    users = sorted(x.decode() for x in raw.smembers(keys.USERS))
    ads = sorted(x.decode() for x in raw.hkeys(keys.ADS))[:3]
    v2 = encode_list(StoredList(version=4, updated_ms=1000, model_version="m-old",
                                ads=[RetrievedAd(ad_id=a, score=-1.0 - i) for i, a in enumerate(ads)],
                                advertisers=[RetrievedAd(ad_id="adv_9", score=0.5)]))

    def s8(x: str) -> bytes:
        return bytes([len(x)]) + x.encode()

    v1 = (struct.pack(">2sBQq", b"LL", 1, 7, 1234) + s8("m-v1") + struct.pack(">H", 2)
          + s8(ads[0]) + struct.pack(">f", -0.5) + s8(ads[1]) + struct.pack(">f", -1.0)
          + struct.pack(">H", 0))
    _write_old(raw, users[0], v2, 4)
    _write_old(raw, users[1], v1, 7)
    two = stub.GetList(pb.GetListRequest(user_id=users[0]))
    assert two.hit and two.version == 4 and two.model_version == "m-old"
    assert [a.ad_id for a in two.ads] == ads and two.advertisers[0].advertiser_id == "adv_9"
    one = stub.GetList(pb.GetListRequest(user_id=users[1]))
    assert one.hit and one.version == 7 and [a.ad_id for a in one.ads] == ads[:2]
    # The next write is format 3 and the old hash goes; the guard still holds.
    writer = ListWriter(raw, settings.list_ttl_s, 20)
    assert not writer.write(users[0], 4, _retrieval(ads[:1]))
    assert writer.write(users[0], 5, _retrieval(ads[:1]))
    assert raw.exists(keys.user_key(users[0], "list")) == 0
    assert [a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=users[0])).ads] == ads[:1]


def test_a_list_of_another_registry_epoch_is_never_misread(stub: pb_grpc.UserServerStub, raw: redis.Redis,
                                                    settings: Settings, svc_world) -> None:
    seed(settings, svc_world[0])
    user = min(x.decode() for x in raw.smembers(keys.USERS))
    ads = sorted(x.decode() for x in raw.hkeys(keys.ADS))[:5]
    ListWriter(raw, settings.list_ttl_s, 20).write(user, 3, _retrieval(ads))
    assert stub.GetList(pb.GetListRequest(user_id=user, k=5)).hit
    # The registry is deleted and rebuilt (a partial flush): its numbers mean other ids now.
    raw.delete(keys.ID_EPOCH, *keys.id_keys("ad"), *keys.id_keys("model"))
    IdRegistry(raw).assign({"ad": ads[::-1], "model": ["other"]})
    # A reader that copied the old names still reads the list as written; one that has only
    # the new registry serves a miss (the fallback), and a list of the new epoch is read.
    res = stub.GetList(pb.GetListRequest(user_id=user, k=5))
    assert not res.hit or [a.ad_id for a in res.ads] == ads
    assert read_list(raw, user) is None
    ListWriter(raw, settings.list_ttl_s, 20).write(user, 4, _retrieval(ads[:2]))
    assert [a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=user)).ads] == ads[:2]
    assert [a.ad_id for a in read_list(raw, user).ads] == ads[:2]


def test_fallback_inputs_are_precomputed_and_give_the_same_answer(
        stub: pb_grpc.UserServerStub, rds: redis.Redis, settings: Settings, svc_world) -> None:
    seed(settings, svc_world[0])
    users = sorted(rds.smembers(keys.USERS))
    ad_cat, content_cat = rds.hgetall(keys.AD_CATEGORY), rds.hgetall(keys.CONTENT_CATEGORY)

    def from_history(u: str) -> list[tuple[str, int]]:
        return user_categories(rds.zrevrange(keys.user_key(u, "hist"), 0, 49), ad_cat, content_cat,
                               settings.fallback_categories)

    for u in users[:10]:  # seed wrote them
        seq, cats = parse_fallback_value(rds.get(keys.user_key(u, "fb")))
        assert seq == int(rds.get(keys.user_key(u, "seq"))) and cats == from_history(u) and cats
    # RecordBehaviors rewrites them: a burst of clicks on one category moves it to the top.
    u = users[0]
    ad = next(a for a, c in sorted(ad_cat.items()) if c not in dict(from_history(u)))
    newest = max(int(m.split("|")[0]) for m in rds.zrange(keys.user_key(u, "hist"), -1, -1))
    stub.RecordBehaviors(pb.RecordBehaviorsRequest(behaviors=[
        pb.Behavior(user_id=u, ts=newest + i + 1, domain="ad", action="click", item_id=ad)
        for i in range(30)]))
    seq, cats = parse_fallback_value(rds.get(keys.user_key(u, "fb")))
    assert seq == int(rds.get(keys.user_key(u, "seq"))) and cats == from_history(u)
    assert cats[0] == (ad_cat[ad], 30)
    # A write of an older state does not replace newer inputs (concurrent user servers).
    script = rds.register_script(WRITE_FALLBACK_LUA)
    assert script(keys=[keys.user_key(u, "fb")], args=[seq - 1, fallback_value(seq - 1, [])]) == 0
    assert parse_fallback_value(rds.get(keys.user_key(u, "fb")))[1] == cats
    # The fallback served from the precomputed inputs equals the one computed from history.
    with_fb = [[a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=x, k=8)).fallback]
               for x in users[:6]]
    rds.delete(*(keys.user_key(x, "fb") for x in users[:6]))
    without = [[a.ad_id for a in stub.GetList(pb.GetListRequest(user_id=x, k=8)).fallback]
               for x in users[:6]]
    assert with_fb == without and all(len(f) == 8 for f in with_fb)


def test_cached_fallback_answers_follow_their_rankings() -> None:
    cache = HotCache(ttl_s=0.05, max_items=100)
    cats, wanted = [("Pets", 3)], [("k:pets", 4), ("k:global", 8)]
    top = [("a1", 9.0), ("a2", 8.0)]
    for key, depth in wanted:
        cache.put_ranking(key, depth, top)
    cache.put_fallback(cats, 4, ["answer"], wanted)
    assert cache.fallback(cats, 4, wanted) == ["answer"]
    assert cache.fallback(cats, 5, wanted) is None  # another n
    time.sleep(0.06)
    assert cache.fallback(cats, 4, wanted) is None  # a ranking is stale: refresh first
    cache.put_ranking("k:pets", 4, list(top))
    cache.put_ranking("k:global", 8, list(top))
    assert cache.fallback(cats, 4, wanted) == ["answer"]  # refreshed, same tops: still valid
    cache.put_ranking("k:global", 8, [("a2", 9.5), ("a1", 9.0)])
    assert cache.fallback(cats, 4, wanted) is None  # popularity moved: rebuilt
    cache.sync(b"7")  # a catalog write drops everything
    assert cache.ranking("k:pets", 4) is None and cache.fallbacks == {}
