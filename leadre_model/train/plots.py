"""`training.png` beside every trained model: the loss of each stage and, when the model
was selected on validation, Recall@K per round with the kept round marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_training(summary: dict[str, Any], path: Path) -> Path | None:
    """Write the plot; ``None`` when the summary has no logged loss."""
    stages = [s for s in summary.get("sft", []) if s.get("history")]
    if not stages:
        return None
    valid = summary.get("validation")
    fig, axes = plt.subplots(1, 2 if valid else 1, figsize=(11 if valid else 6, 3.6),
                             squeeze=False)
    ax = axes[0][0]
    for stage in stages:
        pts = [(h["epoch"], h["loss"]) for h in stage["history"] if "epoch" in h]
        if pts:
            ax.plot(*zip(*pts), label=f"{stage['stage']} ({stage['samples']} rows)", linewidth=1)
    for h in summary.get("dpo", []) or []:
        ax.axhline(h["loss"], color="grey", linewidth=0.3)
    ax.set_xlabel("epoch (of each stage)")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    if valid:
        key = next(k for k in valid if k.startswith("best_recall@"))
        metric = key.removeprefix("best_")
        rounds = valid["rounds"]
        ax2 = axes[0][1]
        ax2.plot([r["epoch"] for r in rounds], [r[f"valid_{metric}"] for r in rounds],
                 marker="o", linewidth=1)
        ax2.axvline(valid["best_epoch"], color="green", linestyle="--", linewidth=1,
                    label=f"kept: epoch {valid['best_epoch']:g} ({valid[key]:.4f})")
        ax2.set_xlabel("epoch")
        ax2.set_ylabel(f"validation {metric} ({valid['users']} users)")
        ax2.set_title(f"stopped by {valid['stopped_by']}", fontsize=9)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
