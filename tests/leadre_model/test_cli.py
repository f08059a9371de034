"""The `leadre` command as users run it: clear errors with file:line, no tracebacks,
nothing half-written, and the happy path from world to index report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from leadre_model.index.sid_index import load_index, load_trie


def leadre(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "leadre", *args],
        capture_output=True, text=True, cwd=cwd, timeout=600, check=False,
    )


def assert_clean_failure(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr + res.stdout
    for needle in needles:
        assert needle in res.stderr, res.stderr


def test_import_reports_bad_rows_by_file_and_line_and_writes_nothing(tmp_path):
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,name,category_l1,ecpm\n"
        "ad1,Red running shoes,Apparel,1.5\n"
        "ad2,Blue kettle,Home,-3\n"
        "ad3,Green tea,Food,2\n"
    )
    inter = tmp_path / "inter.csv"
    inter.write_text("u1,ad1,10\nu1,ad3,20,dance\nu2,ad9,30\n")
    out = tmp_path / "world"
    res = leadre("data", "import", "--items", str(items), "--interactions", str(inter),
                 "--out", str(out))
    assert_clean_failure(res, f"{items}:3:", f"{inter}:2:", f"{inter}:3:", "nothing was written")
    assert not out.exists()


def test_missing_world_is_a_clear_error(tmp_path):
    res = leadre("index", "build", "--world", str(tmp_path / "nope"), "--out", str(tmp_path / "i"))
    assert_clean_failure(res, "nope")
    assert not (tmp_path / "i").exists()


def test_report_on_a_non_index_directory(tmp_path):
    res = leadre("index", "report", "--index", str(tmp_path), "--world", str(tmp_path))
    assert_clean_failure(res, "not an index directory")


def test_bad_options_are_rejected_before_work(tmp_path):
    world = tmp_path / "w"
    assert leadre("data", "synth", "--out", str(world), "--users", "5", "--ads", "40",
                  "--content", "20", "--no-progress").returncode == 0
    res = leadre("index", "build", "--world", str(world), "--out", str(tmp_path / "i"),
                 "--template", "The ad {bogus}")
    assert_clean_failure(res, "unknown field")
    res = leadre("index", "build", "--world", str(world), "--out", str(tmp_path / "i"),
                 "--codebook-size", "1")
    assert_clean_failure(res, "codebook_size")
    res = leadre("data", "synth", "--out", str(world), "--users", "0")
    assert res.returncode == 2 and "Traceback" not in res.stderr  # usage error


def test_world_to_index_to_report_and_add(tmp_path):
    world, index = tmp_path / "world", tmp_path / "index"
    cache = str(tmp_path / "emb.npz")
    res = leadre("data", "synth", "--out", str(world), "--users", "30", "--ads", "300",
                 "--content", "100", "--no-progress")
    assert res.returncode == 0, res.stderr
    res = leadre("index", "build", "--world", str(world), "--out", str(index), "--epochs", "10",
                 "--cache", cache, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "indexed 300 ads" in res.stdout
    res = leadre("index", "report", "--index", str(index), "--world", str(world))
    assert res.returncode == 0, res.stderr
    assert (index / "report" / "report.md").exists()
    assert (index / "report" / "codebook_usage.png").exists()

    # a bigger world with the same seed extends the catalog: the first 300 ads keep S-IDs
    before = load_index(index)
    bigger = tmp_path / "world2"
    assert leadre("data", "synth", "--out", str(bigger), "--users", "30", "--ads", "330",
                  "--content", "100", "--no-progress").returncode == 0
    res = leadre("index", "add", "--index", str(index), "--world", str(bigger), "--cache", cache,
                 "--no-progress")
    assert res.returncode == 0, res.stderr
    after = load_index(index)
    assert len(after) > len(before)
    keep = [after.row_of(a) for a in before.ad_ids]
    assert (after.codes[keep] == before.codes).all()
    assert len(np.unique(after.codes, axis=0)) == len(after)
    trie = load_trie(index)
    assert (trie.lookup(after.codes) == np.where(after.active, np.arange(len(after)), -1)).all()


def test_eval_baselines_writes_results_and_refuses_model_without_index(tmp_path):
    world = tmp_path / "world"
    assert leadre("data", "synth", "--out", str(world), "--users", "40", "--ads", "80",
                  "--content", "80").returncode == 0
    out = tmp_path / "eval"
    res = leadre("eval", "--world", str(world), "--baselines", "popularity,itemcf",
                 "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "popularity" in res.stdout and "hr@8" in res.stdout
    assert "| itemcf |" in (out / "results.md").read_text()
    png = (out / "recall_at_10.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000  # Recall@10 ± se, seen kept / masked
    run = json.loads((out / "results.json").read_text())["run"]
    assert run["command"].startswith("leadre eval --world") and run["cores"] >= 1
    assert run["commit"] and run["wall_s"] >= 0
    bad = leadre("eval", "--world", str(world), "--model", str(tmp_path))
    assert_clean_failure(bad, "--model needs --index")
    unknown = leadre("eval", "--world", str(world), "--baselines", "oracle")
    assert_clean_failure(unknown, "unknown baselines")
    no_fit = leadre("eval", "--world", str(world), "--sasrec-seeds", "0")
    assert_clean_failure(no_fit, "--sasrec-seeds")
