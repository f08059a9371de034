"""Compact prompts and the dense `seq` task: exact token counts, the loss on every train
target's S-ID, a from-scratch model that learns from them, per-request exclusion in the
constrained beam search."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from leadre_model.data.records import Action, Behavior, Domain
from leadre_model.data.split import iter_user_histories, leave_one_out
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.sid_index import load_index
from leadre_model.llm.decode import cold_prefix_nodes, constrained_beam_search
from leadre_model.llm.model import LLMConfig, build_model
from leadre_model.llm.tokenizer import level_token_ids, train_tokenizer
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.compact import AD, CONVERSION, compact_vocabulary, split_units
from leadre_model.prompts.config import PromptConfig
from leadre_model.prompts.tasks import build_samples
from leadre_model.train.plots import plot_training
from leadre_model.train.sft import SFT_PRESETS, dense_row_ids, run_curriculum
from leadre_model.train.validate import BestOnValidation, SidValidator, ValidationConfig

CFG = PromptConfig(format="compact", max_behaviors=200, token_budget=120)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cworld") / "w"
    generate_world(out, SynthConfig(n_users=40, n_ads=500, n_content=200, seed=3), progress=False)
    return out


@pytest.fixture(scope="module")
def tokenizer(small_index: Path):
    index = load_index(small_index)
    return train_tokenizer([], index.level_sizes, extra_tokens=compact_vocabulary(CFG.compact))


def _builder(index_dir: Path, world: Path, cfg: PromptConfig = CFG) -> PromptBuilder:
    from leadre_model.data.store import iter_records, load_ads

    return PromptBuilder(cfg, load_index(index_dir), {a.ad_id: a for a in load_ads(world)},
                         {c.content_id: c for c in iter_records(world, "content")})


def test_compact_prompt_counts_exactly_and_keeps_the_newest(small_index, world, tokenizer):
    b = _builder(small_index, world)
    h = max(iter_user_histories(world, positive_only=True), key=lambda h: len(h.behaviors))
    now = h.behaviors[-1].ts + 1
    prompt = b.build(h.user, h.behaviors, now)
    units = split_units(prompt)
    ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    assert len(ids) == len(units) <= CFG.token_budget  # one id per unit: the budget is exact
    assert units[0] == CFG.soft_token and units[-1] == AD
    assert not any(t in (tokenizer.unk_token_id, None) for t in ids)
    # the longest history does not fit: the oldest behaviours went first
    wide = _builder(small_index, world, CFG.model_copy(update={"token_budget": 5000}))
    full = split_units(wide.build(h.user, h.behaviors, now))
    assert len(full) > len(units) and full[-len(units) + 20:] == units[20:]


def test_conversion_after_its_click_is_one_token():
    from leadre_model.index.sid_index import SidIndex
    from leadre_model.prompts.compact import CompactConfig, CompactRenderer

    idx = SidIndex(["a1"], np.array([[1, 2, 0]]), np.array([True]), config=_index_config())
    r = CompactRenderer(CompactConfig(), idx, {}, {}, "")
    seq = [Behavior(user_id="u", ts=1, domain=Domain.AD, action=Action.CLICK, item_id="a1"),
           Behavior(user_id="u", ts=2, domain=Domain.AD, action=Action.CONVERSION, item_id="a1"),
           Behavior(user_id="u", ts=3, domain=Domain.AD, action=Action.CONVERSION, item_id="zz")]
    out = r.behaviors(seq)
    assert out[0] == [AD, "<a_1>", "<b_2>", "<c_0>"]
    assert out[1] == [CONVERSION]
    assert out[2] == []  # not in the index: nothing to show


def _index_config():
    from leadre_model.index.sid_index import IndexConfig

    return IndexConfig()


def test_dense_row_puts_the_loss_on_every_train_target_sid(small_index, world, tokenizer):
    samples = build_samples(world, load_index(small_index), CFG.model_copy(
        update={"token_budget": 5000}), ["seq"], "train")
    assert samples and all(s["task"] == "seq" for s in samples)
    index = load_index(small_index)
    by_user = {h.user.user_id: h for h in iter_user_histories(world, positive_only=True)}
    for s in samples[:10]:
        units, mask = split_units(s["prompt"]), s["loss_mask"]
        assert len(units) == len(mask)
        labelled = [u for u, m in zip(units, mask) if m == "1"]
        h = by_user[s["user_id"]]
        split = leave_one_out(h)
        want = [t for i in split.train_targets if h.behaviors[i].item_id in index
                for t in split_units(index.sid(index.row_of(h.behaviors[i].item_id)))]
        assert labelled == want  # every train target, no valid/test target, nothing else
        row = dense_row_ids(tokenizer, s)
        assert [i for i in row["labels"] if i != -100] == tokenizer.convert_tokens_to_ids(want)


def _toy_rows(index) -> list[dict]:
    """Users whose content category (u % 4) tells which ad follows (ad row 7 × category)."""
    rows = []
    for u in range(60):
        cat, ad = u % 4, u % 4 * 7
        sid = split_units(index.sid(ad))
        units = ["<|seq|>", "<|play|>", f"<cat_{cat}>", AD, *sid]
        rows.append({"prompt": "".join(units), "task": "seq", "user_id": str(u),
                     "loss_mask": "0" * 4 + "1" * len(sid)})
    return rows


def test_validation_keeps_the_best_weights_and_stops_early(small_index, tokenizer, tmp_path):
    """Model selection (train/validate.py): rounds are scored with the constrained beam
    search, the stage stops once `patience` rounds bring no gain, and the weights left in
    the model are those of the best round."""
    index = load_index(small_index)
    model, tok = build_model(LLMConfig(hidden_size=48, intermediate_size=96, num_layers=1,
                                       num_heads=4, num_kv_heads=2), tokenizer)
    valid = [{"prompt": f"<|seq|><|play|><cat_{c}><|ad|>", "target_ad": index.ad_ids[c * 7]}
             for c in range(4)]
    vcfg = ValidationConfig(users=4, k=1, beam_width=4, every_epochs=5, patience=1)
    validator = SidValidator(index, valid, vcfg)
    assert validator(model, tok) < 1.0  # random init
    selector = BestOnValidation(validator, vcfg, tok)
    cfg = SFT_PRESETS["tiny"].model_copy(update={"epochs": 60, "lr": 1e-2, "logging_steps": 20})
    logs = run_curriculum(model, tok, {"seq": _toy_rows(index)}, "seq", cfg, progress=False,
                          last_stage_callbacks=[selector])
    summary = selector.summary()
    assert summary["best_recall@1"] == 1.0
    assert summary["stopped_by"] == "early_stopping"
    assert summary["rounds"][-1]["epoch"] < 60
    assert validator(model, tok) == 1.0  # the best round's weights are the ones kept
    png = plot_training({"sft": logs, "validation": summary}, tmp_path / "training.png")
    assert png is not None and png.stat().st_size > 0


def test_seq_stage_learns_and_decodes_with_exclusions(small_index, tokenizer):
    """A toy world in compact form: a content category tells which ad follows; after the
    seq stage the decoder returns it, and excluding it per request returns the next best."""
    index = load_index(small_index)
    model, tok = build_model(LLMConfig(hidden_size=48, intermediate_size=96, num_layers=1,
                                       num_heads=4, num_kv_heads=2), tokenizer)
    rows = _toy_rows(index)
    cfg = SFT_PRESETS["tiny"].model_copy(update={"epochs": 25, "lr": 1e-2, "logging_steps": 20})
    logs = run_curriculum(model, tok, {"seq": rows}, "seq", cfg, progress=False)
    assert logs[0]["history"][-1]["loss"] < 0.2 * logs[0]["history"][0]["loss"]
    trie, ids = index.build_trie(), level_token_ids(tok, index.level_sizes)
    prompts = [f"<|seq|><|play|><cat_{c}><|ad|>" for c in range(4)]
    hits = constrained_beam_search(model, tok, prompts, trie, ids, beam_width=8, top_k=4)
    assert [h[0].row for h in hits] == [0, 7, 14, 21]
    excl = [{h[0].row} for h in hits]
    again = constrained_beam_search(model, tok, prompts, trie, ids, beam_width=8, top_k=3,
                                    exclude=excl)
    for before, after, ex in zip(hits, again, excl):
        assert not {h.row for h in after} & ex
        assert [h.row for h in after] == [h.row for h in before[1:4]]
    # Ads added after training ("cold"): the meaningless last code is not scored by the
    # model; siblings under one semantic prefix then share its probability evenly.
    every = np.ones(len(index), dtype=bool)
    nodes = cold_prefix_nodes(trie, index.codes, every)
    assert all(len(n) for n in nodes)  # all ads cold: every node below the root is cold
    cold = constrained_beam_search(model, tok, prompts, trie, ids, beam_width=8, top_k=8,
                                   cold_nodes=nodes)
    for hs in cold:
        assert index.active[[h.row for h in hs]].all()
        by_prefix: dict[tuple[int, ...], set[float]] = {}
        for h in hs:
            by_prefix.setdefault(h.codes[:-1], set()).add(round(h.logprob, 5))
        assert all(len(v) == 1 for v in by_prefix.values())


def test_real_catalog_preset_has_no_summary_to_leak(small_index, world):
    """A `seq` row's summary counts the whole row: it is the summary of the validation
    prompt, whose history holds every target the row trains on. `cpu-90m-tied` and
    `cpu-90m-aug` drop it, in training rows and served prompts alike."""
    from leadre_model.prompts.compact import SEQUENCE, SUMMARY
    from leadre_model.train.pipeline import TRAIN_PRESETS

    index = load_index(small_index)
    leaky = CFG.model_copy(update={"token_budget": 5000})

    def heads(split: str, task: str) -> dict[str, list[str]]:
        samples = build_samples(world, index, leaky, [task], split)
        return {s["user_id"]: (u := split_units(s["prompt"]))[:u.index(SEQUENCE)]
                for s in samples}

    rows, valid = heads("train", "seq"), heads("valid", "main")
    assert rows and any(SUMMARY in h for h in rows.values())
    both = set(rows) & set(valid)
    assert both and all(rows[u] == valid[u] for u in both)

    for preset in ("cpu-90m-tied", "cpu-90m-aug"):
        shipped = TRAIN_PRESETS[preset].prompts
        for split, task in (("train", "seq"), ("test", "main")):
            samples = build_samples(world, index, shipped, [task], split)
            assert samples and all(SUMMARY not in split_units(s["prompt"]) for s in samples)


def test_refit_trains_every_users_validation_target_but_the_holdouts(small_index, world):
    """A refit (data/split.py): the holdout's users keep their validation target held out
    and are the only validation samples; every other user's row also has the loss on its
    validation target; nobody's test target is ever labelled."""
    from leadre_model.data.split import holdout_users

    index = load_index(small_index)
    hold = holdout_users(world, 10)
    assert len(hold) == 10 and hold == holdout_users(world, 10)  # no seed, no state
    assert holdout_users(world, 5) < hold  # the smallest hashes: a larger n adds users
    cfg = CFG.model_copy(update={"token_budget": 5000})
    valid = build_samples(world, index, cfg, ["main"], "valid", holdout=hold)
    assert {s["user_id"] for s in valid} <= hold and len(valid) >= 8
    rows = {s["user_id"]: s for s in build_samples(world, index, cfg, ["seq"], "train",
                                                   holdout=hold)}
    refit = 0
    for h in iter_user_histories(world, positive_only=True):
        uid, s = h.user.user_id, leave_one_out(h)
        if uid not in rows:
            continue
        targets = s.train_targets + ([] if uid in hold or s.valid is None else [s.valid])
        want = [t for i in targets if h.behaviors[i].item_id in index
                for t in split_units(index.sid(index.row_of(h.behaviors[i].item_id)))]
        units, mask = split_units(rows[uid]["prompt"]), rows[uid]["loss_mask"]
        assert [u for u, m in zip(units, mask) if m == "1"] == want, uid
        refit += uid not in hold
        assert leave_one_out(h, holdout=hold).test == s.test
    assert refit >= 20
