import numpy as np
import pytest

from leadre_model.index.sids import (
    add_disambiguation,
    balance_last_level,
    codebook_usage,
    collision_stats,
    parse_sid,
    sid_tokens,
    sid_vocabulary,
)


def test_token_round_trip_and_format():
    assert sid_tokens([12, 7, 4, 93, 0]) == "<a_12><b_7><c_4><d_93><e_0>"
    assert parse_sid("<a_12><b_7><c_4><d_93><e_0>") == [12, 7, 4, 93, 0]


@pytest.mark.parametrize("bad", ["", "<a_1><c_2>", "<b_1>", "<a_1>junk", "<a_x>"])
def test_parse_rejects_non_sids(bad):
    with pytest.raises(ValueError):
        parse_sid(bad)


def test_vocabulary_covers_every_level():
    vocab = sid_vocabulary([3, 2, 1])
    assert vocab == ["<a_0>", "<a_1>", "<a_2>", "<b_0>", "<b_1>", "<c_0>"]


def test_collision_stats_definitions():
    codes = np.array([[0, 0], [0, 0], [0, 0], [1, 2], [3, 4]])
    s = collision_stats(codes)
    assert s["unique"] == 3
    assert s["collision_rate"] == pytest.approx(1 - 3 / 5)
    assert s["colliding_ads"] == pytest.approx(3 / 5)
    assert s["max_collision"] == 3
    assert codebook_usage(codes, 5) == [0.6, 0.6]


def test_disambiguation_makes_every_sid_unique_and_is_stable_on_add():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(200, 3))
    full = add_disambiguation(codes)
    assert len(np.unique(full, axis=0)) == 200
    assert (full[:, :3] == codes).all()
    more = rng.integers(0, 3, size=(50, 3))
    new = add_disambiguation(more, existing=full)
    both = np.concatenate([full, new])
    assert len(np.unique(both, axis=0)) == 250  # no new ad reuses an old S-ID
    assert (new[:, :3] == more).all()


def test_balance_moves_only_losers_to_free_codes_of_the_same_prefix():
    k, d = 8, 2
    book = np.eye(k, d) * 0 + np.arange(k)[:, None] * np.ones(d)  # codes on a line
    codes = np.array([[0, 3], [0, 3], [0, 3], [1, 3], [0, 5]])
    res = np.array([[3.0, 3.0], [3.4, 3.4], [2.0, 2.0], [3.0, 3.0], [5.0, 5.0]])
    out = balance_last_level(codes, res, book)
    assert out[0].tolist() == [0, 3]  # nearest keeps the contested code
    assert out[3].tolist() == [1, 3]  # other prefix untouched
    assert out[4].tolist() == [0, 5]
    assert out[1].tolist() == [0, 4]  # nearest free code (5 is taken in prefix 0)
    assert out[2].tolist() == [0, 2]
    assert collision_stats(out)["collision_rate"] == 0


def test_balance_never_moves_frozen_rows():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2, size=(100, 2))
    res = rng.normal(size=(100, 4))
    book = rng.normal(size=(2, 4))
    frozen = np.zeros(100, dtype=bool)
    frozen[:60] = True
    out = balance_last_level(codes, res, book, frozen)
    assert (out[:60] == codes[:60]).all()
