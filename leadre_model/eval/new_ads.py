"""New ads — what ID-based retrieval cannot do — and the value of a second branch.

Protocol (``bench/quality_bench.py``): a seeded share of the catalog is *new*: left out of
the index the model is trained on, and of every baseline's training data, then given S-IDs
afterwards by the trained RQ-VAE (:func:`leadre_model.index.build.add_ads`, the code behind
``leadre index add``; no retraining). At test time the new ads are in the trie, so LEADRE can
generate them from their content-derived S-IDs; item-id models have never seen their ids.
:func:`hold_out` restricts a split to what the baselines may know; :func:`new_ad_recall` is
recall on the test targets that are new ads; :class:`MergedRetriever` interleaves two
branches (LEADRE beside item-CF, as the paper serves it) to measure what the second adds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence

import numpy as np

from leadre_model.eval.harness import EvalCase, EvalData, Retriever


def pick_new_ads(ad_ids: Sequence[str], share: float, seed: int) -> frozenset[str]:
    """A seeded ``share`` of the catalog."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    n = max(1, round(len(ad_ids) * share))
    pick = np.random.default_rng(seed).choice(len(ad_ids), n, replace=False)
    return frozenset(ad_ids[i] for i in pick)


def hold_out(data: EvalData, new: Collection[str]) -> EvalData:
    """The split as the baselines may know it: new ads leave every training and validation
    sequence (a validation pair whose target is new is dropped) and the item-id histories
    of test users; test targets stay, so every retriever is scored on the same cases."""
    new_ints = {data.index[a] for a in new if a in data.index}

    def keep(seq: Sequence[int]) -> list[int]:
        return [i for i in seq if i not in new_ints]

    valid = [(keep(h), t) for h, t in zip(data.valid_histories, data.valid_targets)
             if t not in new_ints]
    known = {a: i for a, i in data.index.items() if i not in new_ints}
    return dataclasses.replace(
        data, train_sequences=[keep(s) for s in data.train_sequences],
        valid_histories=[h for h, _ in valid], valid_targets=[t for _, t in valid],
        test_histories=[keep(h) for h in data.test_histories], known=known,
        stats={**data.stats, "new_ads": len(new_ints),
               "test_targets_new": int(np.isin(data.test_targets, list(new_ints)).sum())})


def new_ad_mask(data: EvalData, new: Collection[str]) -> np.ndarray:
    """Per test case: is its target a new ad?"""
    new_ints = np.array(sorted(data.index[a] for a in new if a in data.index), dtype=np.int64)
    return np.isin(data.test_targets, new_ints)


def new_ad_recall(out: Sequence[Sequence[str]], data: EvalData, new: Collection[str],
                  k: int = 10) -> tuple[float, int]:
    """(Recall@k on the test cases whose target is a new ad, number of such cases)."""
    mask = new_ad_mask(data, new)
    hits = [data.ad_ids[t] in row[:k] for t, row, m in zip(data.test_targets, out, mask) if m]
    return (float(np.mean(hits)) if hits else 0.0), len(hits)


class MergedRetriever:
    """Two branches interleaved, deduplicated: a, b, a, b, … (the first branch leads)."""

    def __init__(self, name: str, first: Retriever, second: Retriever) -> None:
        self.name, self.first, self.second = name, first, second

    def recommend(self, histories: Sequence[EvalCase], k: int) -> list[list[str]]:
        a, b = self.first.recommend(histories, k), self.second.recommend(histories, k)
        out = []
        for ra, rb in zip(a, b, strict=True):
            merged: list[str] = []
            for pair in zip(ra + [None] * (k - len(ra)), rb + [None] * (k - len(rb))):
                merged += [x for x in pair if x is not None and x not in merged]
            out.append(merged[:k])
        return out


__all__ = ["MergedRetriever", "hold_out", "new_ad_mask", "new_ad_recall", "pick_new_ads"]
