"""The README's results table, rendered from the reports' own ``results.json`` files.

Every report under ``docs/results`` keeps the ``results.json`` its evaluation wrote. A file
that contributes rows to the README's table also carries a ``run`` block::

    "run": {
      "command": ["leadre train ...", "leadre eval ..."],   # what was run (str or list)
      "commit": "c458593",                                  # the commit that recorded it
      "date": "2026-12-01",
      "wall_s": {"train": 4212, "eval": 180},               # seconds (a number or by stage)
      "cores": 2,
      "table": [                                            # the rows it gives the README
        {"order": 10, "dataset": "amazon-toys", "retriever": "leadre",
         "label": "LEADRE, `cpu-90m` preset", "train_s": 4209}
      ]
    }

``leadre eval --out`` and ``leadre experiment recipe`` write ``command``, ``commit``,
``date``, ``wall_s`` and ``cores`` themselves (:func:`run_record`); ``table`` is added by
hand when a report is chosen for the README. Files without ``run.table`` are skipped; a
file with a table but without the provenance fields is an error that names the file.
``leadre report table --check README.md`` fails when the README's copy differs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leadre_model.errors import LeadreError

START = "<!-- results-table: rendered by `leadre report table --write README.md`; do not edit -->"
END = "<!-- /results-table -->"
REQUIRED = ("command", "commit", "wall_s", "cores")
HEADER = ("data set", "retriever", "Recall@10", "HR@8 ± se", "Recall@10, seen ads masked",
          "training", "report")


def _git_commit(cwd: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, text=True,
                             capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=cwd, text=True, capture_output=True, timeout=10,
                               check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out + ("-dirty" if dirty.strip() else "")


def run_record(wall_s: float | dict[str, float], argv: list[str] | None = None) -> dict[str, Any]:
    """Provenance of a run for its results.json: the command as typed, the commit, the date,
    the wall time in seconds and the cores the machine had."""
    argv = sys.argv if argv is None else argv
    cmd = shlex.join(["leadre", *argv[1:]]) if argv and Path(argv[0]).name in (
        "leadre", "__main__.py") else shlex.join(argv)
    return {"command": cmd, "commit": _git_commit(Path(__file__).parent),
            "date": time.strftime("%Y-%m-%d"),
            "wall_s": (round(wall_s, 1) if isinstance(wall_s, float | int)
                       else {k: round(v, 1) for k, v in wall_s.items()}),
            "cores": os.cpu_count() or 1}


@dataclass(frozen=True)
class Row:
    order: float
    dataset: str
    label: str
    results: Path
    figures: dict[str, Any]
    masked: dict[str, Any] | None
    train_s: float | None
    cores: int
    commit: str
    test_users: int | None


def _train_s(entry: dict[str, Any], res: dict[str, Any], name: str) -> float | None:
    if entry.get("train_s") is not None:
        return float(entry["train_s"])
    if name in res.get("train_s", {}):  # `leadre experiment recipe`: the LEADRE variants
        return float(res["train_s"][name])
    fit = res.get("fits", {}).get(name, {})
    if "train_s" in fit:
        return float(fit["train_s"])
    got = res.get("retrievers", {}).get(name, {}).get("fit_s")
    return float(got) if got is not None else None


def collect(root: Path) -> tuple[list[Row], list[Path]]:
    """The table's rows from every ``results.json`` under ``root`` (sorted by ``order``), and
    the files skipped because they contribute no rows."""
    rows: list[Row] = []
    skipped: list[Path] = []
    files = sorted(Path(root).rglob("results.json"))
    if not files:
        raise LeadreError(f"{root}: no results.json files")
    for path in files:
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LeadreError(f"{path}: not readable JSON ({exc})") from None
        run = res.get("run") if isinstance(res, dict) else None
        if not isinstance(run, dict) or not run.get("table"):
            skipped.append(path)
            continue
        missing = [f for f in REQUIRED if run.get(f) in (None, "", [])]
        if missing:
            raise LeadreError(f"{path}: run.table without run.{', run.'.join(missing)} "
                              "(every figure in the README says how it was made)")
        for i, entry in enumerate(run["table"]):
            name = entry.get("retriever")
            lacking = [k for k in ("order", "dataset", "retriever", "label") if k not in entry]
            if lacking:
                raise LeadreError(f"{path}: run.table[{i}] lacks {', '.join(lacking)}")
            figures = res.get("retrievers", {}).get(name)
            if figures is None:
                raise LeadreError(f"{path}: run.table[{i}] names retriever {name!r}, which is "
                                  f"not in its retrievers ({', '.join(res.get('retrievers', {}))})")
            rows.append(Row(
                order=float(entry["order"]), dataset=str(entry["dataset"]),
                label=str(entry["label"]), results=path, figures=figures,
                masked=res.get("retrievers", {}).get(f"{name}+xs"),
                train_s=_train_s(entry, res, name), cores=int(run["cores"]),
                commit=str(run["commit"]), test_users=res.get("data", {}).get("test")))
    rows.sort(key=lambda r: r.order)
    return rows, skipped


def _num(figures: dict[str, Any] | None, key: str) -> str:
    v = (figures or {}).get(key)
    return f"{v:.4f}" if isinstance(v, int | float) and math.isfinite(v) else "—"


def _hr(figures: dict[str, Any]) -> str:
    hr, se = figures.get("hr@8"), figures.get("hr@8_se")
    if hr is None:
        return "—"
    return f"{hr:.4f} ± {se:.4f}" if se is not None else f"{hr:.4f}"


def _duration(seconds: float | None, cores: int) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        text = "< 1 s"
    elif seconds < 120:
        text = f"{seconds:.0f} s"
    else:
        text = f"{seconds / 60:.0f} min"
    return f"{text} on {cores} cores"


def render(root: Path = Path("docs/results"), link_from: Path = Path(".")) -> str:
    """The markdown table (with the marker lines) for every row under ``root``; links are
    relative to the directory ``link_from`` (the README's)."""
    rows, _ = collect(root)
    lines = [START, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    last = None
    for r in rows:
        report = r.results.parent / "report.md"
        target = report if report.exists() else r.results
        link = Path(os.path.relpath(target.resolve(), Path(link_from).resolve())).as_posix()
        users = f"; {r.test_users:,} test users" if r.test_users else ""
        dataset = f"{r.dataset}{users}" if r.dataset != last else ""
        last = r.dataset
        lines.append("| " + " | ".join((
            dataset, r.label, _num(r.figures, "recall@10"), _hr(r.figures),
            _num(r.masked, "recall@10"), _duration(r.train_s, r.cores),
            f"[{r.results.parent.name}]({link}), {r.commit}")) + " |")
    lines += ["", END]
    return "\n".join(lines)


def readme_block(readme: Path) -> str:
    """The README's copy of the table, marker lines included."""
    text = Path(readme).read_text()
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise LeadreError(f"{readme}: no results table markers ({START!r} … {END!r})")
    return text[start:end + len(END)]


def write_readme(readme: Path, table: str) -> bool:
    """Replace the README's table with ``table``; True when it changed."""
    old = readme_block(readme)
    if old == table:
        return False
    readme.write_text(readme.read_text().replace(old, table))
    return True
