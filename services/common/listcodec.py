"""Compact binary encoding of a user's LEADRE list as stored in Redis.

Layout (big-endian), format 2::

    "LL" u8 format | u64 version | i64 updated_ms | u8 n + model_version (utf-8)
    ads:         u16 n | n x f32 score | u16 m + the n ids joined by " " (m bytes)
    advertisers: the same

Ids are at most 64 ASCII bytes without spaces (``leadre_model.data.records.ID_PATTERN``).
A 20-ad list with 20 advertisers takes ~540 bytes instead of 1.4 kB as JSON. Each section
decodes in three calls (scores in one unpack, ids in one split) because the list is read on
every request; format 1 (per-entry length-prefixed ids) is still read.

Format 3 (:func:`pack` / :func:`unpack`, what the worker writes now): ids are numbers of the
id registry (:mod:`services.common.idregistry`), scores are quantised to one byte::

    u8 3 | varint epoch | varint version | varint updated_ms | varint model number
    varint n | (n > 0) f32 top score, i8 e, n x u8 code, n x varint id number

A score is ``top - code * 2**e``, ``2**e`` the smallest power of two >= (top - lowest) /
255, so it is off by at most half a step (< 1/255 of the list's score range). A 20-ad
list of a 600-ad catalog is ~75 bytes; with the key, 152 bytes of ``MEMORY USAGE``.
Format 4 is the same with exact scores (``n x f32`` in place of top, e and the codes): the
advertiser priors, which ranking uses as probabilities. Formats 1-2 start with ``b"LL"``,
so the first byte tells every format apart.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from services.common.contracts import RetrievedAd

MAGIC, FORMAT, FORMAT_1 = b"LL", 2, 1
_HEAD = struct.Struct(">2sBQq")
_U8, _U16, _F32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">f")


class StoredList(BaseModel):
    """A user's list as the worker wrote it."""

    model_config = ConfigDict(frozen=True)

    version: int = Field(ge=0, description="user state sequence number it was computed from")
    updated_ms: int = Field(ge=0)
    model_version: str = Field(max_length=255)
    ads: list[RetrievedAd]
    advertisers: list[RetrievedAd] = Field(default_factory=list)


def _put_str(out: bytearray, s: str) -> None:
    raw = s.encode()
    if len(raw) > 255:
        raise ValueError(f"id too long for the list encoding: {s[:40]!r}…")
    out += _U8.pack(len(raw)) + raw


def _put_items(out: bytearray, items: list[RetrievedAd]) -> None:
    if len(items) > 0xFFFF:
        raise ValueError("too many entries for the list encoding")
    if any(not it.ad_id or " " in it.ad_id or len(it.ad_id) > 255 for it in items):
        raise ValueError("ids in a list must be 1-255 characters without spaces")
    ids = " ".join(it.ad_id for it in items).encode()
    if len(ids) > 0xFFFF:
        raise ValueError("too many id bytes for the list encoding")
    out += _U16.pack(len(items)) + struct.pack(f">{len(items)}f", *(it.score for it in items))
    out += _U16.pack(len(ids)) + ids


def encode_list(lst: StoredList) -> bytes:
    out = bytearray(_HEAD.pack(MAGIC, FORMAT, lst.version, lst.updated_ms))
    _put_str(out, lst.model_version)
    _put_items(out, lst.ads)
    _put_items(out, lst.advertisers)
    return bytes(out)


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.buf):
            raise ValueError("truncated list encoding")
        vals = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return vals

    def string(self) -> str:
        (n,) = self.take(_U8)
        if self.pos + n > len(self.buf):
            raise ValueError("truncated list encoding")
        s = self.buf[self.pos:self.pos + n].decode()
        self.pos += n
        return s

    def items_v1(self) -> list[dict]:
        (n,) = self.take(_U16)
        return [{"ad_id": self.string(), "score": self.take(_F32)[0]} for _ in range(n)]

    def items(self) -> list[dict]:
        (n,) = self.take(_U16)
        scores = self.take(struct.Struct(f">{n}f"))
        (m,) = self.take(_U16)
        if self.pos + m > len(self.buf):
            raise ValueError("truncated list encoding")
        ids = self.buf[self.pos:self.pos + m].decode().split(" ") if m else []
        self.pos += m
        if len(ids) != n:
            raise ValueError(f"list encoding: {len(ids)} ids for {n} scores")
        return [{"ad_id": i, "score": sc} for i, sc in zip(ids, scores)]


def decode_list(buf: bytes) -> StoredList:
    """ValueError on anything but a complete list of this format."""
    r = _Reader(buf)
    magic, fmt, version, updated_ms = r.take(_HEAD)
    if magic != MAGIC or fmt not in (FORMAT, FORMAT_1):
        raise ValueError(f"not a LEADRE list (magic {magic!r}, format {fmt})")
    model_version = r.string()
    items = r.items if fmt == FORMAT else r.items_v1
    ads, advertisers = items(), items()
    if r.pos != len(buf):
        raise ValueError("trailing bytes after the list encoding")
    # one validation in pydantic's Rust core: a model per entry cost more (hot path)
    return StoredList.model_validate({"version": version, "updated_ms": updated_ms,
                                      "model_version": model_version, "ads": ads,
                                      "advertisers": advertisers})


# -- format 3 -------------------------------------------------------------------------------
FORMAT_3, FORMAT_4 = 3, 4  # quantised scores, exact (f32) scores
_TOP = struct.Struct(">fb")


@dataclass(frozen=True)
class Packed:
    """A format-3 list with its ids still numbers (:mod:`services.common.idregistry`)."""

    epoch: int
    version: int
    updated_ms: int
    model: int  # number in the registry's "model" namespace
    ids: list[int]
    scores: list[float]


def _varint(out: bytearray, n: int) -> None:
    if n < 0:
        raise ValueError(f"a list field must be >= 0 (got {n})")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def quantise(scores: list[float]) -> tuple[float, int, bytes]:
    """(top score as f32, exponent e, one code byte per score): ``score ~ top - code * 2**e``."""
    if not all(math.isfinite(x) for x in scores):
        raise ValueError("list scores must be finite")
    top = struct.unpack(">f", struct.pack(">f", max(scores)))[0]
    span = top - min(scores)
    e = 0 if span <= 0 else max(-128, min(127, math.ceil(math.log2(span / 255))))
    step = 2.0 ** e
    return top, e, bytes(min(255, max(0, round((top - x) / step))) for x in scores)


def pack(p: Packed, exact: bool = False) -> bytes:
    """Format 3 (``exact``: format 4, scores as f32)."""
    if len(p.ids) != len(p.scores):
        raise ValueError(f"{len(p.ids)} ids for {len(p.scores)} scores")
    out = bytearray([FORMAT_4 if exact else FORMAT_3])
    for n in (p.epoch, p.version, p.updated_ms, p.model, len(p.ids)):
        _varint(out, n)
    if p.ids and exact:
        if not all(math.isfinite(x) for x in p.scores):
            raise ValueError("list scores must be finite")
        out += struct.pack(f">{len(p.scores)}f", *p.scores)
    elif p.ids:
        top, e, codes = quantise(p.scores)
        out += _TOP.pack(top, e) + codes
    if p.ids:
        for n in p.ids:
            _varint(out, n)
    return bytes(out)


def is_packed(buf: bytes) -> bool:
    """Format 3 or 4."""
    return buf[:1] in (b"\x03", b"\x04")


def unpack(buf: bytes) -> Packed:
    """ValueError on anything but a complete format-3/4 list."""
    if not is_packed(buf):
        raise ValueError(f"not a format-3/4 list (first byte {buf[:1]!r})")
    end = len(buf)
    (epoch, version, updated_ms, model, n), pos = _varints(buf, 1, 5)
    scores: list[float] = []
    ids: list[int] = []
    if n and buf[0] == FORMAT_4:
        if pos + 4 * n > end:
            raise ValueError("truncated list encoding")
        scores = list(struct.unpack_from(f">{n}f", buf, pos))
        pos += 4 * n
    elif n:
        if pos + _TOP.size + n > end:
            raise ValueError("truncated list encoding")
        top, e = _TOP.unpack_from(buf, pos)
        pos += _TOP.size
        step = 2.0 ** e
        scores = [top - c * step for c in buf[pos:pos + n]]
        pos += n
    if n:
        ids, pos = _varints(buf, pos, n)
    if pos != end:
        raise ValueError("trailing bytes after the list encoding")
    return Packed(epoch, version, updated_ms, model, ids, scores)


def _varints(buf: bytes, pos: int, count: int) -> tuple[list[int], int]:
    """``count`` varints from ``pos`` (one loop: the list is decoded on every request)."""
    out: list[int] = []
    n = shift = 0
    end = len(buf)
    while len(out) < count:
        if pos >= end or shift > 63:
            raise ValueError("truncated list encoding")
        b = buf[pos]
        pos += 1
        if b < 0x80:
            out.append(n | (b << shift))
            n = shift = 0
        else:
            n |= (b & 0x7F) << shift
            shift += 7
    return out, pos


def version_of(buf: bytes) -> int:
    """The list version of an encoded list of any format."""
    return unpack(buf).version if is_packed(buf) else _Reader(buf).take(_HEAD)[2]
