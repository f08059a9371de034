"""The S-ID trie as tensors on the decoding device: the constrained decoder's view of it.

Per edge level l the trie's CSR arrays (:meth:`SidTrie.children_csr`) are copied once to the
device: ``start`` (node → first child), each child's ``code`` and ``active`` flag, and the
level's largest fan-out ``D_l``. A step of the beam search then asks, for R beams at once,
for their children as a padded (R, D_l) block — one gather, no host round trip, and shapes
that depend only on the batch and the level. Scoring reads the model's log-probabilities at
those children's tokens only: at the narrow lower levels of a large catalog D_l is a few
codes, not the K_l of a full mask.

Built through :meth:`SidTrie.memo`, so a trie that does not change is copied once per
device, and any pause, resume, add or remove makes the next search copy it afresh.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from leadre_model.index.trie import SidTrie


@dataclass(frozen=True)
class Children:
    """Children of R beams, padded to the level's fan-out D: ``codes`` (R, D) int64 edge
    labels, ``nodes`` (R, D) int64 child node ids (0 where padding), ``valid`` (R, D) bool
    (a real child with an active ad below)."""

    codes: torch.Tensor
    nodes: torch.Tensor
    valid: torch.Tensor


@dataclass(frozen=True)
class TrieTensors:
    """A :class:`SidTrie` snapshot on one device (build with :func:`trie_tensors`)."""

    starts: tuple[torch.Tensor, ...]  # [l] (n_l + 2,) int64; the last node is a sentinel
    codes: tuple[torch.Tensor, ...]  # [l] (n_{l+1},) int64
    active: tuple[torch.Tensor, ...]  # [l] (n_{l+1},) bool
    fanout: tuple[int, ...]  # [l] D_l = most children of any level-l node
    leaf_rows: torch.Tensor  # (n_L,) int64 index row of each leaf
    level_sizes: tuple[int, ...]

    @classmethod
    def build(cls, trie: SidTrie, device: torch.device) -> TrieTensors:
        starts, codes, active, fanout = [], [], [], []
        for level in range(trie.num_levels):
            start, code, act = trie.children_csr(level)
            if len(code) == 0:  # an empty trie: one inactive dummy child keeps gathers legal
                code, act = np.zeros(1, np.int32), np.zeros(1, bool)
            starts.append(torch.as_tensor(np.array(start, np.int64), device=device))
            codes.append(torch.as_tensor(code.astype(np.int64), device=device))
            active.append(torch.as_tensor(np.array(act), device=device))
            fanout.append(max(int(np.diff(start).max(initial=0)), 1))
        rows = np.asarray(trie.leaf_rows, np.int64)
        return cls(tuple(starts), tuple(codes), tuple(active), tuple(fanout),
                   torch.as_tensor(rows if len(rows) else np.full(1, -1, np.int64), device=device),
                   trie.level_sizes)

    @property
    def num_levels(self) -> int:
        return len(self.starts)

    def children(self, level: int, nodes: torch.Tensor) -> Children:
        """The children of ``nodes`` (R,) at ``level``; nodes < 0 (dead beams) have none."""
        start = self.starts[level]
        safe = torch.where(nodes < 0, len(start) - 2, nodes)
        first = start[safe]
        count = start[safe + 1] - first
        slot = torch.arange(self.fanout[level], device=nodes.device)
        real = slot < count[:, None]
        child = torch.where(real, first[:, None] + slot, 0)
        return Children(self.codes[level][child], child, real & self.active[level][child])

    def node_flags(self, level: int, nodes: np.ndarray) -> torch.Tensor:
        """(n_{level+1},) bool on the device, True at ``nodes`` (level+1 node ids)."""
        flags = torch.zeros(len(self.codes[level]), dtype=torch.bool, device=self.leaf_rows.device)
        if len(nodes):
            flags[torch.as_tensor(np.asarray(nodes, np.int64), device=flags.device)] = True
        return flags


def trie_tensors(trie: SidTrie, device: torch.device) -> TrieTensors:
    """``trie`` on ``device``, copied once until the trie changes (:meth:`SidTrie.memo`)."""
    return trie.memo(("tensors", str(device)), lambda t: TrieTensors.build(t, device))


def full_grid_children(level_size: int, rows: int, device: torch.device) -> Children:
    """Every code of a level as each beam's children: the unconstrained search."""
    codes = torch.arange(level_size, device=device).expand(rows, level_size)
    return Children(codes, codes, torch.ones(rows, level_size, dtype=torch.bool, device=device))


def sorted_exclusions(exclude: Sequence[Collection[int]], device: torch.device) -> torch.Tensor | None:
    """Per prompt, its excluded index rows sorted and padded with -1 on the left (n, E)
    int64, for :func:`excluded`; None when no prompt excludes anything."""
    width = max((len(e) for e in exclude), default=0)
    if width == 0:
        return None
    out = np.full((len(exclude), width), -1, dtype=np.int64)
    for p, rows in enumerate(exclude):
        if rows:
            r = np.sort(np.fromiter(rows, np.int64))
            out[p, width - len(r):] = r
    return torch.as_tensor(out, device=device)


def excluded(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(n, M) bool: ``rows`` (n, M) found in their prompt's sorted row of ``table`` (n, E)."""
    pos = torch.searchsorted(table, rows).clamp(max=table.shape[1] - 1)
    return table.gather(1, pos) == rows


__all__ = ["Children", "TrieTensors", "excluded", "full_grid_children", "sorted_exclusions",
           "trie_tensors"]
