"""Typed records of the ad system: ads, content items, users and behaviours.

These pydantic models are the boundary: importers validate every row through them and
services (later) speak them. Bulk paths (the synthetic world, parquet I/O) move columns
and check them against the same rules in :mod:`leadre_model.data.store`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Ids end up in Redis keys and S-ID manifests: keep them printable and bounded.
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,64}$"
Id = Annotated[str, Field(pattern=ID_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=512)]


class Domain(StrEnum):
    AD = "ad"
    CONTENT = "content"


class Action(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"
    CONVERSION = "conversion"
    PLAY = "play"
    READ = "read"
    SEARCH = "search"


# Actions that count as engagement (the paper keeps only positive behaviours in prompts).
POSITIVE_ACTIONS: frozenset[Action] = frozenset(
    {Action.CLICK, Action.CONVERSION, Action.PLAY, Action.READ, Action.SEARCH}
)
AD_ACTIONS: frozenset[Action] = frozenset({Action.IMPRESSION, Action.CLICK, Action.CONVERSION})
CONTENT_ACTIONS: frozenset[Action] = frozenset(
    {Action.IMPRESSION, Action.PLAY, Action.READ, Action.SEARCH, Action.CLICK}
)


class AdStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Ad(_Record):
    ad_id: Id
    name: Text
    product_type: Text
    category_l1: Text
    category_l2: Text
    attributes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    advertiser_id: Id
    ecpm: float = Field(ge=0, allow_inf_nan=False)
    bid: float = Field(ge=0, allow_inf_nan=False)
    status: AdStatus = AdStatus.ACTIVE


class ContentItem(_Record):
    content_id: Id
    title: Text
    category: Text
    spu: Annotated[str, Field(max_length=64)] | None = None


class User(_Record):
    user_id: Id
    age: int | None = Field(default=None, ge=0, le=120)
    gender: Annotated[str, Field(max_length=32)] | None = None
    residence: Annotated[str, Field(max_length=64)] | None = None
    education: Annotated[str, Field(max_length=64)] | None = None
    occupation: Annotated[str, Field(max_length=64)] | None = None
    consumption_level: Annotated[str, Field(max_length=32)] | None = None
    arpu: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class Behavior(_Record):
    user_id: Id
    ts: int = Field(ge=0, description="unix seconds, or a position when the source has no time")
    domain: Domain
    action: Action
    item_id: Id

    @model_validator(mode="after")
    def _action_fits_domain(self) -> Behavior:
        allowed = AD_ACTIONS if self.domain is Domain.AD else CONTENT_ACTIONS
        if self.action not in allowed:
            raise ValueError(f"action {self.action.value!r} is not valid in the {self.domain.value} domain")
        return self

    def is_positive(self) -> bool:
        return self.action in POSITIVE_ACTIONS


RECORD_TYPES: dict[str, type[_Record]] = {
    "ads": Ad,
    "content": ContentItem,
    "users": User,
    "behaviors": Behavior,
}
