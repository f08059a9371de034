"""Semantic IDs: collision statistics, the collision-aware last level, the extra
disambiguation code (level M+1) and the ``<a_12><b_7>…`` token form."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

LEVEL_PREFIXES = "abcdefghij"
SID_TOKEN = re.compile(r"<[a-j]_\d+>")  # one token of an S-ID, e.g. <a_12>
_TOKEN = re.compile(r"<([a-j])_(\d+)>")  # the same, level prefix and code captured


def sid_tokens(codes: Sequence[int]) -> str:
    return "".join(f"<{LEVEL_PREFIXES[level]}_{int(c)}>" for level, c in enumerate(codes))


def level_token(level: int, code: int) -> str:
    return f"<{LEVEL_PREFIXES[level]}_{code}>"


def parse_sid(text: str) -> list[int]:
    """Inverse of :func:`sid_tokens`; raises ValueError on anything but a full S-ID."""
    parts = _TOKEN.findall(text)
    if not parts or "".join(f"<{p}_{c}>" for p, c in parts) != text.strip():
        raise ValueError(f"not an S-ID: {text!r}")
    for level, (prefix, _) in enumerate(parts):
        if prefix != LEVEL_PREFIXES[level]:
            raise ValueError(f"S-ID {text!r}: level {level} must use prefix {LEVEL_PREFIXES[level]}_")
    return [int(c) for _, c in parts]


def sid_vocabulary(level_sizes: Sequence[int]) -> list[str]:
    """Every S-ID token, for extending an LLM tokenizer."""
    return [level_token(level, c) for level, k in enumerate(level_sizes) for c in range(k)]


def _group_ids(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group rows of identical codes: (inverse index per row, group sizes)."""
    if codes.shape[1] == 0:
        return np.zeros(len(codes), dtype=np.int64), np.array([len(codes)])
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """Collisions among the M-level codes (before the extra code).

    ``collision_rate`` = 1 - unique S-IDs / ads (the share of ads that need the extra code
    to be told apart); ``colliding_ads`` = share of ads in a group of two or more;
    ``max_collision`` = largest group size.
    """
    n = len(codes)
    if n == 0:
        return {"ads": 0, "unique": 0, "collision_rate": 0.0, "colliding_ads": 0.0, "max_collision": 0}
    inverse, counts = _group_ids(codes)
    return {
        "ads": n,
        "unique": len(counts),
        "collision_rate": float(1 - len(counts) / n),
        "colliding_ads": float(counts[inverse].__gt__(1).mean()),
        "max_collision": int(counts.max()),
    }


def codebook_usage(codes: np.ndarray, codebook_size: int) -> list[float]:
    """Share of each level's K codes used by at least one ad (Table 5's usage rate)."""
    return [float(len(np.unique(codes[:, level])) / codebook_size) for level in range(codes.shape[1])]


def balance_last_level(
    codes: np.ndarray,
    last_residual: np.ndarray,
    last_codebook: np.ndarray,
    frozen: np.ndarray | None = None,
) -> np.ndarray:
    """Spread ads that share all M codes over free codes of the last level.

    Within each (M-1)-prefix, the ad nearest to a contested code keeps it; each other ad
    moves to its nearest last-level code not yet taken in that prefix (if any is free).
    Rows flagged ``frozen`` (existing ads during ``index add``) never move, so adding ads
    keeps old S-IDs stable. Deterministic: ties resolve by row order.
    """
    codes = codes.copy()
    n = len(codes)
    frozen = np.zeros(n, dtype=bool) if frozen is None else frozen
    full_inv, full_counts = _group_ids(codes)
    contested = full_counts[full_inv] > 1
    if not contested.any():
        return codes
    dist = ((last_residual - last_codebook[codes[:, -1]]) ** 2).sum(1)
    # Keeper of each contested code: a frozen row if any, else the nearest row.
    order = np.lexsort((np.arange(n), dist, ~frozen, full_inv))
    first = np.ones(n, dtype=bool)
    first[1:] = full_inv[order][1:] != full_inv[order][:-1]
    movers = np.sort(order[~first & contested[order] & ~frozen[order]])
    if len(movers) == 0:
        return codes
    prefix_inv, _ = _group_ids(codes[:, :-1])
    taken: dict[int, set[int]] = {}
    for row in np.flatnonzero(~np.isin(np.arange(n), movers)):
        taken.setdefault(int(prefix_inv[row]), set()).add(int(codes[row, -1]))
    for start in range(0, len(movers), 4096):  # chunked: (chunk, K) distance matrix
        chunk = movers[start : start + 4096]
        d = ((last_residual[chunk, None, :] - last_codebook[None]) ** 2).sum(-1)
        prefs = np.argsort(d, axis=1, kind="stable")
        for row, pref in zip(chunk, prefs):
            used = taken.setdefault(int(prefix_inv[row]), set())
            for code in pref:
                if int(code) not in used:
                    codes[row, -1] = code
                    break
            used.add(int(codes[row, -1]))
    return codes


def add_disambiguation(codes: np.ndarray, existing: np.ndarray | None = None) -> np.ndarray:
    """Append level M+1: 0, 1, 2, … among ads with identical M codes (row order).

    With ``existing`` (N0, M+1) full S-IDs, the new rows continue each group's numbering
    after the largest code already used, so existing S-IDs never change.
    """
    n_old = 0 if existing is None else len(existing)
    allm = codes if existing is None else np.concatenate([existing[:, :-1], codes])
    inv, counts = _group_ids(allm)
    next_code = np.zeros(len(counts), dtype=np.int64)
    if existing is not None and n_old:
        np.maximum.at(next_code, inv[:n_old], existing[:, -1] + 1)
    extra = np.empty(len(codes), dtype=np.int64)
    new_inv = inv[n_old:]
    # Stable rank of each new row within its group, offset by the group's next free code.
    order = np.argsort(new_inv, kind="stable")
    sorted_inv = new_inv[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_inv)) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    extra[order] = next_code[sorted_inv] + rank
    return np.concatenate([codes, extra[:, None]], axis=1)
