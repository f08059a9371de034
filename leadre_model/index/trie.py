"""The semantic-ID trie (paper §3.3, Algorithm 1) as compact numpy arrays.

Nodes of depth ``l`` (level 0 = root, level L = leaves) are numbered in lexicographic
order of their prefixes, so a beam's state is one int and every query is a few numpy
calls over the whole batch. Per edge level ``l`` (level l → l+1) the trie keeps
``key[l]`` = sorted ``parent * K_l + code`` of each level-l+1 node (a batch of edges is
one ``np.searchsorted``), CSR offsets ``start[l]`` (node n's children are the contiguous
``start[n]:start[n+1]``, by code; one extra childless sentinel node takes dead beams, -1)
and the int32 edge labels ``code[l]``; per level, ``count[l]`` = active leaves below each
node. Pausing an ad decrements its L+1 ancestors' counts, so a prefix whose whole subtree
is paused is no longer offered. Wide (top) levels also keep a dense ``(n_l + 1, K_l)``
mask of active children, so ``valid_mask`` there is one row gather.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from leadre_model.errors import BadInputError

FORMAT = "leadre-sid-trie"
FORMAT_VERSION = 1
# A level gets a dense mask when it has fewer cells than this and is >= 1/4 full.
DENSE_MAX_CELLS = 1 << 24
_MAX_ROW = np.iinfo(np.int32).max
T = TypeVar("T")


class SidTrie:
    """Trie over ads' S-IDs: batched valid next tokens, S-ID → row, pause/resume/add/remove.

    Make one with :meth:`build` or :meth:`load`; the constructor takes the canonical
    arrays (per-level sorted edge keys, leaf rows, leaf active flags) and derives the rest.
    """

    def __init__(self, level_sizes: Sequence[int], keys: Sequence[np.ndarray], leaf_row: np.ndarray,
                 leaf_active: np.ndarray, dense_max_cells: int = DENSE_MAX_CELLS) -> None:
        self._k = tuple(int(k) for k in level_sizes)
        self._dense_max_cells = int(dense_max_cells)
        self._key = [np.ascontiguousarray(k, dtype=np.int64) for k in keys]
        self._leaf_row = np.ascontiguousarray(leaf_row, dtype=np.int32)
        L, sizes = len(self._k), [1] + [len(k) for k in self._key]
        self._code, self._start = [], []
        for lv in range(L):
            parent = self._key[lv] // self._k[lv]
            self._code.append((self._key[lv] - parent * self._k[lv]).astype(np.int32))
            start = np.zeros(sizes[lv] + 2, dtype=np.int64)
            np.cumsum(np.bincount(parent, minlength=sizes[lv]), out=start[1:-1])
            start[-1] = start[-2]
            self._start.append(start)
        # Active counts bottom-up, one reduceat per level (every inner node has a child).
        self._count = [np.zeros(n, np.int32) for n in sizes[:-1]]
        self._count.append(np.asarray(leaf_active, dtype=np.int32))
        for lv in range(L - 1, -1, -1):
            if sizes[lv + 1]:
                below = np.add.reduceat(self._count[lv + 1], self._start[lv][:-2])
                self._count[lv] = below.astype(np.int32)
        # Nodes per level with no active leaf left: while 0, queries skip the active filter.
        self._dead = [int((c == 0).sum()) for c in self._count]
        self._mask: list[np.ndarray | None] = [None] * L
        for lv in range(L):
            cells = sizes[lv] * self._k[lv]
            if cells < self._dense_max_cells and cells <= 4 * sizes[lv + 1]:
                mask = np.zeros((sizes[lv] + 1, self._k[lv]), dtype=bool)  # + sentinel row
                on = self._count[lv + 1] > 0
                mask[self._key[lv][on] // self._k[lv], self._code[lv][on]] = True
                self._mask[lv] = mask
        # row → leaf through a sorted copy of the rows: any row ids, 8 bytes per ad.
        order = np.argsort(self._leaf_row, kind="stable")
        self._row_sorted, self._row_leaf = self._leaf_row[order], order.astype(np.int32)
        # Derived views (e.g. the decoder's device tensors), dropped on every change.
        self._memo: dict[Hashable, Any] = {}

    @classmethod
    def build(cls, codes: np.ndarray, rows: np.ndarray, active: np.ndarray | None = None,
              level_sizes: Sequence[int] | None = None,
              dense_max_cells: int = DENSE_MAX_CELLS) -> SidTrie:
        """Build from ``codes`` (N, L) ints and ``rows`` (N,) ints (+ ``active`` (N,) bool).

        ``level_sizes`` (K_l, the width of ``valid_mask``) defaults to max code + 1 per
        level. ValueError on a wrong shape or dtype, a code < 0 or >= K_l, a row < 0, or
        two ads sharing an S-ID or a row. O(N) after one sort (of packed int64 S-IDs when
        they fit in 63 bits, else ``np.lexsort``).
        """
        codes = _ints("codes", codes, None)
        n, L = codes.shape
        rows = _ints("rows", rows, (n,))
        active = np.ones(n, bool) if active is None else np.asarray(active, dtype=bool)
        if active.shape != (n,):
            raise ValueError(f"active must have shape ({n},), got {active.shape}")
        top = codes.max(axis=0, initial=0)
        sizes = [int(t) + 1 for t in top] if level_sizes is None else [int(k) for k in level_sizes]
        if len(sizes) != L or min(sizes) < 1 or max(sizes) * max(n, 1) >= 1 << 62:
            raise ValueError(f"level_sizes {sizes} do not fit {L} levels (or overflow int64 keys)")
        for lv in range(L):
            bad = np.flatnonzero((codes[:, lv] < 0) | (codes[:, lv] >= sizes[lv]))[:5]
            if len(bad):
                what = "negative" if codes[bad[0], lv] < 0 else f">= level size {sizes[lv]}"
                raise ValueError(f"level {lv} has {what} codes, e.g. S-IDs "
                                 + ", ".join(str(codes[i].tolist()) for i in bad))
        if n and (rows.min() < 0 or rows.max() > _MAX_ROW):
            raise ValueError(f"rows must be in [0, {_MAX_ROW}], got {rows.min()}..{rows.max()}")
        srt = np.sort(rows)
        dup_rows = np.unique(srt[1:][srt[1:] == srt[:-1]])
        del srt  # peak memory: the 1M-ad build stays well under its RSS budget
        if len(dup_rows):
            raise ValueError(f"duplicate rows: {dup_rows[:10].tolist()} ({len(dup_rows)} in all)")
        order = _lex_order(codes, sizes)
        # Walk the sorted leaves level by level: a new node starts wherever the prefix
        # changes; its parent is the node of the previous level at the same position.
        new = np.zeros(n, dtype=bool)
        new[:1] = True
        node = np.zeros(n, dtype=np.int64)
        keys = []
        for lv in range(L):
            col = codes[order, lv]
            new[1:] |= col[1:] != col[:-1]
            first = np.flatnonzero(new)
            keys.append(node[first] * sizes[lv] + col[first])
            node = np.cumsum(new) - 1 if lv + 1 < L else node
        dup = np.flatnonzero(~new)
        if len(dup):
            pairs = ", ".join(f"{codes[order[i]].tolist()} (rows {rows[order[i - 1]]} and "
                              f"{rows[order[i]]})" for i in dup[:5])
            raise ValueError(f"duplicate S-IDs: {pairs} ({len(dup)} in all)")
        return cls(sizes, keys, rows[order], active[order], dense_max_cells)

    @property
    def num_levels(self) -> int:
        return len(self._k)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return self._k

    def __len__(self) -> int:
        return len(self._leaf_row)

    @property
    def num_active(self) -> int:
        return int(self._count[0][0])

    def num_nodes(self, level: int) -> int:
        return len(self._count[self._level(level, leaf_ok=True)])

    def root_state(self, batch_size: int = 1) -> np.ndarray:
        """Node states (B,) of ``batch_size`` beams at the root (level 0)."""
        return np.zeros(batch_size, dtype=np.int64)

    def __repr__(self) -> str:
        nodes = [self.num_nodes(lv) for lv in range(self.num_levels + 1)]
        return f"SidTrie(ads={len(self)}, active={self.num_active}, K={list(self._k)}, nodes={nodes})"

    def valid_next(self, level: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Active children of B nodes at ``level``, CSR-like: ``(offsets (B+1,) int64,
        codes int32, child_nodes int32)``; node b's are ``codes[offsets[b]:offsets[b+1]]``,
        by increasing code (int32: on wide levels the output is the cost). Nodes < 0
        (dead beams) have none."""
        offs, idx = self._active_children(self._level(level), nodes)
        return offs, np.take(self._code[level], idx), idx

    def valid_mask(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """(B, K_level) bool: True where the code leads to at least one active ad."""
        nodes = self._nodes(self._level(level), nodes)
        mask = self._mask[level]
        if mask is not None:
            return mask[np.where(nodes < 0, len(mask) - 1, nodes)]
        offs, idx = self._active_children(level, nodes)
        out = np.zeros((len(nodes), self._k[level]), dtype=bool)
        out[np.repeat(np.arange(len(nodes)), np.diff(offs)), self._code[level][idx]] = True
        return out

    def step(self, level: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Children (B,) at ``level + 1`` reached by ``codes`` from ``nodes``; -1 where the
        edge does not exist, leads only to paused ads, or the node is < 0."""
        return self._active(level + 1, self._edge(self._level(level), nodes, codes))

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """Rows (B,) int64 of the ads with S-IDs ``codes`` (B, L); -1 if unknown or paused."""
        codes = self._sids(codes)
        leaf = np.zeros(len(codes), dtype=np.int64)
        for lv in range(self.num_levels):  # structural walk; activity checked once, at the leaf
            leaf = self._edge(lv, leaf, codes[:, lv])
        return self.ad_rows(self._active(self.num_levels, leaf))

    def contains_prefix(self, prefix: Sequence[int]) -> bool:
        """True when at least one active ad's S-ID starts with ``prefix``."""
        if len(prefix) > self.num_levels:
            return False
        node = self.root_state()
        for lv, c in enumerate(prefix):
            node = self._edge(lv, node, np.array([c]))
        return bool(self._active(len(prefix), node)[0] >= 0)

    def ad_row(self, leaf: int) -> int:
        """Row of the ad at ``leaf`` (a level-L node), paused or not."""
        if not 0 <= leaf < len(self):
            raise IndexError(f"leaf {leaf} out of range [0, {len(self)})")
        return int(self._leaf_row[leaf])

    def ad_rows(self, leaves: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`ad_row`, int64; -1 for leaves < 0 (dead beams)."""
        leaves = self._nodes(self.num_levels, leaves)
        rows = np.full(len(leaves), -1, dtype=np.int64)
        rows[leaves >= 0] = self._leaf_row[leaves[leaves >= 0]]
        return rows

    def prefix_codes(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """(B, level) codes of the prefixes that ``nodes`` at ``level`` stand for."""
        nodes = self._nodes(self._level(level, leaf_ok=True), nodes)
        if (nodes < 0).any():
            raise IndexError("prefix_codes needs existing nodes, got -1")
        out = np.empty((len(nodes), level), dtype=np.int64)
        for lv in range(level - 1, -1, -1):
            out[:, lv] = self._code[lv][nodes]
            nodes = self._key[lv][nodes] // self._k[lv]
        return out

    def children_csr(self, level: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The edges of ``level`` as read-only CSR arrays: ``start`` (n_level + 2,) int64
        (node n's children are the level+1 nodes ``start[n]:start[n+1]``, by code; the last
        node is a childless sentinel for dead beams); per level+1 node, its int32 edge
        label ``code`` and ``active`` (bool: it leads to an active ad)."""
        level = self._level(level)
        views = (self._start[level].view(), self._code[level].view(), self._count[level + 1] > 0)
        for v in views:
            v.flags.writeable = False
        return views

    @property
    def leaf_rows(self) -> np.ndarray:
        """(N,) int32 index row of every leaf (read-only view), paused or not."""
        v = self._leaf_row.view()
        v.flags.writeable = False
        return v

    def memo(self, key: Hashable, build: Callable[[SidTrie], T]) -> T:
        """``build(self)``, kept under ``key`` until the trie next changes (pause, resume,
        add, remove): for views derived from it, such as the decoder's device tensors."""
        if key not in self._memo:
            self._memo[key] = build(self)
        return self._memo[key]

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes (N, L), rows (N,), active (N,)) of every ad, in S-ID order."""
        codes = self.prefix_codes(self.num_levels, np.arange(len(self)))
        return codes, self._leaf_row.astype(np.int64), self._count[-1] > 0

    def pause(self, rows: np.ndarray) -> None:
        """Hide ads from every query, in place, O(L) per ad (node states stay valid).
        Unknown rows: KeyError."""
        self._set_active(rows, False)

    def resume(self, rows: np.ndarray) -> None:
        """Undo :meth:`pause`, in place, O(L) per ad. Unknown rows: KeyError."""
        self._set_active(rows, True)

    def add(self, codes: np.ndarray, rows: np.ndarray, active: np.ndarray | None = None) -> None:
        """Add new ads (the checks of :meth:`build`, also against the ads already here).

        Rebuilds the level arrays, vectorised: O(N) when S-IDs pack into 63 bits (the sort
        meets one long sorted run), else O(N log N). Existing ads keep their paused state.
        A level grows (``valid_mask`` widens) only when a new code does not fit in it.
        Node states taken before an add or remove are stale (nodes are renumbered).
        """
        codes, rows = self._sids(codes), np.asarray(rows).reshape(-1)
        if len(codes) == 0 and len(rows) == 0:
            return
        old_codes, old_rows, old_active = self.to_arrays()
        new_active = np.ones(len(codes), bool) if active is None else np.asarray(active, bool)
        sizes = [max(k, int(c) + 1) for k, c in zip(self._k, codes.max(axis=0, initial=0))]
        self.__dict__.update(SidTrie.build(
            np.concatenate([old_codes, codes]), np.concatenate([old_rows, rows]),
            np.concatenate([old_active, new_active.reshape(-1)]), sizes, self._dense_max_cells
        ).__dict__)

    def remove(self, rows: np.ndarray) -> None:
        """Delete ads for good (their S-IDs can be reused): an O(N) rebuild, so node states
        taken before are stale. Unknown rows: KeyError."""
        keep = np.ones(len(self), dtype=bool)
        keep[self._leaves_of_rows(rows)] = False
        codes, leaf_rows, active = self.to_arrays()
        self.__dict__.update(SidTrie.build(
            codes[keep], leaf_rows[keep], active[keep], self._k, self._dense_max_cells).__dict__)

    def save(self, path: str | Path) -> None:
        """One ``.npz`` of plain arrays (loads with ``allow_pickle=False``), written to a
        temp file and renamed, so a reader never sees half a trie."""
        path = Path(path)
        arrays = {
            "format": np.array(FORMAT),
            "format_version": np.array(FORMAT_VERSION),
            "level_sizes": np.array(self._k, dtype=np.int64),
            "dense_max_cells": np.array(self._dense_max_cells, dtype=np.int64),
            "leaf_row": self._leaf_row,
            "leaf_active": self._count[-1] > 0,
            **{f"key_{lv}": k for lv, k in enumerate(self._key)},
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> SidTrie:
        """Read a trie written by :meth:`save`; ValueError for another format or a corrupt file."""
        with np.load(path, allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != FORMAT:
                raise BadInputError(f"{path}: not a SidTrie file")
            if int(z["format_version"]) != FORMAT_VERSION:
                raise BadInputError(f"{path}: trie format {int(z['format_version'])}, "
                                    f"this code reads {FORMAT_VERSION}")
            try:
                sizes = [int(k) for k in z["level_sizes"]]
                keys = [z[f"key_{lv}"] for lv in range(len(sizes))]
                leaf_row, leaf_active = z["leaf_row"], z["leaf_active"]
                dense = int(z["dense_max_cells"])
            except KeyError as e:
                raise BadInputError(f"{path}: corrupt trie: {e}") from None
        problem = _check_arrays(sizes, keys, leaf_row, leaf_active)
        if problem:
            raise BadInputError(f"{path}: corrupt trie: {problem}")
        return cls(sizes, keys, leaf_row, leaf_active, dense)

    def nbytes(self) -> int:
        """Bytes held in the trie's arrays (its memory cost once loaded)."""
        arrays = [*self._key, *self._code, *self._start, *self._count, self._leaf_row,
                  self._row_sorted, self._row_leaf, *(m for m in self._mask if m is not None)]
        return int(sum(a.nbytes for a in arrays))

    def _sids(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[1] != self.num_levels:
            raise ValueError(f"codes must have shape (B, {self.num_levels}), got {codes.shape}")
        return codes

    def _level(self, level: int, leaf_ok: bool = False) -> int:
        top = self.num_levels + (1 if leaf_ok else 0)
        if not 0 <= level < top:
            raise IndexError(f"level {level} out of range [0, {top})")
        return level

    def _nodes(self, level: int, nodes: np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
        if len(nodes) and nodes.max() >= len(self._count[level]):
            raise IndexError(f"node {nodes.max()} out of range at level {level}")
        return nodes

    def _active(self, level: int, nodes: np.ndarray) -> np.ndarray:
        """``nodes`` with -1 wherever the node has no active leaf below."""
        ok = nodes >= 0
        ok[ok] = self._count[level][nodes[ok]] > 0
        return np.where(ok, nodes, -1)

    def _active_children(self, level: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CSR (offsets int64, child indices int32) of the active children of ``nodes``."""
        nodes = self._nodes(level, nodes)
        start = self._start[level]
        safe = np.where(nodes < 0, len(start) - 2, nodes)  # dead beams → childless sentinel
        # int32 halves the traffic of the flat arrays, which dominate wide levels.
        lo = start[safe].astype(np.int32)
        cnt = start[safe + 1].astype(np.int32) - lo
        offs = np.zeros(len(nodes) + 1, dtype=np.int64)
        np.cumsum(cnt, out=offs[1:])
        # Flat child index: a running count, shifted per segment to that node's first child.
        idx = np.arange(offs[-1], dtype=np.int32) + np.repeat(lo - offs[:-1].astype(np.int32), cnt)
        if self._dead[level + 1]:  # filter only while some node one level down is paused out
            keep = np.take(self._count[level + 1], idx) > 0
            kept = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(keep, out=kept[1:])
            offs, idx = kept[offs], idx[keep]
        return offs, idx

    def _edge(self, level: int, nodes: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Structural child (active or not) via one searchsorted; -1 if absent."""
        nodes = self._nodes(level, nodes)
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if codes.shape != nodes.shape:
            raise ValueError(f"nodes {nodes.shape} and codes {codes.shape} differ in shape")
        k, keys = self._k[level], self._key[level]
        want = nodes * k + codes
        pos = np.minimum(np.searchsorted(keys, want), max(len(keys) - 1, 0))
        ok = (nodes >= 0) & (codes >= 0) & (codes < k) & (len(keys) > 0)
        ok[ok] = keys[pos[ok]] == want[ok]
        return np.where(ok, pos, -1)

    def _leaves_of_rows(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        pos = np.minimum(np.searchsorted(self._row_sorted, rows), max(len(self) - 1, 0))
        found = self._row_sorted[pos] == rows if len(self) else np.zeros(len(rows), bool)
        if not found.all():
            raise KeyError(f"rows not in the trie: {rows[~found][:10].tolist()}")
        return self._row_leaf[pos].astype(np.int64)

    def _set_active(self, rows: np.ndarray, value: bool) -> None:
        leaves = np.unique(self._leaves_of_rows(rows))
        self._memo.clear()
        nodes = leaves[(self._count[-1][leaves] > 0) != value]
        weight = np.ones(len(nodes), dtype=np.int64)  # leaves toggled below each node
        for lv in range(self.num_levels, -1, -1):
            nodes, inverse = np.unique(nodes, return_inverse=True)
            weight = np.bincount(inverse.reshape(-1), weights=weight, minlength=len(nodes))
            count = self._count[lv]
            was_dead = int((count[nodes] == 0).sum())
            count[nodes] += (weight if value else -weight).astype(np.int32)
            self._dead[lv] += int((count[nodes] == 0).sum()) - was_dead
            if lv == 0:
                break
            parent = self._key[lv - 1][nodes] // self._k[lv - 1]
            if (mask := self._mask[lv - 1]) is not None:
                mask[parent, self._code[lv - 1][nodes]] = count[nodes] > 0
            nodes = parent


def _ints(name: str, a: np.ndarray, shape: tuple[int] | None) -> np.ndarray:
    """``a`` as int64, checked: shape (N, L >= 1) when ``shape`` is None, else ``shape``."""
    a = np.asarray(a)
    if (a.ndim != 2 or a.shape[1] < 1) if shape is None else a.shape != shape:
        raise ValueError(f"{name} must have shape {shape or '(N, L)'}, got {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _lex_order(codes: np.ndarray, level_sizes: Sequence[int]) -> np.ndarray:
    """Permutation sorting S-IDs lexicographically."""
    bits = [max(1, (int(k) - 1).bit_length()) for k in level_sizes]
    if sum(bits) > 63:
        return np.lexsort(codes.T[::-1])
    packed = np.zeros(len(codes), dtype=np.int64)
    for lv, b in enumerate(bits):
        packed <<= b
        packed |= codes[:, lv]
    # "stable" is timsort for int64: O(N) on the sorted old ads + a few new ones of add().
    return np.argsort(packed, kind="stable")


def _check_arrays(sizes: list[int], keys: list[np.ndarray], leaf_row: np.ndarray,
                  leaf_active: np.ndarray) -> str:
    """What is wrong with loaded arrays ('' if nothing): a bad file must not become a
    trie that answers wrongly."""
    if not sizes or min(sizes) < 1:
        return f"level sizes {sizes}"
    n_prev = 1
    for lv, (k, key) in enumerate(zip(sizes, keys)):
        if key.ndim != 1 or not np.issubdtype(key.dtype, np.integer):
            return f"key_{lv} is not a 1-d integer array"
        if len(key) and (key[0] < 0 or (np.diff(key) <= 0).any() or key[-1] >= n_prev * k
                         or len(np.unique(key // k)) != n_prev):
            return f"key_{lv} is not strictly increasing with a child for each of {n_prev} nodes"
        n_prev = len(key)
    if leaf_row.shape != (n_prev,) or leaf_active.shape != (n_prev,) or leaf_active.dtype != bool:
        return f"leaf arrays do not fit the {n_prev} leaves"
    if n_prev and (leaf_row.min() < 0 or len(np.unique(leaf_row)) != n_prev):
        return "leaf rows are negative or repeated"
    return ""


__all__ = ["FORMAT_VERSION", "SidTrie"]
