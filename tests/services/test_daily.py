"""`leadre pipeline daily` on real Redis: export → S-IDs for a new ad → continued
fine-tuning → evaluation against the served version → publish (or refuse)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from leadre_model.data.records import Ad
from leadre_model.data.store import load_ads, read_table
from leadre_model.index.sid_index import load_index
from leadre_model.llm.model import read_manifest
from services.common import keys
from services.common.settings import Settings
from services.pipeline.daily import decide, index_new_ads, run_daily
from tests.services.helpers import seed

pytestmark = pytest.mark.slow


def test_decision_margin() -> None:
    assert decide("ndcg@8", 0.30, 0.295, 0.01)[0]
    ok, reason = decide("ndcg@8", 0.30, 0.28, 0.01)
    assert not ok and "refused" in reason and "0.2800" in reason


def test_daily_index_embeds_only_new_ads_and_reuses_earlier_days(small_index: Path,
                                                                 small_ads, tmp_path: Path) -> None:
    # The day's export holds the 500 indexed ads plus 20 new ones: only the new ones are
    # embedded; on the next day (same served index, the ads are still new to it) their texts
    # come from the embedding cache kept beside the day directories.
    export = small_ads[:520]
    day1 = index_new_ads(small_index, tmp_path / "day1", export)
    assert day1.stats["last_add"] == {"already_indexed": 500, "status_changed": 0, "new": 20,
                                      "embedded": 20, "from_cache": 0}
    day2 = index_new_ads(small_index, tmp_path / "day2", export)
    assert day2.stats["last_add"]["embedded"] == 0
    assert day2.stats["last_add"]["from_cache"] == 20
    assert (day2.codes == day1.codes).all() and len(load_index(tmp_path / "day2" / "index")) == 520
    assert len(load_index(small_index)) == 500  # the served index is not touched


def test_daily_cycle_publishes_a_continued_version(settings: Settings, rds: redis.Redis, svc_world,
                                                   tiny_model: Path, tmp_path: Path) -> None:
    from services.inference.registry import current_version, publish_version

    world, index = svc_world
    s = settings.model_copy(update={
        "registry_dir": str(tmp_path / "registry"), "live_index_dir": str(tmp_path / "live"),
        "daily_max_samples_per_task": 24, "daily_epochs": 1.0, "daily_eval_users": 6,
        "daily_margin": 1.0})
    first = publish_version(s.registry_dir, tiny_model, index, world=world)
    seed(s, world)
    base = load_ads(world)[0]
    new = Ad.model_validate({**base.model_dump(), "ad_id": "ad_daily_new", "name": "A new lamp"})
    rds.hset(keys.ADS, new.ad_id, new.model_dump_json())

    report = run_daily(s, workdir=tmp_path / "day1")
    assert report.published and report.previous_version == first
    assert current_version(s.registry_dir) == report.new_version != first
    assert report.exported["users"] == 30 and report.exported["ads"] == 601
    assert report.new_ads == 1 and "ad_daily_new" in load_index(tmp_path / "day1" / "index")
    assert report.embedding["new"] == 1
    assert report.embedding["embedded"] + report.embedding["from_cache"] == 1
    exported = read_table(tmp_path / "day1" / "world", "behaviors")
    assert exported.num_rows == sum(rds.zcard(keys.user_key(u, "hist")) for u in rds.smembers(keys.USERS))
    manifest = read_manifest(Path(s.registry_dir) / "versions" / report.new_version / "model")
    assert manifest["extra"]["train"]["continued_from"] == read_manifest(tiny_model)["model_version"]
    assert report.new_score is not None and report.previous_score is not None
