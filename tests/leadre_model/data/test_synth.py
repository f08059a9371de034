"""The seeded synthetic world: determinism, valid records, catalog shape, real content
signal, leave-one-out readiness, streaming independent of block size, atomic writes."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from leadre_model.data import synth
from leadre_model.data.records import AD_ACTIONS, Action, Domain
from leadre_model.data.store import SCHEMAS, iter_records, read_manifest, read_table
from leadre_model.data.synth import EPOCH_END, SHARD_USERS, SynthConfig, generate_world, synth_ads

TABLES = ("ads", "content", "users", "behaviors")
SMALL = {"n_users": 150, "n_ads": 400, "n_content": 500}


def _tables(world: Path) -> dict[str, object]:
    return {k: read_table(world, k) for k in TABLES}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthConfig]:
    cfg = SynthConfig(seed=7, n_users=1500, n_ads=1500, n_content=2000)
    out = tmp_path_factory.mktemp("synth") / "world"
    generate_world(out, cfg, progress=False)
    return out, cfg


@pytest.fixture(scope="module")
def histories(world: tuple[Path, SynthConfig]) -> dict[str, list[tuple]]:
    """Per user: [(ts, domain, action, item_id)] in file order."""
    beh = read_table(world[0], "behaviors").to_pydict()
    out: dict[str, list[tuple]] = defaultdict(list)
    for row in zip(beh["user_id"], beh["ts"], beh["domain"], beh["action"], beh["item_id"]):
        out[row[0]].append(row[1:])
    return out


def test_same_seed_same_world_and_another_seed_differs(tmp_path: Path) -> None:
    a, b, c = (tmp_path / x for x in "abc")
    generate_world(a, SynthConfig(seed=3, **SMALL), progress=False)
    generate_world(b, SynthConfig(seed=3, **SMALL), progress=False)
    generate_world(c, SynthConfig(seed=4, **SMALL), progress=False)
    ta, tb, tc = _tables(a), _tables(b), _tables(c)
    for k in TABLES:
        assert ta[k].num_rows > 0
        assert ta[k].equals(tb[k]), k
        assert not ta[k].equals(tc[k]), k
    assert read_manifest(a) == read_manifest(b)


def test_every_row_validates_and_references_exist(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=1, **SMALL)
    manifest = generate_world(tmp_path, cfg, progress=False)
    recs = {k: list(iter_records(tmp_path, k)) for k in TABLES}  # pydantic validation
    assert {k: len(v) for k, v in recs.items()} == manifest["counts"]
    assert manifest["source"] == "synthetic" and SynthConfig(**manifest["config"]) == cfg
    assert len(recs["ads"]) == cfg.n_ads and len(recs["users"]) == cfg.n_users
    ad_ids = {a.ad_id for a in recs["ads"]}
    content_ids = {c.content_id for c in recs["content"]}
    user_ids = {u.user_id for u in recs["users"]}
    assert len(ad_ids) == cfg.n_ads and len(content_ids) == cfg.n_content
    paused = {a.ad_id for a in recs["ads"] if a.status.value == "paused"}
    for b in recs["behaviors"]:
        assert b.user_id in user_ids
        assert b.item_id in (ad_ids if b.domain is Domain.AD else content_ids)
        if b.domain is Domain.AD:
            assert b.action in AD_ACTIONS and b.item_id not in paused  # paused ads get no traffic
        assert manifest["window"]["start"] <= b.ts < EPOCH_END
    assert {b.user_id for b in recs["behaviors"]} == user_ids
    actions = Counter(b.action for b in recs["behaviors"])
    assert all(actions[a] > 0 for a in Action), actions
    # Content categories use the ad L2 vocabulary; the manifest maps them to L1.
    l2_to_l1 = {l2: l1 for l1, l2s in manifest["taxonomy"].items() for l2 in l2s}
    assert {c.category for c in recs["content"]} <= set(l2_to_l1)
    assert all(l2_to_l1[a.category_l2] == a.category_l1 for a in recs["ads"])
    # Profiles: consumption level drives ARPU.
    arpu = defaultdict(list)
    for u in recs["users"]:
        arpu[u.consumption_level].append(u.arpu)
    assert np.median(arpu["low"]) < np.median(arpu["medium"]) < np.median(arpu["high"])


def test_catalog_has_advertisers_heavy_tailed_ecpm_and_category_vocabulary() -> None:
    cols = synth_ads(SynthConfig(seed=2, n_ads=8000))
    assert list(cols) == SCHEMAS["ads"].names
    owners = defaultdict(list)
    for adv, l1 in zip(cols["advertiser_id"], cols["category_l1"]):
        owners[adv].append(l1)
    sizes = np.array([len(v) for v in owners.values()])
    assert len(owners) == 1000 and sizes.min() >= 2 and np.median(sizes) >= 3
    assert sizes.max() >= 10 * np.median(sizes)  # Zipf-like: a few large advertisers
    focus = np.mean([Counter(v).most_common(1)[0][1] / len(v) for v in owners.values()])
    assert focus > 0.75  # advertisers stay mostly in one category
    ecpm = np.sort(np.asarray(cols["ecpm"]))[::-1]
    assert ecpm[: len(ecpm) // 10].sum() > 0.3 * ecpm.sum()
    assert np.all(np.asarray(cols["bid"]) > 0)
    paused = np.mean(np.asarray(cols["status"]) == "paused")
    assert 0.01 < paused < 0.06
    assert len(set(cols["name"])) > 0.95 * len(cols["name"])
    # Names share vocabulary within a category, not across: text embeddings cluster.
    words = [set(n.lower().split()[1:-1]) for n in cols["name"]]  # drop brand and series
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, len(words), (2, 20_000))
    jac = np.array([len(words[a] & words[b]) / len(words[a] | words[b]) for a, b in zip(i, j)])
    same = np.array([cols["category_l2"][a] == cols["category_l2"][b] for a, b in zip(i, j)])
    assert jac[same].mean() > 5 * jac[~same].mean()


def test_synth_ads_matches_the_world_ads_table(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=5, **SMALL)
    generate_world(tmp_path, cfg, progress=False)
    table = read_table(tmp_path, "ads").to_pydict()
    cols = synth_ads(cfg)
    assert table == {k: list(np.asarray(v).tolist()) if k in ("ecpm", "bid") else v
                     for k, v in cols.items()}


def test_histories_are_sorted_and_ready_for_leave_one_out(world, histories) -> None:
    _, cfg = world
    assert len(histories) == cfg.n_users
    for events in histories.values():
        ts = [e[0] for e in events]
        assert ts == sorted(ts)
        positive = [e for e in events if e[1] == "ad" and e[2] in ("click", "conversion")]
        assert len(positive) >= 3
        # Every click follows an impression of the same ad.
        seen = set()
        for _, domain, action, item in events:
            if domain == "ad" and action == "impression":
                seen.add(item)
            elif domain == "ad" and action == "click":
                assert item in seen


def test_recent_content_predicts_the_next_ad_click(world, histories) -> None:
    out, _ = world
    ad_l2 = dict(zip(*read_table(out, "ads", ["ad_id", "category_l2"]).to_pydict().values()))
    ct_l2 = dict(zip(*read_table(out, "content", ["content_id", "category"]).to_pydict().values()))
    pairs, by_content, by_last_ad = [], [], []
    for events in histories.values():
        for k, (ts, domain, action, item) in enumerate(events):
            if domain != "ad" or action != "click":
                continue
            recent = Counter(ct_l2[e[3]] for e in events[:k] if e[1] == "content"
                             and e[2] != "impression" and e[0] >= ts - 7 * 86_400)
            clicks = [ad_l2[e[3]] for e in events[:k] if e[1] == "ad" and e[2] == "click"]
            if recent and clicks:
                pred = recent.most_common(1)[0][0]
                pairs.append((pred, ad_l2[item]))
                by_content.append(pred == ad_l2[item])
                by_last_ad.append(clicks[-1] == ad_l2[item])
    assert len(pairs) > 3000
    hit = np.mean(by_content)
    preds, targets = Counter(p for p, _ in pairs), Counter(t for _, t in pairs)
    chance = sum(preds[c] * targets[c] for c in preds) / len(pairs) ** 2
    assert hit > 0.25 and hit > 5 * chance, (hit, chance)
    # Content history tells more than the ad history alone (the paper's "w.o. content").
    assert hit > np.mean(by_last_ad) + 0.05, (hit, np.mean(by_last_ad))


def test_long_term_interests_follow_the_profile(world, histories) -> None:
    out, _ = world
    jobs = dict(zip(*read_table(out, "users", ["user_id", "occupation"]).to_pydict().values()))
    ad_l1 = dict(zip(*read_table(out, "ads", ["ad_id", "category_l1"]).to_pydict().values()))
    share = defaultdict(list)
    for user, events in histories.items():
        clicks = [ad_l1[e[3]] for e in events if e[1] == "ad" and e[2] == "click"]
        group = "student" if jobs[user] == "student" else "other"
        share[group].append(np.mean([c in ("Education", "Games") for c in clicks]))
    assert len(share["student"]) > 50
    assert np.mean(share["student"]) > 1.5 * np.mean(share["other"])


def test_block_size_does_not_change_the_world(tmp_path: Path) -> None:
    cfg = SynthConfig(seed=11, n_users=20_000, n_ads=500, n_content=500, mean_events_per_user=8)
    generate_world(tmp_path / "small", cfg, progress=False, block_users=SHARD_USERS)
    generate_world(tmp_path / "big", cfg, progress=False, block_users=1_000_000)
    small, big = _tables(tmp_path / "small"), _tables(tmp_path / "big")
    for k in TABLES:
        assert small[k].equals(big[k]), k
    assert small["users"].num_rows == 20_000
    # The small-block run really streamed: one row group per block.
    assert pq.ParquetFile(tmp_path / "small" / "users.parquet").num_row_groups == 10
    assert pq.ParquetFile(tmp_path / "big" / "users.parquet").num_row_groups == 1


def test_a_failure_midway_leaves_no_partial_files(tmp_path: Path, monkeypatch) -> None:
    cfg = SynthConfig(seed=0, n_users=3 * SHARD_USERS, n_ads=300, n_content=300,
                      mean_events_per_user=5)
    generate_world(tmp_path, cfg, progress=False)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    real = synth._user_shard

    def failing(*args, **kwargs):
        if args[-1] == 2:  # after two blocks were written to the temporary files
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth, "_user_shard", failing)
    with pytest.raises(RuntimeError, match="boom"):
        generate_world(tmp_path, cfg.model_copy(update={"seed": 1}), progress=False,
                       block_users=SHARD_USERS)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    assert after == before  # old world intact, no temporary leftovers
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="boom"):
        generate_world(fresh, cfg, progress=False, block_users=SHARD_USERS)
    assert list(fresh.iterdir()) == []


@pytest.mark.parametrize("bad", [{"n_users": 0}, {"n_users": 10_000_001}, {"n_ads": 0},
                                 {"n_ads": 10, "n_advertisers": 11}, {"burst_prob": 1.5},
                                 {"n_categories_l1": 17}, {"unknown": 1}])
def test_config_rejects_bad_values(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SynthConfig(**bad)


def test_tiny_catalogs_still_produce_valid_worlds(tmp_path: Path) -> None:
    cfg = SynthConfig(n_users=5, n_ads=2, n_content=3, n_categories_l1=2, days=1)
    counts = generate_world(tmp_path, cfg, progress=False)["counts"]
    assert counts["ads"] == 2 and counts["users"] == 5
    assert sum(1 for _ in iter_records(tmp_path, "behaviors")) == counts["behaviors"] > 0
