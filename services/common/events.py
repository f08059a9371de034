"""Events on the services' Redis Streams, as flat string fields (Streams store strings).

A stream entry that does not parse into its model goes to the stream's dead-letter
stream with the reason (:func:`dead_letter_fields`); it is never dropped silently.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from leadre_model.data.records import ID_PATTERN, Action, Behavior, Domain

M = TypeVar("M", bound=BaseModel)
TIERS = 25  # ARPU tiers of the Adaptive Resource Distribution (§4.4.1)


class BehaviorEvent(BaseModel):
    """One recorded behaviour; ``seq`` is the user's state version after recording it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: str = Field(pattern=ID_PATTERN)
    seq: int = Field(ge=1)
    tier: int = Field(ge=0, lt=TIERS)
    ts: int = Field(ge=0)
    domain: Domain
    action: Action
    item_id: str = Field(pattern=ID_PATTERN)

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.model_dump(mode="json").items()}

    @classmethod
    def of(cls, b: Behavior, seq: int, tier: int) -> BehaviorEvent:
        return cls(user_id=b.user_id, seq=seq, tier=tier, ts=b.ts, domain=b.domain,
                   action=b.action, item_id=b.item_id)


class AdChange(StrEnum):
    NEW = "new"  # needs an S-ID and an `add` on every trie
    STATUS = "status"  # paused or resumed


class AdUpdateEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ad_id: str = Field(pattern=ID_PATTERN)
    change: AdChange

    def to_fields(self) -> dict[str, str]:
        return {"ad_id": self.ad_id, "change": self.change.value}


def parse_fields(model: type[M], fields: dict[str, str]) -> M | str:
    """The event, or the reason it is malformed (one line)."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "event"
        return f"{where}: {first['msg']} ({exc.error_count()} error(s))"


DEAD_MAX_FIELDS, DEAD_MAX_CHARS = 32, 1024  # an oversized entry is kept, truncated


def dead_letter_fields(entry_id: str, fields: dict[str, str], reason: str) -> dict[str, str]:
    """What the dead-letter stream keeps: the original fields (at most 32, each cut to
    1,024 characters, so an oversized entry cannot bloat the dead-letter stream), the
    entry id, the reason."""
    kept = {f"orig_{k[:64]}": v[:DEAD_MAX_CHARS]
            for k, v in list(fields.items())[:DEAD_MAX_FIELDS]}
    if len(fields) > DEAD_MAX_FIELDS or any(len(v) > DEAD_MAX_CHARS for v in fields.values()):
        kept["truncated"] = "1"
    return {**kept, "orig_id": entry_id, "reason": reason[:DEAD_MAX_CHARS]}
