"""Validation Recall@10 per epoch of a forked ensemble: the trunk, then each member from the
fork on (out of the run's train_log.json) → validation.png beside it.

    python docs/results/amazon-toys/fork/validation_plot.py DIR [DIR ...]   # one panel per run
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

runs = [Path(d) for d in sys.argv[1:]]
fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 3.5), sharey=True, squeeze=False)
for ax, run in zip(axes[0], runs):
    log = json.loads((run / "train_log.json").read_text())
    trunk = log["trunk"]["validation"]["rounds"]
    ax.plot([r["epoch"] for r in trunk], [r["valid_recall@10"] for r in trunk], marker="o",
            color="black", label="trunk (seeds 0)")
    for i, m in enumerate(log["members"]):
        rounds = [trunk[-1]] + m["validation"]["rounds"]  # drawn from the fork point
        ax.plot([r["epoch"] for r in rounds], [r["valid_recall@10"] for r in rounds],
                marker="o", label=f"member {i} (seeds {i})")
    ax.axvline(log["trunk"]["fork_epoch"], color="grey", linestyle=":")
    ax.set_title(f"{run.name}: {len(log['members'])} members, fork at epoch "
                 f"{log['trunk']['fork_epoch']:g}")
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
axes[0][0].set_ylabel("validation Recall@10 (5,000 users)")
fig.tight_layout()
fig.savefig(runs[-1] / "validation.png", dpi=120)
