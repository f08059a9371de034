"""Output that suits where it goes: in a log, progress bars are plain lines (one per 10 %,
one at the end, no carriage returns) and tables are printed whole, never cut to 80 columns."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from rich.table import Table
from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

from leadre_model.clikit import LeadreConsole
from leadre_model.progress import MAX_LINE, plain_progress

LONGEST = 300  # the bound for any line of a command's log


def _lines(text: str) -> list[str]:
    assert "\r" not in text, "carriage returns in a log"
    return text.splitlines()


def test_bars_write_a_line_per_tenth_and_one_at_the_end() -> None:
    out = io.StringIO()
    with plain_progress():
        with tqdm(total=1000, desc="embed", unit="text", file=out, mininterval=0) as bar:
            for _ in range(1000):
                bar.update(1)
                bar.set_postfix(loss="0.1234")
        for _ in auto_tqdm(range(50), desc="RQ-VAE", unit="epoch", file=out, mininterval=0):
            pass
        with tqdm(desc="rows", unit="row", file=out, leave=False) as bar:  # no total
            bar.update(7)
        tqdm.write("a message between bars", file=out)
        logs = {f"rewards/metric_{i}": f"{i / 7:.4g}" for i in range(30)}
        bar = tqdm(total=2, file=out)
        bar.write(str(logs), file=out)  # how transformers logs a training step
        bar.close()
    lines = _lines(out.getvalue())
    embed = [x for x in lines if x.startswith("embed")]
    assert len(embed) == 10, embed  # 10 % … 90 %, then done
    assert embed[0].startswith("embed: 10 % (100/1,000 text)") and "left" in embed[0]
    assert embed[-1].startswith("embed: done, 1,000 text in")
    assert len([x for x in lines if x.startswith("RQ-VAE")]) == 10
    assert any(x.startswith("rows: done, 7 row") for x in lines)
    assert "a message between bars" in lines
    assert any(x.startswith("{'rewards/metric_0'") for x in lines)
    assert any(x.startswith("  'rewards/metric_") for x in lines)  # wrapped, not cut
    assert "'rewards/metric_29': '4.143'}" in out.getvalue().replace("\n  ", " ")
    assert max(len(x) for x in lines) <= MAX_LINE


def test_a_stopped_bar_says_so_and_bars_draw_normally_outside() -> None:
    out = io.StringIO()
    with plain_progress(), tqdm(total=200, desc="sasrec", unit="epoch", file=out) as bar:
        bar.update(34)
    assert _lines(out.getvalue())[-1].startswith("sasrec: stopped at 34/200 epoch after")
    drawn = io.StringIO()
    with tqdm(total=3, file=drawn) as bar:  # outside the block: tqdm's own bar again
        bar.update(3)
    assert "\r" in drawn.getvalue()


def test_tables_in_a_log_are_printed_at_full_width() -> None:
    out = io.StringIO()
    console = LeadreConsole(file=out)  # not a terminal: rich would assume 80 columns
    table = Table()
    table.add_column("figure")
    names = [f"sasrec_ce+xs_{i}" for i in range(8)]
    for name in names:
        table.add_column(name, justify="right")
    table.add_row("recall@10", *(f"0.{i}123" for i in range(8)))
    console.print(table)
    text = out.getvalue()
    assert "…" not in text
    for name in names:
        assert name in text
    assert "0.7123" in text
    console.rule("a rule keeps the console's width")
    assert len(out.getvalue().splitlines()[-1]) == console.width


def test_index_build_in_a_log_writes_no_long_line(tmp_path: Path) -> None:
    world, index = tmp_path / "world", tmp_path / "index"
    run = [sys.executable, "-m", "leadre"]
    subprocess.run([*run, "data", "synth", "--out", str(world), "--users", "30", "--ads", "300",
                    "--content", "100"], check=True, capture_output=True, timeout=300)
    res = subprocess.run([*run, "index", "build", "--world", str(world), "--out", str(index),
                          "--epochs", "20", "--cache", str(tmp_path / "emb.npz")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=600, check=False)
    assert res.returncode == 0, res.stdout
    lines = _lines(res.stdout)
    assert max(len(x) for x in lines) <= LONGEST, max(lines, key=len)
    assert any(x.startswith("embed: done, 300 text") for x in lines), res.stdout
    assert any(x.startswith("RQ-VAE: ") for x in lines), res.stdout
    assert any(x.startswith("indexed 300 ads") for x in lines)
