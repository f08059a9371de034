"""The picture `leadre eval --out DIR` writes beside results.json: Recall@K of every retriever
with standard-error bars, with and without the user's earlier (seen) ads masked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

XS = "+xs"  # evaluate_both's suffix for the pass with seen ads masked


def standard_error(figures: dict[str, Any], metric: str, n: int) -> float:
    """``metric``'s standard error: the harness's own when it wrote one, else the binomial
    one (leave-one-out has one target per test user, so Recall@K is a hit rate)."""
    if f"{metric}_se" in figures:
        return float(figures[f"{metric}_se"])
    p = float(figures.get(metric, 0.0))
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def recall_chart(results: dict[str, Any], path: Path, k: int = 10) -> Path | None:
    """Write a bar chart of Recall@k per retriever (± one standard error), seen ads kept and
    masked side by side; None (nothing written) when the results hold no Recall@k."""
    metric = f"recall@{k}"
    rows = results["retrievers"]
    names = [n for n in rows if not n.endswith(XS) and metric in rows[n]]
    names += [n[: -len(XS)] for n in rows if n.endswith(XS) and n[: -len(XS)] not in rows]
    if not names:
        return None
    n_users = int(results.get("data", {}).get("test", 0))
    passes = [(label, suffix) for label, suffix in (("seen ads kept", ""), ("seen ads masked", XS))
              if any(f"{n}{suffix}" in rows for n in names)]
    width = 0.8 / len(passes)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    for j, (label, suffix) in enumerate(passes):
        xs = [i + (j - (len(passes) - 1) / 2) * width for i in range(len(names))]
        got = [rows.get(f"{n}{suffix}", {}) for n in names]
        ax.bar(xs, [g.get(metric, 0.0) for g in got], width, label=label,
               yerr=[standard_error(g, metric, n_users) if g else 0.0 for g in got], capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel(f"Recall@{k} (± standard error)")
    ax.set_title(f"Recall@{k} on {n_users:,} test users (full ranking)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
