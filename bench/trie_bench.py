"""Trie benchmark: one `name: value` line per figure.

    python bench/trie_bench.py [--n 1000000] [--seed 0] [--batch 4096] [--batches 100]

S-IDs: 4 random levels of K=256 plus a 5th disambiguation level (0, 1, ... within each
group of equal 4-level prefixes, as the index assigns it), so all N S-IDs are unique.

- trie_build_1m_s: SidTrie.build from the (N, 5) int64 codes (suffix = N in thousands/millions);
- trie_rss_1m_mb: peak RSS of the WHOLE process right after the build (VmHWM: Python,
  numpy, the input codes and the trie), measured before the dict peer is built;
- trie_nbytes_1m_mb: bytes in the trie's arrays; trie_last_level_size: K of level 5;
- trie_lookups_per_s: valid_next node queries per second, batches of --batch nodes at a
  random level 0..4 (nodes = ancestors of random ads, so busy prefixes are hit more);
- trie_mask_lookups_per_s, trie_step_per_s, trie_sid_lookups_per_s: the same batches
  through valid_mask, step (one random valid code per node), and full S-ID → row lookup;
- trie_pause_10pct_s, trie_lookups_per_s_10pct_paused: pausing a random 10% of the ads in
  one call, and valid_next on the same batches while they are paused;
- dict_trie_lookups_per_s: the same queries on a plain dict-of-dicts trie (nodes already
  resolved to dicts, answer = list of (code, child) pairs; cyclic GC off), and speedup_vs_dict.
Every rate is the best of 3 passes over the same batches.
"""

from __future__ import annotations

import argparse
import gc
import resource
import time
from collections.abc import Callable

import numpy as np

from leadre_model.index.trie import SidTrie


def random_sids(n: int, rng: np.random.Generator) -> np.ndarray:
    head = rng.integers(0, 256, size=(n, 4), dtype=np.int64)
    packed = (head[:, 0] << 24) | (head[:, 1] << 16) | (head[:, 2] << 8) | head[:, 3]
    order = np.argsort(packed, kind="stable")
    sp = packed[order]
    first = np.r_[True, sp[1:] != sp[:-1]]
    group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    extra = np.empty(n, dtype=np.int64)
    extra[order] = np.arange(n) - group_start
    return np.column_stack([head, extra])


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_rate(fn: Callable[[], int], repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        count = fn()
        best = max(best, count / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--batches", type=int, default=100)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    codes = random_sids(args.n, rng)
    rows = rng.permutation(args.n)
    tag = f"{args.n // 1_000_000}m" if args.n % 1_000_000 == 0 else f"{args.n // 1000}k"

    t0 = time.perf_counter()
    trie = SidTrie.build(codes, rows)
    print(f"trie_build_{tag}_s: {time.perf_counter() - t0:.3f}")
    print(f"trie_rss_{tag}_mb: {peak_rss_mb():.1f}")
    print(f"trie_nbytes_{tag}_mb: {trie.nbytes() / 2**20:.1f}")
    print(f"trie_last_level_size: {trie.level_sizes[-1]}")

    L = trie.num_levels
    levels = rng.integers(0, L, size=args.batches)
    ads = rng.integers(0, args.n, size=(args.batches, args.batch))
    # Resolve every query to a node index (and a valid next code) outside the timing.
    nodes, nxt = [], []
    for lv, a in zip(levels, ads):
        node = trie.root_state(args.batch)
        for j in range(lv):
            node = trie.step(j, node, codes[a, j])
        nodes.append(node)
        nxt.append(codes[a, lv])
    batches = list(zip(levels.tolist(), nodes, nxt))
    queries = args.batches * args.batch

    def run_valid_next() -> int:
        for lv, node, _ in batches:
            trie.valid_next(lv, node)
        return queries

    def run_mask() -> int:
        for lv, node, _ in batches:
            trie.valid_mask(lv, node)
        return queries

    def run_step() -> int:
        for lv, node, code in batches:
            trie.step(lv, node, code)
        return queries

    sid_batches = [codes[a] for a in ads]

    def run_lookup() -> int:
        for c in sid_batches:
            trie.lookup(c)
        return queries

    rate = best_rate(run_valid_next)
    print(f"trie_lookups_per_s: {rate:.0f}")
    print(f"trie_mask_lookups_per_s: {best_rate(run_mask):.0f}")
    print(f"trie_step_per_s: {best_rate(run_step):.0f}")
    print(f"trie_sid_lookups_per_s: {best_rate(run_lookup):.0f}")
    # Paused ads switch on the active filter wherever a node has no active leaf left.
    paused = rng.choice(rows, size=args.n // 10, replace=False)
    t0 = time.perf_counter()
    trie.pause(paused)
    print(f"trie_pause_10pct_s: {time.perf_counter() - t0:.3f}")
    print(f"trie_lookups_per_s_10pct_paused: {best_rate(run_valid_next):.0f}")
    trie.resume(paused)

    # Peer: the textbook trie, nested dicts, leaves map the last code to the row.
    root: dict = {}
    for sid, row in zip(codes.tolist(), rows.tolist()):
        d = root
        for c in sid[:-1]:
            d = d.setdefault(c, {})
        d[sid[-1]] = row
    dict_batches = []
    for lv, a in zip(levels.tolist(), ads):
        batch = []
        for sid in codes[a, :lv].tolist():
            d = root
            for c in sid:
                d = d[c]
            batch.append(d)
        dict_batches.append(batch)

    def run_dict() -> int:
        for batch in dict_batches:
            [list(d.items()) for d in batch]
        return queries

    # With the cyclic GC on, collections walk the millions of dicts while the answers
    # allocate tuples (~7x slower here): switch it off so the peer is timed at its best.
    gc.collect()
    gc.disable()
    dict_rate = best_rate(run_dict)
    gc.enable()
    print(f"dict_trie_lookups_per_s: {dict_rate:.0f}")
    print(f"speedup_vs_dict: {rate / dict_rate:.2f}")


if __name__ == "__main__":
    main()
