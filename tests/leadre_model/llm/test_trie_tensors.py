"""The decoder's device view of the trie (llm/trie_tensors.py) against the numpy trie it
copies: the same children for every node, dead beams with none, paused subtrees hidden,
and a fresh copy after every change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leadre_model.index.trie import SidTrie
from leadre_model.llm.trie_tensors import (
    TrieTensors,
    excluded,
    full_grid_children,
    sorted_exclusions,
    trie_tensors,
)

SIZES = [5, 6, 4, 3]


@pytest.fixture
def trie() -> SidTrie:
    rng = np.random.default_rng(7)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in SIZES], indexing="ij"), -1).reshape(-1, 4)
    codes = grid[rng.choice(len(grid), 120, replace=False)]
    return SidTrie.build(codes, rng.permutation(1000)[:120], level_sizes=SIZES)


def _as_sets(tt: TrieTensors, level: int, nodes: np.ndarray) -> list[list[tuple[int, int]]]:
    kids = tt.children(level, torch.as_tensor(nodes))
    out = []
    for codes, child, valid in zip(kids.codes.tolist(), kids.nodes.tolist(), kids.valid.tolist()):
        out.append([(c, n) for c, n, v in zip(codes, child, valid) if v])
    return out


def _expected(trie: SidTrie, level: int, nodes: np.ndarray) -> list[list[tuple[int, int]]]:
    offs, codes, child = trie.valid_next(level, nodes)
    return [list(zip(codes[offs[b]:offs[b + 1]].tolist(), child[offs[b]:offs[b + 1]].tolist()))
            for b in range(len(nodes))]


def _check_all_levels(trie: SidTrie, tt: TrieTensors) -> None:
    for level in range(trie.num_levels):
        nodes = np.r_[np.arange(trie.num_nodes(level)), -1, 0]  # every node, a dead beam, a repeat
        assert _as_sets(tt, level, nodes) == _expected(trie, level, nodes)
        assert tt.fanout[level] <= SIZES[level]


def test_children_equal_the_numpy_trie(trie: SidTrie) -> None:
    _check_all_levels(trie, TrieTensors.build(trie, torch.device("cpu")))


def test_leaf_rows_and_paused_subtrees(trie: SidTrie) -> None:
    codes, rows, _ = trie.to_arrays()
    trie.pause(rows[codes[:, 0] == 2])  # a whole first-level branch
    trie.pause(rows[::7])
    tt = trie_tensors(trie, torch.device("cpu"))
    _check_all_levels(trie, tt)
    assert tt.leaf_rows.tolist() == np.asarray(trie.leaf_rows).tolist()
    root = tt.children(0, torch.zeros(1, dtype=torch.long))
    assert 2 not in root.codes[root.valid].tolist()


def test_copy_is_kept_until_the_trie_changes(trie: SidTrie) -> None:
    cpu = torch.device("cpu")
    first = trie_tensors(trie, cpu)
    assert trie_tensors(trie, cpu) is first  # memoised: copied once per device
    _, rows, _ = trie.to_arrays()
    for change in (lambda: trie.pause(rows[:3]), lambda: trie.resume(rows[:3]),
                   lambda: trie.add(np.array([[4, 5, 3, 2]]), np.array([5000])),
                   lambda: trie.remove(np.array([5000]))):
        before = trie_tensors(trie, cpu)
        change()
        after = trie_tensors(trie, cpu)
        assert after is not before
        _check_all_levels(trie, after)


def test_empty_trie_has_no_children() -> None:
    empty = SidTrie.build(np.zeros((0, 2), np.int64), np.zeros(0, np.int64), level_sizes=[3, 2])
    tt = trie_tensors(empty, torch.device("cpu"))
    kids = tt.children(0, torch.zeros(4, dtype=torch.long))
    assert not kids.valid.any()


def test_exclusions_match_per_prompt() -> None:
    table = sorted_exclusions([{5, 1, 9}, set(), {2}], torch.device("cpu"))
    assert table is not None and table.tolist() == [[1, 5, 9], [-1, -1, -1], [-1, -1, 2]]
    rows = torch.tensor([[1, 2, 9, 10], [1, 2, 9, 10], [1, 2, 9, 10]])
    assert excluded(table, rows).tolist() == [[True, False, True, False], [False] * 4,
                                              [False, True, False, False]]
    assert sorted_exclusions([set(), ()], torch.device("cpu")) is None


def test_full_grid_is_every_code() -> None:
    kids = full_grid_children(4, 3, torch.device("cpu"))
    assert kids.codes.shape == (3, 4) and kids.valid.all()
    assert kids.codes[2].tolist() == [0, 1, 2, 3]
