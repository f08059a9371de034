"""Item-side ranking features (§5.3): how a candidate ad matches the ads LEADRE retrieved
for the user — S-ID prefix overlap and ad-text embedding cosine — plus the advertiser
prior of the candidate's advertiser (the advertiser-prediction idea).

The index is the live index (the served version's ads plus those added since, with their
embeddings), re-read when its files change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from leadre_model.index.sid_index import load_embeddings, load_index


@dataclass(frozen=True)
class CandidateMatch:
    ad_id: str
    known: bool
    max_prefix_overlap: int = 0
    mean_prefix_overlap: float = 0.0
    max_cosine: float = 0.0
    mean_cosine: float = 0.0
    weighted_prefix_overlap: float = 0.0
    weighted_cosine: float = 0.0
    advertiser_prior: float = 0.0
    retrieved: bool = False


def list_weights(scores: Sequence[float]) -> np.ndarray:
    """Softmax of the list's log-probabilities: how much each retrieved ad counts."""
    if not scores:
        return np.zeros(0)
    s = np.asarray(scores, dtype=np.float64)
    w = np.exp(s - s.max())
    return w / w.sum()


def advertiser_priors(scores: dict[str, float]) -> dict[str, float]:
    """Priors as probabilities: log-probabilities (all <= 0) through a softmax, masses
    (>= 0) normalised to sum 1."""
    if not scores:
        return {}
    vals = np.asarray(list(scores.values()), dtype=np.float64)
    finite = np.where(np.isfinite(vals), vals, -np.inf)
    if (finite <= 0).all():
        p = np.exp(finite - finite.max()) if np.isfinite(finite.max()) else np.zeros_like(finite)
    else:
        p = np.clip(finite, 0, None)
    total = p.sum()
    return {k: float(v / total) if total > 0 else 0.0 for k, v in zip(scores, p)}


class FeatureIndex:
    """S-ID codes and unit-norm embeddings of every indexed ad."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = Path(index_dir)
        self.stamp = self._stamp(self.index_dir)
        index = load_index(self.index_dir)
        self.row = {a: i for i, a in enumerate(index.ad_ids)}
        self.codes = index.codes
        emb = load_embeddings(self.index_dir)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        self.emb = emb.astype(np.float16)  # half the memory; cosines within ~1e-3

    @staticmethod
    def _stamp(index_dir: Path) -> float:
        return (Path(index_dir) / "index.json").stat().st_mtime

    def stale(self) -> bool:
        try:
            return self._stamp(self.index_dir) != self.stamp
        except FileNotFoundError:
            return False

    @property
    def levels(self) -> int:
        return int(self.codes.shape[1])

    def match(self, candidates: Sequence[str], retrieved: Sequence[str],
              scores: Sequence[float], candidate_advertisers: dict[str, str],
              priors: dict[str, float]) -> list[CandidateMatch]:
        rows = [self.row[a] for a in retrieved if a in self.row]
        weights = list_weights([s for a, s in zip(retrieved, scores) if a in self.row])
        retrieved_set = set(retrieved)
        out = []
        for cand in candidates:
            prior = priors.get(candidate_advertisers.get(cand, ""), 0.0)
            r = self.row.get(cand)
            if r is None or not rows:
                out.append(CandidateMatch(cand, r is not None, advertiser_prior=prior,
                                          retrieved=cand in retrieved_set))
                continue
            eq = self.codes[rows] == self.codes[r]  # (n, L)
            overlap = np.cumprod(eq, axis=1).sum(axis=1)  # shared leading codes
            cos = self.emb[rows].astype(np.float32) @ self.emb[r].astype(np.float32)
            out.append(CandidateMatch(
                cand, True, int(overlap.max()), float(overlap.mean()), float(cos.max()),
                float(cos.mean()), float(weights @ overlap), float(weights @ cos), prior,
                cand in retrieved_set))
        return out
