"""Random ad deletion of the dense `seq` rows (train/augment.py): whole behaviours go, with
their loss, the last target always stays, other tokens and labels keep their places, and
a seq stage trains with it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.sid_index import load_index
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.tokenizer import train_tokenizer
from leadre_model.prompts.compact import (
    AD,
    CONVERSION,
    CompactConfig,
    compact_vocabulary,
    split_units,
)
from leadre_model.prompts.config import PromptConfig
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.augment import AdDeletionCollator
from leadre_model.train.sft import SFT_PRESETS, _ad_deletion, dense_row_ids, run_curriculum

CFG = PromptConfig(format="compact", max_behaviors=200, token_budget=5000,
                   compact=CompactConfig(time_gaps=True, content_loss=True))


@pytest.fixture(scope="module")
def tokenizer(small_index: Path):
    index = load_index(small_index)
    return train_tokenizer([], index.level_sizes, extra_tokens=compact_vocabulary(CFG.compact))


@pytest.fixture(scope="module")
def rows(small_index: Path, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    world = tmp_path_factory.mktemp("aworld") / "w"
    generate_world(world, SynthConfig(n_users=40, n_ads=500, n_content=200, seed=3), progress=False)
    samples = build_samples(world, load_index(small_index), CFG, ["seq"], "train")
    return [dense_row_ids(tokenizer, s) for s in samples]


def _collator(tokenizer, p: float) -> AdDeletionCollator:
    cfg = SFT_PRESETS["tiny"].model_copy(update={"drop_ads": p})
    return _ad_deletion(tokenizer, cfg)


def test_spans_cover_whole_ad_behaviours_with_gaps_and_merged_conversions(small_index, tokenizer):
    index = load_index(small_index)
    a, b = split_units(index.sid(0)), split_units(index.sid(1))
    units = ["<|seq|>", "<gap_0>", "<|play|>", "<cat_3>", "<gap_2>", AD, *a, CONVERSION,
             "<gap_1>", AD, *b, CONVERSION, "<gap_0>", AD, *a]
    ids = tokenizer.convert_tokens_to_ids(units)
    spans = _collator(tokenizer, 0.5).spans(ids)
    got = [units[s:e] for s, e in spans]
    assert got == [["<gap_2>", AD, *a, CONVERSION], ["<gap_1>", AD, *b, CONVERSION],
                   ["<gap_0>", AD, *a]]  # the content behaviour is never a candidate


def test_deletion_removes_whole_behaviours_and_keeps_the_last_target(rows, tokenizer):
    coll, twin = _collator(tokenizer, 0.5), _collator(tokenizer, 0.5)  # one seed: same draws
    multi = [r for r in rows if len(coll.spans(r["input_ids"])) >= 3]
    assert len(multi) >= 10
    deleted = 0
    for row in multi:
        ids, labels = row["input_ids"], row["labels"]
        keep = coll.kept(ids, labels)
        out = twin.augment(row)
        assert out["input_ids"] == [ids[j] for j in keep]  # labels stay with their tokens
        assert out["labels"] == [labels[j] for j in keep]
        spans = coll.spans(ids)
        gone = sorted(set(range(len(ids))) - set(keep))
        cut = [(s, e) for s, e in spans if set(range(s, e)) <= set(gone)]
        assert sorted(i for s, e in cut for i in range(s, e)) == gone  # whole behaviours only
        deleted += len(cut)
        last_target = [k for k, (s, e) in enumerate(spans)
                       if any(x != -100 for x in labels[s:e])][-1]
        assert spans[last_target] not in cut
        assert out["input_ids"][: ids.index(coll.seq) + 1] == ids[: ids.index(coll.seq) + 1]
    n = sum(len(coll.spans(r["input_ids"])) - 1 for r in multi)
    assert 0.3 * n < deleted < 0.7 * n  # about p of the candidates


def test_batches_are_padded_by_trl_and_nothing_is_deleted_at_zero(rows, tokenizer):
    coll = _collator(tokenizer, 0.3)
    batch = coll(rows[:4])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert int(batch["attention_mask"].sum()) <= sum(len(r["input_ids"]) for r in rows[:4])
    off = AdDeletionCollator.for_tokenizer(coll.base, tokenizer, 0.0)
    assert all(off.augment(r)["input_ids"] == r["input_ids"] for r in rows)
    # a new stream per collator, the same stream for the same seed
    a, b = _collator(tokenizer, 0.5), _collator(tokenizer, 0.5)
    assert [a.augment(r) for r in rows] == [b.augment(r) for r in rows]


def test_seq_stage_trains_with_ad_deletion(rows, tokenizer):
    model, tok = build_model(LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1,
                                       num_heads=4, num_kv_heads=2), tokenizer)
    samples = [{"prompt": "".join(tok.convert_ids_to_tokens(r["input_ids"])), "task": "seq",
                "user_id": str(i),
                "loss_mask": "".join("0" if x == -100 else "1" for x in r["labels"])}
               for i, r in enumerate(rows[:16])]
    cfg = SFT_PRESETS["tiny"].model_copy(update={"epochs": 6, "lr": 1e-2, "logging_steps": 2,
                                                  "drop_ads": 0.3})
    logs = run_curriculum(model, tok, {"seq": samples}, "seq", cfg, progress=False)
    hist = logs[0]["history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]
