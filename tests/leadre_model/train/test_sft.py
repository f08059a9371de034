"""Curriculum SFT through TRL: a tiny model learns prompt → S-ID, the loss covers only the
completion, and constrained decoding then returns the trained ads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leadre_model.index.sids import sid_tokens, sid_vocabulary
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import constrained_beam_search
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer
from leadre_model.train.sft import SFT_PRESETS, parse_curriculum, run_curriculum

LEVELS = [4, 4, 2]
CODES = np.array([[a, b, c] for a in range(4) for b in range(4) for c in range(2)])[:24]
COLOURS = ["red", "blue", "green", "amber", "violet", "teal", "coral", "ivory"]


def samples() -> list[dict[str, str]]:
    # Each colour's users want one specific ad: a mapping the model can only get by reading
    # the prompt.
    return [
        {"prompt": f"The user keeps looking at {c} things. What ad next? ",
         "completion": sid_tokens(CODES[i * 3])}
        for i, c in enumerate(COLOURS) for _ in range(12)
    ]


@pytest.fixture(scope="module")
def tiny():
    corpus = [s["prompt"] for s in samples()]
    tok = train_tokenizer(corpus, LEVELS)
    model, tok = build_model(LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                       num_heads=4, num_kv_heads=2), tok)
    return model, tok


def test_curriculum_spec_parsing():
    assert parse_curriculum("ex>im>main") == [["ex"], ["im"], ["main"]]
    assert parse_curriculum("main+im+ex") == [["main", "im", "ex"]]
    with pytest.raises(ValueError, match="bad curriculum"):
        parse_curriculum("main>dance")


def test_sft_learns_prompt_to_sid_and_decoding_returns_it(tiny):
    model, tok = tiny
    cfg = SFT_PRESETS["tiny"].model_copy(update={"epochs": 30, "lr": 1e-2, "logging_steps": 20})
    logs = run_curriculum(model, tok, {"main": samples()}, "main", cfg, progress=False)
    hist = logs[0]["history"]
    assert hist[-1]["loss"] < 0.05 * hist[0]["loss"], hist
    trie = SidTrie.build(CODES, np.arange(len(CODES)), level_sizes=LEVELS)
    prompts = [f"The user keeps looking at {c} things. What ad next? " for c in COLOURS]
    hits = constrained_beam_search(model, tok, prompts, trie, level_token_ids(tok, LEVELS),
                                   beam_width=4, top_k=1)
    top1 = [h[0].row for h in hits]
    assert top1 == [i * 3 for i in range(len(COLOURS))], top1


def test_loss_is_on_the_completion_only(tiny):
    # If the prompt were in the loss, the model would also learn to predict prompt words;
    # with completion-only loss their probability does not move towards 1.
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tok = tiny
    rows = [{"prompt": "alpha beta gamma ", "completion": sid_tokens(CODES[0])}]
    args = SFTConfig(output_dir="/tmp/leadre-test-sft", completion_only_loss=True, report_to=[],
                     use_cpu=True, save_strategy="no", max_length=64)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    ids = batch["input_ids"][0]
    n_prompt = len(tok("alpha beta gamma ")["input_ids"])
    assert (labels[:n_prompt] == -100).all()
    sid_ids = set(tok.convert_tokens_to_ids(sid_vocabulary(LEVELS)))
    trained = [int(i) for i, lab in zip(ids, labels, strict=True) if lab != -100]
    assert trained[:3] == tok.convert_tokens_to_ids(["<a_0>", "<b_0>", "<c_0>"])
    assert set(trained[:3]) <= sid_ids and trained[-1] == tok.eos_token_id
    assert torch.is_tensor(labels)


def test_lm_stage_stands_alone_and_puts_the_loss_on_every_token(tiny):
    assert parse_curriculum("lm>ex>im>main")[0] == ["lm"]
    with pytest.raises(ValueError, match="stage of its own"):
        parse_curriculum("lm+main")
    model, tok = tiny
    rows = [{**s, "task": "lm"} for s in samples()]
    cfg = SFT_PRESETS["tiny"].model_copy(update={"epochs": 8, "lr": 1e-2, "logging_steps": 5})
    hist = run_curriculum(model, tok, {"lm": rows}, "lm", cfg, progress=False)[0]["history"]
    # Prompt words are trained too: the whole sentence becomes predictable, so the loss per
    # token falls far below what the S-ID tokens alone could give.
    assert hist[-1]["loss"] < 0.25 * hist[0]["loss"], hist
    ids = tok("The user keeps looking at red things. What ad next? ", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    p_next = torch.softmax(logits, -1).gather(1, ids[0, 1:, None]).squeeze(1)
    assert float(p_next[1:].mean()) > 0.5  # prompt tokens are now predicted


def test_cap_samples_draws_across_users_not_the_first_ones():
    from leadre_model.train.pipeline import cap_samples

    rows = [{"user_id": f"u{u}", "i": i} for u in range(50) for i in range(20)]
    kept = cap_samples(rows, 100, seed=0)
    assert len(kept) == 100 and len({r["user_id"] for r in kept}) > 40
    assert kept == sorted(kept, key=rows.index)  # original order kept
    assert cap_samples(rows, 100, seed=0) == kept and cap_samples(rows, None, 0) == rows
