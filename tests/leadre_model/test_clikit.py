"""The command line's error policy: user-facing errors are one line and exit 1, anything else
is a bug and keeps its traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic import BaseModel, ValidationError

from leadre_model.clikit import friendly
from leadre_model.data.errors import DataValidationError, RowError
from leadre_model.errors import BadInputError, LeadreError, UsageError
from services.common.errors import BadRequest, Unavailable


def _raising(exc: BaseException):
    @friendly
    def command() -> None:
        raise exc

    return command


class _Cfg(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Cfg(n="many")  # type: ignore[arg-type]
    except ValidationError as exc:
        return exc
    raise AssertionError("no error")


@pytest.mark.parametrize("exc", [
    UsageError("--model needs --index"), BadInputError("/x/index.json: index format 0 != 1"),
    FileNotFoundError("/x: no such table"), BadRequest("k: must be in [1, 100]"),
])
def test_user_facing_errors_are_one_line_and_exit_1(exc: Exception, capsys) -> None:
    with pytest.raises(typer.Exit) as done:
        _raising(exc)()
    assert done.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error {exc}" and "Traceback" not in err


def test_validation_and_row_errors_are_reported(capsys) -> None:
    with pytest.raises(typer.Exit):
        _raising(_validation_error())()
    assert "n\n  Input should be a valid integer" in capsys.readouterr().err
    rows = DataValidationError([RowError(Path("items.csv"), 3, "ecpm: must be >= 0")], total=4)
    with pytest.raises(typer.Exit):
        _raising(rows)()
    err = capsys.readouterr().err
    assert "items.csv:3: ecpm: must be >= 0" in err and "3 more bad row(s)" in err
    assert "nothing was written" in err


@pytest.mark.parametrize("exc", [ValueError("bad shape"), KeyError("row 7"), RuntimeError("x")])
def test_bugs_keep_their_traceback(exc: Exception) -> None:
    with pytest.raises(type(exc)):
        _raising(exc)()


def test_error_types_keep_their_old_bases() -> None:
    for cls in (UsageError, BadInputError, BadRequest):
        assert issubclass(cls, LeadreError) and issubclass(cls, ValueError)
    assert issubclass(Unavailable, LeadreError) and issubclass(Unavailable, RuntimeError)
    assert issubclass(DataValidationError, LeadreError)
