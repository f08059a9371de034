"""Fine-tuning samples for the tasks of §4.3 as TRL prompt-completion rows.

Every sample is ``{"prompt", "completion", "task", "user_id", "target_ad"}``; task names
are those of :mod:`leadre_model.train.sft`:

* ``ex``   explicit alignment: the ad's text (``ad_text`` with the index's own template)
  → its S-ID. One per indexed ad in every split (``user_id`` is ""); the catalog is what
  this task teaches, so there is no held-out set of ads.
* ``im``   implicit alignment: history with ads *by name* → next ad's S-ID.
* ``main`` the main task: history with ads as S-IDs (``use_sids_for_ads``) → next S-ID.
* ``adv``  advertiser prediction (the companion paper): the same history → the next ad's
  advertiser, as advertiser tokens (below).
* ``seq``  dense next-ad supervision (compact prompts only): one row per user, the user's
  whole train history in compact form with the loss on the S-ID of *every* train target
  (``loss_mask``: one '0'/'1' per token). As SASRec trains, every target is predicted
  from the behaviours before it, in one forward pass per user. Valid/test samples are
  the ``main`` ones (the prompt ends where the next ad's S-ID would start). The row's
  interest summary counts the whole history, so every position sees the categories of
  its own later targets, which a served prompt never does: ``cpu-90m-tied`` drops the
  summary (``include_summary=False``; amazon-toys, docs/results/amazon-toys/
  cpu-90m-tied-nosummary); the synthetic presets keep it until measured there.
* ``lm``   behaviour-sequence language modelling: one row per user, the main-task prompt of
  the user's latest train target followed by its S-ID, trained with the loss on *every*
  token (:func:`leadre_model.train.sft.train_stage`). A pretrained LLM brings a language
  model to fine-tuning; a model trained from scratch gets its one here, and every ad in a
  history is a next-token target instead of only the last (dense supervision, as SASRec).

Splits follow :func:`leadre_model.data.split.leave_one_out`: train samples target only
train targets (with ``positive_reuse`` every one of them, each with its own prefix as
history; without it only the latest), so validation and test events are never a train
target nor in a train history; valid and test give one sample per user and task, with no
augmentation (canonical template, fixed profile order). With a refit ``holdout`` only its
users have a validation sample; every other user's validation target is a train target.
Train augmentation draws from a ``random.Random`` seeded by (seed, task, user, target), so
samples do not depend on which other tasks or users are generated alongside.

Advertiser vocabulary. An advertiser is written as two tokens, ``<a_12><adv_3>``: the
first-level S-ID code that most of its indexed ads share (ties: the smaller code), then its
number among the advertisers with that code (by advertiser id). The first token is the
ordinary S-ID token, so what the model learns about ad clusters carries over to advertisers;
only ``<adv_0>`` … ``<adv_{n-1}>`` (n = the most advertisers on one code) are new tokens,
far fewer than one token per advertiser. The code tuples are unique, so
:meth:`AdvertiserVocab.build_trie` gives a two-level :class:`SidTrie` (advertisers without
an active ad are inactive) that the constrained decoder walks like an S-ID trie, with
``level_tokens()`` as its per-level token names. Codes are derived from the index and the
catalog; re-derive them with the index (a new advertiser can renumber its cluster).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from leadre_model.data.records import Ad
from leadre_model.data.split import UserHistory, iter_user_histories, leave_one_out
from leadre_model.data.store import iter_records, load_ads
from leadre_model.index.sid_index import SidIndex
from leadre_model.index.sids import level_token
from leadre_model.index.text import ad_text
from leadre_model.index.trie import SidTrie
from leadre_model.prompts.builder import PromptBuilder
from leadre_model.prompts.config import PromptConfig

TASKS = ("ex", "im", "main", "adv", "lm", "seq")
SPLITS = ("train", "valid", "test")
SplitName = Literal["train", "valid", "test"]
Sample = dict[str, str]


# -- advertiser vocabulary ------------------------------------------------------------
def advertiser_token(code: int) -> str:
    return f"<adv_{int(code)}>"


def advertiser_codes(index: SidIndex, ads: Mapping[str, Ad]) -> tuple[list[str], np.ndarray]:
    """Advertisers of the indexed ads and their (n, 2) int64 code tuples (module doc),
    sorted by code tuple."""
    votes: dict[str, Counter[int]] = {}
    for row, ad_id in enumerate(index.ad_ids):
        ad = ads.get(ad_id)
        if ad is not None:
            votes.setdefault(ad.advertiser_id, Counter())[int(index.codes[row, 0])] += 1
    first = {adv: min(c, key=lambda k: (-c[k], k)) for adv, c in votes.items()}
    ids = sorted(first, key=lambda adv: (first[adv], adv))
    codes = np.zeros((len(ids), 2), dtype=np.int64)
    for i, adv in enumerate(ids):
        codes[i, 0] = first[adv]
        codes[i, 1] = codes[i - 1, 1] + 1 if i and codes[i - 1, 0] == first[adv] else 0
    return ids, codes


@dataclass
class AdvertiserVocab:
    """Advertiser ids, their code tuples and active flags; token and trie views."""

    advertiser_ids: list[str]
    codes: np.ndarray  # (n, 2) int64
    active: np.ndarray  # (n,) bool: has at least one active indexed ad
    first_level_size: int  # K of the index's first S-ID level
    _row_of: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row_of = {a: i for i, a in enumerate(self.advertiser_ids)}

    def __len__(self) -> int:
        return len(self.advertiser_ids)

    @property
    def level_sizes(self) -> list[int]:
        return [self.first_level_size, int(self.codes[:, 1].max()) + 1 if len(self) else 1]

    def row_of(self, advertiser_id: str) -> int:
        try:
            return self._row_of[advertiser_id]
        except KeyError:
            raise KeyError(f"advertiser {advertiser_id!r} has no indexed ad") from None

    def token(self, advertiser_id: str) -> str:
        c0, c1 = self.codes[self.row_of(advertiser_id)]
        return level_token(0, int(c0)) + advertiser_token(int(c1))

    def new_tokens(self) -> list[str]:
        """Tokens to add to the tokenizer (``train_tokenizer(advertisers=...)``)."""
        return [advertiser_token(c) for c in range(self.level_sizes[1])]

    def level_tokens(self) -> list[list[str]]:
        """Token name of every code at each of the two levels, for the decoder."""
        k0, k1 = self.level_sizes
        return [[level_token(0, c) for c in range(k0)], [advertiser_token(c) for c in range(k1)]]

    def build_trie(self) -> SidTrie:
        """Leaves are advertiser rows (``advertiser_ids[row]``)."""
        return SidTrie.build(self.codes, np.arange(len(self), dtype=np.int64),
                             active=self.active, level_sizes=self.level_sizes)


def advertiser_vocab(index: SidIndex, ads: Mapping[str, Ad]) -> AdvertiserVocab:
    ids, codes = advertiser_codes(index, ads)
    active: dict[str, bool] = {}
    for row, ad_id in enumerate(index.ad_ids):
        ad = ads.get(ad_id)
        if ad is not None:
            active[ad.advertiser_id] = active.get(ad.advertiser_id, False) or bool(index.active[row])
    return AdvertiserVocab(ids, codes, np.array([active[a] for a in ids], dtype=bool),
                           index.level_sizes[0])


# -- samples --------------------------------------------------------------------------
def _sample(prompt: str, completion: str, task: str, user_id: str, target_ad: str) -> Sample:
    return {"prompt": prompt, "completion": completion, "task": task, "user_id": user_id,
            "target_ad": target_ad}


def _templates(cfg: PromptConfig, rng: random.Random | None) -> list[int]:
    """Template indices for one target: one per copy when augmenting, else the canonical."""
    if rng is None or not cfg.multi_template:
        return [0]
    n = len(cfg.templates)
    return rng.sample(range(n), min(cfg.template_copies, n))


def explicit_samples(builder: PromptBuilder, augment: bool) -> Iterator[Sample]:
    """``ex``: every indexed ad that is in the catalog, description → S-ID."""
    cfg, index = builder.cfg, builder.index
    template = index.config.text.template
    for row, ad_id in enumerate(index.ad_ids):
        ad = builder.ads.get(ad_id)
        if ad is None:
            continue
        if cfg.format == "compact":
            yield _sample(builder.describe_ad(ad), index.sid(row), "ex", "", ad_id)
            continue
        rng = random.Random(f"{cfg.seed}|ex|{ad_id}") if augment else None
        text = ad_text(ad, template)
        for t in _templates(cfg, rng):
            yield _sample(builder.describe(text, rng, t), index.sid(row), "ex", "", ad_id)


def user_samples(
    builder: PromptBuilder,
    h: UserHistory,
    tasks: Sequence[str],
    split: SplitName,
    advertisers: AdvertiserVocab | None = None,
    merge_conversions: bool = True,
    holdout: Container[str] | None = None,
) -> Iterator[Sample]:
    """``im`` / ``main`` / ``adv`` samples of one user for one split (module doc);
    ``holdout``: the refit's validation users (``data/split.py``)."""
    cfg, index = builder.cfg, builder.index
    s = leave_one_out(h, merge_conversions, holdout)
    if split == "train":
        targets = s.train_targets if cfg.positive_reuse else s.train_targets[-1:]
    else:
        target = s.valid if split == "valid" else s.test
        targets = [] if target is None else [target]
    uid = h.user.user_id
    if "seq" in tasks and split == "train" and s.train_targets:
        # the row ends before the first held-out target: validation, or test for a refit user
        end = next((i for i in (s.valid, s.test) if i is not None), s.train_targets[-1] + 1)
        tokens, mask = builder.dense_row(h.user, h.behaviors[:end], s.train_targets)
        if any(mask):
            yield {**_sample("".join(tokens), "", "seq", uid, ""),
                   "loss_mask": "".join("1" if m else "0" for m in mask)}
    # seq is the dense row above in train, the main-task sample in valid/test
    tasks = list(dict.fromkeys("main" if t == "seq" else t for t in tasks
                               if t != "seq" or split != "train"))
    for i in targets:
        per_target = [t for t in tasks if t != "lm" or (split == "train" and i == targets[-1])]
        ad_id = h.behaviors[i].item_id
        try:
            sid = index.sid(index.row_of(ad_id))
        except KeyError:
            continue  # an ad outside the index cannot be a generation target
        history, now = h.behaviors[:i], h.behaviors[i].ts
        for task in per_target:
            if task == "adv":
                ad = builder.ads.get(ad_id)
                if advertisers is None or ad is None:
                    continue
                completion, ads_as, question = advertisers.token(ad.advertiser_id), None, "advertiser"
            else:
                completion, ads_as, question = sid, ("name" if task == "im" else None), "ad"
            rng = (random.Random(f"{cfg.seed}|{task}|{uid}|{i}")
                   if split == "train" and task != "lm" else None)  # lm: canonical prompt
            for t in _templates(cfg, rng):
                prompt = builder.build(h.user, history, now, rng, template=t, ads_as=ads_as,
                                       question=question)
                yield _sample(prompt, completion, task, uid, ad_id)


def iter_samples(
    world: Path,
    index: SidIndex,
    cfg: PromptConfig,
    tasks: Iterable[str],
    split: SplitName,
    *,
    count_tokens: Callable[[str], int] | None = None,
    users: Iterable[str] | None = None,
    merge_conversions: bool = True,
    holdout: Container[str] | None = None,
) -> Iterator[Sample]:
    """Stream the samples of ``tasks`` for ``split`` from a world directory: ``ex`` first
    (catalog order), then per user (user-id order) per target per task."""
    tasks = list(tasks)
    unknown = set(tasks) - set(TASKS)
    if unknown or split not in SPLITS:
        raise ValueError(f"tasks must be among {TASKS} (got {tasks}), split among {SPLITS} "
                         f"(got {split!r})")
    ads = {a.ad_id: a for a in load_ads(world)}
    content = {c.content_id: c for c in iter_records(world, "content")}
    builder = PromptBuilder(cfg, index, ads, content, count_tokens)
    if "ex" in tasks:
        yield from explicit_samples(builder, augment=split == "train")
    per_user = [t for t in tasks if t != "ex"]
    if not per_user:
        return
    vocab = advertiser_vocab(index, ads) if "adv" in per_user else None
    for h in iter_user_histories(world, users, positive_only=True):
        yield from user_samples(builder, h, per_user, split, vocab, merge_conversions, holdout)


def build_samples(
    world: Path,
    index: SidIndex,
    cfg: PromptConfig,
    tasks: list[str],
    split: SplitName,
    *,
    count_tokens: Callable[[str], int] | None = None,
    users: Iterable[str] | None = None,
    merge_conversions: bool = True,
    holdout: Container[str] | None = None,
) -> list[Sample]:
    """:func:`iter_samples` as a list."""
    return list(iter_samples(world, index, cfg, tasks, split, count_tokens=count_tokens,
                             users=users, merge_conversions=merge_conversions,
                             holdout=holdout))


__all__ = [
    "TASKS",
    "AdvertiserVocab",
    "Sample",
    "advertiser_codes",
    "advertiser_token",
    "advertiser_vocab",
    "build_samples",
    "explicit_samples",
    "iter_samples",
    "user_samples",
]
