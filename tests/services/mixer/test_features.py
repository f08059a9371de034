"""``services.mixer.features``: list weights, advertiser priors and the candidate-vs-retrieved
match features on hand-made codes and embeddings (no server), and the feature index read
from a real index directory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from leadre_model.index.sid_index import load_index
from services.mixer.features import FeatureIndex, advertiser_priors, list_weights


def test_list_weights_are_a_softmax_of_the_scores() -> None:
    assert list_weights([]).shape == (0,)
    w = list_weights([-1.0, -2.0, -3.0])
    assert w.sum() == pytest.approx(1.0) and w[0] > w[1] > w[2]
    assert w[0] / w[1] == pytest.approx(np.e)
    assert np.allclose(list_weights([-1001.0, -1002.0, -1003.0]), w)  # shift-invariant, stable


def test_advertiser_priors() -> None:
    assert advertiser_priors({}) == {}
    logp = advertiser_priors({"a": np.log(0.6), "b": np.log(0.2)})  # log-probabilities
    assert logp == pytest.approx({"a": 0.75, "b": 0.25})
    masses = advertiser_priors({"a": 3.0, "b": 1.0, "c": -2.0})  # masses: negatives count 0
    assert masses == pytest.approx({"a": 0.75, "b": 0.25, "c": 0.0})
    assert advertiser_priors({"a": -np.inf, "b": -np.inf}) == {"a": 0.0, "b": 0.0}
    assert advertiser_priors({"a": 0.0, "b": 0.0}) == pytest.approx({"a": 0.5, "b": 0.5})


def _feature_index(codes: list[list[int]], emb: list[list[float]]) -> FeatureIndex:
    """A FeatureIndex over ads a0, a1, … without an index directory."""
    fi = FeatureIndex.__new__(FeatureIndex)
    fi.row = {f"a{i}": i for i in range(len(codes))}
    fi.codes = np.asarray(codes, dtype=np.int64)
    e = np.asarray(emb, dtype=np.float32)
    fi.emb = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
    return fi


@pytest.fixture
def fi() -> FeatureIndex:
    return _feature_index([[1, 2, 3], [1, 2, 4], [1, 5, 6], [7, 8, 9]],
                          [[1, 0], [1, 1], [0, 1], [-1, 0]])


def test_match_features_against_the_retrieved_list(fi: FeatureIndex) -> None:
    scores = [np.log(0.75), np.log(0.25)]
    got = {m.ad_id: m for m in fi.match(["a0", "a2", "a3"], ["a0", "a1"], scores,
                                         {"a2": "adv_x"}, {"adv_x": 0.4})}
    a0, a2, a3 = got["a0"], got["a2"], got["a3"]
    assert (a0.known, a0.retrieved, a0.max_prefix_overlap, a0.mean_prefix_overlap) == (
        True, True, 3, 2.5)
    assert a0.weighted_prefix_overlap == pytest.approx(0.75 * 3 + 0.25 * 2)
    c01 = np.sqrt(0.5)
    assert a0.max_cosine == pytest.approx(1.0, abs=2e-3)
    assert a0.mean_cosine == pytest.approx((1 + c01) / 2, abs=2e-3)
    assert a0.weighted_cosine == pytest.approx(0.75 + 0.25 * c01, abs=2e-3)
    assert (a2.max_prefix_overlap, a2.mean_prefix_overlap, a2.retrieved) == (1, 1.0, False)
    assert a2.max_cosine == pytest.approx(c01, abs=2e-3) and a2.advertiser_prior == 0.4
    assert (a3.max_prefix_overlap, a3.weighted_prefix_overlap) == (0, 0.0)
    assert a3.max_cosine == pytest.approx(-c01, abs=2e-3)
    assert a3.mean_cosine == pytest.approx((-1 - c01) / 2, abs=2e-3)
    assert a0.advertiser_prior == 0.0  # no advertiser known for it


def test_unknown_candidates_and_unindexed_retrievals(fi: FeatureIndex) -> None:
    out = fi.match(["nope", "a1"], ["gone", "a0"], [-0.1, -0.2], {"nope": "adv"}, {"adv": 0.3})
    nope, a1 = out
    assert (nope.known, nope.max_prefix_overlap, nope.advertiser_prior) == (False, 0, 0.3)
    # "gone" is not indexed: only a0 counts, with the whole weight
    assert (a1.max_prefix_overlap, a1.weighted_prefix_overlap) == (2, pytest.approx(2.0))
    empty = fi.match(["a1"], [], [], {}, {})[0]
    assert (empty.known, empty.max_prefix_overlap, empty.max_cosine) == (True, 0, 0.0)


def test_feature_index_reads_an_index_directory(small_index: Path, tmp_path: Path) -> None:
    idx_dir = tmp_path / "index"
    shutil.copytree(small_index, idx_dir)
    fi = FeatureIndex(idx_dir)
    index = load_index(idx_dir)
    assert fi.levels == index.codes.shape[1] and len(fi.row) == len(index)
    assert fi.emb.dtype == np.float16
    assert np.allclose(np.linalg.norm(fi.emb.astype(np.float32), axis=1), 1.0, atol=2e-3)
    first = index.ad_ids[0]
    m = fi.match([first], [first], [0.0], {}, {})[0]
    assert m.max_prefix_overlap == fi.levels and m.max_cosine == pytest.approx(1.0, abs=2e-3)
    assert not fi.stale()
    meta = idx_dir / "index.json"
    os.utime(meta, (meta.stat().st_atime, meta.stat().st_mtime + 10))
    assert fi.stale()
    shutil.rmtree(idx_dir)
    assert not fi.stale()  # a missing index is not "changed": keep serving the loaded one
