"""Fixtures for the service tests: real Redis (db 13; db 14 for the end-to-end run), a
tiny world + index + version directory, servers on a background event loop, and a small
in-process stand-in for the inference client (scheduling tests only; the end-to-end test
uses the real Triton service)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.build import build_index
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig, load_index
from leadre_model.prompts.config import PromptConfig
from services.common.contracts import INSTANCES_KEY
from services.common.settings import Settings
from tests.services.helpers import REDIS_BASE, TEST_DB, BackgroundLoop, StandInClient


@pytest.fixture
def settings() -> Iterator[Settings]:
    """Settings on Redis db 13, flushed before and after the test."""
    s = Settings(redis_url=f"{REDIS_BASE}/{TEST_DB}", user_metrics_port=0, worker_metrics_port=0,
                 bind_host="127.0.0.1", log_json=False, worker_coalesce_ms=0,
                 worker_claim_idle_ms=500)
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    yield s
    r.flushdb()
    r.close()


@pytest.fixture
def rds(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, decode_responses=True)


@pytest.fixture(scope="session")
def svc_world(tmp_path_factory: pytest.TempPathFactory, embed_cache: Path) -> tuple[Path, Path]:
    """A 30-user world and its tiny index (shared by every service test). Its 600 ads are
    the session's ``small_ads``, so most embeddings come from the shared cache."""
    root = tmp_path_factory.mktemp("svc")
    world, index = root / "world", root / "index"
    generate_world(world, SynthConfig(n_users=30, n_ads=600, n_content=150, seed=3), progress=False)
    build_index(load_ads(world), index, IndexConfig(rqvae=PRESETS["tiny"].model_copy(
        update={"epochs": 8})), cache_path=embed_cache, progress=False)
    return world, index


@pytest.fixture(scope="session")
def version_dir(tmp_path_factory: pytest.TempPathFactory, svc_world: tuple[Path, Path]) -> Path:
    """A registry-style version directory: the index and a model manifest naming the
    prompt config (enough for prompt building; the stand-in client needs no weights)."""
    import shutil

    vdir = tmp_path_factory.mktemp("version") / "v1"
    shutil.copytree(svc_world[1], vdir / "index")
    (vdir / "model").mkdir(parents=True)
    cfg = {"prompts": PromptConfig(max_behaviors=10, token_budget=384).model_dump(),
           "curriculum": "ex>im>main"}
    (vdir / "model" / "manifest.json").write_text(json.dumps({"extra": {"train": {"config": cfg}}}))
    return vdir


@pytest.fixture
def standins(rds: redis.Redis, version_dir: Path) -> dict[str, StandInClient]:
    """Two stand-in instances with fresh heartbeats in the instances hash."""
    import time

    index = load_index(version_dir / "index")
    clients = {u: StandInClient(u, index) for u in ("grpc://a:1", "grpc://b:2")}
    rds.hset(INSTANCES_KEY, mapping={u: time.time() + 3600 for u in clients})
    return clients


@pytest.fixture
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def user_server(bg: BackgroundLoop, settings: Settings) -> Iterator[str]:
    """A real User Server (grpc.aio) on a free port; yields its address."""
    from services.user_server.server import start_user_server

    server, port, store, _ = bg.run(start_user_server(settings, port=0))
    yield f"127.0.0.1:{port}"
    bg.run(server.stop(grace=1))
    bg.run(store.close())


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, svc_world: tuple[Path, Path]) -> Path:
    """A random-init tiny Qwen2 tied to the svc index (plumbing: real decoding, meaningless
    ranking), saved with the prompt config in its manifest like `leadre train` does."""
    from leadre_model.llm.model import LLMConfig, build_model, save_model
    from leadre_model.llm.tokenizer import TokenizerConfig, train_tokenizer
    from leadre_model.prompts.tasks import build_samples
    from leadre_model.train.pipeline import TrainConfig

    world, index_dir = svc_world
    index = load_index(index_dir)
    cfg = TrainConfig(prompts=PromptConfig(max_behaviors=10, token_budget=384),
                      llm=LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                    num_heads=2, num_kv_heads=1))
    corpus = [s["prompt"] for s in build_samples(world, index, cfg.prompts, ["main"], "train")[:300]]
    tok = train_tokenizer(corpus, index.level_sizes, cfg=TokenizerConfig(vocab_size=400))
    model, tok = build_model(cfg.llm, tok)
    out = tmp_path_factory.mktemp("model") / "model"
    save_model(model, tok, out, index.digest(), extra={"train": {"config": cfg.model_dump()}})
    return out
