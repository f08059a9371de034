"""Validation Recall@10 per epoch of each ensemble member (their train logs) → validation.png.

    python docs/results/amazon-sports/ensemble/validation_plot.py DIR
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

here = Path(sys.argv[1])
fig, ax = plt.subplots(figsize=(6, 3.5))
for log in sorted(here.glob("member*_train_log.json")):
    rounds = json.loads(log.read_text())["validation"]["rounds"]
    ax.plot([r["epoch"] for r in rounds], [r["valid_recall@10"] for r in rounds], marker="o",
            label=log.name.split("_")[0])
ax.set_xlabel("epoch")
ax.set_ylabel("validation Recall@10 (5,000 users)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(here / "validation.png", dpi=120)
