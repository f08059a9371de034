"""Table 6's text-target variants: unique texts, trie sequences identical to what TRL's
SFT trains on, exact padded-trie decoding, and a tiny end-to-end train → recommend."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from leadre_model.data.synth import synth_ad_records
from leadre_model.eval.harness import EvalConfig, build_eval_data
from leadre_model.eval.metrics import invalid_output_rate
from leadre_model.experiments.text_targets import (
    TextTargetRetriever,
    base_text,
    target_texts,
    text_samples,
    train_text_variant,
)
from leadre_model.index.sid_index import load_index
from leadre_model.llm.decode import constrained_beam_search
from leadre_model.llm.model import LLMConfig
from leadre_model.llm.tokenizer import TokenizerConfig
from leadre_model.prompts.config import PromptConfig
from leadre_model.train.pipeline import TRAIN_PRESETS, TrainConfig

KIND = "compressed"


@pytest.mark.parametrize("kind", ["name", "compressed"])
def test_texts_are_unique_deterministic_and_map_back(kind):
    ads = synth_ad_records(150, seed=0)
    twin = ads[0].model_copy(update={"ad_id": "zz_twin"})  # same name, same brand, same l2
    odd = ads[1].model_copy(update={"ad_id": "zz_odd", "name": "--^Odd; name\n x"})
    catalog = [*ads, twin, odd]
    texts = target_texts(catalog, kind)
    assert set(texts) == {a.ad_id for a in catalog}
    assert len(set(texts.values())) == len(texts)  # one ad per text
    back = {t: a for a, t in texts.items()}
    assert all(back[texts[a.ad_id]] == a.ad_id for a in catalog)
    shuffled = catalog[:]
    random.Random(1).shuffle(shuffled)
    assert target_texts(shuffled, kind) == texts  # order of the input does not matter
    # The earlier ad id keeps the plain text, the later one gets the suffix.
    assert texts[ads[0].ad_id] == base_text(ads[0], kind)
    assert texts["zz_twin"].startswith(base_text(ads[0], kind) + " #")
    assert all(not (set(t) & set("^;\n")) and t[0].isalnum() for t in texts.values())
    if kind == "name":
        assert texts["zz_odd"] == "Odd name x"
    else:
        assert texts[ads[5].ad_id].startswith(f"{ads[5].attributes[0][6:]} {ads[5].category_l2}")


def tiny_train_config() -> TrainConfig:
    """A 1-layer, 32-wide model, a 400-token BPE and 16 samples per task: seconds."""
    base = TRAIN_PRESETS["tiny"]
    return base.model_copy(update={
        "llm": LLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                         num_kv_heads=1),
        "tokenizer": TokenizerConfig(vocab_size=400),
        "prompts": PromptConfig(max_behaviors=8, token_budget=256),
        "sft": base.sft.model_copy(update={"epochs": 1, "logging_steps": 1}),
        "curriculum": "ex>im>main",  # text targets have no lm stage of their own
        "max_samples_per_task": 16,  # one optimiser step per stage
    })


@pytest.fixture(scope="module")
def world_index(tmp_path_factory, tiny_world_builder):
    return tiny_world_builder(tmp_path_factory.mktemp("text_targets"), n_users=60)


@pytest.fixture(scope="module")
def trained(world_index, tmp_path_factory):
    world, index_dir = world_index
    model_dir, cfg = tmp_path_factory.mktemp("text_model") / "model", tiny_train_config()
    summary = train_text_variant(world, index_dir, model_dir, cfg, KIND, progress=False)
    retriever = TextTargetRetriever("text", model_dir, index_dir, world, KIND, beam_width=8)
    return world, index_dir, model_dir, cfg, summary, retriever


@pytest.fixture(scope="module")
def cases(world_index):
    return build_eval_data(world_index[0], EvalConfig(progress=False))


def test_training_ran_every_stage_and_saved_the_kind(trained):
    _, _, model_dir, _, summary, retriever = trained
    assert [s["stage"] for s in summary["sft"]] == ["ex", "im", "main"]
    assert all(s["samples"] > 0 and s["history"] for s in summary["sft"])
    assert retriever.manifest["extra"]["text_target"]["kind"] == KIND
    assert (model_dir / "target_texts.json").exists()
    assert not any(t.startswith("<a_") for t in retriever.tokenizer.get_vocab())  # no S-IDs


def test_samples_show_ads_as_text_and_target_texts(trained):
    world, index_dir, _, cfg, _, retriever = trained
    texts = retriever.texts
    samples = text_samples(world, load_index(index_dir), cfg.prompts, texts,
                           ["ex", "im", "main"], "train")
    assert {s["task"] for s in samples} == {"ex", "im", "main"}
    assert all(s["completion"] == texts[s["target_ad"]] for s in samples)
    assert not any("<a_" in s["prompt"] for s in samples)
    main = [s for s in samples if s["task"] == "main" and "click on ad^" in s["prompt"]]
    assert main and any(f"^{texts[a]}" in s["prompt"] for s in main for a in texts)


def test_trie_sequences_are_the_ids_sft_trains_on(trained, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    world, index_dir, _, cfg, _, retriever = trained
    tok, texts, eos = retriever.tokenizer, retriever.texts, retriever.tokenizer.eos_token_id
    samples = text_samples(world, load_index(index_dir), cfg.prompts, texts,
                           ["ex", "im", "main"], "train")
    picked = samples[::max(1, len(samples) // 12)][:12]  # tasks, templates and ads vary
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_length=2560,
                     completion_only_loss=True, activation_checkpointing=False)
    trainer = SFTTrainer(model=retriever.model, args=args, processing_class=tok,
                         train_dataset=Dataset.from_list(
                             [{"prompt": s["prompt"], "completion": s["completion"]} for s in picked]))
    width = retriever.trie.num_levels
    assert len(trainer.train_dataset) == len(picked)
    for s, row in zip(picked, trainer.train_dataset):
        trained_ids = [t for t in row["labels"] if t != -100]  # what the loss covers
        assert trained_ids[-1] == eos
        padded = np.array([trained_ids + [eos] * (width - len(trained_ids))])
        assert retriever.trie.lookup(padded)[0] == retriever.index.row_of(s["target_ad"])
        # The decoder feeds the prompt as tokenized alone: it must be the trained context.
        prompt_ids = tok(s["prompt"])["input_ids"]
        assert row["input_ids"][: len(prompt_ids)] == prompt_ids


def test_beam_search_is_exact_over_padded_texts(trained, cases):
    """Beam ≥ active ads is exhaustive: its scores must equal log p(text + EOS | prompt)
    from one full forward pass per ad (padding after EOS contributes nothing)."""
    retriever = trained[-1]
    prompt = retriever.prompts(cases.test_cases[:1])[0]
    n_active = retriever.trie.num_active
    hits = constrained_beam_search(retriever.model, retriever.tokenizer, [prompt], retriever.trie,
                                   retriever.level_ids, beam_width=n_active)[0]
    assert len(hits) == n_active
    model, eos = retriever.model, retriever.tokenizer.eos_token_id
    p_ids = retriever.tokenizer(prompt)["input_ids"]
    def text_ids(h):  # the ad's sequence up to its first EOS
        return list(h.codes[: h.codes.index(eos) + 1])

    shortest = sorted(hits, key=lambda h: len(text_ids(h)))[:3]
    assert len(text_ids(shortest[0])) < retriever.trie.num_levels  # padded ones are checked
    with torch.inference_mode():
        for h in hits[:3] + hits[-2:] + shortest:
            seq = text_ids(h)
            logits = model(input_ids=torch.tensor([p_ids + seq])).logits[0, len(p_ids) - 1:-1]
            want = torch.log_softmax(logits.float(), -1)[torch.arange(len(seq)), seq].sum()
            assert h.logprob == pytest.approx(float(want), abs=1e-3)


def test_recommend_returns_only_active_ads(trained, cases):
    retriever = trained[-1]
    out = retriever.recommend(cases.test_cases[:10], 8)
    assert len(out) == 10 and all(len(r) == 8 and len(set(r)) == 8 for r in out)
    assert invalid_output_rate(out, cases.active_ids) == 0.0


def test_retriever_refuses_another_kind(trained):
    world, index_dir, model_dir, *_ = trained
    with pytest.raises(ValueError, match="text targets"):
        TextTargetRetriever("x", model_dir, index_dir, world, "name")
