"""`leadre report …`: figures rendered from the reports' results files, so that they exist
once (``leadre_model/eval/results_table.py``)."""

from __future__ import annotations

from pathlib import Path

import typer

from leadre_model.clikit import err_console, friendly

report_app = typer.Typer(help="Tables rendered from the results files under docs/results.",
                         no_args_is_help=True)


@report_app.command("table")
@friendly
def table(
    results: Path = typer.Option(Path("docs/results"), help="where the reports' results.json are"),
    write: Path | None = typer.Option(None, help="replace the table in this README"),
    check: Path | None = typer.Option(None, help="exit 1 when this README's table differs"),
) -> None:
    """The README's results table (markdown) from every results.json that has a `run.table`;
    prints it, or writes it into a README between its marker lines."""
    from leadre_model.eval.results_table import readme_block, render, write_readme

    readme = write or check
    rendered = render(results, link_from=readme.parent if readme else Path("."))
    if check is not None:
        if readme_block(check) != rendered:
            err_console.print(f"{check}: the results table differs from what `leadre report "
                              f"table` renders; run `leadre report table --write {check}`",
                              highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        err_console.print(f"{check}: results table up to date", highlight=False)
        return
    if write is not None:
        changed = write_readme(write, rendered)
        err_console.print(f"{write}: results table {'rewritten' if changed else 'unchanged'}",
                          highlight=False)
        return
    typer.echo(rendered)
