"""Retrieval metrics over ranked lists (§5.1.2, §5.2.3, §5.2.6 of the paper).

Conventions shared by every function:

* ``ranked`` is an integer array ``(B, L)``: row ``u`` is user ``u``'s list, best first.
  ``-1`` marks an empty slot or an output that is not a real active ad (see
  :func:`invalid_output_rate`); it never matches a target or a label and carries no
  category or eCPM.
* ``targets`` is ``(B,)``: one held-out item per user (leave-one-out), never ``-1``.
* Every figure is a mean over users, in ``[0, 1]`` except abundance (a count) and
  business value (an eCPM).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

INVALID = -1


def _top(ranked: np.ndarray, k: int) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2:
        raise ValueError(f"ranked must be (users, list length), got shape {ranked.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return ranked[:, :k]


def _hit_rank(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """0-based rank of the target in the top ``k``, or -1 when it is not there."""
    top = _top(ranked, k)
    targets = np.asarray(targets).reshape(-1, 1)
    if len(targets) != len(top):
        raise ValueError(f"{len(top)} lists but {len(targets)} targets")
    hit = top == targets
    return np.where(hit.any(axis=1), hit.argmax(axis=1), -1)


def hit_rate_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """HR@K: share of users whose held-out item is in their top ``k``."""
    r = _hit_rank(ranked, targets, k)
    return float((r >= 0).mean()) if len(r) else 0.0


def recall_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Recall@K with one relevant item per user, which is exactly HR@K (TIGER's naming)."""
    return hit_rate_at_k(ranked, targets, k)


def hits_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """Per user, 1.0 where the held-out item is in the top ``k`` (the terms of HR@K)."""
    return (_hit_rank(ranked, targets, k) >= 0).astype(np.float64)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of ``a - b`` over the same users and its standard error. Two retrievers tested
    on the same users are compared by their per-user differences: the users both hit or
    both miss cancel, so this error is smaller than the two figures' errors combined."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(d) < 2:
        return float(d.mean()) if len(d) else 0.0, 0.0
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def ndcg_at_k(ranked: np.ndarray, targets: np.ndarray, k: int) -> float:
    """NDCG@K with one relevant item: ``1 / log2(rank + 2)`` (0-based rank), 0 if missed.

    The ideal DCG is 1 (the item at rank 0), so no further normalisation is needed.
    """
    r = _hit_rank(ranked, targets, k)
    if not len(r):
        return 0.0
    gain = np.where(r >= 0, 1.0 / np.log2(np.maximum(r, 0) + 2.0), 0.0)
    return float(gain.mean())


def _category_rows(ranked: np.ndarray, categories: np.ndarray, k: int) -> list[np.ndarray]:
    top = _top(ranked, k)
    categories = np.asarray(categories)
    return [categories[row[row != INVALID]] for row in top]


def concentration_at_k(ranked: np.ndarray, categories: np.ndarray, k: int) -> float:
    """TopK list Concentration (§5.2.3): per user, the share of the valid entries of the top
    ``k`` that fall in the list's most frequent category; mean over users with at least one
    valid entry. Lower = more diverse. ``categories[item]`` is an integer category code."""
    vals = [np.unique(c, return_counts=True)[1].max() / len(c)
            for c in _category_rows(ranked, categories, k) if len(c)]
    return float(np.mean(vals)) if vals else 0.0


def abundance_at_k(ranked: np.ndarray, categories: np.ndarray, k: int) -> float:
    """TopK list Abundance (§5.2.3): mean number of distinct categories in the top ``k``
    (invalid entries ignored; a list with none counts 0). Higher = more diverse."""
    rows = _category_rows(ranked, categories, k)
    return float(np.mean([len(np.unique(c)) for c in rows])) if rows else 0.0


def ltrr_at_k(ranked: np.ndarray, labels: np.ndarray, k: int) -> float:
    """LTRR@K (§5.2.3): Recall@K of the list against the labels of *another* retrieval
    branch, i.e. per user ``|top_k(ranked) ∩ L| / |L|`` with ``L`` the valid entries of that
    user's row of ``labels`` (users with no label are skipped), averaged.

    The paper's labels come from the production LTR retrieval branches, which we do not
    have; the evaluation harness uses the item-CF co-visitation branch
    (:class:`~leadre_model.eval.baselines.ItemCF`, fitted on the training targets) and
    passes its top ``k`` for the same history as ``labels``, so LTRR@K reads as "the share
    of the other branch's top ``k`` that this branch also retrieves".
    """
    top = _top(ranked, k)
    labels = np.asarray(labels)
    if len(labels) != len(top):
        raise ValueError(f"{len(top)} lists but {len(labels)} label rows")
    vals = []
    for row, lab in zip(top, labels):
        lab = set(lab[lab != INVALID].tolist())
        if lab:
            vals.append(len(lab.intersection(row[row != INVALID].tolist())) / len(lab))
    return float(np.mean(vals)) if vals else 0.0


def business_value_at_k(ranked: np.ndarray, ecpm: np.ndarray, k: int) -> float:
    """Business value@K: per user, the mean eCPM of the valid ads in the top ``k``; mean over
    users with at least one valid ad."""
    ecpm = np.asarray(ecpm, dtype=np.float64)
    top = _top(ranked, k)
    vals = [ecpm[row[row != INVALID]].mean() for row in top if (row != INVALID).any()]
    return float(np.mean(vals)) if vals else 0.0


def invalid_output_rate(outputs: Iterable[Sequence[Hashable]], valid: set | frozenset) -> float:
    """Share of all returned entries that are not in ``valid`` (the real, active ads).

    Counted over the raw outputs of a retriever, before any mapping to integer ids, so a
    made-up or paused ad id counts however the rest of the pipeline would treat it.
    """
    n = bad = 0
    for row in outputs:
        n += len(row)
        bad += sum(1 for x in row if x not in valid)
    return bad / n if n else 0.0


def dice(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """Dice similarity (eq. 7): ``2|A ∩ B| / (|A| + |B|)`` over the lists as sets; two empty
    lists are identical (1.0)."""
    sa, sb = set(a), set(b)
    if not sa and not sb:
        return 1.0
    return 2 * len(sa & sb) / (len(sa) + len(sb))


def mean_dice(lists_a: Sequence[Iterable[Hashable]], lists_b: Sequence[Iterable[Hashable]]) -> float:
    """Mean Dice over paired lists (Fig. 5: full-history list vs truncated-history list)."""
    if len(lists_a) != len(lists_b):
        raise ValueError(f"{len(lists_a)} lists vs {len(lists_b)} lists")
    return float(np.mean([dice(a, b) for a, b in zip(lists_a, lists_b)])) if lists_a else 0.0


__all__ = [
    "INVALID",
    "abundance_at_k",
    "business_value_at_k",
    "concentration_at_k",
    "dice",
    "hit_rate_at_k",
    "invalid_output_rate",
    "ltrr_at_k",
    "mean_dice",
    "ndcg_at_k",
    "recall_at_k",
]
