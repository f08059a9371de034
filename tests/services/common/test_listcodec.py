"""The compact list format (3: quantised scores, 4: exact scores): round trip within the
quantisation bound, size, and clear errors for anything malformed; every format's version
is readable."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.contracts import RetrievedAd
from services.common.listcodec import (
    Packed,
    StoredList,
    encode_list,
    pack,
    quantise,
    unpack,
    version_of,
)

scores = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=40)


@given(scores=scores, version=st.integers(0, 2**63), updated=st.integers(0, 2**62),
       epoch=st.integers(1, 2**14), model=st.integers(0, 10**6), data=st.data())
def test_format_3_round_trips_within_half_a_step(scores: list[float], version: int, updated: int,
                                                 epoch: int, model: int, data) -> None:
    ids = data.draw(st.lists(st.integers(0, 2**40), min_size=len(scores), max_size=len(scores)))
    back = unpack(pack(Packed(epoch, version, updated, model, ids, scores)))
    assert (back.epoch, back.version, back.updated_ms, back.model, back.ids) == (
        epoch, version, updated, model, ids)
    span = max(scores) - min(scores)
    for got, want in zip(back.scores, scores):  # half a step < 1/255 of the range (+ f32)
        assert abs(got - want) <= span / 255 + 1e-6 * max(1.0, abs(want))
    assert max(back.scores) == struct.unpack(">f", struct.pack(">f", max(scores)))[0]


@given(scores=scores)
def test_format_4_keeps_scores_exactly(scores: list[float]) -> None:
    back = unpack(pack(Packed(7, 1, 2, 0, list(range(len(scores))), scores), exact=True))
    assert back.scores == [struct.unpack(">f", struct.pack(">f", s))[0] for s in scores]


def test_a_20_ad_list_is_small_and_empty_lists_work() -> None:
    blob = pack(Packed(9000, 123, 1_764_560_000_000, 3, [17 * i + 100 for i in range(20)],
                       [-6.9 - 0.05 * i for i in range(20)]))
    assert len(blob) <= 76  # what fits a 160-byte MEMORY USAGE with the key (README)
    assert unpack(pack(Packed(1, 2, 3, 4, [], []))).ids == []
    top, e, codes = quantise([-1.0, -1.0])
    assert (top, e, codes) == (-1.0, 0, b"\0\0")


def test_malformed_lists_are_refused_with_a_reason() -> None:
    blob = pack(Packed(5, 6, 7, 8, [1, 300, 70000], [-1.0, -2.0, -3.0]))
    for bad, why in [(b"", "format-3/4"), (b"\x09" + blob[1:], "format-3/4"),
                     (blob[:-1], "truncated"), (blob + b"\0", "trailing"),
                     (blob[:6], "truncated"), (b"\x03" + b"\xff" * 12, "truncated")]:
        with pytest.raises(ValueError, match=why):
            unpack(bad)
    with pytest.raises(ValueError, match="finite"):
        pack(Packed(1, 1, 1, 1, [1], [math.inf]))
    with pytest.raises(ValueError, match=">= 0"):
        pack(Packed(1, -1, 1, 1, [], []))
    with pytest.raises(ValueError, match="ids for"):
        pack(Packed(1, 1, 1, 1, [1, 2], [0.0]))


def test_version_of_reads_every_format() -> None:
    old = encode_list(StoredList(version=41, updated_ms=1, model_version="m",
                                 ads=[RetrievedAd(ad_id="a", score=-1.0)]))
    assert version_of(old) == 41
    assert version_of(pack(Packed(1, 42, 1, 0, [3], [-1.0]))) == 42
    assert version_of(pack(Packed(1, 43, 1, 0, [3], [-1.0]), exact=True)) == 43
