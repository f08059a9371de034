"""The ablation report: markdown tables, the "done when" checks, PNG plots beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAIN_COLS = ("hr@1", "hr@4", "hr@8", "ndcg@4", "ndcg@8", "recall@5", "recall@10", "ndcg@10",
             "ecpm@8", "concentration@8", "abundance@8", "ltrr@8", "invalid_rate")
STUDY_TITLES = {
    "table1": "Table 1 — prompt components (SFT, EX → IM → Main)",
    "table2": "Table 2 — task order in the curriculum (SFT)",
    "table6": "Table 6 — how an ad is written: S-IDs vs. text",
    "fig4a": "Fig. 4a — learnable soft-prompt token (SFT)",
}


def _fmt(v: float | None, col: str = "") -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" if col.startswith(("ecpm", "abundance")) else f"{v:.4f}"


def _table(rows: dict[str, dict[str, float]], names: list[str], labels: dict[str, str],
           cols: tuple[str, ...]) -> str:
    head = "| model | " + " | ".join(cols) + " |\n|---" + "|---" * len(cols) + "|\n"
    body = "".join(f"| {labels.get(n, n)} | " + " | ".join(_fmt(rows[n].get(c), c) for c in cols)
                   + " |\n" for n in names if n in rows)
    return head + body


def _rel(a: float, b: float) -> str:
    return "–" if b == 0 else f"{(a - b) / b:+.1%}"


def _checks(rows: dict[str, dict[str, float]], results: dict[str, Any]) -> list[str]:
    """The issue's "done when" statements, evaluated on this run."""
    out = []
    ref = rows.get("reference_dpo") or rows.get("reference")
    if ref is None:
        return out

    def line(ok: bool, text: str) -> None:
        out.append(f"- {'PASS' if ok else 'FAIL'}: {text}")

    for b in ("sasrec_ce", "popularity"):
        if b in rows:
            line(ref["hr@8"] > rows[b]["hr@8"],
                 f"LEADRE HR@8 {ref['hr@8']:.4f} > {b} {rows[b]['hr@8']:.4f}")
    leadre = [n for n in rows if n.startswith("reference") or n in results.get("labels", {})]
    worst = max(rows[n]["invalid_rate"] for n in leadre)
    line(worst == 0, f"invalid outputs of every LEADRE model: max rate {worst:.4f}")
    r = rows.get("reference")
    if r and "cur_main" in rows:
        line(r["hr@8"] >= rows["cur_main"]["hr@8"],
             f"EX → IM → Main HR@8 {r['hr@8']:.4f} ≥ Main only {rows['cur_main']['hr@8']:.4f}")
    if r and "wo_content" in rows:
        line(r["hr@8"] >= rows["wo_content"]["hr@8"],
             f"with content HR@8 {r['hr@8']:.4f} ≥ without {rows['wo_content']['hr@8']:.4f}")
    if r and "reference_dpo" in rows:
        d = rows["reference_dpo"]
        line(d["ecpm@8"] > r["ecpm@8"], f"DPO raises eCPM@8: {r['ecpm@8']:.2f} → {d['ecpm@8']:.2f}")
        loss = (r["hr@8"] - d["hr@8"]) / r["hr@8"] if r["hr@8"] else 0.0
        line(loss <= 0.05, f"DPO loses ≤ 5% of HR@8: {r['hr@8']:.4f} → {d['hr@8']:.4f} "
             f"({-loss:+.1%})")
    return out


def _bar_plot(rows: dict[str, dict[str, float]], results: dict[str, Any], out: Path) -> str:
    labels = results.get("labels", {})
    studies = [s for s in STUDY_TITLES if any(v["study"] == s for v in results["variants"])]
    fig, axes = plt.subplots(1, max(len(studies), 1), figsize=(4.2 * max(len(studies), 1), 3.6),
                             squeeze=False)
    for ax, s in zip(axes[0], studies, strict=False):
        names = ["reference"] + [v["name"] for v in results["variants"] if v["study"] == s]
        names = [n for n in names if n in rows]
        vals = [rows[n]["hr@8"] for n in names]
        ax.bar(range(len(names)), vals, color=["#4c72b0"] + ["#dd8452"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), [labels.get(n, n) for n in names], rotation=30,
                      ha="right", fontsize=8)
        ax.set_title(s, fontsize=9)
        ax.set_ylabel("HR@8")
    fig.tight_layout()
    fig.savefig(out / "ablations.png", dpi=110)
    plt.close(fig)
    return "ablations.png"


def _dpo_plot(rows: dict[str, dict[str, float]], out: Path) -> str | None:
    if not {"reference", "reference_dpo"} <= rows.keys():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(6.5, 3.2))
    for ax, col in zip(axes, ("hr@8", "ecpm@8"), strict=True):
        ax.bar(["SFT", "SFT + DPO"], [rows["reference"][col], rows["reference_dpo"][col]],
               color=["#4c72b0", "#55a868"])
        ax.set_title(col)
    fig.tight_layout()
    fig.savefig(out / "fig4b_dpo.png", dpi=110)
    plt.close(fig)
    return "fig4b_dpo.png"


def _dice_plot(rows: dict[str, dict[str, float]], drops: list[int], out: Path,
               labels: dict[str, str]) -> str | None:
    if not drops:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, r in rows.items():
        ys = [r.get(f"dice_drop{d}@8") for d in drops]
        if all(y is not None for y in ys):
            ax.plot(drops, ys, marker="o", label=labels.get(name, name))
    ax.set_xlabel("oldest behaviours removed")
    ax.set_ylabel("Dice of top-8 vs. full history")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "fig5_dice.png", dpi=110)
    plt.close(fig)
    return "fig5_dice.png"


def _loss_plot(results: dict[str, Any], out: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    drawn = False
    for name, summary in results.get("train", {}).items():
        hist = [h["loss"] for stage in summary.get("sft", []) for h in stage.get("history", [])]
        if hist:
            ax.plot(hist, label=name, linewidth=1)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("logging step (all stages in order)")
    ax.set_ylabel("SFT loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=110)
    plt.close(fig)
    return "loss_curves.png"


def write_report(results: dict[str, Any], cfg: Any, out: Path) -> Path:
    rows: dict[str, dict[str, float]] = results["retrievers"]
    labels = dict(results.get("labels", {}))
    variants = results["variants"]
    parts = ["# LEADRE ablations\n",
             (f"World: {cfg.world.model_dump_json()}\n\nSplit: {results['data']}\n\n"
             f"Training budget (every variant): {cfg.train.model_dump_json()}\n\n"
             + ("Every variant starts from one base model trained from scratch with the `lm` "
                "stage (loss on every token of each train user's behaviour sequence; the "
                "from-scratch counterpart of the paper's pretrained LLM): "
                f"{cfg.pretrain.model_dump_json()}\n\n" if getattr(cfg, "pretrain", None) else "")
             + 
             f"Beam width {cfg.beam_width}; LTRR labels: {results.get('ltrr_labels', '')}\n"),
             "## Done-when checks\n", "\n".join(_checks(rows, results)) + "\n",
             "## All models\n",
             _table(rows, list(rows), labels, MAIN_COLS)]
    for study, title in STUDY_TITLES.items():
        names = ["reference"] + [v["name"] for v in variants if v["study"] == study]
        if len(names) == 1 or "reference" not in rows:
            continue
        cols = ("hr@1", "hr@4", "hr@8", "ndcg@4", "ndcg@8", "invalid_rate")
        rel = "".join(f"- {labels.get(n, n)}: HR@8 {_rel(rows[n]['hr@8'], rows['reference']['hr@8'])}"
                      " vs. the reference\n" for n in names[1:] if n in rows)
        parts += [f"## {title}\n", _table(rows, names, labels, cols), "\n" + rel]
    if {"reference", "reference_dpo"} <= rows.keys():
        parts += ["## Fig. 4b — DPO on eCPM preference pairs\n",
                  _table(rows, ["reference", "reference_dpo"], labels,
                         ("hr@8", "ndcg@8", "ecpm@8", "invalid_rate"))]
    drops = list(cfg.eval.dice_drops)
    if drops:
        cols = tuple(f"dice_drop{d}@8" for d in drops)
        parts += ["## Fig. 5 — Dice of the top-8 when the oldest behaviours are removed\n",
                  _table(rows, list(rows), labels, cols)]
    plots = [p for p in (_bar_plot(rows, results, out), _dpo_plot(rows, out),
                         _dice_plot(rows, drops, out, labels), _loss_plot(results, out)) if p]
    parts += ["## Plots\n"] + [f"![{p}]({p})\n" for p in plots]
    t = results.get("timings", {})
    parts += ["## Wall time per stage (s)\n",
              "| stage | s |\n|---|---|\n" + "".join(f"| {k} | {v:.0f} |\n" for k, v in t.items())]
    notes = out / "findings.md"
    if notes.exists():
        parts += ["## Findings\n", notes.read_text()]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
