"""Collaborative S-IDs: the SVD embedding groups co-engaged ads, no held-out target leaks
into it, the index build uses it and `index add` still gives new ads S-IDs from text."""

from __future__ import annotations

import numpy as np
import pytest

from leadre_model.data.records import AdStatus
from leadre_model.data.split import train_item_sequences
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.errors import BadInputError
from leadre_model.index.build import add_ads, build_index
from leadre_model.index.collab import CollabConfig, CollabEmbedding, fit_collab, fuse
from leadre_model.index.report import build_report
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig, load_index, load_trie


def _two_groups(n_items: int = 40, users: int = 200, seed: int = 0) -> list[list[int]]:
    """Users engage with items of one half only, in random order."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    return [list(rng.choice(half, 6, replace=False) + half * (u % 2)) for u in range(users)]


def test_svd_embedding_separates_co_engaged_groups():
    seqs = _two_groups()
    text = np.random.default_rng(1).standard_normal((40, 16)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    emb = fit_collab(text, seqs, CollabConfig(weight=0.5, dim=8, shrink=0.0))
    sim = emb.vectors @ emb.vectors.T
    group = np.arange(40) < 20
    same = np.equal.outer(group, group)
    off_diag = ~np.eye(40, dtype=bool)
    assert sim[same & off_diag].mean() > 0.5 > sim[~same].mean() + 0.3, (
        sim[same & off_diag].mean(), sim[~same].mean())
    assert np.allclose(np.linalg.norm(emb.vectors, axis=1), 1, atol=1e-5)
    # an ad without traffic is predicted from its text: a unit vector, not zeros
    cold = fit_collab(np.r_[text, text[:1]], seqs, CollabConfig(weight=0.5, dim=8))
    assert cold.counts[40] == 0 and np.isclose(np.linalg.norm(cold.vectors[40]), 1, atol=1e-5)
    fused = fuse(text, emb.vectors, 0.25)
    assert fused.shape == (40, 24)
    assert np.allclose((fused[:, 16:] ** 2).sum(1), 0.25, atol=1e-4)


def test_training_sequences_hold_no_validation_or_test_target(tmp_path):
    world = tmp_path / "world"
    generate_world(world, SynthConfig(n_users=60, n_ads=120, seed=2), progress=False)
    from leadre_model.data.split import iter_user_histories, leave_one_out, target_indices
    from leadre_model.data.store import load_ads

    ads = load_ads(world)
    row_of = {a.ad_id: i for i, a in enumerate(ads)}
    seqs = train_item_sequences(world, row_of)
    histories = list(iter_user_histories(world, positive_only=True))
    assert len(seqs) == len(histories)
    for h, s in zip(histories, seqs):
        split = leave_one_out(h)
        assert len(s) == len(split.train_targets) == max(0, len(target_indices(h)) - 2)
        assert s == [row_of[h.behaviors[i].item_id] for i in split.train_targets]


def _purity(first_codes: np.ndarray, group: np.ndarray) -> float:
    """Share of ads whose first-level code is mostly made of their own group."""
    return sum(max(group[first_codes == c].sum(), (~group[first_codes == c]).sum())
               for c in np.unique(first_codes)) / len(group)


def test_collab_index_build_and_add(tmp_path, small_ads, embed_cache):
    rq = PRESETS["tiny"].model_copy(update={"epochs": 20})
    cfg = IndexConfig(rqvae=rq, collab=CollabConfig(weight=0.8, dim=16))
    with pytest.raises(BadInputError, match="training sequences"):
        build_index(small_ads[:500], tmp_path / "x", cfg, cache_path=embed_cache, progress=False)
    seqs = _two_groups(500, 400)
    out = tmp_path / "index"
    index = build_index(small_ads[:500], out, cfg, cache_path=embed_cache, progress=False,
                        sequences=seqs)
    assert index.stats["collab"]["ads_with_traffic"] == len(set(np.concatenate(seqs)))
    assert len(np.unique(index.codes, axis=0)) == 500
    cold = index.stats["collab"]["cold_start"]
    assert cold["ads"] > 0 and 0 <= cold["prefix2_agreement"] <= cold["first_code_agreement"] <= 1
    build_report(out, small_ads[:500], tmp_path / "report")
    assert "Collaborative S-IDs: weight 0.8" in (tmp_path / "report" / "report.md").read_text()
    # first-level codes follow the co-engagement groups more than text-only ones do
    text_only = build_index(small_ads[:500], tmp_path / "text", IndexConfig(rqvae=rq),
                            cache_path=embed_cache, progress=False)
    group = np.arange(500) >= 250
    assert _purity(index.codes[:, 0], group) > _purity(text_only.codes[:, 0], group) + 0.05
    before = load_index(out)
    new = small_ads[500:540]
    index2, added = add_ads(out, new, cache_path=embed_cache, progress=False)
    assert added == [a.ad_id for a in new]
    assert (index2.codes[:500] == before.codes).all()
    assert len(np.unique(index2.codes, axis=0)) == 540
    assert CollabEmbedding.load(out).vectors.shape == (540, 16)
    active = np.array([a.status is AdStatus.ACTIVE for a in small_ads[:540]])
    assert (load_trie(out).lookup(index2.codes) == np.where(active, np.arange(540), -1)).all()
