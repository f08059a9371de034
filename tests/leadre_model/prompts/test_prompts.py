"""Prompts (§4.2), tasks (§4.3) and the leave-one-out split: components in order, only
positive behaviours inside the window, the index's S-IDs, truncation, no target leakage,
augmentation, the advertiser vocabulary, determinism."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from leadre_model.data.records import Ad, Behavior, ContentItem, User
from leadre_model.data.split import UserHistory, iter_user_histories, leave_one_out
from leadre_model.data.store import WorldWriter, iter_records, load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.rqvae import RQVAEConfig
from leadre_model.index.sid_index import IndexConfig, SidIndex
from leadre_model.index.sids import parse_sid
from leadre_model.index.text import ad_text
from leadre_model.prompts.builder import PromptBuilder, approx_tokens
from leadre_model.prompts.config import (
    PAPER_TEMPLATE,
    SOFT_TOKEN,
    PromptConfig,
    ablation_config,
)
from leadre_model.prompts.tasks import advertiser_vocab, build_samples, iter_samples

DAY = 86_400
NOW = 1_750_000_000
SID = re.compile(r"(?:<[a-j]_\d+>)+")


def make_index(ad_ids: list[str], paused: set[str] = frozenset(), seed: int = 0) -> SidIndex:
    """A SidIndex from random unique 3-level codes (+ the extra code): no embedding cost."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(8**3, size=len(ad_ids), replace=False)
    codes = np.stack([flat // 64, flat // 8 % 8, flat % 8, np.zeros_like(flat)], 1).astype(np.int64)
    cfg = IndexConfig(rqvae=RQVAEConfig(levels=3, codebook_size=8))
    return SidIndex(list(ad_ids), codes, np.array([a not in paused for a in ad_ids]), cfg)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prompts") / "world"
    generate_world(out, SynthConfig(n_users=30, n_ads=200, n_content=200), progress=False)
    return out


@pytest.fixture(scope="module")
def catalog(world: Path) -> tuple[dict[str, Ad], dict[str, ContentItem], SidIndex]:
    ads = {a.ad_id: a for a in load_ads(world)}
    content = {c.content_id: c for c in iter_records(world, "content")}
    return ads, content, make_index(sorted(ads))


def builder(catalog, **cfg) -> PromptBuilder:
    ads, content, index = catalog
    return PromptBuilder(PromptConfig(**cfg), index, ads, content)


def beh(ts: int, domain: str, action: str, item: str, user: str = "u1") -> Behavior:
    return Behavior(user_id=user, ts=ts, domain=domain, action=action, item_id=item)


# -- prompt builder ---------------------------------------------------------------------
def test_soft_token_is_the_tokenizers() -> None:
    from leadre_model.llm.tokenizer import SOFT_TOKEN as TOKENIZER_SOFT

    assert SOFT_TOKEN == TOKENIZER_SOFT == PromptConfig().soft_token


def test_profile_sentence_follows_the_paper_and_skips_missing_fields(catalog) -> None:
    b = builder(catalog)
    user = User(user_id="u1", age=22, gender="male", residence="Haidian, Beijing",
                education="bachelor's", occupation="Internet industry", consumption_level="medium")
    assert ", ".join(b.profile_clauses(user)) == (
        "22-year-old male, resident in Haidian, Beijing, with a bachelor's degree, working in "
        "Internet industry, with a medium consumption level")
    assert b.profile_clauses(User(user_id="u2", education="associate", gender="female")) == [
        "female", "with an associate degree"]
    assert b.profile_clauses(User(user_id="u3")) == []


def test_prompt_has_the_five_components_in_order(catalog) -> None:
    ads, content, index = catalog
    ad, item = min(ads), min(content)
    user = User(user_id="u1", age=30, gender="female", occupation="finance")
    history = [beh(NOW - 5 * DAY, "content", "play", item), beh(NOW - 2 * DAY, "ad", "click", ad)]
    text = builder(catalog).build(user, history, NOW)
    tpl = PAPER_TEMPLATE
    marks = [tpl.preamble, "[Instruction]:" + SOFT_TOKEN, "30-year-old female", tpl.summary_intro,
             tpl.sequence_intro, f"5 days ago^play video^{content[item].title}",
             f"2 days ago^click on ad^{index.sid(index.row_of(ad))}", tpl.question, "[Response]:"]
    positions = [text.find(m) for m in marks]
    assert -1 not in positions, [m for m, p in zip(marks, positions) if p < 0]
    assert positions == sorted(positions)
    assert text.endswith("[Response]:") and text.count(SOFT_TOKEN) == 1


def test_only_positive_actions_inside_the_window_with_days_ago(catalog) -> None:
    ads, content, index = catalog
    a_imp, a_click, a_conv, a_late = sorted(ads)[:4]
    old, recent = sorted(content)[:2]
    history = [
        beh(NOW - 100 * DAY, "content", "read", old),  # outside the 90-day window
        beh(NOW - 89 * DAY - 1, "content", "play", recent),  # 89 days ago: inside
        beh(NOW - 3 * DAY, "ad", "impression", a_imp),  # not positive
        beh(NOW - int(3.9 * DAY), "ad", "click", a_click),  # 3.9 days → "3 days ago"
        beh(NOW, "ad", "conversion", a_conv),  # now: "0 days ago"
        beh(NOW + 10, "ad", "click", a_late),  # after now: the future
    ]
    text = builder(catalog).build(User(user_id="u1"), history, NOW)
    sid = {a: index.sid(index.row_of(a)) for a in (a_imp, a_click, a_conv, a_late)}
    assert f"3 days ago^click on ad^{sid[a_click]}" in text
    assert f"0 days ago^conversion ad^{sid[a_conv]}" in text
    assert f"89 days ago^play video^{content[recent].title}" in text
    assert sid[a_imp] not in text and sid[a_late] not in text
    assert content[old].title not in text.split(PAPER_TEMPLATE.sequence_intro)[1]
    # The summary is long-term: the read 100 days ago still counts there.
    assert f"{content[old].category}^" in text.split(PAPER_TEMPLATE.sequence_intro)[0]
    assert "impression" not in text


def test_history_ads_carry_the_index_sids(world, catalog) -> None:
    index = catalog[2]
    b = builder(catalog)
    h = next(iter_user_histories(world))
    now = h.behaviors[-1].ts
    text = b.build(h.user, h.behaviors, now)
    in_prompt = SID.findall(text)
    assert in_prompt
    expected = {index.sid(index.row_of(x.item_id)) for x in h.behaviors
                if x.domain == "ad" and x.is_positive() and now - x.ts < 90 * DAY}
    assert set(in_prompt) <= expected
    for s in in_prompt:  # each parses to exactly one indexed ad
        assert (index.codes == parse_sid(s)).all(1).sum() == 1
    assert b.build(h.user, h.behaviors, now, ads_as="name").count("<a_") == 0


def test_ablations_drop_content_and_summary(world, catalog) -> None:
    ads, content, index = catalog
    h = next(iter_user_histories(world))
    now = h.behaviors[-1].ts
    titles = {content[x.item_id].title for x in h.behaviors if x.domain == "content"}
    full = builder(catalog).build(h.user, h.behaviors, now)
    assert any(t in full for t in titles)
    base = PromptConfig()
    wo_content = PromptBuilder(ablation_config(base, "wo_content"), index, ads, content)
    text = wo_content.build(h.user, h.behaviors, now)
    assert not any(t in text for t in titles)
    summary = text.split(PAPER_TEMPLATE.summary_intro)[1].split(PAPER_TEMPLATE.sequence_intro)[0]
    ad_cats = {ads[x.item_id].category_l2 for x in h.behaviors if x.domain == "ad"}
    assert {e.split("^")[0] for e in summary.strip(" ;").split("; ")} <= ad_cats
    wo_summary = PromptBuilder(ablation_config(base, "wo_summary"), index, ads, content)
    assert PAPER_TEMPLATE.summary_intro not in wo_summary.build(h.user, h.behaviors, now)


def test_truncation_drops_oldest_first_and_keeps_the_newest(world, catalog) -> None:
    h = max(iter_user_histories(world), key=lambda h: len(h.behaviors))
    now = h.behaviors[-1].ts + 1
    full = builder(catalog, token_budget=100_000).build(h.user, h.behaviors, now)
    full_items = full.split(PAPER_TEMPLATE.sequence_intro)[1].split(". " + PAPER_TEMPLATE.question)[0]
    items = full_items.split("; ")
    assert len(items) == 50  # max_behaviors
    budget = approx_tokens(full) // 2
    half = builder(catalog, token_budget=budget).build(h.user, h.behaviors, now)
    assert approx_tokens(half) <= budget
    kept = half.split(PAPER_TEMPLATE.sequence_intro)[1].split(". " + PAPER_TEMPLATE.question)[0]
    kept_items = kept.split("; ")
    assert 1 <= len(kept_items) < len(items) and kept_items == items[-len(kept_items):]
    assert PAPER_TEMPLATE.summary_intro in half  # behaviours go before the summary
    # A tiny budget: one behaviour, the summary shrunk or gone, still within the budget.
    head = builder(catalog, include_summary=False, include_profile=False).build(h.user, [], now)
    tiny_budget = approx_tokens(head) + approx_tokens(items[-1]) + 12
    tiny = builder(catalog, token_budget=tiny_budget).build(h.user, h.behaviors, now)
    assert approx_tokens(tiny) <= tiny_budget
    assert items[-1] in tiny and items[-2] not in tiny
    assert SOFT_TOKEN in tiny and tiny.startswith(PAPER_TEMPLATE.preamble)
    # Below the minimum: the instruction, the newest behaviour and the question survive.
    floor = builder(catalog, token_budget=16).build(h.user, h.behaviors, now)
    assert items[-1] in floor and SOFT_TOKEN in floor and PAPER_TEMPLATE.question in floor
    assert PAPER_TEMPLATE.summary_intro not in floor


def test_custom_token_counter_is_used(catalog) -> None:
    ads, content, index = catalog
    calls: list[str] = []

    def count(text: str) -> int:
        calls.append(text)
        return len(text)

    b = PromptBuilder(PromptConfig(token_budget=100_000), index, ads, content, count_tokens=count)
    b.build(User(user_id="u1"), [], NOW)
    assert len(calls) == 1


def test_augmentation_needs_an_rng_and_is_seeded(world, catalog) -> None:
    b = builder(catalog)
    h = next(iter_user_histories(world))
    now = h.behaviors[-1].ts
    canonical = b.build(h.user, h.behaviors, now)
    assert canonical == b.build(h.user, h.behaviors, now)  # no rng: canonical
    variants = {b.build(h.user, h.behaviors, now, random.Random(s)) for s in range(20)}
    assert len(variants) > 3
    assert b.build(h.user, h.behaviors, now, random.Random(7)) == b.build(
        h.user, h.behaviors, now, random.Random(7))
    off = builder(catalog, multi_template=False, profile_reorder=False)
    assert off.build(h.user, h.behaviors, now, random.Random(3)) == canonical


# -- leave-one-out ----------------------------------------------------------------------
def test_leave_one_out_on_a_hand_made_history() -> None:
    events = [
        beh(10, "content", "play", "c1"),
        beh(20, "ad", "click", "a1"),  # 1: train
        beh(25, "ad", "impression", "a9"),
        beh(30, "ad", "click", "a2"),  # 3: train
        beh(31, "ad", "conversion", "a2"),  # 4: same interaction as 3: not a target
        beh(40, "content", "read", "c2"),
        beh(50, "ad", "conversion", "a3"),  # 6: valid (a conversion without a click)
        beh(60, "ad", "click", "a4"),  # 7: test
        beh(70, "content", "search", "c3"),
    ]
    h = UserHistory(User(user_id="u1"), list(reversed(events)))  # sorted on construction
    assert [b.ts for b in h.behaviors] == sorted(b.ts for b in events)
    s = leave_one_out(h)
    assert (s.train_targets, s.valid, s.test) == ([1, 3], 6, 7)
    s = leave_one_out(h, merge_conversions=False)
    assert (s.train_targets, s.valid, s.test) == ([1, 3, 4], 6, 7)
    one = UserHistory(User(user_id="u2"), events[:2])
    assert leave_one_out(one) == type(s)([], None, 1)
    assert leave_one_out(UserHistory(User(user_id="u3"), events[:1])) == type(s)([], None, None)


def test_equal_timestamps_keep_their_order() -> None:
    events = [beh(5, "ad", "click", "a1"), beh(5, "ad", "conversion", "a1"), beh(1, "ad", "click", "a0")]
    h = UserHistory(User(user_id="u1"), events)
    assert [(b.ts, b.item_id, b.action) for b in h.behaviors] == [
        (1, "a0", "click"), (5, "a1", "click"), (5, "a1", "conversion")]


def test_histories_group_the_world_by_user(world) -> None:
    hs = list(iter_user_histories(world))
    assert len(hs) == 30 and [h.user.user_id for h in hs] == sorted(h.user.user_id for h in hs)
    total = sum(1 for _ in iter_records(world, "behaviors"))
    assert sum(len(h.behaviors) for h in hs) == total
    for h in hs:
        assert all(b.user_id == h.user.user_id for b in h.behaviors)
        assert [b.ts for b in h.behaviors] == sorted(b.ts for b in h.behaviors)
        assert h.user.age is not None  # the synthetic profile was joined
    some = [hs[3].user.user_id, hs[7].user.user_id]
    assert [h.user.user_id for h in iter_user_histories(world, some)] == some
    pos = list(iter_user_histories(world, some, positive_only=True))
    assert all(b.is_positive() for h in pos for b in h.behaviors)
    assert [leave_one_out(h).test is not None for h in pos] == [True, True]


# -- a hand-made world: leakage and imported users ---------------------------------------
@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two users whose valid/test ads appear nowhere else; u2 has no users.parquet row."""
    out = tmp_path_factory.mktemp("hand") / "world"
    ads = [Ad(ad_id=f"ad{i}", name=f"Ad number {i}", product_type="p", category_l1="L1",
              category_l2=f"cat{i % 3}", advertiser_id=f"adv{i % 4}", ecpm=1.0, bid=1.0)
           for i in range(12)]
    content = [ContentItem(content_id=f"ct{i}", title=f"Video title {i}", category=f"cat{i % 3}")
               for i in range(4)]
    plan = {"u1": ["ad0", "ad1", "ad2", "ad8", "ad9"], "u2": ["ad3", "ad4", "ad10", "ad11"]}
    with WorldWriter(out) as w:
        for r in ads:
            w.add("ads", r)
        for r in content:
            w.add("content", r)
        w.add("users", User(user_id="u1", age=40, gender="female"))
        for user, seq in plan.items():
            for k, ad in enumerate(seq):
                t = NOW - (30 - 5 * k) * DAY
                w.add("behaviors", beh(t - 100, "content", "play", f"ct{k % 4}", user))
                w.add("behaviors", beh(t - 10, "ad", "impression", ad, user))
                w.add("behaviors", beh(t, "ad", "click", ad, user))
    return out


def test_no_target_leakage(small_world) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    sid = {a: index.sid(index.row_of(a)) for a in index.ad_ids}
    held_out = {"ad8", "ad9", "ad10", "ad11"}  # valid/test ads of u1, u2
    cfg = PromptConfig()
    train = build_samples(small_world, index, cfg, ["im", "main", "adv"], "train")
    assert {s["target_ad"] for s in train} == {"ad0", "ad1", "ad2", "ad3", "ad4"}
    for s in train:
        named = {f"ad{n}" for n in re.findall(r"Ad number (\d+)", s["prompt"])}
        assert not named & held_out and not any(sid[a] in s["prompt"] for a in held_out)
    assert any("Ad number" in s["prompt"] for s in train)  # im prompts name their ads
    test = build_samples(small_world, index, cfg, ["main"], "test")
    valid = build_samples(small_world, index, cfg, ["main"], "valid")
    assert [(s["user_id"], s["target_ad"]) for s in test] == [("u1", "ad9"), ("u2", "ad11")]
    assert [(s["user_id"], s["target_ad"]) for s in valid] == [("u1", "ad8"), ("u2", "ad10")]
    for s in test:
        assert sid[s["target_ad"]] not in s["prompt"] and s["completion"] == sid[s["target_ad"]]
    assert sid["ad8"] in test[0]["prompt"]  # the validation event is history for test


def test_positive_reuse_gives_one_sample_per_earlier_positive_ad(small_world, world, catalog) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    on = build_samples(small_world, index, PromptConfig(), ["main"], "train")
    assert Counter(s["user_id"] for s in on) == {"u1": 3, "u2": 2}
    off = build_samples(small_world, index, PromptConfig(positive_reuse=False), ["main"], "train")
    assert [(s["user_id"], s["target_ad"]) for s in off] == [("u1", "ad2"), ("u2", "ad4")]
    # On the synthetic world: one sample per train target, each with its own prefix.
    big = catalog[2]
    samples = build_samples(world, big, PromptConfig(), ["main"], "train")
    expected = {h.user.user_id: len(leave_one_out(h).train_targets)
                for h in iter_user_histories(world, positive_only=True)}
    assert Counter(s["user_id"] for s in samples) == {u: n for u, n in expected.items() if n}


def test_users_missing_from_users_table_get_an_empty_profile(small_world) -> None:
    hs = {h.user.user_id: h for h in iter_user_histories(small_world)}
    assert hs["u1"].user.age == 40 and hs["u2"].user == User(user_id="u2")


# -- tasks ------------------------------------------------------------------------------
def test_explicit_alignment_maps_each_ad_text_to_its_sid(world, catalog) -> None:
    ads, _, index = catalog
    ex = build_samples(world, index, PromptConfig(), ["ex"], "test")
    assert len(ex) == len(index)
    for s in ex[:20]:
        assert s["task"] == "ex" and s["completion"] == index.sid(index.row_of(s["target_ad"]))
        assert ad_text(ads[s["target_ad"]]) in s["prompt"] and SOFT_TOKEN in s["prompt"]


def test_implicit_alignment_uses_names_main_uses_sids(small_world) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    rows = build_samples(small_world, index, PromptConfig(), ["im", "main"], "test")
    im = [s for s in rows if s["task"] == "im"]
    main = [s for s in rows if s["task"] == "main"]
    assert im[0]["completion"] == main[0]["completion"] == index.sid(index.row_of("ad9"))
    assert "^click on ad^Ad number 8" in im[0]["prompt"] and "<a_" not in im[0]["prompt"]
    assert "Ad number" not in main[0]["prompt"]
    assert set(rows[0]) == {"prompt", "completion", "task", "user_id", "target_ad"}


def test_advertiser_vocabulary_is_unique_and_decodable(world, catalog) -> None:
    ads = catalog[0]
    gone = min(a.advertiser_id for a in ads.values())  # all of its ads paused
    index = make_index(sorted(ads), paused={a for a in ads if ads[a].advertiser_id == gone})
    vocab = advertiser_vocab(index, ads)
    assert set(vocab.advertiser_ids) == {a.advertiser_id for a in ads.values()}
    assert len({tuple(c) for c in vocab.codes}) == len(vocab)
    tokens = {vocab.token(a) for a in vocab.advertiser_ids}
    assert len(tokens) == len(vocab) and all(re.fullmatch(r"<a_\d+><adv_\d+>", t) for t in tokens)
    assert vocab.new_tokens() == [f"<adv_{c}>" for c in range(vocab.level_sizes[1])]
    trie = vocab.build_trie()
    rows = trie.lookup(vocab.codes)
    assert np.array_equal(rows, np.where(vocab.active, np.arange(len(vocab)), -1))
    assert not vocab.active[vocab.row_of(gone)] and vocab.active.sum() == len(vocab) - 1
    # The first token is the first S-ID level most of the advertiser's ads share.
    for adv in vocab.advertiser_ids[:10]:
        firsts = Counter(int(index.codes[index.row_of(a), 0]) for a in ads
                         if ads[a].advertiser_id == adv)
        assert vocab.codes[vocab.row_of(adv), 0] == max(firsts, key=lambda k: (firsts[k], -k))
    adv = build_samples(world, index, PromptConfig(), ["adv"], "valid")
    assert len(adv) == 30
    for s in adv:
        assert s["completion"] == vocab.token(ads[s["target_ad"]].advertiser_id)
        assert PAPER_TEMPLATE.advertiser_question in s["prompt"]


def test_samples_are_deterministic_under_a_seed(world, catalog) -> None:
    _, _, index = catalog
    tasks = ["ex", "main", "adv"]
    a = build_samples(world, index, PromptConfig(seed=1), tasks, "train")
    assert a == build_samples(world, index, PromptConfig(seed=1), tasks, "train")
    assert a != build_samples(world, index, PromptConfig(seed=2), tasks, "train")
    # Per-sample seeding: a task's samples do not depend on the other tasks requested.
    main_only = build_samples(world, index, PromptConfig(seed=1), ["main"], "train")
    assert main_only == [s for s in a if s["task"] == "main"]
    assert build_samples(world, index, PromptConfig(seed=1), ["main"], "test") == build_samples(
        world, index, PromptConfig(seed=2), ["main"], "test")


def test_template_copies_give_distinct_templates(small_world) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    cfg = PromptConfig(template_copies=3)
    rows = build_samples(small_world, index, cfg, ["main"], "train")
    assert len(rows) == 3 * 5
    by_target = Counter((s["user_id"], s["target_ad"]) for s in rows)
    assert set(by_target.values()) == {3}
    first = [s["prompt"] for s in rows if s["target_ad"] == "ad0"]
    preambles = {p.split("\n")[0] for p in first}
    assert preambles == {t.preamble for t in cfg.templates}


def test_streaming_matches_the_list_and_rejects_unknown_tasks(small_world) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    it = iter_samples(small_world, index, PromptConfig(), ["main"], "valid")
    assert list(it) == build_samples(small_world, index, PromptConfig(), ["main"], "valid")
    with pytest.raises(ValueError, match="tasks must be among"):
        build_samples(small_world, index, PromptConfig(), ["nope"], "train")


def test_lm_task_is_one_canonical_full_history_row_per_user_and_never_leaks(small_world) -> None:
    index = make_index([f"ad{i}" for i in range(12)])
    sid = {a: index.sid(index.row_of(a)) for a in index.ad_ids}
    train = build_samples(small_world, index, PromptConfig(), ["main", "lm"], "train")
    lm = [s for s in train if s["task"] == "lm"]
    plain = PromptConfig(multi_template=False, profile_reorder=False)
    main = build_samples(small_world, index, plain, ["main"], "train")
    # One row per user, for the latest train target: that target's canonical main prompt.
    assert [(s["user_id"], s["target_ad"]) for s in lm] == [("u1", "ad2"), ("u2", "ad4")]
    latest = {(s["user_id"], s["target_ad"]): s for s in main}
    for s in lm:
        assert s["completion"] == sid[s["target_ad"]]
        assert s["prompt"] == latest[s["user_id"], s["target_ad"]]["prompt"]
        assert not any(sid[a] in s["prompt"] + s["completion"] for a in ("ad8", "ad9", "ad10", "ad11"))
    assert build_samples(small_world, index, PromptConfig(), ["lm"], "test") == []
