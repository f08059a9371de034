"""The LLM layer: tokenizer, tiny model, save/load with manifest, constrained beam search.

Decoding is checked against two oracles on a random tiny model: exhaustive enumeration of
every active ad (full forward per S-ID, no cache/padding/masks) and a naive Python beam
search (one uncached forward per beam per level).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from leadre_model.index.sids import sid_tokens, sid_vocabulary
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import Hit, constrained_beam_search, encode_prompts, exhaustive_scores
from leadre_model.llm.model import (
    LLMConfig,
    LoraSettings,
    build_model,
    leadre_token_ids,
    load_model,
    read_manifest,
    save_model,
)
from leadre_model.llm.tokenizer import (
    SOFT_TOKEN,
    extend_tokenizer,
    level_token_ids,
    tokenizer_hash,
    train_tokenizer,
)

SIZES = [4, 5, 6]
N_ADS = 40
CORPUS = [
    f"{SOFT_TOKEN} The user is {20 + i % 40} years old; {i % 90} days ago^click ad^"
    f"{sid_tokens([i % 4, i % 5, i % 6])}; {i % 30} days ago^play short video^cats and dogs {i % 7}. "
    "What ad will the user be interested in next time?"
    for i in range(400)
]
PROMPTS = [
    "The user is 31 years old; 3 days ago^click ad^<a_1><b_2><c_3>. What ad next?",
    "hi",
    ("The user is 52 years old; 12 days ago^play short video^cats and dogs 4; 5 days ago^"
     "click ad^<a_0><b_4><c_5>; 2 days ago^play short video^cats. What ad will the user "
     f"be interested in next time? {SOFT_TOKEN}"),
]


@pytest.fixture(scope="module")
def trie() -> SidTrie:
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, 3)
    codes = grid[rng.choice(len(grid), N_ADS, replace=False)]
    active = rng.random(N_ADS) > 0.25
    return SidTrie.build(codes, np.arange(1000, 1000 + N_ADS), active, level_sizes=SIZES)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(CORPUS, SIZES, advertisers=["<adv_7>", "<adv_12>"])


@pytest.fixture(scope="module")
def model(tok):
    model, _ = build_model(LLMConfig(seed=3), tok)
    with torch.no_grad():  # sharper than a fresh init: scores a few nats apart, no near-ties
        model.get_input_embeddings().weight.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module")
def ltok(tok):
    return level_token_ids(tok, SIZES)


def _active_rows(trie: SidTrie) -> set[int]:
    _, rows, active = trie.to_arrays()
    return set(rows[active].tolist())


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_keeps_sid_tokens_whole_and_round_trips(tok) -> None:
    big = train_tokenizer(CORPUS, [16, 8, 4], advertisers=["<adv_7>"])
    text = f"x<a_12><b_7><c_3> then <adv_7>{SOFT_TOKEN}y"
    pieces = big.tokenize(text)
    for whole in ("<a_12>", "<b_7>", "<c_3>", "<adv_7>", SOFT_TOKEN):
        assert whole in pieces
    assert big.decode(big(text)["input_ids"]) == text
    for prompt in PROMPTS:
        assert tok.decode(tok(prompt)["input_ids"]) == prompt
    assert big.padding_side == "left" and big.pad_token_id is not None and big.eos_token_id is not None
    batch = big(["a b c d e", "a"], padding=True)
    assert batch["attention_mask"][1][0] == 0 and batch["attention_mask"][1][-1] == 1
    # S-ID tokens survive skip_special_tokens (they are the response); the soft token does not.
    decoded = big.decode(big(text)["input_ids"], skip_special_tokens=True)
    assert "<a_12><b_7><c_3>" in decoded and SOFT_TOKEN not in decoded
    assert 300 < len(tok) < 4000
    h = tokenizer_hash(big)
    assert tokenizer_hash(train_tokenizer(CORPUS, [16, 8, 4], advertisers=["<adv_7>"])) == h
    big(["a b c", "a"], padding="max_length", truncation=True, max_length=8)
    assert tokenizer_hash(big) == h  # call state (padding, truncation) is not identity


def test_level_token_ids_and_extend(tok, ltok) -> None:
    assert [len(ids) for ids in ltok] == SIZES
    assert tok.convert_ids_to_tokens([int(ltok[1][3])]) == ["<b_3>"]
    with pytest.raises(ValueError, match="lacks"):
        level_token_ids(tok, [4, 5, 7])
    fresh = train_tokenizer(CORPUS, [])
    added = extend_tokenizer(fresh, sid_vocabulary(SIZES))
    assert len(added) == sum(SIZES) and "<c_5>" in added
    assert extend_tokenizer(fresh, sid_vocabulary(SIZES)) == []  # idempotent


# ---------------------------------------------------------------- model


def test_build_tiny_model_is_seeded_and_sized(tok) -> None:
    a, _ = build_model(LLMConfig(seed=1), tok)
    b, _ = build_model(LLMConfig(seed=1), tok)
    assert a.config.model_type == "qwen2" and a.config.max_position_embeddings == 2560
    assert a.get_input_embeddings().weight.shape[0] == len(tok)
    assert a.get_output_embeddings().weight is a.get_input_embeddings().weight  # tied
    assert a.num_parameters() < 5_000_000
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="tokenizer"):
        build_model(LLMConfig())


def test_new_tokens_mode_trains_only_added_rows(tok) -> None:
    model, _ = build_model(LLMConfig(trainable="new_tokens"), tok)
    ids = leadre_token_ids(tok)
    assert len(ids) == sum(SIZES) + 1  # S-IDs + soft prompt
    emb = model.get_input_embeddings().weight
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["model.embed_tokens.weight"]
    batch = tok(PROMPTS[:1], return_tensors="pt")
    model(**batch, labels=batch["input_ids"]).loss.backward()
    touched = set(torch.nonzero(emb.grad.abs().sum(1)).flatten().tolist())
    assert touched and touched <= set(ids)


def _neutral(gc: GenerationConfig) -> bool:
    """Library defaults (unset in transformers 5), nothing a checkpoint imposed."""
    return (gc.do_sample in (None, False) and gc.num_beams in (None, 1) and gc.top_k in (None, 50)
            and gc.temperature in (None, 1.0) and gc.repetition_penalty in (None, 1.0))


def test_checkpoint_path_is_extended_with_mean_rows(tmp_path: Path) -> None:
    plain = train_tokenizer(CORPUS, [])
    base, _ = build_model(LLMConfig(tie_embeddings=False), plain)
    base.generation_config = GenerationConfig(do_sample=True, top_k=3, num_beams=1)
    base.save_pretrained(tmp_path / "ckpt")
    plain.save_pretrained(tmp_path / "ckpt")
    model, tok = build_model(LLMConfig(base=str(tmp_path / "ckpt")), new_tokens=sid_vocabulary(SIZES))
    assert len(tok) == len(plain) + sum(SIZES)  # plain already has the soft token
    for emb in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        assert emb.shape[0] == len(tok)
        old = emb[: len(plain)].detach()
        new = emb[len(plain):].detach()
        assert torch.allclose(new.mean(0), old.mean(0), atol=0.02 * float(old.std()))
        assert new.std(0).mean() < 0.1 * old.std(0).mean()  # near the mean, not random
    assert _neutral(model.generation_config)


def test_lora_on_a_checkpoint_trains_adapters_and_new_rows_and_saves_merged(tmp_path: Path) -> None:
    plain = train_tokenizer(CORPUS, [])
    base, _ = build_model(LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                    num_heads=2, num_kv_heads=1), plain)
    base.save_pretrained(tmp_path / "ckpt")
    plain.save_pretrained(tmp_path / "ckpt")
    cfg = LLMConfig(base=str(tmp_path / "ckpt"), lora=LoraSettings(r=4, alpha=8))
    model, tok = build_model(cfg, new_tokens=sid_vocabulary(SIZES))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "token_adapter" in n for n in trainable)
    assert any("token_adapter" in n for n in trainable)  # the S-ID rows learn
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = tok(["hello world <a_1><b_2>"], return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    save_model(model, tok, tmp_path / "m", index_digest="b" * 64)
    loaded, _, _ = load_model(tmp_path / "m", expected_index_digest="b" * 64)
    assert not any("lora" in n for n, _ in loaded.named_parameters())  # merged, plain model
    model.eval()  # no LoRA dropout
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-4)


def test_save_load_round_trip_and_digest_check(tmp_path: Path, tok, model) -> None:
    saved, model.generation_config = model.generation_config, GenerationConfig(
        do_sample=True, top_k=3, num_beams=1, temperature=2.0)
    try:  # a hostile generation_config is saved with the model, and dropped on load
        manifest = save_model(model, tok, tmp_path / "m", index_digest="a" * 64, extra={"stage": "sft"})
    finally:
        model.generation_config = saved
    assert (tmp_path / "m" / "model.safetensors").exists()
    on_disk = read_manifest(tmp_path / "m")
    assert on_disk == json.loads(json.dumps(manifest))
    assert on_disk["level_sizes"] == SIZES and on_disk["base"] == "tiny"
    assert on_disk["tokenizer_sha256"] == tokenizer_hash(tok) and on_disk["extra"] == {"stage": "sft"}
    for key in ("model_version", "created", "weights_sha256", "index_digest"):
        assert on_disk[key]
    loaded, ltk, _ = load_model(tmp_path / "m", expected_index_digest="a" * 64)
    assert tokenizer_hash(ltk) == tokenizer_hash(tok) and ltk.padding_side == "left"
    assert ltk(PROMPTS)["input_ids"] == tok(PROMPTS)["input_ids"]  # not re-read as Qwen2Tokenizer
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["do_sample"] is True
    assert _neutral(loaded.generation_config)
    batch = tok(PROMPTS[:1], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-5)
    with pytest.raises(ValueError, match="trained on S-ID index aaaaaaaa.*not on the given index bbbb"):
        load_model(tmp_path / "m", expected_index_digest="b" * 64)
    with pytest.raises(FileNotFoundError, match="manifest"):
        load_model(tmp_path)


# ---------------------------------------------------------------- decoding


def _check_valid(hits: list[Hit], trie: SidTrie) -> None:
    rows = [h.row for h in hits]
    assert len(set(rows)) == len(rows) and len({h.codes for h in hits}) == len(hits)
    assert set(rows) <= _active_rows(trie)
    assert all(a.logprob >= b.logprob for a, b in itertools.pairwise(hits))
    for h in hits:
        assert trie.lookup(np.array([h.codes]))[0] == h.row


def _same(a: list[Hit], b: list[Hit], tol: float = 1e-4) -> None:
    assert [h.row for h in a] == [h.row for h in b]
    assert max((abs(x.logprob - y.logprob) for x, y in zip(a, b)), default=0.0) <= tol


def test_full_beam_equals_exhaustive_and_padding_is_invisible(model, tok, trie, ltok) -> None:
    n_active = len(_active_rows(trie))
    assert 0 < n_active < N_ADS  # some ads are paused
    batch = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=64)
    for prompt, hits in zip(PROMPTS, batch):
        _check_valid(hits, trie)
        assert len(hits) == n_active
        _same(hits, exhaustive_scores(model, tok, prompt, trie, ltok))
        _same(hits, constrained_beam_search(model, tok, [prompt], trie, ltok, beam_width=64)[0], 1e-5)
    # Prompts as token ids, and chunked batches, give the same answer.
    ids = encode_prompts(tok, PROMPTS)
    for again in (constrained_beam_search(model, tok, ids, trie, ltok, beam_width=64),
                  constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=64, batch_size=2)):
        for a, b in zip(batch, again):
            _same(a, b, 1e-5)


def _reference_beam(model, tok, prompt: str, trie: SidTrie, ltok, width: int) -> list[Hit]:
    """Algorithm 2 literally: one uncached forward per beam per level."""
    ids = encode_prompts(tok, [prompt])[0]
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for level, k in enumerate(SIZES):
        cands = []
        for prefix, score in beams:
            inp = torch.tensor([ids + [int(ltok[lv][c]) for lv, c in enumerate(prefix)]])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=inp).logits[0, -1].float(), -1)
            cands += [(prefix + (c,), score + float(logp[ltok[level][c]]))
                      for c in range(k) if trie.contains_prefix(prefix + (c,))]
        beams = sorted(cands, key=lambda x: -x[1])[:width]
    return [Hit(int(trie.lookup(np.array([c]))[0]), c, s) for c, s in beams]


@pytest.mark.parametrize("width", [1, 3, 7])
def test_narrow_beam_matches_reference_beam_search(model, tok, trie, ltok, width: int) -> None:
    batch = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=width)
    for prompt, hits in zip(PROMPTS, batch):
        _check_valid(hits, trie)
        assert len(hits) == width
        exact = {h.row: h.logprob for h in exhaustive_scores(model, tok, prompt, trie, ltok)}
        assert all(abs(h.logprob - exact[h.row]) < 1e-4 for h in hits)
        _same(hits, _reference_beam(model, tok, prompt, trie, ltok, width))
    top2 = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=width, top_k=1)
    assert [t[0] for t in top2] == [b[0] for b in batch]


def test_matches_hf_generate_with_prefix_allowed_tokens_fn(model, tok, trie, ltok) -> None:
    code_of = [{int(t): c for c, t in enumerate(ids)} for ids in ltok]
    for prompt in PROMPTS[:2]:
        batch = tok([prompt], return_tensors="pt")
        start = batch["input_ids"].shape[1]

        def allowed(_: int, seq: torch.Tensor, start: int = start) -> list[int]:
            gen = seq[start:].tolist()
            node = trie.root_state(1)
            for level, t in enumerate(gen):
                node = trie.step(level, node, np.array([code_of[level][t]]))
            return ltok[len(gen)][trie.valid_mask(len(gen), node)[0]].tolist()

        out = model.generate(**batch, num_beams=6, num_return_sequences=6, do_sample=False,
                             max_new_tokens=len(SIZES), length_penalty=0.0,
                             prefix_allowed_tokens_fn=allowed, return_dict_in_generate=True,
                             output_scores=True)
        hf = [(tuple(code_of[lv][t] for lv, t in enumerate(s[start:].tolist())), float(score))
              for s, score in zip(out.sequences, out.sequences_scores)]
        ours = constrained_beam_search(model, tok, [prompt], trie, ltok, beam_width=6)[0]
        assert [h.codes for h in ours] == [c for c, _ in hf]
        assert all(abs(h.logprob - s) < 1e-4 for h, (_, s) in zip(ours, hf))


def test_hostile_generation_config_has_no_effect(model, tok, trie, ltok) -> None:
    before = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=5)
    saved = model.generation_config
    try:
        model.generation_config = GenerationConfig(
            do_sample=True, num_beams=1, temperature=5.0, top_k=1, repetition_penalty=3.0)
        after = constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=5)
    finally:
        model.generation_config = saved
    for a, b in zip(before, after):
        _same(a, b, 0.0)


def test_fewer_valid_ads_than_beams_and_all_paused(model, tok, trie, ltok) -> None:
    codes, rows, _ = trie.to_arrays()
    few = SidTrie.build(codes, rows, np.isin(np.arange(len(rows)), [2, 17, 30]), level_sizes=SIZES)
    hits = constrained_beam_search(model, tok, PROMPTS, few, ltok, beam_width=10)
    for prompt, h in zip(PROMPTS, hits):
        assert sorted(x.row for x in h) == sorted(rows[[2, 17, 30]].tolist())
        _same(h, exhaustive_scores(model, tok, prompt, few, ltok))
    none = SidTrie.build(codes, rows, np.zeros(len(rows), bool), level_sizes=SIZES)
    assert constrained_beam_search(model, tok, PROMPTS[:2], none, ltok, beam_width=4) == [[], []]


def test_decoder_argument_checks(model, tok, trie, ltok) -> None:
    with pytest.raises(ValueError, match="beam_width"):
        constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=0)
    with pytest.raises(ValueError, match="top_k"):
        constrained_beam_search(model, tok, PROMPTS, trie, ltok, beam_width=2, top_k=3)
    with pytest.raises(ValueError, match="levels"):
        constrained_beam_search(model, tok, PROMPTS, trie, ltok[:2], beam_width=2)
    with pytest.raises(ValueError, match="empty"):
        constrained_beam_search(model, tok, [[]], trie, ltok, beam_width=2)
    assert constrained_beam_search(model, tok, [], trie, ltok, beam_width=2) == []


def test_dropout_acts_in_training_only():
    """LLMConfig.dropout: stochastic in train mode, deterministic in eval mode (decoding)."""
    from leadre_model.llm.tokenizer import train_tokenizer

    model, _ = build_model(LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                     dropout=0.3), train_tokenizer([], [4, 4]))
    x = torch.tensor([[1, 2, 3]])
    model.train()
    assert not torch.allclose(model(x).logits, model(x).logits)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)
    assert model.config.attention_dropout == 0.3


def test_hidden_dropout_acts_in_training_only():
    """LLMConfig.hidden_dropout: every block's attention and MLP outputs are dropped in
    train mode only; with it alone (no embedding dropout) training is stochastic."""
    from leadre_model.llm.tokenizer import train_tokenizer

    model, _ = build_model(LLMConfig(hidden_size=32, intermediate_size=64, num_layers=2,
                                     hidden_dropout=0.5), train_tokenizer([], [4, 4]))
    x = torch.tensor([[1, 2, 3]])
    seen: list[torch.Tensor] = []
    model.base_model.layers[1].mlp.register_forward_hook(lambda _m, _a, out: seen.append(out))
    model.train()
    out = model(x).logits
    assert (seen[-1] == 0).float().mean() > 0.2  # the MLP branch itself is dropped
    assert not torch.allclose(out, model(x).logits)
    model.eval()
    assert torch.equal(model(x).logits, model(x).logits)
    assert (seen[-1] != 0).all()
