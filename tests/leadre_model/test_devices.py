"""Every device code path, on every device this machine has: the CPU always (CI), CUDA where
torch sees a GPU (``scripts/gpu_check.sh`` runs this file there).

Each test moves a model between devices and holds the device's answers to the CPU's: the
decoder (plain, with exclusions, with cold prefixes, with paused ads), SASRec, and a model
trained by ``train_leadre`` on the device, then loaded on the CPU.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.eval.baselines import SASRec, SASRecConfig
from leadre_model.index.rqvae import PRESETS, RQVAE
from leadre_model.index.sid_index import IndexConfig, SidIndex, save_index
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import Hit, cold_prefix_nodes, constrained_beam_search
from leadre_model.llm.manifest import Manifest
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.retriever import SidRetriever
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer
from leadre_model.llm.trie_tensors import trie_tensors
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.pipeline import TRAIN_PRESETS, train_leadre

DEVICES = [
    pytest.param(torch.device("cpu"), id="cpu"),
    pytest.param(torch.device("cuda"), id="cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device")),
]
SIZES = [6, 5, 4, 3]
PROMPTS = ["user 7 clicked then watched cats; what next?", "hi", "a much longer history " * 6,
           "user 3 read about dogs"]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts():
    corpus = [f"user {i} clicked ad then watched cats and dogs; what next? {i}" for i in range(200)]
    tok = train_tokenizer(corpus, SIZES)
    model, tok = build_model(LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                       num_heads=4, num_kv_heads=2, seed=11), tok)
    with torch.no_grad():  # scores a few nats apart: no near-ties to flip between devices
        model.get_input_embeddings().weight.mul_(4.0)
    return model.eval(), tok, level_token_ids(tok, SIZES)


def _trie(seed: int = 4) -> SidTrie:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, 4)
    codes = grid[rng.choice(len(grid), 150, replace=False)]
    return SidTrie.build(codes, rng.permutation(5000)[:150], level_sizes=SIZES)


def _same(a: list[list[Hit]], b: list[list[Hit]], tol: float = 1e-4) -> None:
    for x, y in zip(a, b, strict=True):
        assert [h.row for h in x] == [h.row for h in y]
        assert max((abs(p.logprob - q.logprob) for p, q in zip(x, y)), default=0.0) <= tol


@pytest.mark.parametrize("device", DEVICES)
def test_decoder_on_the_device_equals_the_cpu(parts, device: torch.device) -> None:
    model, tok, ltok = parts
    moved = copy.deepcopy(model).to(device)
    trie = _trie()
    codes, rows, _ = trie.to_arrays()
    excl = [set(rows[:40].tolist()), set(), set(rows[::3].tolist()), {int(rows[7])}]
    cold = cold_prefix_nodes(trie, codes, np.arange(len(codes)) % 4 == 0)
    for kwargs in ({}, {"exclude": excl}, {"cold_nodes": cold}):
        for width in (1, 5, 20):
            want = constrained_beam_search(model, tok, PROMPTS, trie, ltok, width, **kwargs)
            got = constrained_beam_search(moved, tok, PROMPTS, trie, ltok, width, batch_size=3,
                                          **kwargs)
            _same(got, want)
    trie.pause(rows[codes[:, 0] == 1])  # the device copy must follow the pause
    live = set(trie.to_arrays()[1][trie.to_arrays()[2]].tolist())
    got = constrained_beam_search(moved, tok, PROMPTS, trie, ltok, 20)
    assert all({h.row for h in hits} <= live for hits in got)
    _same(got, constrained_beam_search(model, tok, PROMPTS, trie, ltok, 20))
    assert trie_tensors(trie, device).leaf_rows.device.type == device.type


@pytest.mark.parametrize("device", DEVICES)
def test_sasrec_on_the_device_scores_as_its_weights_on_the_cpu(device: torch.device) -> None:
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 40, rng.integers(3, 12))) for _ in range(120)]
    cfg = SASRecConfig(epochs=2, hidden=16, max_len=10, eval_every=1, patience=2)
    model = SASRec(40, cfg, progress=False, device=device).fit(seqs, (seqs[:20], [s[-1] for s in seqs[:20]]))
    assert next(model.net.parameters()).device.type == device.type
    on_cpu = SASRec(40, cfg, progress=False, device=CPU)
    on_cpu.load_state(model.state())
    hist = [s[:-1] for s in seqs[:30]]
    assert np.allclose(model.scores(hist), on_cpu.scores(hist), rtol=1e-4, atol=1e-3)


def _random_index(world: Path, out: Path) -> None:
    """Random unique S-IDs for the world's ads and an untrained RQ-VAE (its codebooks seed
    the S-ID rows): no text encoder, so this runs where only torch is installed."""
    ads = load_ads(world)
    cfg = IndexConfig(rqvae=PRESETS["tiny"].model_copy(update={"levels": 3, "codebook_size": 8}))
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    codes = np.column_stack([grid[rng.choice(len(grid), len(ads), replace=False)],
                             np.zeros(len(ads), int)])
    index = SidIndex([a.ad_id for a in ads], codes, np.ones(len(ads), bool), cfg)
    save_index(out, index, RQVAE(8, cfg.rqvae), np.zeros((len(ads), 8), np.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_trained_on_the_device_loads_and_decodes_on_the_cpu(tmp_path, device: torch.device) -> None:
    world, index_dir, model_dir = tmp_path / "world", tmp_path / "index", tmp_path / "model"
    generate_world(world, SynthConfig(n_users=30, n_ads=120, n_content=120), progress=False)
    _random_index(world, index_dir)
    base = TRAIN_PRESETS["cpu"]
    cfg = base.model_copy(update={"seq": base.seq.model_copy(update={"epochs": 1}),
                                  "dpo": TRAIN_PRESETS["demo"].dpo, "dpo_users": 10})
    summary = train_leadre(world, index_dir, model_dir, cfg, progress=False, device=device)
    assert summary["device"].startswith(device.type)
    assert Manifest.read(model_dir).trained_on == summary["device"]
    here = SidRetriever.from_dirs(model_dir, index_dir, device=device)
    cpu = SidRetriever.from_dirs(model_dir, index_dir)
    assert here.model.device.type == device.type and cpu.model.device.type == "cpu"
    assert cpu.manifest is not None
    prompts = [s["prompt"] for s in build_samples(world, cpu.index, cpu.manifest.prompt_config,
                                                  ["main"], "test")[:6]]
    _same(here.retrieve(prompts, 8), cpu.retrieve(prompts, 8))
