"""Client of one inference instance over Triton gRPC (``tritonclient.grpc``).

Input is checked here before anything is sent (a malformed request would fail the whole
dynamic batch it lands in on the server); every failure — refused input, a server-side
error, timeout, connection refused — surfaces as :class:`InferenceError` with a one-line
reason, so a caller can retry on another instance.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

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
    TRITON_MODEL,
    Retrieval,
    RetrievedAd,
)

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|BadRequest): (.+)$", re.MULTILINE)


class InferenceError(RuntimeError):
    """An inference call failed; ``url`` says where (retry elsewhere)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


def _reason(exc: InferenceServerException) -> str:
    """The server's one-line reason: PyTriton forwards the model's whole traceback (inside
    Triton's own wrapper), whose last ``Name: message`` line is the reason."""
    text = (exc.message() or str(exc)).strip()
    reasons = [m for m in _ERROR_LINE.findall(text) if not m.startswith("Traceback")]
    return reasons[-1] if reasons else (text.splitlines()[0] if text else repr(exc))


class TritonRetrievalClient:
    """``retrieve`` top ads (+ advertiser priors) for prompts from one Triton instance.

    ``url``: ``host:port`` or ``grpc://host:port`` (the form instances register in Redis).
    """

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url
        self.timeout_s = float(timeout_s)
        self._client = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))

    def is_ready(self) -> bool:
        """Server up and the model loaded (False, not an exception, when unreachable)."""
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(TRITON_MODEL, client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def retrieve(self, prompts: Sequence[str] | Sequence[Sequence[int]], beam_width: int, top_k: int,
                 advertiser_prompts: Sequence[str] | None = None,
                 exclude: Sequence[Sequence[str]] | None = None) -> list[Retrieval]:
        """One Retrieval per prompt (text, or token ids); ``exclude[i]``: ad ids prompt
        ``i`` must not get back. ValueError for bad arguments (nothing sent);
        InferenceError for anything that went wrong on the way."""
        n = len(prompts)
        if n == 0:
            return []
        if not 1 <= top_k <= beam_width:
            raise ValueError(f"need 1 <= top_k <= beam_width, got top_k={top_k}, beam_width={beam_width}")
        if advertiser_prompts is not None and len(advertiser_prompts) != n:
            raise ValueError(f"{len(advertiser_prompts)} advertiser prompts for {n} prompts")
        inputs = [_prompt_input(prompts),
                  _tensor(IN_BEAM, np.full((n, 1), beam_width, np.int32), "INT32"),
                  _tensor(IN_TOPK, np.full((n, 1), top_k, np.int32), "INT32")]
        if advertiser_prompts is not None:
            inputs.append(_tensor(IN_ADV_PROMPT, _bytes(advertiser_prompts), "BYTES"))
        if exclude is not None:
            if len(exclude) != n:
                raise ValueError(f"{len(exclude)} exclude lists for {n} prompts")
            inputs.append(_tensor(IN_EXCLUDE, _bytes([" ".join(x) for x in exclude]), "BYTES"))
        outputs = [grpcclient.InferRequestedOutput(o) for o in
                   (OUT_ADS, OUT_SCORES, OUT_ADVERTISERS, OUT_ADV_SCORES, OUT_VERSION)]
        try:
            res = self._client.infer(TRITON_MODEL, inputs, outputs=outputs,
                                     client_timeout=self.timeout_s)
        except InferenceServerException as exc:
            raise InferenceError(self.url, _reason(exc)) from None
        return _retrievals(res)

    def close(self) -> None:
        self._client.close()


def _tensor(name: str, data: np.ndarray, dtype: str) -> grpcclient.InferInput:
    t = grpcclient.InferInput(name, list(data.shape), dtype)
    t.set_data_from_numpy(data)
    return t


def _bytes(texts: Sequence[str]) -> np.ndarray:
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("prompts must all be strings or all be token-id lists")
    return np.array([[t.encode("utf-8")] for t in texts], dtype=object)


def _prompt_input(prompts: Sequence[str] | Sequence[Sequence[int]]) -> grpcclient.InferInput:
    if all(isinstance(p, str) for p in prompts):
        if any(not p for p in prompts):
            raise ValueError("empty prompt")
        return _tensor(IN_PROMPT, _bytes(prompts), "BYTES")  # type: ignore[arg-type]
    if any(isinstance(p, str) or len(p) == 0 for p in prompts):
        raise ValueError("prompts must all be non-empty strings or all non-empty token-id lists")
    ids = np.full((len(prompts), max(len(p) for p in prompts)), -1, np.int32)
    for i, p in enumerate(prompts):
        row = np.asarray(p, dtype=np.int64)
        if row.min() < 0 or row.max() > np.iinfo(np.int32).max:
            raise ValueError(f"prompt {i} has token ids outside [0, 2^31)")
        ids[i, :len(row)] = row
    return _tensor(IN_PROMPT_IDS, ids, "INT32")


def _retrievals(res: grpcclient.InferResult) -> list[Retrieval]:
    ads, scores = res.as_numpy(OUT_ADS), res.as_numpy(OUT_SCORES)
    advs, adv_scores = res.as_numpy(OUT_ADVERTISERS), res.as_numpy(OUT_ADV_SCORES)
    versions = res.as_numpy(OUT_VERSION).reshape(-1)
    out = []
    for i in range(len(ads)):
        out.append(Retrieval(
            ads=[RetrievedAd(ad_id=a.decode(), score=float(s))
                 for a, s in zip(ads[i], scores[i]) if a],
            advertisers=[RetrievedAd(ad_id=a.decode(), score=float(s))
                         for a, s in zip(advs[i], adv_scores[i]) if a],
            model_version=versions[i].decode()))
    return out


__all__ = ["InferenceError", "TritonRetrievalClient"]
