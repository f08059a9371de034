"""Index build and incremental add: ads → text → embedding → RQ-VAE → S-IDs → trie."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from leadre_model.data.records import Ad, AdStatus
from leadre_model.data.split import train_item_sequences
from leadre_model.errors import BadInputError
from leadre_model.index.collab import CollabEmbedding, cold_start_agreement, fit_collab, fuse
from leadre_model.index.embed import TextEmbedder
from leadre_model.index.live import CatalogEvent, CatalogOp, LiveIndex
from leadre_model.index.rqvae import RQVAE, train_rqvae
from leadre_model.index.sid_index import (
    IndexConfig,
    SidIndex,
    load_embeddings,
    load_rqvae,
    save_index,
)
from leadre_model.index.sids import (
    add_disambiguation,
    balance_last_level,
    codebook_usage,
    collision_stats,
)
from leadre_model.index.text import ad_text


def _assign(
    model: RQVAE, emb: np.ndarray, balance: bool, frozen_codes: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """M-level codes for ``emb``. With ``frozen_codes`` (existing ads' codes) the result
    covers old + new rows: old rows keep their codes and are never moved by balancing, so
    only the new embeddings are encoded."""
    codes, last_res = model.encode_codes(emb)
    stats = {"before_balance": collision_stats(codes)}
    frozen = np.zeros(len(codes), dtype=bool)
    if frozen_codes is not None:
        codes = np.concatenate([frozen_codes, codes])
        # Frozen rows always keep their code, so their residuals never enter a decision.
        last_res = np.concatenate([np.zeros((len(frozen_codes), last_res.shape[1]),
                                            dtype=last_res.dtype), last_res])
        frozen = np.r_[np.ones(len(frozen_codes), dtype=bool), frozen]
    if balance:
        last_cb = model.quantizer.codebooks.detach()[-1].numpy()
        codes = balance_last_level(codes, last_res, last_cb, frozen)
    stats["after_balance"] = collision_stats(codes)
    return codes, stats


def build_index(
    ads: Sequence[Ad],
    out: Path,
    cfg: IndexConfig,
    cache_path: Path | None = None,
    progress: bool = True,
    sequences: Sequence[Sequence[int]] | None = None,
) -> SidIndex:
    """``sequences``: users' training item sequences as rows of ``ads``, needed when
    ``cfg.collab.weight`` > 0 (collaborative S-IDs, ``index/collab.py``)."""
    if len(ads) < 2:
        raise BadInputError("the catalog needs at least 2 ads to build an index")
    if cfg.collab.weight > 0 and sequences is None:
        raise BadInputError("collaborative S-IDs (collab weight > 0) need the users' "
                            "training sequences: build the index from a world")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    embedder = TextEmbedder(cfg.embed, cache_path)
    emb = embedder.embed([_text(a, cfg) for a in ads], progress=progress)
    timings["embed_s"] = time.perf_counter() - t0

    collab: CollabEmbedding | None = None
    rq_input = emb
    if cfg.collab.weight > 0:
        t0 = time.perf_counter()
        collab = fit_collab(emb, sequences or [], cfg.collab, cfg.rqvae.seed)
        rq_input = fuse(emb, collab.vectors, cfg.collab.weight)
        timings["collab_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, log = train_rqvae(rq_input, cfg.rqvae, progress=progress)
    timings["rqvae_train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    codes_m, assign_stats = _assign(model, rq_input, cfg.rqvae.balance_last_level)
    codes = add_disambiguation(codes_m)
    timings["assign_s"] = time.perf_counter() - t0

    index = SidIndex(
        ad_ids=[a.ad_id for a in ads],
        codes=codes,
        active=np.array([a.status is AdStatus.ACTIVE for a in ads]),
        config=cfg,
    )
    t0 = time.perf_counter()
    trie = index.build_trie()
    timings["trie_s"] = time.perf_counter() - t0
    index.stats = {
        "collisions": assign_stats,
        "codebook_usage": codebook_usage(codes_m, cfg.rqvae.codebook_size),
        "max_disambiguation_code": int(codes[:, -1].max()),
        "embedded": embedder.encoded,
        "cached": len(ads) - embedder.encoded,
        "embedding": embedder.stats,
        "timings": timings,
        "train_log": asdict(log),
    }
    if collab is not None:
        index.stats["collab"] = {
            "ads_with_traffic": int((collab.counts > 0).sum()), "weight": cfg.collab.weight,
            "cold_start": cold_start_agreement(lambda x: model.encode_codes(x)[0], emb, collab,
                                               cfg.collab.weight)}
    t0 = time.perf_counter()
    save_index(out, index, model, emb, trie, collab)
    timings["save_s"] = time.perf_counter() - t0
    return index


def training_sequences(world: Path, ads: Sequence[Ad],
                       cfg: IndexConfig) -> list[list[int]] | None:
    """What ``build_index(ads, ..., cfg)`` needs as ``sequences`` for an index of ``ads``
    built from ``world``: the users' training targets as rows of ``ads`` when the config
    asks for collaborative S-IDs, else None."""
    if cfg.collab.weight <= 0:
        return None
    return train_item_sequences(world, {a.ad_id: i for i, a in enumerate(ads)})


def _text(ad: Ad, cfg: IndexConfig) -> str:
    return ad_text(ad, cfg.text.template)


def add_ads(
    index_dir: Path, new_ads: Sequence[Ad], cache_path: Path | None = None, progress: bool = True
) -> tuple[SidIndex, list[str]]:
    """Give S-IDs to ads not yet in the index with the trained RQ-VAE (no retraining).

    Existing ads keep their S-IDs; ads already indexed are skipped (their status is
    updated, so a re-import can pause or resume them). Returns the index and the ids added;
    ``index.stats["last_add"]`` counts this call's ads: already indexed, new, and of the new
    ones how many texts were embedded and how many served from the embedding cache.
    """
    live = LiveIndex.load(index_dir)
    index = live.index
    model = load_rqvae(index_dir)
    old_emb = load_embeddings(index_dir)
    collab = CollabEmbedding.load(index_dir) if index.config.collab.weight > 0 else None
    fresh = [a for a in new_ads if a.ad_id not in index]
    status = live.apply([CatalogEvent(op=CatalogOp.RESUME if a.status is AdStatus.ACTIVE
                                      else CatalogOp.PAUSE, ad_id=a.ad_id)
                         for a in new_ads if a.ad_id in index])
    figures = {"already_indexed": len(new_ads) - len(fresh),
               "status_changed": len(status.toggled), "new": len(fresh), "embedded": 0,
               "from_cache": 0}
    index.stats = {**index.stats, "last_add": figures}
    if fresh:
        embedder = TextEmbedder(index.config.embed, cache_path)
        emb = embedder.embed([_text(a, index.config) for a in fresh], progress=progress)
        figures["embedded"] = embedder.encoded
        figures["from_cache"] = len(fresh) - embedder.encoded
        rq_input = emb
        if collab is not None:  # no traffic yet: the collaborative part comes from the text
            rq_input = fuse(emb, collab.extend(emb), index.config.collab.weight)
        codes_m, _ = _assign(
            model, rq_input, index.config.rqvae.balance_last_level,
            frozen_codes=index.codes[:, :-1]
        )
        new_codes = add_disambiguation(codes_m[len(index):], existing=index.codes)
        live.add([a.ad_id for a in fresh], new_codes,
                 active=np.array([a.status is AdStatus.ACTIVE for a in fresh]))
        index.stats = {**index.stats, "added": index.stats.get("added", 0) + len(fresh)}
        old_emb = np.concatenate([old_emb, emb])
    save_index(index_dir, index, model, old_emb, live.trie, collab)
    return index, [a.ad_id for a in fresh]
