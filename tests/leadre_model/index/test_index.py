"""Index build end to end on a small synthetic catalog: unique S-IDs, a trie that maps
every S-ID back to its ad, stable S-IDs under `add`, paused ads never generated."""

from __future__ import annotations

import numpy as np
import pytest

from leadre_model.data.records import AdStatus
from leadre_model.index.build import add_ads, build_index
from leadre_model.index.embed import EmbedConfig, TextEmbedder
from leadre_model.index.report import build_report, neighbour_accuracy
from leadre_model.index.rqvae import PRESETS, RQVAEConfig
from leadre_model.index.sid_index import IndexConfig, load_index, load_trie, read_meta
from leadre_model.index.sids import parse_sid
from leadre_model.index.text import TextConfig, ad_text


def test_ad_text_follows_paper_template(small_ads):
    ad = small_ads[0]
    text = ad_text(ad)
    assert text.startswith(f"The name of the ad is {ad.name}; The product type is {ad.product_type};")
    assert f"The first-level category is {ad.category_l1};" in text
    assert f"The second-level category is {ad.category_l2};" in text
    assert "The attributes include:" in text


def test_unknown_template_field_is_rejected():
    with pytest.raises(ValueError, match="unknown field"):
        TextConfig(template="The ad {nmae}")


def test_embeddings_are_cached_by_text_hash(tmp_path, small_ads):
    texts = [ad_text(a) for a in small_ads[:20]]
    cache = tmp_path / "c.npz"
    first = TextEmbedder(EmbedConfig(), cache)
    a = first.embed(texts, progress=False)
    assert first.encoded == 20 and a.shape == (20, 384)
    second = TextEmbedder(EmbedConfig(), cache)
    changed = texts[:19] + [texts[19] + " Changed."]
    b = second.embed(changed, progress=False)
    assert second.encoded == 1  # only the changed ad is re-embedded
    np.testing.assert_allclose(a[:19], b[:19], atol=1e-6)
    assert not np.allclose(a[19], b[19])


def test_missing_encoder_path_is_a_clear_error(tmp_path):
    emb = TextEmbedder(EmbedConfig(model=str(tmp_path / "nope")), None)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        emb.embed(["x"], progress=False)


def test_every_ad_gets_a_unique_sid_and_the_trie_maps_back(small_index, small_ads):
    index = load_index(small_index)
    trie = load_trie(small_index)
    assert len(index) == 500
    assert len(np.unique(index.codes, axis=0)) == 500
    assert index.codes.shape[1] == PRESETS["tiny"].levels + 1
    rows = trie.lookup(index.codes)
    expected = np.where(index.active, np.arange(500), -1)
    assert (rows == expected).all()
    # token form round-trips
    assert parse_sid(index.sid(7)) == index.codes[7].tolist()
    # paused ads from the catalog are never reachable
    paused = [i for i, a in enumerate(small_ads[:500]) if a.status is AdStatus.PAUSED]
    assert paused, "the synthetic catalog should contain paused ads"
    assert (trie.lookup(index.codes[paused]) == -1).all()
    meta = read_meta(small_index)
    assert meta["digest"] == index.digest()


def test_codebooks_do_not_collapse(small_index):
    # Lesson from open peers: guard against codebook collapse.
    index = load_index(small_index)
    usage = index.stats["codebook_usage"]
    assert min(usage) >= 0.6, usage
    assert index.stats["collisions"]["after_balance"]["collision_rate"] <= \
        index.stats["collisions"]["before_balance"]["collision_rate"]


def test_add_new_ads_keeps_existing_sids(tmp_path, small_index, small_ads, embed_cache):
    import shutil

    work = tmp_path / "index"
    shutil.copytree(small_index, work)
    before = load_index(work)
    new = small_ads[500:560]
    cache = tmp_path / "add_cache.npz"
    index, added = add_ads(work, small_ads[:500] + new, cache_path=cache, progress=False)
    assert added == [a.ad_id for a in new]
    # only the new ads' texts are embedded; indexed ads are not embedded again
    assert index.stats["last_add"] == {"already_indexed": 500, "status_changed": 0, "new": 60,
                                       "embedded": 60, "from_cache": 0}
    assert (index.codes[:500] == before.codes).all()
    assert len(np.unique(index.codes, axis=0)) == 560
    trie = load_trie(work)
    active = np.array([a.status is AdStatus.ACTIVE for a in small_ads[:560]])
    assert (trie.lookup(index.codes) == np.where(active, np.arange(560), -1)).all()
    # adding the same ads again is a no-op
    again, added2 = add_ads(work, new, cache_path=cache, progress=False)
    assert added2 == [] and len(again) == 560
    assert again.stats["last_add"]["already_indexed"] == 60
    assert again.stats["last_add"]["embedded"] == 0
    # the same new ads on a fresh copy of the index: their texts come from the cache
    fresh = tmp_path / "fresh"
    shutil.copytree(small_index, fresh)
    third, _ = add_ads(fresh, new, cache_path=cache, progress=False)
    assert third.stats["last_add"]["from_cache"] == 60 and third.stats["last_add"]["embedded"] == 0
    assert (third.codes == index.codes).all()


def test_pausing_through_add_removes_the_ad_from_the_trie(tmp_path, small_index, small_ads, embed_cache):
    import shutil

    work = tmp_path / "index"
    shutil.copytree(small_index, work)
    target = next(i for i, a in enumerate(small_ads[:500]) if a.status is AdStatus.ACTIVE)
    paused = small_ads[target].model_copy(update={"status": AdStatus.PAUSED})
    index, _ = add_ads(work, [paused], cache_path=embed_cache, progress=False)
    trie = load_trie(work)
    assert not index.active[target]
    assert trie.lookup(index.codes[target : target + 1])[0] == -1


def test_report_writes_markdown_and_plots(tmp_path, small_index, small_ads):
    figures = build_report(small_index, small_ads[:500], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Table 5" in md and "Table 3" in md
    assert "RQ-VAE: " in md and "epochs" in figures["rqvae_stop_reason"]  # early stop or not
    assert f"Embeddings: backend {figures['embedding']['backend']}" in md
    for png in ("rqvae_loss.png", "codebook_usage.png"):
        data = (tmp_path / "report" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert figures["sid_unique_fraction"] == 1.0
    # text embeddings carry category information: neighbours share the first-level category
    # far more often than chance
    acc = figures["neighbour_accuracy_l1"]
    n_cats = len({a.category_l1 for a in small_ads[:500]})
    assert acc[1] > 3 / n_cats


def test_neighbour_accuracy_on_separable_clusters():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 16)) * 10
    labels = np.repeat(["a", "b", "c", "d"], 50)
    emb = centers[np.repeat(np.arange(4), 50)] + rng.normal(size=(200, 16))
    acc = neighbour_accuracy(emb, labels, ks=(1, 10, 49))
    assert acc[1] == 1.0 and acc[49] == 1.0


def test_build_is_deterministic(tmp_path, small_ads, embed_cache):
    cfg = IndexConfig(rqvae=RQVAEConfig(levels=2, codebook_size=8, hidden_dims=[64], epochs=5))
    a = build_index(small_ads[:100], tmp_path / "a", cfg, cache_path=embed_cache, progress=False)
    b = build_index(small_ads[:100], tmp_path / "b", cfg, cache_path=embed_cache, progress=False)
    assert (a.codes == b.codes).all()


def test_build_rejects_a_tiny_catalog(tmp_path, small_ads):
    with pytest.raises(ValueError, match="at least 2 ads"):
        build_index(small_ads[:1], tmp_path / "x", IndexConfig(), progress=False)
