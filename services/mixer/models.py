"""The Mixer's HTTP API models (the gRPC messages in proto/leadre.proto mirror them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

from leadre_model.data.records import ID_PATTERN

Id = Annotated[str, Field(pattern=ID_PATTERN, examples=["u0001"])]
Provenance = Literal["leadre", "fallback"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrieveRequest(_Model):
    user_id: Id
    k: int = Field(default=10, ge=1, le=1000, description="ads to return (<= mixer_max_k)")


class ServedAd(_Model):
    """One served ad. ``score`` is on the scale of the branch named by ``provenance``: the two
    scales are not comparable, so compare scores only between ads of the same branch."""

    ad_id: str
    name: str = ""
    category: str = ""
    advertiser_id: str = ""
    ecpm: float = 0.0
    score: float = Field(description=(
        "On the scale of the branch in `provenance`, never comparable across branches. "
        "leadre: log-probability of the ad's semantic ID under the model (<= 0, e.g. -5.1; "
        "higher is likelier); fallback: eCPM x popularity of the ad in the user's categories "
        "(>= 0, e.g. 2378.8). The order is the merge's (LEADRE ads first, up to their share of "
        "k; then fallback ads), not a sort by score."),
        examples=[-5.14])
    provenance: Provenance = Field(description="the branch that returned the ad, and so the "
                                   "scale of `score`: leadre or fallback")
    also_in_other_branch: bool = False


class Consumption(_Model):
    """Served ads by the branches that returned them (§5.3's consumption)."""

    leadre_exclusive: int = 0
    fallback_exclusive: int = 0
    both: int = 0


class RetrieveResponse(_Model):
    user_id: str
    ads: list[ServedAd]
    list_hit: bool = Field(description="false: no LEADRE list (miss or expired)")
    list_version: int = 0
    list_age_s: float | None = Field(default=None, description="seconds since the list was written")
    model_version: str = ""
    consumption: Consumption


# The retrieve response as plain dicts, serialised without validating them again: the
# Mixer builds every field itself (hot path). tests/services/mixer/test_models.py keeps
# these mirrors equal to the models above, byte for byte.
class ServedAdDict(TypedDict):
    ad_id: str
    name: str
    category: str
    advertiser_id: str
    ecpm: float
    score: float
    provenance: Provenance
    also_in_other_branch: bool


class ConsumptionDict(TypedDict):
    leadre_exclusive: int
    fallback_exclusive: int
    both: int


class RetrieveResponseDict(TypedDict):
    user_id: str
    ads: list[ServedAdDict]
    list_hit: bool
    list_version: int
    list_age_s: float | None
    model_version: str
    consumption: ConsumptionDict


RETRIEVE_JSON: TypeAdapter[RetrieveResponseDict] = TypeAdapter(RetrieveResponseDict)


class RankFeaturesRequest(_Model):
    user_id: Id
    candidate_ad_ids: list[Id] = Field(min_length=1, max_length=10_000)


class CandidateFeatures(_Model):
    ad_id: str
    known: bool
    max_prefix_overlap: int
    mean_prefix_overlap: float
    max_cosine: float
    mean_cosine: float
    weighted_prefix_overlap: float
    weighted_cosine: float
    advertiser_prior: float
    retrieved: bool


class AdvertiserPrior(_Model):
    advertiser_id: str
    score: float


class RankFeaturesResponse(_Model):
    user_id: str
    retrieved: list[ServedAd]
    advertiser_priors: list[AdvertiserPrior]
    candidates: list[CandidateFeatures]
    list_version: int
    model_version: str
    sid_levels: int


class BehaviorOut(_Model):
    ts: int
    domain: str
    action: str
    item_id: str
    item_name: str


class UserOut(_Model):
    user_id: str
    known: bool
    profile: dict[str, str | int | float | None]
    recent: list[BehaviorOut]
    state_version: int
    list_version: int


class ErrorOut(_Model):
    detail: str
