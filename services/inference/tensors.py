"""The Triton model's tensors (``services.common.contracts``): specs for PyTriton, request
parsing with clear errors, and response packing. Pure numpy, no server state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from pytriton.model_config import Tensor

from services.common.contracts import (
    IN_ADV_PROMPT,
    IN_BEAM,
    IN_EXCLUDE,
    IN_PROMPT,
    IN_PROMPT_IDS,
    IN_TOPK,
    OUT_ADS,
    OUT_ADV_SCORES,
    OUT_ADVERTISERS,
    OUT_SCORES,
    OUT_VERSION,
)
from services.common.errors import BadRequest
from services.inference.bundle import Result

INPUTS = [
    Tensor(name=IN_PROMPT, dtype=bytes, shape=(1,), optional=True),
    Tensor(name=IN_PROMPT_IDS, dtype=np.int32, shape=(-1,), optional=True),
    Tensor(name=IN_BEAM, dtype=np.int32, shape=(1,)),
    Tensor(name=IN_TOPK, dtype=np.int32, shape=(1,)),
    Tensor(name=IN_ADV_PROMPT, dtype=bytes, shape=(1,), optional=True),
    Tensor(name=IN_EXCLUDE, dtype=bytes, shape=(1,), optional=True),
]
OUTPUTS = [
    Tensor(name=OUT_ADS, dtype=bytes, shape=(-1,)),
    Tensor(name=OUT_SCORES, dtype=np.float32, shape=(-1,)),
    Tensor(name=OUT_ADVERTISERS, dtype=bytes, shape=(-1,)),
    Tensor(name=OUT_ADV_SCORES, dtype=np.float32, shape=(-1,)),
    Tensor(name=OUT_VERSION, dtype=bytes, shape=(1,)),
]


@dataclass(frozen=True)
class Row:
    prompt: str | list[int]
    beam_width: int
    top_k: int
    advertiser_prompt: str | None
    exclude: tuple[str, ...] = ()


def _text(value: object, what: str, row: int) -> str:
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError:
        raise BadRequest(f"{what} of row {row} is not valid utf-8") from None


def parse_request(req: Mapping[str, np.ndarray], max_beam: int) -> list[Row]:
    """Rows of one Triton request (a client batch of n prompts); BadRequest on bad values."""
    has_text, has_ids = IN_PROMPT in req, IN_PROMPT_IDS in req
    if has_text == has_ids:
        raise BadRequest(f"send exactly one of {IN_PROMPT!r} (text) or {IN_PROMPT_IDS!r} (token ids)")
    beams = np.asarray(req[IN_BEAM]).reshape(-1)
    top_ks = np.asarray(req[IN_TOPK]).reshape(-1)
    if has_text:
        prompts: list[str | list[int]] = [_text(v, IN_PROMPT, i)
                                          for i, v in enumerate(np.asarray(req[IN_PROMPT]).reshape(-1))]
    else:
        ids = np.asarray(req[IN_PROMPT_IDS])
        prompts = [[int(t) for t in row if t != -1] for row in ids.reshape(len(ids), -1)]
    adv = req.get(IN_ADV_PROMPT)
    advs = [None] * len(prompts) if adv is None else [
        _text(v, IN_ADV_PROMPT, i) or None for i, v in enumerate(np.asarray(adv).reshape(-1))]
    exc = req.get(IN_EXCLUDE)
    excludes = [()] * len(prompts) if exc is None else [
        tuple(_text(v, IN_EXCLUDE, i).split()) for i, v in enumerate(np.asarray(exc).reshape(-1))]
    if not len(beams) == len(top_ks) == len(prompts) == len(advs) == len(excludes):
        raise BadRequest("inputs disagree on the number of rows")
    rows = []
    for i, (p, b, k, a, x) in enumerate(zip(prompts, beams, top_ks, advs, excludes)):
        if not 1 <= b <= max_beam:
            raise BadRequest(f"{IN_BEAM} of row {i} is {int(b)}; it must be in [1, {max_beam}]")
        if not 1 <= k <= b:
            raise BadRequest(f"{IN_TOPK} of row {i} is {int(k)}; it must be in [1, {IN_BEAM}={int(b)}]")
        if not p:
            raise BadRequest(f"prompt of row {i} is empty")
        rows.append(Row(p, int(b), int(k), a, x))
    return rows


def pack_response(results: Sequence[Result], top_k: int, version: str) -> dict[str, np.ndarray]:
    """One request's outputs, padded to ``top_k`` columns (ad id b"", score -inf)."""
    n = len(results)
    ads = np.full((n, top_k), b"", dtype=object)
    scores = np.full((n, top_k), -np.inf, dtype=np.float32)
    advs = np.full((n, top_k), b"", dtype=object)
    adv_scores = np.full((n, top_k), -np.inf, dtype=np.float32)
    for i, r in enumerate(results):
        for j, a in enumerate(r.ads[:top_k]):
            ads[i, j], scores[i, j] = a.ad_id.encode(), a.score
        for j, a in enumerate(r.advertisers[:top_k]):
            advs[i, j], adv_scores[i, j] = a.ad_id.encode(), a.score
    return {OUT_ADS: ads, OUT_SCORES: scores, OUT_ADVERTISERS: advs, OUT_ADV_SCORES: adv_scores,
            OUT_VERSION: np.full((n, 1), version.encode(), dtype=object)}


__all__ = ["INPUTS", "OUTPUTS", "Row", "pack_response", "parse_request"]
