"""Catalog applier on real Redis and a real index: UpdateAds → S-IDs for new ads (the
trained RQ-VAE, existing S-IDs unchanged) → add / pause events on the catalog stream →
the worker's prompt source renders the new ad as its S-ID."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import redis

from leadre_model.data.records import Ad, Behavior, User
from leadre_model.data.store import load_ads
from leadre_model.index.sid_index import load_index
from services.common import keys
from services.common.contracts import CATALOG_STREAM, CatalogEvent, CatalogOp
from services.common.convert import ad_to_pb
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.settings import Settings
from services.common.userstate import UserSnapshot
from services.nearline.catalog import CatalogApplier
from services.nearline.prompts import PromptSource
from tests.services.helpers import seed


def test_new_and_paused_ads_reach_the_catalog_stream(settings: Settings, rds: redis.Redis,
                                                     user_server: str, svc_world, version_dir: Path,
                                                     tmp_path: Path) -> None:
    seed(settings, svc_world[0], histories=False)
    before = load_index(version_dir / "index")
    base = load_ads(svc_world[0])
    new = Ad.model_validate({**base[3].model_dump(), "ad_id": "ad_live_1",
                             "name": "Portable espresso maker X1"})
    paused = Ad.model_validate({**base[5].model_dump(), "status": "paused"})
    stub = pb_grpc.UserServerStub(grpc.insecure_channel(user_server))
    stub.UpdateAds(pb.UpdateAdsRequest(ads=[ad_to_pb(new), ad_to_pb(paused)]))
    rds.xadd(keys.AD_UPDATES_STREAM, {"ad_id": "nope", "change": "sideways"})

    live = tmp_path / "live_index"
    applier = CatalogApplier(redis.Redis.from_url(settings.redis_url, decode_responses=True),
                             "w1", live, lambda: version_dir / "index", cache_path=tmp_path / "e.npz")
    assert applier.run_once(block_ms=10) == 2
    events = [CatalogEvent.from_fields(f) for _, f in rds.xrange(CATALOG_STREAM)]
    after = load_index(live)
    assert events[0] == CatalogEvent(op=CatalogOp.ADD, ad_id="ad_live_1",
                                     codes=tuple(int(c) for c in after.codes[after.row_of("ad_live_1")]))
    assert events[1] == CatalogEvent(op=CatalogOp.PAUSE, ad_id=paused.ad_id)
    assert (after.codes[: len(before)] == before.codes).all()  # existing S-IDs never move
    assert len({tuple(c) for c in after.codes}) == len(after)  # still unique
    dead = rds.xrange(keys.AD_UPDATES_DEAD)
    assert len(dead) == 1 and "change" in dead[0][1]["reason"]
    assert rds.xpending(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP)["pending"] == 0

    # The worker's prompt source follows the stream: the new ad renders as its S-ID.
    vdir = tmp_path / "v"
    shutil.copytree(version_dir, vdir)
    source = PromptSource(redis.Redis.from_url(settings.redis_url, decode_responses=True), vdir)
    assert source.follow_catalog() == 2 and "ad_live_1" in source.index
    click = Behavior(user_id="u_new", ts=100, domain="ad", action="click", item_id="ad_live_1")
    snap = UserSnapshot(user=User(user_id="u_new"), behaviors=[click], seq=1, known=False)
    prompt, _ = source.build(snap)
    assert source.index.sid(source.index.row_of("ad_live_1")) in prompt


def test_the_lock_keeps_one_writer_and_a_restarted_consumer_takes_its_own_back(
        settings: Settings, rds: redis.Redis, svc_world, version_dir: Path, tmp_path: Path) -> None:
    seed(settings, svc_world[0], histories=False)
    paused = Ad.model_validate({**load_ads(svc_world[0])[7].model_dump(), "status": "paused"})
    rds.hset(keys.ADS, paused.ad_id, paused.model_dump_json())
    rds.xadd(keys.AD_UPDATES_STREAM, {"ad_id": paused.ad_id, "change": "status"})

    def applier(name: str) -> CatalogApplier:
        return CatalogApplier(redis.Redis.from_url(settings.redis_url, decode_responses=True),
                              name, tmp_path / "live", lambda: version_dir / "index")

    rds.set(keys.CATALOG_LOCK, "other", px=60_000)  # another worker is applying
    assert applier("w1").run_once(block_ms=10) == 0
    assert rds.xpending(keys.AD_UPDATES_STREAM, keys.CATALOG_GROUP)["pending"] == 1
    rds.set(keys.CATALOG_LOCK, "w1", px=60_000)  # w1 died holding it; w1 restarts
    assert applier("w1").run_once(block_ms=10) == 1
    assert rds.get(keys.CATALOG_LOCK) is None
    assert [f for _, f in rds.xrange(CATALOG_STREAM)] == [{"op": "pause", "ad_id": paused.ad_id}]
