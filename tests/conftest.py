"""Shared fixtures: a small synthetic catalog and its index, built once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from leadre_model.data.records import Ad
from leadre_model.data.synth import synth_ad_records
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig


@pytest.fixture(scope="session")
def small_ads() -> list[Ad]:
    return synth_ad_records(600, seed=3)


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "embeddings.npz"


@pytest.fixture(scope="session")
def small_index(tmp_path_factory: pytest.TempPathFactory, small_ads: list[Ad], embed_cache: Path) -> Path:
    from leadre_model.index.build import build_index

    out = tmp_path_factory.mktemp("idx") / "index"
    cfg = IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"epochs": 40}))
    build_index(small_ads[:500], out, cfg, cache_path=embed_cache, progress=False)
    return out


def build_tiny_world(root: Path, n_users: int = 40) -> tuple[Path, Path]:
    """A synthetic world of ``n_users`` (150 ads, 150 content items) and its tiny index
    under ``root`` (a few seconds): (world, index directory)."""
    from leadre_model.data.store import load_ads
    from leadre_model.data.synth import SynthConfig, generate_world
    from leadre_model.index.build import build_index

    world, index_dir = root / "world", root / "index"
    generate_world(world, SynthConfig(n_users=n_users, n_ads=150, n_content=150), progress=False)
    build_index(load_ads(world), index_dir,
                IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"epochs": 10})),
                cache_path=root / "emb.npz", progress=False)
    return world, index_dir


@pytest.fixture(scope="session")
def tiny_world_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """:func:`build_tiny_world` of 40 users, once per session."""
    return build_tiny_world(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="session")
def tiny_world_builder() -> Callable[..., tuple[Path, Path]]:
    """:func:`build_tiny_world` itself, for modules that want another size."""
    return build_tiny_world
