"""Sequence augmentation of the dense ``seq`` rows: random ad deletion, drawn anew for
every batch.

A ``seq`` row is a user's whole training history, fed the same way every epoch; a model
with its own vector per ad (the dense head's ``id_input``) can then memorise each user's
exact contexts, and validation (whose prompt *is* a training context plus one position)
overstates the test. Deleting a random subset of the row's ad behaviours (their
``<|ad|>``, S-ID and conversion tokens, with their loss) shows every target under
contexts the model has not seen verbatim, as the item-crop/mask augmentations of CL4SRec
(arXiv 2010.14395) do for SASRec. The row's last labelled ad is never deleted, so every
row keeps a target.

The collator works on token ids (TRL's rows carry no behaviour boundaries): a behaviour
starts at a ``<gap_N>`` token, or at ``<|ad|>`` / a content action not preceded by one,
after the row's ``<|seq|>``; a merged conversion (``<|conv|>`` alone) belongs to the ad
before it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from leadre_model.prompts.compact import AD, CONTENT_ACTIONS, GAP_BOUNDS, SEQUENCE


@dataclass
class AdDeletionCollator:
    """Wraps a collator of ``{"input_ids", "labels"}`` rows: before collating, each ad
    behaviour of a row but its last labelled one is deleted with probability ``p``."""

    base: Any
    ad: int
    seq: int
    starts: frozenset[int]  # <|ad|> and content action ids
    gaps: frozenset[int]  # <gap_N> ids
    p: float
    seed: int = 0
    _rng: random.Random | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_tokenizer(cls, base: Any, tokenizer: PreTrainedTokenizerBase, p: float,
                      seed: int = 0) -> AdDeletionCollator:
        def ids(tokens: Sequence[str]) -> frozenset[int]:
            found = tokenizer.convert_tokens_to_ids(list(tokens))
            return frozenset(i for i in found if i is not None and i != tokenizer.unk_token_id)

        ad, seq = tokenizer.convert_tokens_to_ids([AD, SEQUENCE])
        return cls(base, ad, seq, ids([AD, *CONTENT_ACTIONS.values()]),
                   ids([f"<gap_{i}>" for i in range(len(GAP_BOUNDS) + 1)]), p, seed)

    def _random(self) -> random.Random:
        if self._rng is None:  # per dataloader worker: each its own stream
            info = torch.utils.data.get_worker_info()
            self._rng = random.Random(self.seed * 1_000_003 + (info.id + 1 if info else 0))
        return self._rng

    def spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(start, end) of every ad behaviour of a row."""
        try:
            i = list(ids).index(self.seq) + 1
        except ValueError:
            return []
        bounds = [j for j in range(i, len(ids))
                  if ids[j] in self.gaps or (ids[j] in self.starts and ids[j - 1] not in self.gaps)]
        ends = [*bounds[1:], len(ids)]
        return [(s, e) for s, e in zip(bounds, ends) if self.ad in ids[s:e]]

    def kept(self, ids: Sequence[int], labels: Sequence[int]) -> list[int]:
        """Positions of the row left after one random draw of deletions."""
        spans = self.spans(ids)
        labelled = [k for k, (s, e) in enumerate(spans) if any(x != -100 for x in labels[s:e])]
        keep_last = labelled[-1] if labelled else len(spans) - 1
        rng = self._random()
        gone: set[int] = set()
        for k, (s, e) in enumerate(spans):
            if k != keep_last and rng.random() < self.p:
                gone.update(range(s, e))
        return [j for j in range(len(ids)) if j not in gone]

    def augment(self, row: Mapping[str, Any]) -> dict[str, Any]:
        ids, labels = list(row["input_ids"]), list(row["labels"])
        keep = self.kept(ids, labels)
        if len(keep) == len(ids):
            return dict(row)
        return {**row, "input_ids": [ids[j] for j in keep], "labels": [labels[j] for j in keep]}

    def __call__(self, examples: list[Mapping[str, Any]]) -> dict[str, Any]:
        return self.base([self.augment(r) for r in examples])
