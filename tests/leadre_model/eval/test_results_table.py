"""The README's results table is rendered from the reports' results.json files: rows come
only from files that say how they were made; files without a table are skipped; a file
with a table but without its provenance is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leadre_model.errors import LeadreError
from leadre_model.eval.plots import recall_chart, standard_error
from leadre_model.eval.results_table import END, START, collect, render, run_record, write_readme

RUN = {"command": "leadre eval --world w", "commit": "abc1234", "wall_s": 3600, "cores": 2}


def _results(path: Path, run: dict | None) -> Path:
    res = {"data": {"test": 1000},
           "retrievers": {"leadre": {"recall@10": 0.25, "hr@8": 0.2, "hr@8_se": 0.0126},
                          "leadre+xs": {"recall@10": 0.15, "hr@8": 0.1, "hr@8_se": 0.0095},
                          "itemcf": {"recall@10": 0.1, "hr@8": 0.08, "fit_s": 0.2}}}
    if run is not None:
        res["run"] = run
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(res))
    return path / "results.json"


def test_rows_from_files_with_a_table_in_order(tmp_path: Path) -> None:
    table = [{"order": 2, "dataset": "w", "retriever": "itemcf", "label": "item-CF"},
             {"order": 1, "dataset": "w", "retriever": "leadre", "label": "LEADRE",
              "train_s": 4209}]
    _results(tmp_path / "a", {**RUN, "table": table})
    skipped = _results(tmp_path / "b", None)  # an old report: no run block
    rows, skipped_files = collect(tmp_path)
    assert [r.label for r in rows] == ["LEADRE", "item-CF"]
    assert skipped_files == [skipped]
    text = render(tmp_path, link_from=tmp_path)
    assert text.startswith(START) and text.endswith(END)
    assert "| w; 1,000 test users | LEADRE | 0.2500 | 0.2000 ± 0.0126 | 0.1500 | 70 min on 2 cores" \
        in text
    assert "| item-CF | 0.1000 | 0.0800 | — | < 1 s on 2 cores | [a](a/results.json), abc1234 |" in text

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{START}\nold\n{END}\n\nafter\n")
    assert write_readme(readme, text) and not write_readme(readme, text)
    assert readme.read_text().endswith("\n\nafter\n")


@pytest.mark.parametrize("run, needle", [
    ({"command": "x", "table": [{"order": 1}]}, "run.commit, run.wall_s, run.cores"),
    ({**RUN, "table": [{"order": 1, "dataset": "w", "label": "L"}]}, "lacks retriever"),
    ({**RUN, "table": [{"order": 1, "dataset": "w", "retriever": "sasrec", "label": "S"}]},
     "names retriever 'sasrec'"),
])
def test_a_table_without_provenance_is_a_clear_error(tmp_path: Path, run: dict,
                                                     needle: str) -> None:
    path = _results(tmp_path / "r", run)
    with pytest.raises(LeadreError, match=str(path)) as err:
        collect(tmp_path)
    assert needle in str(err.value)


def test_run_record_and_recall_chart(tmp_path: Path) -> None:
    rec = run_record(12.34, argv=["/venv/bin/leadre", "eval", "--world", "my world"])
    assert rec["command"] == "leadre eval --world 'my world'"
    assert rec["wall_s"] == 12.3 and rec["cores"] >= 1 and rec["commit"]
    res = json.loads(_results(tmp_path / "r", None).read_text())
    assert standard_error(res["retrievers"]["itemcf"], "recall@10", 1000) == pytest.approx(
        (0.1 * 0.9 / 1000) ** 0.5)
    png = recall_chart(res, tmp_path / "chart.png")
    assert png is not None and png.read_bytes().startswith(b"\x89PNG")
    assert recall_chart({"retrievers": {"x": {"hr@8": 0.1}}}, tmp_path / "none.png") is None
