"""The decoding engines (llm/decode.py, llm/prefix_attention.py) on several architectures.

Oracles: exhaustive enumeration of every active ad (one uncached forward per S-ID) and HF
``generate(num_beams=B, prefix_allowed_tokens_fn=…)`` on a left-padded batch. Both engines
(shared-prefix attention and the generic reorder path) must agree with them and with each
other; paused ads must never come back.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from leadre_model.index.sids import sid_tokens
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import (
    Hit,
    beam_search_codes,
    candidate_scores,
    constrained_beam_search,
    encode_prompts,
    exhaustive_scores,
)
from leadre_model.llm.model import LLMConfig, build_model, neutral_generation_config
from leadre_model.llm.prefix_attention import supports_shared_prefix
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer
from leadre_model.prompts.tasks import AdvertiserVocab

SIZES = [3, 4, 2, 3]  # four levels: three steps after the prefill
N_ADS = 50
PROMPTS = [
    "user 7 clicked " + sid_tokens([1, 2, 0, 1]) + " then watched cats; what next?",
    "hi",
    "a much longer history: " + " ".join(sid_tokens([i % 3, i % 4, i % 2, i % 3]) for i in range(12)),
    "user 3 read about dogs",
]


@pytest.fixture(scope="module")
def tok():
    corpus = [f"user {i} clicked ad then watched cats and dogs; what next? {i}" for i in range(200)]
    return train_tokenizer(corpus, SIZES, advertisers=["<adv_0>", "<adv_1>", "<adv_2>"])


def _sharpen(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():  # scores a few nats apart: no near-ties to flip between engines
        model.get_input_embeddings().weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def models(tok) -> dict[str, torch.nn.Module]:
    qwen, _ = build_model(LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                    num_heads=4, num_kv_heads=2, seed=5), tok)
    torch.manual_seed(6)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4,
                                         num_key_value_heads=1, pad_token_id=tok.pad_token_id))
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4,
                                      n_positions=512, pad_token_id=tok.pad_token_id))
    for m in (llama, gpt2):
        neutral_generation_config(m, tok)
    return {"qwen2": _sharpen(qwen), "llama": _sharpen(llama), "gpt2": _sharpen(gpt2)}


@pytest.fixture(scope="module")
def ltok(tok) -> list[np.ndarray]:
    return level_token_ids(tok, SIZES)


@pytest.fixture
def trie() -> SidTrie:
    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    codes = grid[rng.choice(len(grid), N_ADS, replace=False)]
    return SidTrie.build(codes, np.arange(500, 500 + N_ADS), rng.random(N_ADS) > 0.2, level_sizes=SIZES)


def _same(a: list[Hit], b: list[Hit], tol: float = 1e-4) -> None:
    assert [h.row for h in a] == [h.row for h in b]
    assert max((abs(x.logprob - y.logprob) for x, y in zip(a, b)), default=0.0) <= tol


def test_architecture_support(models) -> None:
    assert supports_shared_prefix(models["qwen2"], 100) and supports_shared_prefix(models["llama"], 100)
    assert not supports_shared_prefix(models["gpt2"], 100)  # generic reorder path instead


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_engines_equal_exhaustive_enumeration(models, tok, ltok, trie, arch: str) -> None:
    model = models[arch]
    engines = ["reorder"] + (["shared_prefix"] if arch != "gpt2" else [])
    exact = [exhaustive_scores(model, tok, prompt, trie, ltok) for prompt in PROMPTS]
    for engine in engines:
        full = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=64, engine=engine)
        for hits, want in zip(full, exact):
            assert len(hits) == trie.num_active
            _same(hits, want)
    if arch == "gpt2":
        with pytest.raises(ValueError, match="does not support 'gpt2'"):
            constrained_beam_search(model, tok, PROMPTS, trie, ltok, 4, engine="shared_prefix")
        return
    for width in (1, 3, 8):  # narrow beams: the engines walk the same path
        a = constrained_beam_search(model, tok, PROMPTS, trie, ltok, width, engine="shared_prefix")
        b = constrained_beam_search(model, tok, PROMPTS, trie, ltok, width, engine="reorder",
                                    batch_size=3)
        for x, y in zip(a, b):
            _same(x, y, 1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_batched_left_padded_equals_hf_generate(models, tok, ltok, trie, arch: str) -> None:
    model, width = models[arch], 8
    code_of = [{int(t): c for c, t in enumerate(ids)} for ids in ltok]
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    start = batch["input_ids"].shape[1]

    def allowed(_: int, seq: torch.Tensor) -> list[int]:
        gen = seq[start:].tolist()
        node = trie.root_state(1)
        for level, t in enumerate(gen):
            node = trie.step(level, node, np.array([code_of[level][t]]))
        return ltok[len(gen)][trie.valid_mask(len(gen), node)[0]].tolist()

    out = model.generate(**batch, num_beams=width, num_return_sequences=width, do_sample=False,
                         max_new_tokens=len(SIZES), length_penalty=0.0,
                         prefix_allowed_tokens_fn=allowed, return_dict_in_generate=True,
                         output_scores=True)
    ours = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=width)
    for p, hits in enumerate(ours):
        seqs = out.sequences[p * width:(p + 1) * width, start:].tolist()
        scores = out.sequences_scores[p * width:(p + 1) * width].tolist()
        hf_codes = [tuple(code_of[lv][t] for lv, t in enumerate(s)) for s in seqs]
        assert [h.codes for h in hits] == hf_codes
        assert max(abs(h.logprob - s) for h, s in zip(hits, scores)) < 1e-4


def test_paused_ads_never_returned(models, tok, ltok, trie) -> None:
    codes, rows, active = trie.to_arrays()
    subtree = rows[codes[:, 0] == 1]  # a whole first-level branch
    rng = np.random.default_rng(0)
    extra = rng.choice(rows[active], 8, replace=False)
    trie.pause(np.concatenate([subtree, extra]))
    live = set(trie.to_arrays()[1][trie.to_arrays()[2]].tolist())
    for width in (1, 4, 16, 64):
        for hits in constrained_beam_search(models["qwen2"], tok, PROMPTS, trie, ltok, width):
            assert {h.row for h in hits} <= live and len(hits) == min(width, len(live))
            assert all(h.codes[0] != 1 for h in hits)
    trie.resume(extra)
    back = constrained_beam_search(models["qwen2"], tok, PROMPTS, trie, ltok, 64)
    assert all(set(extra.tolist()) <= {h.row for h in hits} for hits in back)


def test_unconstrained_search_is_the_full_grid(models, tok, ltok) -> None:
    """trie=None searches every code tuple: the same as a trie holding all of them."""
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, len(SIZES))
    full = SidTrie.build(grid, np.arange(len(grid)), level_sizes=SIZES)
    for width in (5, len(grid)):
        free = beam_search_codes(models["qwen2"], tok, PROMPTS, ltok, width)
        held = constrained_beam_search(models["qwen2"], tok, PROMPTS, full, ltok, width)
        for f, h in zip(free, held):
            assert [tuple(c) for c in f.codes.tolist()] == [x.codes for x in h]
            assert np.allclose(f.scores, [x.logprob for x in h], atol=1e-5)


def test_advertisers_decode_through_their_trie(models, tok) -> None:
    vocab = AdvertiserVocab(["adv_a", "adv_b", "adv_c", "adv_d"], np.array([[0, 0], [0, 1], [2, 0], [1, 2]]),
                            np.array([True, True, False, True]), first_level_size=SIZES[0])
    adv_trie = vocab.build_trie()
    ids = [np.array(tok.convert_tokens_to_ids(level)) for level in vocab.level_tokens()]
    hits = constrained_beam_search(models["llama"], tok, PROMPTS, adv_trie, ids, beam_width=4)
    for prompt, h in zip(PROMPTS, hits):
        assert sorted(x.row for x in h) == [0, 1, 3]  # adv_c has no active ad
        _same(h, exhaustive_scores(models["llama"], tok, prompt, adv_trie, ids))


@pytest.mark.parametrize("arch", ["qwen2", "llama", "gpt2"])
def test_candidate_scores_equal_exhaustive_scores(models, tok, ltok, trie, arch: str) -> None:
    """Teacher-forced S-ID scores of chosen candidates (the dense head's ``fuse``) are the
    beam's scores: same oracle, both engines, prompts of different lengths in a batch."""
    model = models[arch]
    exact = [exhaustive_scores(model, tok, prompt, trie, ltok) for prompt in PROMPTS]
    picks = [[h for i, h in enumerate(hits) if i % 3 == 0][:6] for hits in exact]
    codes = np.array([[h.codes for h in p] for p in picks])
    want = np.array([[h.logprob for h in p] for p in picks])
    for engine in ["reorder"] + (["shared_prefix"] if arch != "gpt2" else []):
        got = candidate_scores(model, encode_prompts(tok, PROMPTS), codes, ltok,
                               tok.pad_token_id, batch_size=3, engine=engine)
        assert got.shape == (len(PROMPTS), 6)
        np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="codes must be"):
        candidate_scores(model, encode_prompts(tok, PROMPTS), codes[0], ltok, tok.pad_token_id)
