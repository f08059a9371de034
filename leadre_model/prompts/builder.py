"""Intent-aware prompts (§4.2.1) from plain records: the same code builds training prompts
offline and, later, prompts from Redis state in the nearline worker.

A prompt is ``preamble`` + task instruction (with the learnable soft token) + the template's
three middle components in its order — user profile, interest summary, merged ad/content
behaviour sequence — + the question + the response marker::

    ...[Instruction]:<|leadre_soft|>Assuming you are an ad recommender system, 22-year-old
    male, resident in Haidian, Beijing, ... The categories ... (format: category^interaction
    times): Audio^7 times; ... The most recent interaction behavior sequence details (format:
    time^behavior type^title) are 12 days ago^play video^Unboxing the ...; 9 days ago^click
    on ad^<a_3><b_12><c_0><d_0>. what ad will the user be interested in next time?
    [Response]:

What goes in:

* Only positive actions (click, conversion, play, read, search); impressions never.
* Behaviours at or before ``now_ts``; the sequence keeps those less than ``window_days``
  days old (days ago = whole days, floor), at most ``max_behaviors`` newest, oldest first.
* The summary counts categories of positive behaviours over the whole given history (or
  ``summary_window_days``): content items by ``ContentItem.category``, ads by
  ``category_l2`` (``ad_summary_category="l1"``: first level); top ``summary_top_n`` by
  count, ties by name. Negative feedback is not summarised (the data has none but
  impressions, which are not a judgement).
* ``include_content=False`` removes content behaviours from the sequence *and* the
  summary (Table 1's "w.o. content"); ``include_summary=False`` drops the summary.
* Items missing from the catalogs (or, with S-IDs, ads missing from the index) are skipped:
  there is nothing to show for them.

Truncation policy (token budget, default 2096, counted by ``count_tokens``):

1. Build the full prompt; if it fits, done (one count).
2. Otherwise drop the *oldest* behaviours first, keeping as many of the newest as fit
   (binary search over the kept count).
3. If even the newest behaviour alone does not fit, shrink the summary from its least
   frequent category up (down to no summary), then drop the profile.
4. The preamble, the instruction (and its soft token), the newest behaviour and the
   question are never dropped: if those alone exceed the budget, that minimal prompt is
   returned over budget (a budget that small is a configuration error, not a user's fault).

The default ``count_tokens`` (:func:`approx_tokens`) over-counts any BPE tokenizer we use,
so prompts stay inside the budget without loading one; pass the real tokenizer's counter
(``lambda s: len(tok(s, add_special_tokens=False).input_ids)``) for exact budgets.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from leadre_model.data.records import Action, Ad, Behavior, ContentItem, Domain, User
from leadre_model.index.sid_index import SidIndex
from leadre_model.prompts.compact import AD, ADVERTISER_Q, CompactRenderer
from leadre_model.prompts.config import PromptConfig, PromptTemplate

DAY = 86_400
# How each positive action reads in the sequence (the paper: "click on ad", "play short video").
ACTION_TEXT: dict[tuple[Domain, Action], str] = {
    (Domain.AD, Action.CLICK): "click on ad",
    (Domain.AD, Action.CONVERSION): "conversion ad",
    (Domain.CONTENT, Action.PLAY): "play video",
    (Domain.CONTENT, Action.READ): "read article",
    (Domain.CONTENT, Action.SEARCH): "search",
    (Domain.CONTENT, Action.CLICK): "click on content",
}
AdsAs = Literal["sid", "name"]
Question = Literal["ad", "advertiser"]

# One token each: added tokens (S-IDs, <adv_3>, <|soft|>); then every digit (Qwen-style
# tokenizers split numbers per digit); letter runs; any other non-space character.
_PIECE = re.compile(r"<\|[^|>]*\|>|<[a-z]+_\d+>|\d|[^\W\d_]+|\S")
_LONG_WORD = re.compile(r"[^\W\d_]{4,}")  # (letters inside <|special|> tokens: a slight over-count)
# Keep the format parseable: our separators inside a title would split it.
_SEPARATORS = re.compile(r"[\^;\n]+")


def approx_tokens(text: str) -> int:
    """Conservative token count: S-ID/special tokens 1, digits 1 each, other symbols 1
    each, a letter run 1 per 3 letters (rounded up). Over-counts BPE vocabularies."""
    # Every piece is at least one token; a run of L > 3 letters adds ceil(L/3) - 1.
    return len(_PIECE.findall(text)) + sum((len(w) - 1) // 3 for w in _LONG_WORD.findall(text))


@dataclass(frozen=True)
class _Parts:
    """The variable pieces of one prompt, so truncation can re-assemble without re-rendering."""

    template: PromptTemplate
    profile: list[str]  # clauses
    summary: list[str]  # "category^N times", most frequent first
    behaviors: list[str]  # "N days ago^action^item", oldest first
    question: str


class PromptBuilder:
    """Builds prompts from a user, their behaviours and the catalogs (see module doc)."""

    def __init__(
        self,
        cfg: PromptConfig,
        index: SidIndex,
        ads: Mapping[str, Ad],
        content: Mapping[str, ContentItem],
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.cfg = cfg
        self.index = index
        self.ads = ads
        self.content = content
        self.count_tokens = count_tokens or approx_tokens
        self.compact = CompactRenderer(cfg.compact, index, ads, content, cfg.soft_token,
                                       f"category_{cfg.ad_summary_category}")

    # -- public -----------------------------------------------------------------------
    def build(
        self,
        user: User,
        behaviors: Sequence[Behavior],
        now_ts: int,
        rng: random.Random | None = None,
        *,
        template: int | None = None,
        ads_as: AdsAs | None = None,
        question: Question = "ad",
    ) -> str:
        """The prompt for ``user`` at ``now_ts``.

        ``rng`` turns on the augmentations the config enables (random template, profile
        reordering); without it the prompt is canonical (template 0, fixed profile order),
        which is what evaluation and serving use. ``template`` picks a template by index.
        ``ads_as``: "sid" or "name" (default from ``use_sids_for_ads``). ``question``:
        "ad" (next ad) or "advertiser" (next advertiser).
        """
        if question not in ("ad", "advertiser"):
            raise ValueError(f"question must be 'ad' or 'advertiser', not {question!r}")
        if ads_as is None:
            ads_as = "sid" if self.cfg.use_sids_for_ads else "name"
        if ads_as not in ("sid", "name"):
            raise ValueError(f"ads_as must be 'sid' or 'name', not {ads_as!r}")
        positive = sorted((b for b in behaviors if self._kept(b, now_ts)), key=lambda b: b.ts)
        if self.cfg.format == "compact":
            return self._compact(user, positive, now_ts, rng, ads_as, question)
        tpl = self._template(rng, template)
        profile = self.profile_clauses(user)
        if rng is not None and self.cfg.profile_reorder:
            rng.shuffle(profile)
        parts = _Parts(
            template=tpl,
            profile=profile if self.cfg.include_profile else [],
            summary=self.summary_entries(positive, now_ts) if self.cfg.include_summary else [],
            behaviors=self._sequence(positive, now_ts, ads_as),
            question=tpl.question if question == "ad" else tpl.advertiser_question,
        )
        return self._fit(parts)

    def describe(self, description: str, rng: random.Random | None = None,
                 template: int | None = None) -> str:
        """Explicit-alignment prompt: the instruction plus the ad's text description."""
        tpl = self._template(rng, template)
        # The description is the index's own ad text: its ";" separators stay.
        body = tpl.describe.replace("{description}", description.replace("\n", " "))
        return f"{self._head(tpl)}{body}{tpl.response}"

    def profile_clauses(self, user: User) -> list[str]:
        """"22-year-old male", "resident in …", "with a … degree", "working in …",
        "with a … consumption level" — missing fields are skipped."""
        head = " ".join(x for x in (f"{user.age}-year-old" if user.age is not None else None,
                                    user.gender) if x)
        clauses = [
            head,
            f"resident in {user.residence}" if user.residence else "",
            f"with {_a(user.education)} degree" if user.education else "",
            f"working in {user.occupation}" if user.occupation else "",
            f"with {_a(user.consumption_level)} consumption level" if user.consumption_level else "",
        ]
        return [_clean(c) for c in clauses if c]

    def dense_row(self, user: User, behaviors: Sequence[Behavior],
                  targets: Sequence[int]) -> tuple[list[str], list[bool]]:
        """Compact format only: the dense-supervision row of ``behaviors`` (a user's
        positive behaviours, oldest first) with the loss on the S-ID of every behaviour at
        an index in ``targets`` (see :meth:`CompactRenderer.dense_row`)."""
        if self.cfg.format != "compact":
            raise ValueError("dense rows (the 'seq' task) need format='compact' prompts")
        now = behaviors[-1].ts if behaviors else 0
        items = [toks if self._kept(b, now) else []
                 for b, toks in zip(behaviors, self.compact.behaviors(behaviors), strict=True)]
        kept = [b for b in behaviors if self._kept(b, now)]
        summary = (self.compact.summary(self._summary_counts(kept, now), self.cfg.summary_top_n)
                   if self.cfg.include_summary else [])
        head = self.compact.head(user, summary, self.cfg.include_profile)
        return self.compact.dense_row(head, items, set(targets), self.cfg.token_budget)

    def describe_ad(self, ad: Ad) -> str:
        """Explicit-alignment prompt of ``ad`` in the configured format."""
        if self.cfg.format == "compact":
            return "".join(self.compact.describe(ad))
        from leadre_model.index.text import ad_text

        return self.describe(ad_text(ad, self.index.config.text.template))

    def summary_entries(self, positive: Sequence[Behavior], now_ts: int) -> list[str]:
        """Top categories of positive behaviours as "category^N times"."""
        counts = self._summary_counts(positive, now_ts)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.cfg.summary_top_n]
        return [f"{_clean(c)}^{n} times" for c, n in top]

    # -- pieces -----------------------------------------------------------------------
    def _summary_counts(self, positive: Sequence[Behavior], now_ts: int) -> Counter[str]:
        horizon = self.cfg.summary_window_days
        counts: Counter[str] = Counter()
        for b in positive:
            if horizon is not None and now_ts - b.ts >= horizon * DAY:
                continue
            cat = self._category(b)
            if cat is not None:
                counts[cat] += 1
        return counts

    def _compact(self, user: User, positive: list[Behavior], now_ts: int,
                 rng: random.Random | None, ads_as: AdsAs, question: Question) -> str:
        """The compact prompt (:mod:`leadre_model.prompts.compact`): the newest
        ``max_behaviors`` inside the window that fit the budget, counted exactly."""
        if ads_as != "sid":
            raise ValueError("compact prompts show ads as S-IDs; the 'im' task (ads by name) "
                             "needs text prompts (format='text')")
        window = self.cfg.window_days * DAY
        recent = [b for b in positive if now_ts - b.ts < window][-self.cfg.max_behaviors:]
        summary = (self.compact.summary(self._summary_counts(positive, now_ts),
                                        self.cfg.summary_top_n) if self.cfg.include_summary else [])
        head = self.compact.head(user, summary, self.cfg.include_profile)
        if rng is not None and self.cfg.profile_reorder and self.cfg.include_profile:
            profile = self.compact.profile(user)
            rng.shuffle(profile)
            start = 1 if self.cfg.soft_token else 0
            head[start:start + len(profile)] = profile
        items = self.compact.behaviors(recent)
        tail = [AD if question == "ad" else ADVERTISER_Q]
        keep = self.compact.fit(head, items, tail, self.cfg.token_budget)
        return "".join([*head, *(t for toks in items[len(items) - keep:] for t in toks), *tail])

    def _template(self, rng: random.Random | None, template: int | None) -> PromptTemplate:
        tpls = self.cfg.templates
        if template is not None:
            return tpls[template]
        if rng is not None and self.cfg.multi_template:
            return tpls[rng.randrange(len(tpls))]
        return tpls[0]

    def _kept(self, b: Behavior, now_ts: int) -> bool:
        if (b.domain, b.action) not in ACTION_TEXT or b.ts > now_ts:
            return False
        return self.cfg.include_content or b.domain is not Domain.CONTENT

    def _category(self, b: Behavior) -> str | None:
        if b.domain is Domain.CONTENT:
            item = self.content.get(b.item_id)
            return item.category if item is not None else None
        ad = self.ads.get(b.item_id)
        if ad is None:
            return None
        return ad.category_l2 if self.cfg.ad_summary_category == "l2" else ad.category_l1

    def _sequence(self, positive: Sequence[Behavior], now_ts: int, ads_as: AdsAs) -> list[str]:
        """Newest ``max_behaviors`` inside the window, rendered oldest first."""
        window, out = self.cfg.window_days * DAY, []
        for b in reversed(positive):  # sorted by time: stop at the window or the cap
            if now_ts - b.ts >= window or len(out) == self.cfg.max_behaviors:
                break
            item = self._item_text(b, ads_as)
            if item is not None:
                action = ACTION_TEXT[b.domain, b.action]
                out.append(f"{(now_ts - b.ts) // DAY} days ago^{action}^{item}")
        return out[::-1]

    def _item_text(self, b: Behavior, ads_as: AdsAs) -> str | None:
        if b.domain is Domain.CONTENT:
            item = self.content.get(b.item_id)
            return _clean(item.title) if item is not None else None
        if ads_as == "name":
            ad = self.ads.get(b.item_id)
            return _clean(ad.name) if ad is not None else None
        try:
            return self.index.sid(self.index.row_of(b.item_id))
        except KeyError:
            return None

    def _head(self, tpl: PromptTemplate) -> str:
        return f"{tpl.preamble}\n{tpl.instruction.replace('{soft}', self.cfg.soft_token)}"

    def _assemble(self, p: _Parts, n_behaviors: int, n_summary: int, profile: bool) -> str:
        """The prompt with the newest ``n_behaviors``, the top ``n_summary`` categories and
        the profile if ``profile``; empty components vanish, an empty sequence says so."""
        tpl = p.template
        newest = p.behaviors[len(p.behaviors) - n_behaviors :] if n_behaviors else []
        pieces = {
            "profile": f"{tpl.profile_intro}{', '.join(p.profile)}." if profile and p.profile else "",
            "summary": f"{tpl.summary_intro}{'; '.join(p.summary[:n_summary])};" if n_summary else "",
            "behaviors": f"{tpl.sequence_intro}{'; '.join(newest) or tpl.empty_sequence}.",
        }
        body = " ".join(pieces[c] for c in tpl.order if pieces[c])
        return f"{self._head(tpl)}{body} {p.question}{tpl.response}"

    def _fit(self, p: _Parts) -> str:
        """Apply the truncation policy of the module docstring."""
        def fits(n_b: int, n_s: int, profile: bool = True) -> bool:
            return self.count_tokens(self._assemble(p, n_b, n_s, profile)) <= self.cfg.token_budget

        n_b, n_s = len(p.behaviors), len(p.summary)
        if fits(n_b, n_s):
            return self._assemble(p, n_b, n_s, True)
        n_b = _largest(min(1, n_b), n_b, lambda k: fits(k, n_s))  # the newest always stays
        if fits(n_b, n_s):
            return self._assemble(p, n_b, n_s, True)
        n_s = _largest(0, n_s, lambda k: fits(n_b, k))
        if fits(n_b, n_s):
            return self._assemble(p, n_b, n_s, True)
        return self._assemble(p, n_b, 0, False)  # may still be over: see the module doc


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """Largest k in [lo, hi] with fits(k) (fits monotone decreasing in k); lo if none."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def _clean(text: str) -> str:
    return _SEPARATORS.sub(" ", text).strip()


__all__ = ["ACTION_TEXT", "PromptBuilder", "approx_tokens"]
