"""Row-level validation errors reported as ``file:line: reason``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from leadre_model.errors import LeadreError


@dataclass(frozen=True)
class RowError:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataValidationError(LeadreError):
    """Raised after a whole file was checked; carries every bad row (up to a cap)."""

    def __init__(self, errors: list[RowError], total: int | None = None) -> None:
        self.errors = errors
        self.total = total if total is not None else len(errors)
        shown = "\n".join(str(e) for e in errors)
        more = f"\n... and {self.total - len(errors)} more" if self.total > len(errors) else ""
        super().__init__(f"{self.total} bad row(s):\n{shown}{more}")


@dataclass
class ErrorCollector:
    """Collects row errors while a loader keeps scanning, so users see all problems at once."""

    cap: int = 50
    errors: list[RowError] = field(default_factory=list)
    total: int = 0

    def add(self, path: Path, line: int, reason: str) -> None:
        self.total += 1
        if len(self.errors) < self.cap:
            self.errors.append(RowError(Path(path), line, reason))

    def add_validation(
        self, path: Path, line: int, exc: ValidationError, rename: Mapping[str, str] | None = None
    ) -> None:
        self.add(path, line, validation_reason(exc, rename))

    def raise_if_any(self) -> None:
        if self.total:
            raise DataValidationError(self.errors, self.total)


def validation_reason(exc: ValidationError, rename: Mapping[str, str] | None = None) -> str:
    """``column: message; ...`` for a pydantic error, with record fields renamed to columns."""
    rename = rename or {}
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        head = loc.split(".")[0]
        loc = (rename.get(head, head) + loc[len(head) :]) if loc else "row"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
