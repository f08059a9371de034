"""Compact prompts: the paper's prompt components (§4.2.1) as a few tokens each, for models
trained from scratch on CPU.

A text prompt spends most of its tokens on template words and item titles a small model
from scratch cannot read; here every piece of information is one token::

    <|leadre_soft|> <pf_17><pf_80>…            profile: one hashed token per field value
    <|summary|> <cat_41><cnt_3> <cat_7><cnt_2>  interest summary: top categories, log2 counts
    <|seq|> <|play|><cat_41> <|ad|><a_3><b_12><c_0><d_0> <|conv|> <|read|><cat_7> …
    <|ad|>                                      the question: the next ad's S-ID follows

(shown with spaces for reading; a prompt has none). Content behaviours are their action
token and their category; ad behaviours are ``<|ad|>`` and the ad's S-ID, a conversion adds
``<|conv|>`` after it (a conversion directly following its own click is that one token
alone, matching the split's merge rule). Categories and profile values are hashed into
fixed buckets (crc32), so the vocabulary needs no catalog scan, never goes stale when new
categories appear, and works on any world in the import format; a collision merges two
values into one token.

Every unit is an added token of the tokenizer, so the number of units *is* the number of
token ids: budgets are exact without running the tokenizer (a test checks both agree).

:meth:`CompactRenderer.dense_row` gives the dense-supervision row of a user (one row per
user, the loss on the S-ID of every training target), the ``seq`` task.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from leadre_model.configbase import StrictConfig
from leadre_model.data.records import Action, Ad, Behavior, ContentItem, Domain, User
from leadre_model.index.sids import sid_tokens

if TYPE_CHECKING:  # the index module loads torch; prompt settings must not
    from leadre_model.index.sid_index import SidIndex

AD = "<|ad|>"
CONVERSION = "<|conv|>"
ADVERTISER_Q = "<|adv|>"
SUMMARY = "<|summary|>"
SEQUENCE = "<|seq|>"
DESCRIBE = "<|describe|>"
CONTENT_ACTIONS: dict[Action, str] = {
    Action.PLAY: "<|play|>", Action.READ: "<|read|>", Action.SEARCH: "<|search|>",
    Action.CLICK: "<|cclick|>",
}
MARKERS = (AD, CONVERSION, ADVERTISER_Q, SUMMARY, SEQUENCE, DESCRIBE, *CONTENT_ACTIONS.values())
_UNIT = re.compile(r"<\|[^|>]*\|>|<[a-z]+_\d+>")
_PROFILE_FIELDS = ("gender", "residence", "education", "occupation", "consumption_level")


class CompactConfig(StrictConfig):
    """Vocabulary sizes of the compact format (hash buckets)."""

    category_buckets: int = Field(default=1024, ge=1, description="<cat_N> tokens")
    profile_buckets: int = Field(default=512, ge=1, description="<pf_N> tokens")
    count_levels: int = Field(default=8, ge=1, description="<cnt_N>: floor(log2(count)), capped")
    age_bucket_years: int = Field(default=5, ge=1)
    time_gaps: bool = Field(default=False, description="a <gap_N> token before each "
                            "behaviour: the time since the previous one, in log buckets")
    content_loss: bool = Field(default=False, description="dense rows also put the loss on "
                               "each content behaviour's category token (auxiliary task)")


# upper bounds (seconds) of the gap buckets: a minute, an hour, a day, a week, a month
GAP_BOUNDS = (60, 3_600, 86_400, 7 * 86_400, 30 * 86_400)


def compact_vocabulary(cfg: CompactConfig) -> list[str]:
    """Every token a compact prompt can contain besides S-IDs and the soft token."""
    return [*MARKERS, *(f"<gap_{i}>" for i in range(len(GAP_BOUNDS) + 1)),
            *(f"<cat_{i}>" for i in range(cfg.category_buckets)),
            *(f"<pf_{i}>" for i in range(cfg.profile_buckets)),
            *(f"<cnt_{i}>" for i in range(cfg.count_levels))]


def split_units(prompt: str) -> list[str]:
    """A compact prompt back into its tokens (inverse of ``"".join``)."""
    units = _UNIT.findall(prompt)
    if sum(map(len, units)) != len(prompt):
        raise ValueError("not a compact prompt: it holds text outside <…> tokens")
    return units


def _bucket(text: str, n: int) -> int:
    return zlib.crc32(text.encode()) % n


class CompactRenderer:
    """Renders users, behaviours and ads as compact token lists (module doc)."""

    def __init__(self, cfg: CompactConfig, index: SidIndex, ads: Mapping[str, Ad],
                 content: Mapping[str, ContentItem], soft_token: str,
                 ad_category: str = "category_l2") -> None:
        self.cfg, self.index, self.ads, self.content = cfg, index, ads, content
        self.soft, self.ad_category = soft_token, ad_category

    # -- pieces -----------------------------------------------------------------------
    def category(self, name: str) -> str:
        return f"<cat_{_bucket(name.strip().lower(), self.cfg.category_buckets)}>"

    def profile(self, user: User) -> list[str]:
        values = [f"{f}={getattr(user, f)}" for f in _PROFILE_FIELDS if getattr(user, f)]
        if user.age is not None:
            values.insert(0, f"age={user.age // self.cfg.age_bucket_years}")
        return [f"<pf_{_bucket(v.lower(), self.cfg.profile_buckets)}>" for v in values]

    def count(self, n: int) -> str:
        return f"<cnt_{min(self.cfg.count_levels - 1, max(n, 1).bit_length() - 1)}>"

    def summary(self, categories: Counter[str], top_n: int) -> list[str]:
        top = sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]
        return [SUMMARY, *(t for c, n in top for t in (self.category(c), self.count(n)))] if top else []

    def item_category(self, b: Behavior) -> str | None:
        if b.domain is Domain.CONTENT:
            item = self.content.get(b.item_id)
            return item.category if item is not None else None
        ad = self.ads.get(b.item_id)
        return getattr(ad, self.ad_category) if ad is not None else None

    def ad_sid(self, ad_id: str) -> list[str] | None:
        if ad_id not in self.index:
            return None
        return _UNIT.findall(sid_tokens(self.index.codes[self.index.row_of(ad_id)]))

    def behaviors(self, positive: Sequence[Behavior]) -> list[list[str]]:
        """Tokens of each behaviour (``[]`` for items with nothing to show), in order."""
        out: list[list[str]] = []
        last_ad: str | None = None
        for i, b in enumerate(positive):
            if b.domain is Domain.CONTENT:
                cat = self.item_category(b)
                toks = ([CONTENT_ACTIONS[b.action], self.category(cat)]
                        if cat is not None and b.action in CONTENT_ACTIONS else [])
            elif b.action is Action.CONVERSION and b.item_id == last_ad:
                toks = [CONVERSION]  # the same interaction as the click before it
            else:
                sid = self.ad_sid(b.item_id)
                conv = [CONVERSION] if b.action is Action.CONVERSION else []
                toks = [AD, *sid, *conv] if sid is not None else []
            if b.domain is Domain.AD:
                last_ad = b.item_id
            if toks and self.cfg.time_gaps:
                gap = b.ts - positive[i - 1].ts if i else 0
                toks.insert(0, f"<gap_{sum(gap >= g for g in GAP_BOUNDS)}>")
            out.append(toks)
        return out

    def head(self, user: User | None, summary: list[str], with_profile: bool) -> list[str]:
        soft = [self.soft] if self.soft else []
        return [*soft, *(self.profile(user) if with_profile and user else []), *summary, SEQUENCE]

    def describe(self, ad: Ad) -> list[str]:
        """Explicit alignment in compact form: the ad's categories, product type and
        advertiser as tokens (``ex``: these → the ad's S-ID)."""
        fields = (ad.category_l1, ad.category_l2, ad.product_type, f"adv:{ad.advertiser_id}")
        soft = [self.soft] if self.soft else []
        return [*soft, DESCRIBE, *(self.category(f) for f in fields), AD]

    # -- rows -------------------------------------------------------------------------
    def fit(self, head: list[str], items: list[list[str]], tail: list[str], budget: int) -> int:
        """How many of the newest ``items`` fit in ``budget`` tokens with head and tail
        (at least the newest non-empty one, so the sequence never comes out empty)."""
        room = budget - len(head) - len(tail)
        used, keep = 0, 0
        for toks in reversed(items):
            if used + len(toks) > room and keep and used:
                break
            used += len(toks)
            keep += 1
        return keep

    def dense_row(self, head: list[str], items: list[list[str]],
                  targets: Collection[int], budget: int) -> tuple[list[str], list[bool]]:
        """One training row: head + behaviours (newest that fit), and per token whether it
        carries loss: the S-ID tokens of the behaviours at positions ``targets``."""
        keep = self.fit(head, items, [], budget)
        tokens, mask = list(head), [False] * len(head)
        for i in range(len(items) - keep, len(items)):
            toks = items[i]
            tokens += toks
            # S-ID tokens follow <|ad|>; a content behaviour's category follows its action
            at = toks.index(AD) if AD in toks else -1
            if i in targets and at >= 0:
                mask += [at < j and toks[j] != CONVERSION for j in range(len(toks))]
            elif self.cfg.content_loss and toks and toks[-1].startswith("<cat_"):
                mask += [j == len(toks) - 1 for j in range(len(toks))]
            else:
                mask += [False] * len(toks)
        return tokens, mask


__all__ = ["AD", "ADVERTISER_Q", "CONVERSION", "MARKERS", "CompactConfig", "CompactRenderer",
           "compact_vocabulary", "split_units"]
