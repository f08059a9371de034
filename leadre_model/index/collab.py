"""Collaborative item embeddings for S-IDs that carry co-engagement as well as text.

Text-only S-IDs put two ads with similar texts under one prefix even when different users
engage with them, so the LLM has to learn the collaborative structure through the last
(collision) level. LETTER (Wang et al., 2024) feeds collaborative signal into the
tokenizer; here, more simply, the RQ-VAE quantises the concatenation of the text embedding
and a collaborative embedding (``fuse``), weighted by ``CollabConfig.weight``.

The collaborative embedding is a truncated SVD of the item co-occurrence matrix of the
users' *training* sequences (window-limited, ``1/gap`` weighted, cosine-normalised: the
item-CF similarity), so no validation or test target leaks into the S-IDs. A ridge map
text → collaborative embedding, fitted on the catalog, stands in for ads with little or
no traffic: an ad seen ``n`` times gets ``n/(n+shrink)`` of its own SVD vector and the
rest from its text. New ads (``leadre index add``) are all text prediction, which is the
cold-start cost: their S-ID prefix is where ads with similar text usually sit in the
collaborative space, not where their own traffic would put them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.sparse.linalg import svds

from leadre_model.configbase import StrictConfig

COLLAB_FILE = "collab.npz"


class CollabConfig(StrictConfig):
    """Collaborative part of the RQ-VAE input; weight 0 = text only."""

    weight: float = Field(
        default=0.0, ge=0, lt=1,
        description="share of the RQ-VAE input's squared norm given to the collaborative "
        "embedding (0: S-IDs from text alone, the paper's setting)",
    )
    dim: int = Field(default=64, ge=2, le=1024, description="SVD rank of the embedding")
    window: int = Field(default=3, ge=1, description="items up to this far apart co-occur")
    shrink: float = Field(
        default=5.0, ge=0,
        description="an ad seen n times takes n/(n+shrink) of its own vector, the rest "
        "predicted from its text",
    )
    ridge: float = Field(default=1.0, gt=0, description="L2 of the text → collaborative map")


def cooccurring_pairs(sequences: Sequence[Sequence[int]],
                      window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item pairs ``(a, b)`` within ``window`` positions of a sequence, both directions,
    weighted ``1/gap``, an item with itself left out (repeats allowed: callers sum them).
    Item-CF's similarity (``eval/baselines.py``) and the collaborative embedding share it."""
    a, b, w = [], [], []
    for s in sequences:
        s = np.asarray(s, dtype=np.int64)
        for gap in range(1, min(window, len(s) - 1) + 1):
            a += [s[:-gap], s[gap:]]
            b += [s[gap:], s[:-gap]]
            w.append(np.full(2 * (len(s) - gap), 1.0 / gap))
    if not a:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    a, b, w = np.concatenate(a), np.concatenate(b), np.concatenate(w)
    keep = a != b
    return a[keep], b[keep], w[keep]


def cooccurrence(sequences: Sequence[Sequence[int]], n_items: int, window: int) -> sp.csr_matrix:
    """Symmetric ``Σ 1/gap`` counts of item pairs within ``window`` positions."""
    a, b, w = cooccurring_pairs(sequences, window)
    return sp.csr_matrix((w, (a, b)), shape=(n_items, n_items))


def svd_embedding(co: sp.csr_matrix, dim: int, seed: int) -> np.ndarray:
    """Rows of ``U·sqrt(S)`` of the cosine-normalised co-occurrence matrix, L2-normalised
    (zero rows for items that co-occur with nothing)."""
    deg = np.asarray(co.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-12)), 0.0)
    norm = sp.diags(inv) @ co @ sp.diags(inv)
    k = min(dim, min(norm.shape) - 1)
    if k < 1 or norm.nnz == 0:
        return np.zeros((co.shape[0], dim), dtype=np.float32)
    v0 = np.random.default_rng(seed).standard_normal(norm.shape[0])
    u, s, _ = svds(norm.astype(np.float64), k=k, v0=v0)
    emb = u * np.sqrt(np.maximum(s, 0))
    emb = np.pad(emb, ((0, 0), (0, dim - k)))
    return _unit(emb).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > 0, x / np.maximum(n, 1e-12), 0.0)


@dataclass
class CollabEmbedding:
    """Per-ad collaborative vectors plus the text → collaborative ridge map for new ads."""

    vectors: np.ndarray  # (N, dim) float32, rows in index order
    counts: np.ndarray  # (N,) training occurrences behind each row
    w: np.ndarray  # (text_dim + 1, dim) ridge weights, last row = bias

    def predict(self, text_emb: np.ndarray) -> np.ndarray:
        x = np.c_[text_emb, np.ones(len(text_emb))]
        return _unit(x @ self.w).astype(np.float32)

    def extend(self, text_emb: np.ndarray) -> np.ndarray:
        """Vectors of new ads (no traffic yet: the text prediction); appended to ``vectors``."""
        new = self.predict(text_emb)
        self.vectors = np.concatenate([self.vectors, new])
        self.counts = np.concatenate([self.counts, np.zeros(len(new))])
        return new

    def save(self, index_dir: Path) -> None:
        np.savez(Path(index_dir) / COLLAB_FILE, vectors=self.vectors.astype(np.float16),
                 counts=self.counts, w=self.w)

    @classmethod
    def load(cls, index_dir: Path) -> CollabEmbedding:
        z = np.load(Path(index_dir) / COLLAB_FILE, allow_pickle=False)
        return cls(z["vectors"].astype(np.float32), z["counts"], z["w"])


def fit_collab(text_emb: np.ndarray, sequences: Sequence[Sequence[int]],
               cfg: CollabConfig, seed: int = 0) -> CollabEmbedding:
    n = len(text_emb)
    co = cooccurrence(sequences, n, cfg.window)
    svd = svd_embedding(co, cfg.dim, seed)
    counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences] or
                                        [np.zeros(0, np.int64)]), minlength=n)[:n].astype(float)
    seen = np.linalg.norm(svd, axis=1) > 0
    x = np.c_[text_emb, np.ones(n)]
    if seen.any():
        xs = x[seen]
        reg = cfg.ridge * np.eye(x.shape[1])
        reg[-1, -1] = 0.0  # the bias is not shrunk
        w = np.linalg.solve(xs.T @ xs + reg, xs.T @ svd[seen])
    else:
        w = np.zeros((x.shape[1], cfg.dim))
    own = (counts / (counts + cfg.shrink))[:, None] * seen[:, None]
    vectors = _unit(own * svd + (1 - own) * _unit(x @ w)).astype(np.float32)
    return CollabEmbedding(vectors, counts, w)


def fuse(text_emb: np.ndarray, collab: np.ndarray, weight: float) -> np.ndarray:
    """RQ-VAE input: both unit-norm parts, scaled so ``weight`` is the collaborative share
    of the squared norm (and of every distance the k-means/codebooks see)."""
    return np.c_[np.sqrt(1 - weight) * text_emb, np.sqrt(weight) * collab].astype(np.float32)


def cold_start_agreement(encode, text_emb: np.ndarray, collab: CollabEmbedding,
                         weight: float, min_count: int = 5) -> dict[str, float]:
    """What collaborative S-IDs cost a new ad, measured on ads with traffic: re-encode each
    as if it were new (collaborative part predicted from its text) and count how often its
    first code, and its first two codes, match those its own traffic gives it. Text-only
    S-IDs score 1.0 by construction. ``encode``: embeddings → (N, M) codes."""
    rows = np.flatnonzero(collab.counts >= min_count)
    if len(rows) == 0:
        return {"ads": 0}
    own = encode(fuse(text_emb[rows], collab.vectors[rows], weight))
    cold = encode(fuse(text_emb[rows], collab.predict(text_emb[rows]), weight))
    return {"ads": len(rows), "min_count": min_count,
            "first_code_agreement": float((own[:, 0] == cold[:, 0]).mean()),
            "prefix2_agreement": float((own[:, :2] == cold[:, :2]).all(1).mean())}
