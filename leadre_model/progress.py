"""Progress output that suits where it goes.

On a terminal every long step shows a tqdm bar, as tqdm draws it. In a log or a pipe (stderr
is not a terminal) a bar redrawn with carriage returns turns into one line of thousands of
characters, so there each bar writes plain lines instead: one per 10 % of its total (one
every minute when it has no total), and one when it ends, e.g.::

    embed: 50 % (1,000/2,000 text), 6s elapsed, ~6s left
    embed: done, 2,000 text in 12s

The switch is made once, for every tqdm bar in the process (ours, and those of
sentence-transformers, transformers, TRL and datasets), by :func:`plain_progress` — the
``leadre`` command enters it when stderr is not a terminal. ``--no-progress`` turns bars off
altogether; each long command takes ``--progress/--no-progress``.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeVar

from tqdm import std

T = TypeVar("T")
MAX_LINE = 240  # a plain progress line never grows past this (postfixes are cut)
QUIET_S = 60.0  # a bar without a total writes a line at most this often


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def _count(bar: Any, n: float) -> str:
    if bar.unit_scale:
        return std.tqdm.format_sizeof(n * (bar.unit_scale if bar.unit_scale is not True else 1),
                                      divisor=bar.unit_divisor)
    return f"{n:,.0f}" if float(n).is_integer() else f"{n:,.2f}"


def plain_line(bar: Any, final: bool = False) -> str:
    """One self-contained line describing ``bar`` now (no carriage return, no bar)."""
    d = bar.format_dict
    desc = (d.get("prefix") or "progress").rstrip(": ")
    unit = str(d.get("unit") or "it").strip()
    n, total, elapsed = d["n"], d["total"], d["elapsed"] or 0.0
    spent = std.tqdm.format_interval(elapsed)
    if final:
        if total and n < total:
            line = f"{desc}: stopped at {_count(bar, n)}/{_count(bar, total)} {unit} after {spent}"
        else:
            line = f"{desc}: done, {_count(bar, n)} {unit} in {spent}"
    elif total:
        line = (f"{desc}: {100 * n / total:.0f} % ({_count(bar, n)}/{_count(bar, total)} {unit}), "
                f"{spent} elapsed")
        if n > 0:
            line += f", ~{std.tqdm.format_interval(elapsed * (total - n) / n)} left"
    else:
        line = f"{desc}: {_count(bar, n)} {unit}, {spent} elapsed"
    postfix = str(d.get("postfix") or "").strip(", ")
    if postfix:
        line += f" ({postfix})"
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


def _write(bar: Any, text: str) -> None:
    bar.fp.write(text)
    try:
        bar.fp.flush()
    except (AttributeError, ValueError):
        pass


def _plain_display(self: Any, msg: str | None = None, pos: int | None = None) -> bool:
    """tqdm.display for logs: a line per 10 % step (or per minute), the last one at close.

    ``close()`` sets ``disable`` before its last call, then writes the newline itself when
    the bar is left on screen (``msg is None``) or asks to clear it (``msg == ''``)."""
    closing = bool(self.disable)
    if closing:
        if msg is None:  # leave=True: close() ends the line
            _write(self, plain_line(self, final=True))
            return True
        _write(self, plain_line(self, final=True) + "\n")
        return False  # nothing on screen to clear: no stray carriage return
    if msg is not None:  # a clear request (tqdm.write): plain lines need none
        return False
    state = self.__dict__.setdefault("_plain_state", {"step": 0, "t": time.monotonic()})
    if self.total:
        step = int(10 * self.n / self.total)
        if 0 < step < 10 and step > state["step"]:
            state["step"] = step
            _write(self, plain_line(self) + "\n")
    elif time.monotonic() - state["t"] >= QUIET_S:
        state["t"] = time.monotonic()
        _write(self, plain_line(self) + "\n")
    return True


def _plain_clear(self: Any, nolock: bool = False) -> None:
    """Nothing to clear: a plain line stays as written."""


def wrap(text: str, width: int = MAX_LINE) -> str:
    """``text`` with every line longer than ``width`` broken at spaces (continuation lines
    indented): what a message written beside the bars becomes in a log (transformers writes
    each training log dict as one line through ``tqdm.write``)."""
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ", break_long_words=False,
                                   break_on_hyphens=False) if len(line) > width else line
                     for line in str(text).split("\n"))


@contextmanager
def plain_progress() -> Iterator[None]:
    """Within the block every tqdm bar of the process writes plain lines (module doc)."""
    saved = std.tqdm.display, std.tqdm.clear, std.tqdm.__dict__["write"]
    write = saved[2].__func__

    def plain_write(cls: Any, s: str, file: Any = None, end: str = "\n",
                    nolock: bool = False) -> None:
        write(cls, wrap(s), file=file, end=end, nolock=nolock)

    std.tqdm.display, std.tqdm.clear = _plain_display, _plain_clear  # type: ignore[method-assign]
    std.tqdm.write = classmethod(plain_write)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        std.tqdm.display, std.tqdm.clear = saved[:2]  # type: ignore[method-assign]
        std.tqdm.write = saved[2]  # type: ignore[method-assign]


def bar(iterable: Iterable[T] | None = None, *, desc: str, unit: str = "it",
        total: float | None = None, enabled: bool = True, **kw: Any) -> std.tqdm:
    """A tqdm bar (plain lines in a log, see the module doc); ``enabled=False``: silent."""
    return std.tqdm(iterable, desc=desc, unit=unit, total=total, disable=not enabled,
                    file=sys.stderr, **kw)
