"""The `leadre` command: the offline package's sub-commands, the services' sub-commands and
``leadre demo``.

``leadre_model`` never imports ``services``; this module is the one place that sees both.
Every command turns expected failures into one clear message and a non-zero exit, never a
traceback (``leadre_model.clikit.friendly``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from leadre_model.cli import data_app, ensemble, eval_cmd, index_app, train
from leadre_model.clikit import friendly
from leadre_model.eval.report_cli import report_app
from leadre_model.experiments.cli import experiment_app
from leadre_model.progress import is_terminal, plain_progress
from services.cli import pipeline_app, serve_app

app = typer.Typer(help="LEADRE: LLM-based generative ad retrieval.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
app.add_typer(index_app, name="index")
app.add_typer(serve_app, name="serve")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(experiment_app, name="experiment")
app.add_typer(report_app, name="report")
app.command("train")(train)
app.command("eval")(eval_cmd)
app.command("ensemble")(ensemble)


@app.callback()
def main(ctx: typer.Context) -> None:
    """LEADRE: LLM-based generative ad retrieval."""
    # Progress that suits where it goes: bars on a terminal, plain lines in a log
    # (leadre_model/progress.py); tables follow the same rule (clikit.LeadreConsole).
    if not is_terminal(sys.stderr):
        ctx.with_resource(plain_progress())


@app.command("demo")
@friendly
def demo(
    workdir: Path = typer.Option(Path("runs/demo"), help="where the demo writes its files"),
    users: int = typer.Option(500, min=1),
    ads: int = typer.Option(2000, min=2),
    seed: int = typer.Option(0),
    progress: bool = typer.Option(True, help="progress bars (plain lines in a log)"),
) -> None:
    """End to end on the embedded default: synthetic world → index → report → training →
    retrievals for a few users → the live system (services) answering through the Mixer."""
    from leadre.demo import run_demo

    run_demo(workdir, users=users, ads=ads, seed=seed, progress=progress)


if __name__ == "__main__":
    app()
