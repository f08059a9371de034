"""SidTrie against a plain dict-of-dicts trie: every query, after every pause/resume/add/
remove, on both the dense-mask and the CSR-only paths; the paper's example; save/load;
clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leadre_model.index.trie import FORMAT_VERSION, SidTrie

DENSE_SETTINGS = [0, 1 << 24]  # 0 forces the CSR path for valid_mask everywhere


# ------------------------------------------------------------------ reference
class RefTrie:
    """The textbook trie: nested dicts of the ACTIVE ads only, rebuilt on every change."""

    def __init__(self, ads: dict[int, tuple[tuple[int, ...], bool]]) -> None:
        self.ads = dict(ads)  # row -> (S-ID, active)
        self.root: dict = {}
        for row, (sid, active) in self.ads.items():
            if active:
                d = self.root
                for c in sid[:-1]:
                    d = d.setdefault(c, {})
                d[sid[-1]] = row

    def node(self, prefix: tuple[int, ...]) -> dict | None:
        d = self.root
        for c in prefix:
            if not isinstance(d, dict) or c not in d:
                return None
            d = d[c]
        return d if isinstance(d, dict) and d else None

    def lookup(self, sid: tuple[int, ...]) -> int:
        return next((r for r, (s, a) in self.ads.items() if s == sid and a), -1)


def assert_agrees(trie: SidTrie, ref: RefTrie) -> None:
    L = trie.num_levels
    assert len(trie) == len(ref.ads)
    assert trie.num_active == sum(a for _, a in ref.ads.values())
    codes, rows, active = trie.to_arrays()
    got = {int(r): (tuple(int(c) for c in s), bool(a)) for s, r, a in zip(codes, rows, active)}
    assert got == ref.ads
    # Compact: one node per distinct prefix of a stored ad (removed ads leave nothing).
    for lv in range(L + 1):
        assert trie.num_nodes(lv) == len({s[:lv] for s, _ in ref.ads.values()}) or (lv == 0)
    for lv in range(L):
        k = trie.level_sizes[lv]
        nodes = np.r_[np.arange(trie.num_nodes(lv)), -1]
        prefixes = [tuple(p) for p in trie.prefix_codes(lv, nodes[:-1]).tolist()] + [None]
        offs, next_codes, children = trie.valid_next(lv, nodes)
        mask = trie.valid_mask(lv, nodes)
        assert offs.shape == (len(nodes) + 1,) and mask.shape == (len(nodes), k)
        every = trie.step(lv, np.repeat(nodes, k + 2), np.tile(np.r_[np.arange(k), k, -1], len(nodes)))
        every = every.reshape(len(nodes), k + 2)
        for i, prefix in enumerate(prefixes):
            ref_node = ref.node(prefix) if prefix is not None else None
            expected = sorted(ref_node) if ref_node is not None else []
            seg = slice(offs[i], offs[i + 1])
            assert next_codes[seg].tolist() == expected, (lv, prefix)
            assert np.flatnonzero(mask[i]).tolist() == expected
            assert np.flatnonzero(every[i] >= 0).tolist() == expected
            assert every[i][expected].tolist() == children[seg].tolist()
            if expected:
                below = trie.prefix_codes(lv + 1, children[seg])
                assert [tuple(p) for p in below.tolist()] == [prefix + (c,) for c in expected]
            if lv == L - 1 and expected:
                assert trie.ad_rows(children[seg]).tolist() == [ref_node[c] for c in expected]
    known = [s for s, _ in ref.ads.values()]
    if known:
        assert trie.lookup(np.array(known)).tolist() == [ref.lookup(s) for s in known]
        for s in known:
            for lv in range(L + 1):
                want = (lv == 0 and trie.num_active > 0) or ref.node(s[:lv]) is not None or (
                    lv == L and ref.lookup(s) >= 0
                )
                assert trie.contains_prefix(list(s[:lv])) == want
    unknown = np.array([[k for k in trie.level_sizes]])  # every code one past its level
    assert trie.lookup(unknown).tolist() == [-1]


# ------------------------------------------------------------------ property tests
@st.composite
def catalogs(draw: st.DrawFn) -> tuple[list[int], list[tuple[int, ...]], list[int], list[bool]]:
    L = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 4), min_size=L, max_size=L))
    sids = sorted(draw(st.sets(st.tuples(*[st.integers(0, k - 1) for k in sizes]), max_size=20)))
    rows = draw(st.lists(st.integers(0, 300), min_size=len(sids), max_size=len(sids), unique=True))
    active = draw(st.lists(st.booleans(), min_size=len(sids), max_size=len(sids)))
    return sizes, sids, rows, active


OPS = st.lists(
    st.tuples(st.sampled_from(["pause", "resume", "remove", "add"]), st.lists(st.integers(0, 10**6), max_size=4)),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(catalogs(), OPS, st.sampled_from(DENSE_SETTINGS), st.data())
def test_matches_dict_trie_through_updates(catalog, ops, dense, data) -> None:
    sizes, sids, rows, active = catalog
    L = len(sizes)
    trie = SidTrie.build(
        np.array(sids, dtype=np.int64).reshape(-1, L), np.array(rows, dtype=np.int64), np.array(active, bool),
        level_sizes=sizes, dense_max_cells=dense,
    )
    ads = {r: (s, a) for r, s, a in zip(rows, sids, active)}
    assert_agrees(trie, RefTrie(ads))
    for kind, picks in ops:
        present = sorted(ads)
        if kind == "add":
            # New S-IDs may use a code one past a level's size: the level must grow.
            taken = {s for s, _ in ads.values()}
            new = []
            for p in picks:
                sid = tuple((p >> (3 * lv)) % (trie.level_sizes[lv] + 1) for lv in range(L))
                if sid not in taken:
                    taken.add(sid)
                    new.append(sid)
            new_rows = [1000 + len(ads) + i + 10 * max(present, default=0) for i in range(len(new))]
            flags = data.draw(st.lists(st.booleans(), min_size=len(new), max_size=len(new)))
            trie.add(np.array(new, dtype=np.int64).reshape(-1, L), np.array(new_rows), np.array(flags, bool))
            ads.update({r: (s, a) for r, s, a in zip(new_rows, new, flags)})
        elif present:
            chosen = [present[p % len(present)] for p in picks]  # may repeat a row
            if kind == "remove":
                trie.remove(np.array(chosen, dtype=np.int64))
                for r in chosen:
                    ads.pop(r, None)
            else:
                getattr(trie, kind)(np.array(chosen, dtype=np.int64))
                for r in chosen:
                    ads[r] = (ads[r][0], kind == "resume")
        assert_agrees(trie, RefTrie(ads))


@settings(max_examples=40, deadline=None)
@given(catalogs(), st.sampled_from(DENSE_SETTINGS))
def test_save_load_round_trip(tmp_path_factory: pytest.TempPathFactory, catalog, dense) -> None:
    sizes, sids, rows, active = catalog
    L = len(sizes)
    trie = SidTrie.build(np.array(sids, dtype=np.int64).reshape(-1, L), rows, active,
                         level_sizes=sizes, dense_max_cells=dense)
    path = tmp_path_factory.mktemp("trie") / "trie.npz"
    trie.save(path)
    back = SidTrie.load(path)
    assert back.level_sizes == trie.level_sizes
    assert back.nbytes() == trie.nbytes()
    assert_agrees(back, RefTrie({r: (s, a) for r, s, a in zip(rows, sids, active)}))


# ------------------------------------------------------------------ the paper (§3.3, §3.4)
def paper_trie() -> SidTrie:
    return SidTrie.build(np.array([[12, 7, 4], [12, 7, 14], [12, 6, 22]]), np.array([66, 245, 112]))


def children(trie: SidTrie, level: int, node: int) -> list[int]:
    offs, codes, _ = trie.valid_next(level, np.array([node]))
    return codes[offs[0] : offs[1]].tolist()


def test_paper_example() -> None:
    trie = paper_trie()
    assert len(trie) == 3 and trie.num_levels == 3 and trie.num_active == 3
    root = trie.root_state(1)
    assert children(trie, 0, 0) == [12]
    a12 = trie.step(0, root, np.array([12]))
    assert children(trie, 1, a12[0]) == [6, 7]
    b7 = trie.step(1, a12, np.array([7]))
    b6 = trie.step(1, a12, np.array([6]))
    assert children(trie, 2, b7[0]) == [4, 14] and children(trie, 2, b6[0]) == [22]
    # Algorithm 2 with B = 2 keeps [a12, b7, c4] and [a12, b6, c22]: both map to their ads.
    leaves = trie.step(2, np.r_[b7, b6], np.array([4, 22]))
    assert trie.ad_rows(leaves).tolist() == [66, 112]
    assert trie.ad_row(int(leaves[0])) == 66
    assert trie.lookup(np.array([[12, 7, 4], [12, 7, 14], [12, 6, 22], [12, 6, 4]])).tolist() == [66, 245, 112, -1]
    assert trie.contains_prefix([12, 7]) and not trie.contains_prefix([12, 8])
    # Batched: both beams at level 1 in one call; the mask has K_1 = 8 columns.
    mask = trie.valid_mask(2, np.r_[b7, b6, -1])
    assert mask.shape == (3, 23)
    assert [np.flatnonzero(m).tolist() for m in mask] == [[4, 14], [22], []]


def test_paused_subtree_is_never_offered() -> None:
    trie = paper_trie()
    a12 = trie.step(0, trie.root_state(), np.array([12]))
    b7 = trie.step(1, a12, np.array([7]))
    trie.pause(np.array([245]))
    assert children(trie, 2, b7[0]) == [4]
    trie.pause(np.array([66]))  # the whole b7 subtree is now paused
    assert children(trie, 1, a12[0]) == [6]
    assert trie.step(1, a12, np.array([7])).tolist() == [-1]
    assert children(trie, 2, b7[0]) == []  # a beam that was already there gets nothing
    assert not trie.contains_prefix([12, 7])
    trie.pause(np.array([112]))
    assert children(trie, 0, 0) == [] and trie.num_active == 0
    trie.resume(np.array([66, 66]))
    assert children(trie, 0, 0) == [12] and children(trie, 1, a12[0]) == [7]
    assert trie.lookup(np.array([[12, 7, 4]])).tolist() == [66]


# ------------------------------------------------------------------ larger, both paths
@pytest.mark.parametrize("dense", DENSE_SETTINGS)
def test_bigger_random_trie_with_pauses(dense: int) -> None:
    rng = np.random.default_rng(0)
    sids = np.unique(rng.integers(0, [6, 6, 5, 3], size=(800, 4)), axis=0)
    rows = rng.permutation(10 * len(sids))[: len(sids)]
    trie = SidTrie.build(sids, rows, dense_max_cells=dense)
    paused = rng.choice(rows, size=len(rows) // 3, replace=False)
    trie.pause(paused)
    # Pause a whole level-1 subtree as well.
    whole = rows[sids[:, 0] == 2]
    trie.pause(whole)
    off = set(paused.tolist()) | set(whole.tolist())
    ads = {int(r): (tuple(int(c) for c in s), int(r) not in off) for s, r in zip(sids, rows)}
    assert_agrees(trie, RefTrie(ads))
    assert 2 not in children(trie, 0, 0)


def test_wide_codes_take_the_lexsort_path() -> None:
    # 2 x 31 bits + 2 bits do not pack into one int64: the build falls back to np.lexsort.
    rng = np.random.default_rng(1)
    sids = np.unique(rng.integers(0, [3, 2**31, 4], size=(300, 3)), axis=0)
    trie = SidTrie.build(sids, np.arange(len(sids)), level_sizes=[2**31, 2**31, 4])
    assert trie.to_arrays()[0].tolist() == sorted(sids.tolist())
    assert (trie.lookup(sids) == np.arange(len(sids))).all()
    assert children(trie, 0, 0) == sorted(set(sids[:, 0].tolist()))


# ------------------------------------------------------------------ I/O and errors
def test_save_load_keeps_paused_state_and_refuses_bad_files(tmp_path: Path) -> None:
    trie = paper_trie()
    trie.pause(np.array([245]))
    trie.save(tmp_path / "t.npz")
    with np.load(tmp_path / "t.npz", allow_pickle=False) as z:
        assert int(z["format_version"]) == FORMAT_VERSION
        arrays = dict(z)
    back = SidTrie.load(tmp_path / "t.npz")
    assert back.lookup(np.array([[12, 7, 4], [12, 7, 14]])).tolist() == [66, -1]
    np.savez(tmp_path / "v.npz", **{**arrays, "format_version": np.array(FORMAT_VERSION + 1)})
    with pytest.raises(ValueError, match="trie format"):
        SidTrie.load(tmp_path / "v.npz")
    np.savez(tmp_path / "c.npz", **{**arrays, "key_2": arrays["key_2"][::-1].copy()})
    with pytest.raises(ValueError, match="corrupt"):
        SidTrie.load(tmp_path / "c.npz")
    np.savez(tmp_path / "o.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a SidTrie"):
        SidTrie.load(tmp_path / "o.npz")


def test_empty_trie_then_add() -> None:
    trie = SidTrie.build(np.zeros((0, 3), dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert len(trie) == 0 and trie.num_active == 0 and children(trie, 0, 0) == []
    assert trie.lookup(np.array([[0, 0, 0]])).tolist() == [-1]
    trie.add(np.array([[12, 7, 4]]), np.array([66]))
    assert trie.lookup(np.array([[12, 7, 4]])).tolist() == [66] and trie.level_sizes == (13, 8, 5)
    trie.remove(np.array([66]))
    assert len(trie) == 0 and trie.level_sizes == (13, 8, 5)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"duplicate S-IDs: \[12, 7, 4\] \(rows 66 and 67\)"):
        SidTrie.build(np.array([[12, 7, 4], [12, 6, 22], [12, 7, 4]]), np.array([66, 112, 67]))
    with pytest.raises(ValueError, match=r"duplicate rows: \[66\]"):
        SidTrie.build(np.array([[12, 7, 4], [12, 7, 14]]), np.array([66, 66]))
    with pytest.raises(ValueError, match="shape"):
        SidTrie.build(np.array([12, 7, 4]), np.array([66]))
    with pytest.raises(ValueError, match="rows must have shape"):
        SidTrie.build(np.array([[12, 7, 4]]), np.array([66, 67]))
    with pytest.raises(ValueError, match=r"level 1 has negative codes, e.g. S-IDs \[12, -7, 4\]"):
        SidTrie.build(np.array([[12, -7, 4]]), np.array([66]))
    with pytest.raises(ValueError, match="integers"):
        SidTrie.build(np.array([[12.0, 7.0, 4.0]]), np.array([66]))
    with pytest.raises(ValueError, match="level 2 has >= level size 10 codes"):
        SidTrie.build(np.array([[12, 7, 14]]), np.array([66]), level_sizes=[16, 16, 10])
    trie = paper_trie()
    with pytest.raises(ValueError, match=r"duplicate S-IDs: \[12, 7, 4\]"):
        trie.add(np.array([[12, 7, 4]]), np.array([1]))
    with pytest.raises(ValueError, match=r"duplicate rows: \[66\]"):
        trie.add(np.array([[1, 2, 3]]), np.array([66]))
    with pytest.raises(ValueError, match="shape"):
        trie.add(np.array([[1, 2]]), np.array([5]))
    assert len(trie) == 3  # a failed add changes nothing
    with pytest.raises(KeyError, match="999"):
        trie.pause(np.array([66, 999]))
    assert trie.num_active == 3  # nor does a failed pause
    with pytest.raises(KeyError):
        trie.remove(np.array([999]))
    with pytest.raises(IndexError):
        trie.valid_next(3, np.array([0]))
    with pytest.raises(IndexError):
        trie.valid_mask(1, np.array([5]))
    with pytest.raises(ValueError, match="shape"):
        trie.lookup(np.array([[12, 7]]))
