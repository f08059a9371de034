"""The errors the servers answer with, for HTTP and gRPC alike: a request the client must
fix (HTTP 422, INVALID_ARGUMENT) and a dependency that is down (HTTP 503, UNAVAILABLE)."""

from __future__ import annotations

from leadre_model.errors import LeadreError


class BadRequest(LeadreError, ValueError):
    """A request the client must fix; answered with this message."""


class Unavailable(LeadreError, RuntimeError):
    """A dependency (Redis, the user server, a published version) is not there; answered
    with UNAVAILABLE / 503."""
