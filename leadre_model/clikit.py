"""Shared by every `leadre` command: the consoles, the error policy and small report
printers.

Error policy: an error the user can act on (``LeadreError``, bad rows, an invalid option
value caught by pydantic, a missing file) is one clear message and exit 1; anything else is
a bug and keeps its traceback."""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markdown import Markdown
from rich.measure import Measurement
from rich.table import Table

from leadre_model.data.errors import DataValidationError
from leadre_model.errors import LeadreError

WIDEST_TABLE = 1000  # a table in a log is printed at its natural width, up to this


class LeadreConsole(Console):
    """A rich console that suits where it goes. On a terminal it is rich's. In a log or a
    pipe (not a terminal, where rich assumes 80 columns) a table is printed at its natural
    width instead of being cut to "0.0…" cells, and Markdown as its plain source text."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if self.is_terminal or not objects:
            return super().print(*objects, **kwargs)
        if len(objects) == 1 and isinstance(objects[0], Markdown):  # table rows kept whole
            text = "\n".join(line if line.lstrip().startswith("|") else
                             textwrap.fill(line, max(self.width, 100), break_long_words=False,
                                           break_on_hyphens=False) or line
                             for line in objects[0].markup.splitlines())
            return super().print(text, markup=False, highlight=False, soft_wrap=True)
        wide = max((Measurement.get(self, self.options.update_width(WIDEST_TABLE), t).maximum
                    for t in objects if isinstance(t, Table)), default=0)
        if wide <= self.width:
            return super().print(*objects, **kwargs)
        saved = self._width
        self._width = wide
        try:
            return super().print(*objects, **kwargs)
        finally:
            self._width = saved


console = LeadreConsole()
err_console = LeadreConsole(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Report user-facing errors as one message (file:line where known) and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DataValidationError as exc:
            for e in exc.errors:
                err_console.print(f"[red]error[/red] {e}", highlight=False, soft_wrap=True)
            if exc.total > len(exc.errors):
                err_console.print(f"... and {exc.total - len(exc.errors)} more bad row(s)")
            err_console.print("nothing was written")
            raise typer.Exit(1) from None
        except (LeadreError, ValidationError, FileNotFoundError) as exc:
            err_console.print(f"[red]error[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def print_counts(title: str, manifest: dict[str, Any]) -> None:
    """A world's row counts (``manifest["counts"]``, or the mapping itself) as a table."""
    counts = manifest.get("counts", manifest)
    console.print(title, highlight=False, soft_wrap=True)  # a table title would wrap paths
    table = Table()
    table.add_column("table")
    table.add_column("rows", justify="right")
    for k, v in counts.items():
        if isinstance(v, int):
            table.add_row(k, f"{v:,}")
    console.print(table)
