"""The inference service: registry, loaded bundle + live catalog, and the real Triton
server (PyTriton) answering real ``tritonclient`` gRPC requests — in-process and through
``leadre serve inference`` as a subprocess. Redis db 11 (in-process) and 12 (CLI)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from leadre_model.data.store import write_records
from leadre_model.data.synth import synth_ad_records
from leadre_model.index.rqvae import PRESETS, RQVAE
from leadre_model.index.sid_index import IndexConfig, SidIndex, save_index
from leadre_model.index.sids import sid_tokens
from leadre_model.llm.decode import constrained_beam_search
from leadre_model.llm.model import LLMConfig, build_model, save_model
from leadre_model.llm.tokenizer import SOFT_TOKEN, train_tokenizer
from leadre_model.prompts.tasks import advertiser_vocab
from services.common.contracts import CATALOG_STREAM, INSTANCES_KEY, CatalogEvent, CatalogOp
from services.common.settings import Settings
from services.inference.bundle import Bundle
from services.inference.client import InferenceError, TritonRetrievalClient
from services.inference.registry import (
    current_version,
    list_versions,
    publish_version,
    version_dir,
)
from services.launcher import free_port_block

N_ADS, LEVELS, K = 60, 3, 8
REDIS = "redis://127.0.0.1:6379"
PROMPTS = [f"{SOFT_TOKEN} user {i} clicked {sid_tokens([i % K, (3 * i) % K, (5 * i) % K, 0])} "
           "and watched cats. What ad next?" for i in range(6)]


# ------------------------------------------------------------------------- artifacts
@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A world (ads only), its index (random S-IDs, 3 × 8 codes + extra code) and three
    tiny models: v1, v2 (same index, other weights) and one trained on another index."""
    root = tmp_path_factory.mktemp("inference")
    ads = synth_ad_records(N_ADS, seed=11)
    write_records(root / "world", "ads", ads)
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(K)] * LEVELS, indexing="ij"), -1).reshape(-1, LEVELS)
    codes = np.column_stack([grid[rng.choice(len(grid), N_ADS, replace=False)], np.zeros(N_ADS, int)])
    active = np.ones(N_ADS, bool)
    active[[5, 9]] = False
    cfg = IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"levels": LEVELS, "codebook_size": K}))
    index = SidIndex([a.ad_id for a in ads], codes, active, cfg)
    save_index(root / "index", index, RQVAE(8, cfg.rqvae), np.zeros((N_ADS, 8), np.float32))
    vocab = advertiser_vocab(index, {a.ad_id: a for a in ads})
    tok = train_tokenizer(PROMPTS * 20, index.level_sizes, advertisers=vocab.new_tokens())
    small = {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1, "num_heads": 2,
             "num_kv_heads": 1, "max_positions": 256}
    for name, seed, digest in (("m1", 1, index.digest()), ("m2", 2, index.digest()),
                               ("other", 3, "0" * 64)):
        model, _ = build_model(LLMConfig(seed=seed, **small), tok)
        save_model(model, tok, root / name, index_digest=digest)
    return {"root": root, "world": root / "world", "index": root / "index", "m1": root / "m1",
            "m2": root / "m2", "other": root / "other"}


@pytest.fixture(scope="module")
def registry(art: dict[str, Path]) -> Path:
    reg = art["root"] / "registry"
    publish_version(reg, art["m1"], art["index"], version_id="v1", world=art["world"])
    return reg


def _rows(results: list) -> list[list[str]]:
    return [[a.ad_id for a in r.ads] for r in results]


# ------------------------------------------------------------------------- registry
def test_publish_validates_before_anything_becomes_current(art: dict[str, Path], tmp_path: Path) -> None:
    reg = tmp_path / "reg"
    assert current_version(reg) is None
    with pytest.raises(ValueError, match="trained on S-ID index 0000000000000000"):
        publish_version(reg, art["other"], art["index"], version_id="bad")
    assert current_version(reg) is None and list_versions(reg) == []
    vid = publish_version(reg, art["m1"], art["index"])
    assert current_version(reg) == vid and list_versions(reg) == [vid]
    vdir = version_dir(reg, vid)
    for f in ("model/manifest.json", "index/index.json", "version.json"):
        assert (vdir / f).exists()
    with pytest.raises(ValueError, match="already exists"):
        publish_version(reg, art["m2"], art["index"], version_id=vid)
    with pytest.raises(ValueError, match="bad version id"):
        publish_version(reg, art["m2"], art["index"], version_id="../x")
    assert current_version(reg) == vid


# ------------------------------------------------------------------------- bundle
def test_bundle_retrieves_like_the_decoder_and_applies_catalog_events(registry: Path) -> None:
    b = Bundle.load(version_dir(registry, "v1"))
    assert b.adv is not None and b.adv.level_ids is not None  # advertiser task tokens present
    ids = b.token_ids(PROMPTS)
    got = b.retrieve(ids, beam_width=5, top_k=[5] * len(PROMPTS))
    want = constrained_beam_search(b.model, b.tokenizer, PROMPTS, b.trie, b.level_ids, 5)
    assert _rows(got) == [[b.ad_ids[h.row] for h in hs] for hs in want]
    for r in got:  # priors from the returned ads' mass: a distribution over advertisers
        assert r.advertisers and abs(sum(a.score for a in r.advertisers) - 1) < 1e-6
    decoded = b.retrieve(ids[:2], 4, [3, 3], advertiser_prompts=ids[:2])
    assert all(len(r.advertisers) == 3 and {a.ad_id for a in r.advertisers} <= set(b.adv.ids)
               for r in decoded)

    every = b.retrieve(ids[:1], 64, [64])[0]  # B ≥ active ads: exhaustive
    assert len(every.ads) == N_ADS - 2
    assert {b.ad_ids[5], b.ad_ids[9]}.isdisjoint({a.ad_id for a in every.ads})  # paused in the index
    top = every.ads[0].ad_id
    free = next(c for c in np.ndindex(K, K, K) if not b.trie.contains_prefix(c))
    skipped = b.apply([
        CatalogEvent(op=CatalogOp.PAUSE, ad_id=top),
        CatalogEvent(op=CatalogOp.ADD, ad_id="new_ad", codes=(*free, 0)),
        CatalogEvent(op=CatalogOp.ADD, ad_id="too_wide", codes=(K, 0, 0, 0)),
        CatalogEvent(op=CatalogOp.ADD, ad_id="taken", codes=tuple(int(c) for c in b.codes[0])),
        CatalogEvent(op=CatalogOp.PAUSE, ad_id="nobody"),
    ])
    reasons = {ev.ad_id: why for ev, why in skipped}
    assert set(reasons) == {"too_wide", "taken", "nobody"}
    assert "do not fit the model's S-ID vocabulary" in reasons["too_wide"]
    assert "duplicate S-IDs" in reasons["taken"] and reasons["nobody"] == "unknown ad"
    after = {a.ad_id for a in b.retrieve(ids[:1], 64, [64])[0].ads}
    assert top not in after and "new_ad" in after and len(after) == N_ADS - 2
    b.apply([CatalogEvent(op=CatalogOp.RESUME, ad_id=top)])
    assert top in {a.ad_id for a in b.retrieve(ids[:1], 64, [64])[0].ads}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        b.token_ids([[len(b.tokenizer) + 5]])
    with pytest.raises(ValueError, match="the model takes at most"):
        b.token_ids([[3] * 400])


# ------------------------------------------------------------------------- Triton server
def _free_base_port(n: int) -> int:
    """A free block of n ports from a random start (parallel runs rarely race for one)."""
    return free_port_block(n, start=int(np.random.default_rng().integers(20_000, 50_000)))


def _settings(db: int, log_dir: Path) -> Settings:
    return Settings(redis_url=f"{REDIS}/{db}", inference_poll_s=0.3, inference_heartbeat_s=0.5,
                    inference_drain_s=5, inference_queue_delay_us=500, log_json=False,
                    inference_log_dir=str(log_dir))


@pytest.fixture
def redis11() -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(f"{REDIS}/11", decode_responses=True)
    r.flushdb()
    yield r
    r.flushdb()
    r.close()


def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_triton_service_answers_swaps_versions_and_applies_pauses(
        art: dict[str, Path], registry: Path, redis11: redis.Redis, tmp_path: Path) -> None:
    from services.inference.server import InferenceService, instance_ports

    reg = tmp_path / "reg"
    shutil.copytree(registry, reg)
    service = InferenceService(_settings(11, tmp_path), reg, *instance_ports(_free_base_port(3), 0))
    service.start()
    client = TritonRetrievalClient(service.url, timeout_s=60)
    try:
        assert client.is_ready()
        _until(lambda: redis11.hget(INSTANCES_KEY, service.url) is not None)
        bundle = service.bundle
        want = bundle.retrieve(bundle.token_ids(PROMPTS), 6, [4] * len(PROMPTS))
        got = client.retrieve(PROMPTS, beam_width=6, top_k=4)
        assert _rows(got) == _rows(want)
        assert all(abs(x.score - y.score) < 1e-5 for g, w in zip(got, want)
                   for x, y in zip(g.ads, w.ads))
        assert all(r.model_version == "v1" and len(r.advertisers) >= 1 for r in got)
        as_ids = client.retrieve([bundle.token_ids([p])[0] for p in PROMPTS], 6, 4)
        assert _rows(as_ids) == _rows(got)
        # Per-request exclusion (the worker's converted ads): the rest keeps its order.
        skip = [[r.ads[0].ad_id, "no_such_ad"] for r in got]
        fewer = client.retrieve(PROMPTS, beam_width=6, top_k=3, exclude=skip)
        for g, f, s in zip(got, fewer, skip):
            assert s[0] not in {a.ad_id for a in f.ads}
            assert [a.ad_id for a in f.ads] == [a.ad_id for a in g.ads[1:4]]

        # Bad input: refused with the reason, client side or server side.
        with pytest.raises(ValueError, match="top_k"):
            client.retrieve(PROMPTS[:1], beam_width=2, top_k=3)
        with pytest.raises(InferenceError, match=r"beam_width of row 0 is 9999; it must be in \[1, 256\]"):
            client.retrieve(PROMPTS[:1], beam_width=9999, top_k=1)
        with pytest.raises(InferenceError, match="outside the vocabulary"):
            client.retrieve([[10**6]], beam_width=2, top_k=1)

        # A CatalogEvent pause on the stream removes the ad from answers.
        top = got[0].ads[0].ad_id
        redis11.xadd(CATALOG_STREAM, CatalogEvent(op=CatalogOp.PAUSE, ad_id=top).to_fields())
        _until(lambda: top not in {a.ad_id for a in client.retrieve(PROMPTS[:1], 6, 6)[0].ads})

        # Hot swap under load: no request fails, versions only move forward.
        seen: list[str] = []
        errors: list[Exception] = []
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    seen.append(client.retrieve(PROMPTS, 8, 8)[0].model_version)
                except Exception as exc:  # noqa: BLE001 — recorded, asserted below
                    errors.append(exc)

        t = threading.Thread(target=hammer)
        t.start()
        publish_version(reg, art["m2"], art["index"], version_id="v2", world=art["world"])
        _until(lambda: seen[-1:] == ["v2"], timeout=60)
        # A version whose model was trained on another index is refused; v2 keeps serving.
        bad = version_dir(reg, "v3")
        shutil.copytree(version_dir(reg, "v2"), bad)
        shutil.rmtree(bad / "model")
        shutil.copytree(art["other"], bad / "model")
        (reg / "CURRENT").write_text("v3\n")
        time.sleep(1.5)
        stop.set()
        t.join(60)
        assert not errors and seen[0] == "v1" and seen[-1] == "v2"
        assert seen == sorted(seen)  # v1 … v1 v2 … v2
        assert "trained on S-ID index" in service.refused_versions.get("v3", "")
        # The new version was brought up to date with the catalog: the pause holds.
        assert top not in {a.ad_id for a in client.retrieve(PROMPTS[:1], 6, 6)[0].ads}
    finally:
        client.close()
        service.stop()
    assert redis11.hget(INSTANCES_KEY, service.url) is None


# ------------------------------------------------------------------------- CLI
def _cli(args: list[str], db: int, log_dir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "LEADRE_REDIS_URL": f"{REDIS}/{db}", "LEADRE_LOG_JSON": "false",
           "LEADRE_INFERENCE_LOG_DIR": str(log_dir),
           "LEADRE_INFERENCE_HEARTBEAT_S": "0.5", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "leadre", "serve", "inference", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_cli_refuses_an_empty_registry(tmp_path: Path) -> None:
    proc = _cli(["--registry", str(tmp_path / "none"), "--base-port", str(_free_base_port(3))], 12,
                tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "no current version" in err and "Traceback" not in err + out


def test_cli_serves_two_instances_until_sigterm(registry: Path, tmp_path: Path) -> None:
    r = redis.Redis.from_url(f"{REDIS}/12", decode_responses=True)
    r.flushdb()
    base = _free_base_port(6)
    proc = _cli(["--registry", str(registry), "--instances", "2", "--base-port", str(base)], 12,
                tmp_path)
    try:
        urls = []
        while len(urls) < 2:
            line = proc.stdout.readline() if proc.stdout else ""
            assert line, f"launcher exited: {proc.stderr.read() if proc.stderr else ''}"
            if line.startswith("instance "):
                urls.append(line.split()[2])
        assert sorted(urls) == [f"grpc://127.0.0.1:{base}", f"grpc://127.0.0.1:{base + 3}"]
        answers = []
        for url in urls:
            with_client = TritonRetrievalClient(url, timeout_s=60)
            answers.append(_rows(with_client.retrieve(PROMPTS[:2], 4, 3)))
            with_client.close()
        assert answers[0] == answers[1] and all(len(a) == 3 for a in answers[0])
        _until(lambda: set(r.hkeys(INSTANCES_KEY)) == set(urls))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0
        assert r.hkeys(INSTANCES_KEY) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        r.flushdb()
        r.close()


def test_instances_take_one_gpu_each_round_robin() -> None:
    from services.inference.launch import instance_device

    assert [instance_device("cuda", i, gpus=2) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert instance_device("auto", 3, gpus=4) == "cuda:3"
    assert instance_device("auto", 1, gpus=0) == "auto"  # no GPU: each instance on the CPU
    assert instance_device("cuda:1", 0, gpus=2) == "cuda:1"  # an explicit GPU stays
    assert instance_device("cpu", 5, gpus=8) == "cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize(("device", "message"), [("cuda", "no CUDA device"),
                                                 ("tpu", "expected auto, cpu, cuda or cuda:N")])
def test_cli_refuses_a_device_it_cannot_use(registry: Path, tmp_path: Path, device: str,
                                            message: str) -> None:
    proc = _cli(["--registry", str(registry), "--base-port", str(_free_base_port(3)),
                 "--device", device], 12, tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and message in err + out and "Traceback" not in err + out
