"""The live index: an S-ID index and its trie kept in step while catalog events (add,
pause, resume) are applied, without retraining or reloading anything.

One implementation for every holder of a changing catalog: an inference instance's bundle
(the served model's trie), the nearline worker's prompt source (new ads render as their
S-IDs) and ``add_ads`` (the offline index on disk, whose re-imported ads pause or resume).
``CatalogEvent`` is also the wire form of a change on the serving side's catalog stream
(its contracts module re-exports it).

Torch-free (numpy and pydantic), so a process that only builds prompts stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from leadre_model.index.trie import SidTrie

if TYPE_CHECKING:
    from leadre_model.index.sid_index import SidIndex


class CatalogOp(StrEnum):
    ADD = "add"  # a new ad with its S-ID codes
    PAUSE = "pause"
    RESUME = "resume"


class CatalogEvent(BaseModel):
    """One catalog change, appended to the catalog stream as flat string fields
    (``op``, ``ad_id``, and for ``add`` ``codes`` = space-separated ints)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: CatalogOp
    ad_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")
    codes: tuple[int, ...] | None = None

    def to_fields(self) -> dict[str, str]:
        fields = {"op": self.op.value, "ad_id": self.ad_id}
        if self.codes is not None:
            fields["codes"] = " ".join(map(str, self.codes))
        return fields

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> CatalogEvent:
        codes = fields.get("codes")
        return cls(op=fields.get("op"), ad_id=fields.get("ad_id"),
                   codes=tuple(int(c) for c in codes.split()) if codes else None)


@dataclass
class Applied:
    """What :meth:`LiveIndex.apply` did: the events it skipped with the reason, the ads
    whose state changed (row, active now) in order, and the rows it added."""

    skipped: list[tuple[CatalogEvent, str]] = field(default_factory=list)
    toggled: list[tuple[int, bool]] = field(default_factory=list)
    added: list[int] = field(default_factory=list)


class LiveIndex:
    """Index + trie; :meth:`apply` catalog events to both, in place (objects that hold the
    same index or trie, e.g. a :class:`~leadre_model.llm.retriever.SidRetriever`, see the
    changes). Not thread-safe: a holder that searches while applying takes a lock."""

    def __init__(self, index: SidIndex, trie: SidTrie | None = None,
                 vocabulary: Sequence[int] | None = None) -> None:
        """``vocabulary``: the level sizes an added ad's codes must fit (a served model's
        S-ID vocabulary); None: any codes of the right length, the trie's levels grow."""
        self.index = index
        self.trie = trie if trie is not None else index.build_trie()
        self.vocabulary = None if vocabulary is None else [int(k) for k in vocabulary]

    @classmethod
    def load(cls, index_dir: str | Path, fixed: bool = False) -> LiveIndex:
        """The index in ``index_dir`` with its saved trie; ``fixed``: added codes must fit
        its level sizes (the vocabulary of a model trained on it)."""
        from leadre_model.index.sid_index import load_index, load_trie

        index = load_index(Path(index_dir))
        return cls(index, load_trie(Path(index_dir)), index.level_sizes if fixed else None)

    def apply(self, events: Sequence[CatalogEvent]) -> Applied:
        """Apply events in order (consecutive adds as one trie rebuild). An add of an ad
        already indexed with the same codes, or repeated in the batch, is a no-op; a pause
        or resume that does not change the ad's state is one too."""
        done = Applied()
        adds: list[CatalogEvent] = []
        for ev in events:
            if ev.op is CatalogOp.ADD:
                adds.append(ev)
                continue
            self._add(adds, done)  # keep the stream's order: adds before later pauses
            adds = []
            if ev.ad_id not in self.index:
                done.skipped.append((ev, "unknown ad"))
                continue
            row, on = self.index.row_of(ev.ad_id), ev.op is CatalogOp.RESUME
            if bool(self.index.active[row]) != on:
                (self.trie.resume if on else self.trie.pause)(np.array([row]))
                self.index.active[row] = on
                done.toggled.append((row, on))
        self._add(adds, done)
        return done

    def add(self, ad_ids: Sequence[str], codes: np.ndarray,
            active: np.ndarray | None = None) -> list[int]:
        """Append ads (rows after the existing ones) to the trie and the index; ValueError
        (nothing changed) for an id already indexed or an S-ID already taken. Returns the
        rows."""
        codes = np.asarray(codes, np.int64).reshape(len(ad_ids), -1)
        on = np.ones(len(ad_ids), bool) if active is None else np.asarray(active, bool)
        if len(set(ad_ids)) != len(ad_ids) or any(a in self.index for a in ad_ids):
            raise ValueError("duplicate ad ids in index")
        rows = np.arange(len(self.index), len(self.index) + len(ad_ids), dtype=np.int64)
        self.trie.add(codes, rows, active=on)
        self.index.extend(ad_ids, codes, on)
        return rows.tolist()

    def _add(self, adds: list[CatalogEvent], done: Applied) -> None:
        fresh: dict[str, CatalogEvent] = {}
        for ev in adds:
            why = self._add_problem(ev)
            if why:
                done.skipped.append((ev, why))
            elif ev.ad_id not in self.index and ev.ad_id not in fresh:
                fresh[ev.ad_id] = ev
        if not fresh:
            return
        try:
            done.added += self._insert(list(fresh.values()))
        except ValueError:  # an S-ID already taken: find which, add the others
            for ev in fresh.values():
                try:
                    done.added += self._insert([ev])
                except ValueError as exc:
                    done.skipped.append((ev, str(exc)))

    def _insert(self, adds: list[CatalogEvent]) -> list[int]:
        return self.add([ev.ad_id for ev in adds], np.array([ev.codes for ev in adds], np.int64))

    def _add_problem(self, ev: CatalogEvent) -> str:
        codes = ev.codes
        if not codes:
            return "add without codes"
        if ev.ad_id in self.index:  # e.g. replayed onto a version that indexed it since
            known = tuple(int(c) for c in self.index.codes[self.index.row_of(ev.ad_id)])
            return "" if known == codes else f"already indexed with other codes {list(known)}"
        sizes = self.vocabulary
        if sizes is None:
            levels = self.index.codes.shape[1]
            return "" if len(codes) == levels else f"codes {list(codes)} are not {levels} levels"
        if len(codes) != len(sizes) or any(not 0 <= c < k for c, k in zip(codes, sizes)):
            return (f"codes {list(codes)} do not fit the model's S-ID vocabulary "
                    f"(level sizes {sizes})")
        return ""


__all__ = ["Applied", "CatalogEvent", "CatalogOp", "LiveIndex"]
