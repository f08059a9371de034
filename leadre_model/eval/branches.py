"""LEADRE as one retrieval branch beside the ID-based ones (issue "Retrieval quality on real
catalogs", deliverable 2): what the branch is worth is the targets it adds to the candidate
set at the same budget. Two retrievers built from two others, for ``leadre eval``:

* :class:`UnionRetriever` — ``first``'s top ``k_first``, then ``second``'s ads in its order,
  skipping any already listed, until ``k_second`` new ones are added (with ``refill``; the
  second branch owns ``k_second`` slots, so a duplicate frees a slot for its next ad) or
  after its top ``k_second`` (without ``refill``: the strict union, possibly fewer slots).
  Scored by Recall@(k_first + k_second) against ``first`` alone at that many slots (e.g.
  item-CF@10 ∪ LEADRE@10 against item-CF@20: the same 20 slots). Its first ``k_first`` are
  ``first``'s, so its Recall@k_first is ``first``'s.
* :class:`MixerRetriever` — the online Mixer's merge rule (services/mixer/merge.py, mirrored
  by :func:`mixer_merge` and tested to give the same lists): up to ``round(k * share)``
  LEADRE ads first in their order, then fallback ads, then more LEADRE ads if the fallback
  runs short; no ad twice. Scored at Recall@k against the fallback's own top k.

Both pass ``exclude_seen`` to their branches and fit the branches the harness has not
fitted on this split. Wrap a branch in :class:`Memoized` (as ``leadre eval`` does) and
use that object both on its own and in combinations: it decodes once for all.
"""

from __future__ import annotations

from collections.abc import Sequence

from leadre_model.eval.harness import EvalCase, EvalData, Retriever, Trainable

# services/common/settings.py: mixer_leadre_share (a test keeps the two equal)
MIXER_LEADRE_SHARE = 0.75


def mixer_merge(leadre: Sequence[str], fallback: Sequence[str], k: int,
                leadre_share: float = MIXER_LEADRE_SHARE) -> list[str]:
    """The Mixer's order (module doc) on ad ids."""
    quota = min(k, round(k * leadre_share)) if fallback else k
    out: list[str] = []
    for items, limit in ((leadre, quota), (fallback, k), (leadre, k)):
        for a in items:
            if len(out) >= limit:
                break
            if a not in out:
                out.append(a)
    return out


def union_merge(first: Sequence[str], second: Sequence[str], k_first: int, k_second: int,
                refill: bool = True) -> list[str]:
    """``first``'s top ``k_first``, then up to ``k_second`` of ``second`` not already in
    (module doc: with ``refill`` a duplicate frees a slot for ``second``'s next ad)."""
    out = list(dict.fromkeys(first[:k_first]))
    added = 0
    for a in (second if refill else second[:k_second]):
        if added >= k_second:
            break
        if a not in out:
            out.append(a)
            added += 1
    return out


class Memoized:
    """A retriever whose lists are kept per (cases, exclude_seen): put the same object in the
    harness's list and in combinations, and it decodes once for all. It always asks its
    retriever for at least ``k_min`` ads and cuts, so the harness's calls (``max_k``, then
    ``dice_k`` on truncated histories) and the combinations' share one decode per set of
    cases (a list's first k are the same whatever k it was asked for, up to ties)."""

    def __init__(self, inner: Retriever, k_min: int = 20, keep: int = 16) -> None:
        self.inner, self.k_min, self.keep = inner, k_min, keep
        self._lists: dict[tuple, tuple[int, list[list[str]]]] = {}
        self._data: EvalData | None = None

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def exclude_seen(self) -> bool:
        return bool(getattr(self.inner, "exclude_seen", False))

    @exclude_seen.setter
    def exclude_seen(self, on: bool) -> None:
        self.inner.exclude_seen = on  # type: ignore[attr-defined]

    @property
    def data(self) -> EvalData | None:
        """The split it was last fitted on (combinations fit only what is not)."""
        return self._data

    @property
    def info(self) -> dict:
        return dict(getattr(self.inner, "info", {}) or {})

    def fit_eval(self, data: EvalData) -> None:
        if data is self._data:  # already fitted on this split: keep the lists
            return
        self._lists.clear()
        self._data = data
        if isinstance(self.inner, Trainable):
            self.inner.fit_eval(data)

    def recommend(self, cases: Sequence[EvalCase], k: int) -> list[list[str]]:
        key = (self.exclude_seen,
               tuple((c.user.user_id, c.now_ts, len(c.behaviors)) for c in cases))
        got = self._lists.get(key)
        if got is None or got[0] < k:
            n = max(k, self.k_min)
            got = self._lists[key] = (n, self.inner.recommend(cases, n))
            while len(self._lists) > self.keep:  # oldest first
                del self._lists[next(iter(self._lists))]
        return [row[:k] for row in got[1]]


class _TwoBranches:
    name: str
    first: Retriever
    second: Retriever

    @property
    def exclude_seen(self) -> bool:
        return bool(getattr(self.first, "exclude_seen", False))

    @exclude_seen.setter
    def exclude_seen(self, on: bool) -> None:
        for b in (self.first, self.second):
            b.exclude_seen = on  # type: ignore[attr-defined]

    def fit_eval(self, data: EvalData) -> None:
        for b in (self.first, self.second):
            if isinstance(b, Trainable) and getattr(b, "data", None) is not data:
                b.fit_eval(data)


class UnionRetriever(_TwoBranches):
    """``first``@k_first ∪ ``second``@k_second (module doc)."""

    def __init__(self, name: str, first: Retriever, second: Retriever, k_first: int = 10,
                 k_second: int = 10, refill: bool = True) -> None:
        self.name, self.first, self.second = name, first, second
        self.k_first, self.k_second, self.refill = k_first, k_second, refill

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        n = max(k, self.k_first + self.k_second)  # room for second's refills
        a = self.first.recommend(histories, n)
        b = self.second.recommend(histories, n)
        return [union_merge(ra, rb, self.k_first, self.k_second, self.refill)[:k]
                for ra, rb in zip(a, b, strict=True)]


class MixerRetriever(_TwoBranches):
    """The Mixer's merge of a LEADRE branch (``first``) and a fallback (``second``)."""

    def __init__(self, name: str, leadre: Retriever, fallback: Retriever,
                 leadre_share: float = MIXER_LEADRE_SHARE, k: int = 10) -> None:
        self.name, self.first, self.second, self.share = name, leadre, fallback, leadre_share
        self.k = k

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        """The Mixer's list of ``self.k`` ads (its quota depends on it), cut to ``k``: asked
        for more, it still serves ``self.k`` (Recall@20 of it is its Recall@10)."""
        n = max(k, self.k)
        a = self.first.recommend(histories, n)
        b = self.second.recommend(histories, n)
        return [mixer_merge(ra, rb, self.k, self.share)[:k] for ra, rb in zip(a, b, strict=True)]


def branch_retrievers(spec: str, pool: dict[str, Retriever]) -> list[Retriever]:
    """Combinations named in ``spec`` (comma-separated) over the retrievers of ``pool``:
    ``A|B`` = :class:`UnionRetriever` (A@10 ∪ B@10, refilled), ``A|B:strict`` (no refill),
    ``A>B`` = :class:`MixerRetriever` (A the LEADRE branch, B the fallback; ``A>B:0.5`` for
    another LEADRE share)."""
    out: list[Retriever] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        body, _, opt = part.partition(":")
        union = "|" in body
        names = body.split("|" if union else ">")
        if len(names) != 2 or not all(n in pool for n in names):
            raise ValueError(f"bad branch spec {part!r}: 'A|B' or 'A>B' over {sorted(pool)}")
        a, b = (pool[n] for n in names)
        if union:
            if opt not in ("", "strict"):
                raise ValueError(f"bad union option {opt!r} (only 'strict')")
            label = f"{names[0]}@10∪{names[1]}@10" + ("(strict)" if opt else "")
            out.append(UnionRetriever(label, a, b, refill=not opt))
        else:
            share = float(opt) if opt else MIXER_LEADRE_SHARE
            out.append(MixerRetriever(f"mixer({names[0]}>{names[1]},{share:g})", a, b, share))
    return out


__all__ = ["MIXER_LEADRE_SHARE", "Memoized", "MixerRetriever", "UnionRetriever", "branch_retrievers",
           "mixer_merge", "union_merge"]
