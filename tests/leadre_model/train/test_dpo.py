"""DPO (§4.3.2): pairs ordered by eCPM among likely ads, and training moves probability
mass from the lower-eCPM ad to the higher-eCPM one relative to the SFT reference."""

from __future__ import annotations

import numpy as np
import torch

from leadre_model.index.sids import sid_tokens
from leadre_model.index.trie import SidTrie
from leadre_model.llm.decode import exhaustive_scores
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer
from leadre_model.train.dpo import DPO_PRESETS, preference_pairs, train_dpo

LEVELS = [3, 3]
CODES = np.array([[a, b] for a in range(3) for b in range(3)])
ADS = [f"ad{i}" for i in range(len(CODES))]
SID = {a: sid_tokens(c) for a, c in zip(ADS, CODES, strict=True)}


def test_pairs_put_the_higher_ecpm_ad_first_and_skip_ties():
    ecpm = {"ad0": 1.0, "ad1": 5.0, "ad2": 1.05, "ad3": 0.2}
    samples = [{"prompt": "p1 ", "target_ad": "ad0"}, {"prompt": "p2 ", "target_ad": "ad0"},
               {"prompt": "p3 ", "target_ad": "ad3"}]
    cands = [["ad1", "ad0"], ["ad2"], ["ad3", "ad0"]]
    pairs = preference_pairs(samples, cands, ecpm, SID, DPO_PRESETS["tiny"])
    assert pairs == [
        {"prompt": "p1 ", "chosen": SID["ad1"], "rejected": SID["ad0"]},  # candidate wins
        {"prompt": "p3 ", "chosen": SID["ad0"], "rejected": SID["ad3"]},  # target wins
    ]  # p2: ad2 vs ad0 differ by < 10 %: no business signal, skipped


def test_dpo_raises_the_chosen_ad_against_the_reference():
    prompts = [f"user {w} wants " for w in ("sun", "moon", "star", "rain")]
    tok = train_tokenizer(prompts * 4, LEVELS)
    model, tok = build_model(LLMConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                       num_heads=4, num_kv_heads=2), tok)
    trie = SidTrie.build(CODES, np.arange(len(CODES)), level_sizes=LEVELS)
    ids = level_token_ids(tok, LEVELS)

    def margin() -> float:
        s = {h.row: h.logprob for h in exhaustive_scores(model, tok, prompts[0], trie, ids)}
        return s[7] - s[2]

    before = margin()
    pairs = [{"prompt": p, "chosen": SID["ad7"], "rejected": SID["ad2"]} for p in prompts] * 8
    cfg = DPO_PRESETS["tiny"].model_copy(update={"epochs": 3, "lr": 5e-3, "logging_steps": 2})
    ref = [p.detach().clone() for p in model.parameters()]
    hist = train_dpo(model, tok, pairs, cfg, progress=False)
    assert hist and all(np.isfinite(h["loss"]) for h in hist)
    assert margin() > before + 1.0
    assert any(not torch.equal(a, b) for a, b in zip(ref, model.parameters(), strict=True))
