"""The committed gRPC stubs match proto/leadre.proto; the list encoding round-trips and
rejects anything else."""

from __future__ import annotations

import math

import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from services.common.contracts import RetrievedAd
from services.common.listcodec import StoredList, decode_list, encode_list
from services.common.pb import leadre_pb2
from services.common.proto_gen import compile_proto


def test_committed_stubs_match_the_proto(tmp_path) -> None:
    desc = tmp_path / "leadre.desc"
    compile_proto(tmp_path, descriptor_set=desc)
    fresh = descriptor_pb2.FileDescriptorSet.FromString(desc.read_bytes()).file[0]
    for msg in fresh.message_type:  # protoc adds json names; generated code leaves them out
        for f in msg.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(leadre_pb2.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "stale stubs: run `python -m services.common.proto_gen`"


ids = st.from_regex(r"[A-Za-z0-9_.:\-]{1,64}", fullmatch=True)
items = st.lists(st.builds(RetrievedAd, ad_id=ids,
                           score=st.floats(-1e6, 0, allow_nan=False, width=32)), max_size=30)


@given(version=st.integers(0, 2**63), updated=st.integers(0, 2**62), ads=items, advs=items,
       model=st.text(max_size=40))
def test_list_encoding_round_trips(version: int, updated: int, ads, advs, model: str) -> None:
    model = model.encode()[:255].decode(errors="ignore")
    lst = StoredList(version=version, updated_ms=updated, model_version=model, ads=ads,
                     advertisers=advs)
    back = decode_list(encode_list(lst))
    assert back == lst


def test_list_encoding_is_compact_and_rejects_garbage() -> None:
    lst = StoredList(version=3, updated_ms=1, model_version="abcdef0123456789",
                     ads=[RetrievedAd(ad_id=f"ad_{i:04d}", score=-1.5) for i in range(20)],
                     advertisers=[RetrievedAd(ad_id=f"adv_{i:04d}", score=-2.0) for i in range(20)])
    blob = encode_list(lst)
    assert len(blob) < 0.4 * len(lst.model_dump_json())  # 540 bytes vs 1,427
    for bad in (b"", b"XX" + blob[2:], blob[:-1], blob + b"\0"):
        with pytest.raises(ValueError):
            decode_list(bad)
    assert math.isclose(decode_list(blob).ads[0].score, -1.5)


def test_lists_written_in_format_1_still_decode() -> None:
    import struct

    def s8(x: str) -> bytes:
        return bytes([len(x)]) + x.encode()

    v1 = (struct.pack(">2sBQq", b"LL", 1, 7, 1234) + s8("m-old")
          + struct.pack(">H", 2) + s8("ad_1") + struct.pack(">f", -0.5) + s8("ad_2")
          + struct.pack(">f", -1.0) + struct.pack(">H", 1) + s8("adv_1") + struct.pack(">f", 0.25))
    lst = decode_list(v1)
    assert (lst.version, lst.updated_ms, lst.model_version) == (7, 1234, "m-old")
    assert [(a.ad_id, a.score) for a in lst.ads] == [("ad_1", -0.5), ("ad_2", -1.0)]
    assert [(a.ad_id, a.score) for a in lst.advertisers] == [("adv_1", 0.25)]
    assert encode_list(lst)[2] == 2  # rewritten in the current format
