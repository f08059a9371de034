"""The ad index on disk: S-IDs per ad, the RQ-VAE that made them, the trie.

Layout of an index directory (written to a temp dir, then renamed into place)::

    index.json         config, level sizes, digest, build stats, training log
    sids.parquet       ad_id, row, code_0..code_M, sid, status
    rqvae.safetensors  RQ-VAE weights (no pickle), with rqvae config in index.json
    trie.npz           the compact trie (numpy arrays only)
    embeddings.npy     float16 ad-text embeddings (report, ranking features)
    collab.npz         collaborative vectors + text→collab map (only with collab weight > 0)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field
from safetensors.torch import load_file, save_file

from leadre_model.configbase import StrictConfig
from leadre_model.data.store import atomic_dir
from leadre_model.errors import BadInputError
from leadre_model.index.collab import CollabConfig, CollabEmbedding
from leadre_model.index.embed import EmbedConfig
from leadre_model.index.rqvae import RQVAE, RQVAEConfig
from leadre_model.index.sids import sid_tokens
from leadre_model.index.text import TextConfig
from leadre_model.index.trie import SidTrie

FORMAT_VERSION = 1


class IndexConfig(StrictConfig):
    """How an index was built, stage by stage; saved in its ``index.json``."""

    text: TextConfig = Field(default_factory=TextConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    rqvae: RQVAEConfig = Field(default_factory=RQVAEConfig)
    collab: CollabConfig = Field(default_factory=CollabConfig)


@dataclass
class SidIndex:
    ad_ids: list[str]
    codes: np.ndarray  # (N, M+1) int64, last column = disambiguation code
    active: np.ndarray  # (N,) bool; paused ads stay indexed but are never generated
    config: IndexConfig
    stats: dict[str, Any] = field(default_factory=dict)
    _row_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row_of = {a: i for i, a in enumerate(self.ad_ids)}
        if len(self._row_of) != len(self.ad_ids):
            raise ValueError("duplicate ad ids in index")

    def __len__(self) -> int:
        return len(self.ad_ids)

    def __contains__(self, ad_id: object) -> bool:
        return ad_id in self._row_of

    @property
    def level_sizes(self) -> list[int]:
        k = self.config.rqvae.codebook_size
        last = int(self.codes[:, -1].max()) + 1 if len(self.codes) else 1
        return [k] * (self.codes.shape[1] - 1) + [last]

    def row_of(self, ad_id: str) -> int:
        try:
            return self._row_of[ad_id]
        except KeyError:
            raise KeyError(f"ad {ad_id!r} is not in the index") from None

    @property
    def row_by_id(self) -> Mapping[str, int]:
        """ad id → row, read-only."""
        return MappingProxyType(self._row_of)

    def extend(self, ad_ids: Sequence[str], codes: np.ndarray, active: np.ndarray) -> None:
        """Append ads in place, rows after the existing ones (``LiveIndex.add`` keeps the
        trie in step); ValueError for an ad id already here."""
        if len(set(ad_ids)) != len(ad_ids) or any(a in self._row_of for a in ad_ids):
            raise ValueError("duplicate ad ids in index")
        n = len(self.ad_ids)
        self.ad_ids += list(ad_ids)
        self._row_of.update({a: n + i for i, a in enumerate(ad_ids)})
        self.codes = np.concatenate([self.codes, np.asarray(codes, np.int64)])
        self.active = np.concatenate([self.active, np.asarray(active, bool)])

    def sid(self, row: int) -> str:
        return sid_tokens(self.codes[row])

    def digest(self) -> str:
        """Hash of (ad ids, S-IDs): a model trained on one index refuses any other."""
        h = hashlib.sha256()
        h.update("\n".join(self.ad_ids).encode())
        h.update(np.ascontiguousarray(self.codes, dtype=np.int64).tobytes())
        return h.hexdigest()

    def build_trie(self) -> SidTrie:
        # Full codebook widths, so the trie's masks line up with the LLM's S-ID vocabulary.
        return SidTrie.build(self.codes, np.arange(len(self), dtype=np.int64), active=self.active,
                             level_sizes=self.level_sizes)


def save_index(
    out: Path,
    index: SidIndex,
    model: RQVAE,
    embeddings: np.ndarray,
    trie: SidTrie | None = None,
    collab: CollabEmbedding | None = None,
) -> None:
    """Write every file into a fresh temp dir, then swap it in: readers never see a mix."""
    with atomic_dir(Path(out)) as tmp:
        cols: dict[str, Any] = {"ad_id": index.ad_ids, "row": np.arange(len(index))}
        for level in range(index.codes.shape[1]):
            cols[f"code_{level}"] = index.codes[:, level]
        cols["sid"] = [sid_tokens(c) for c in index.codes]
        cols["status"] = np.where(index.active, "active", "paused")
        pq.write_table(pa.table(cols), tmp / "sids.parquet", compression="zstd")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "rqvae.safetensors")
        np.save(tmp / "embeddings.npy", embeddings.astype(np.float16), allow_pickle=False)
        (trie or index.build_trie()).save(tmp / "trie.npz")
        if collab is not None:
            collab.save(tmp)
        meta = {
            "format_version": FORMAT_VERSION,
            "num_ads": len(index),
            "level_sizes": index.level_sizes,
            "digest": index.digest(),
            "input_dim": model.input_dim,
            "config": index.config.model_dump(),
            "stats": index.stats,
        }
        (tmp / "index.json").write_text(json.dumps(meta, indent=2))


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = Path(path) / "index.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not an index directory (run `leadre index build`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise BadInputError(f"{meta_path}: index format {meta.get('format_version')} "
                            f"!= {FORMAT_VERSION}")
    return meta


def load_index(path: Path) -> SidIndex:
    meta = read_meta(path)
    table = pq.read_table(Path(path) / "sids.parquet").to_pydict()
    n_levels = len(meta["level_sizes"])
    codes = np.stack([np.asarray(table[f"code_{lv}"], dtype=np.int64) for lv in range(n_levels)], 1)
    return SidIndex(
        ad_ids=list(table["ad_id"]),
        codes=codes.reshape(-1, n_levels),
        active=np.asarray(table["status"]) == "active",
        config=IndexConfig.model_validate(meta["config"]),
        stats=meta.get("stats", {}),
    )


def load_rqvae(path: Path) -> RQVAE:
    meta = read_meta(path)
    cfg = IndexConfig.model_validate(meta["config"]).rqvae
    model = RQVAE(meta["input_dim"], cfg)
    model.load_state_dict(load_file(Path(path) / "rqvae.safetensors"))
    model.eval()
    return model


def load_embeddings(path: Path) -> np.ndarray:
    return np.load(Path(path) / "embeddings.npy", allow_pickle=False).astype(np.float32)


def load_trie(path: Path) -> SidTrie:
    return SidTrie.load(Path(path) / "trie.npz")


__all__ = [
    "SidIndex",
    "load_embeddings",
    "load_index",
    "load_rqvae",
    "load_trie",
    "read_meta",
    "save_index",
]
