"""Errors a user can act on. Their message is the whole story (what is wrong, and the file,
line or option where known), so the command line prints it as one line and exits 1; any
other exception is a bug and keeps its traceback (``leadre_model.clikit.friendly``).

The serving processes reuse the base (``services.common.errors``). Subclasses that replace a
``raise ValueError`` also subclass ``ValueError``, so existing ``except ValueError`` callers
keep working."""

from __future__ import annotations


class LeadreError(Exception):
    """Base of every user-facing error."""


class UsageError(LeadreError, ValueError):
    """Options or settings that do not fit: an unknown name, a missing companion option, a
    step that needs an earlier one (nothing published yet)."""


class BadInputError(LeadreError, ValueError):
    """Data the user passed (a file, a world, an index, a model) is not what the command
    needs: wrong format, corrupt, too small, built for another index; the message names it."""
