"""protobuf ↔ pydantic records at the gRPC boundary (validation happens on the pydantic
side, so a bad field becomes INVALID_ARGUMENT with the field's name)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from pydantic import ValidationError

from leadre_model.data.records import ID_PATTERN, Ad, Behavior, User
from services.common.errors import BadRequest
from services.common.grpcio import validation_message
from services.common.pb import leadre_pb2 as pb

_ID = re.compile(ID_PATTERN)


def check_id(field: str, value: str) -> str:
    if not _ID.fullmatch(value):
        raise BadRequest(f"{field}: must match {ID_PATTERN} (got {value[:80]!r})")
    return value


def check_user_id(user_id: str) -> str:
    return check_id("user_id", user_id)


def check_count(name: str, value: int, lo: int, hi: int) -> int:
    if not lo <= value <= hi:
        raise BadRequest(f"{name}: must be in [{lo}, {hi}] (got {value})")
    return value


def behaviors_from_pb(items: Sequence[pb.Behavior]) -> list[Behavior]:
    """All or nothing: the first invalid behaviour fails the request, naming its index."""
    out = []
    for i, b in enumerate(items):
        try:
            out.append(Behavior(user_id=b.user_id, ts=b.ts, domain=b.domain, action=b.action,
                                item_id=b.item_id))
        except ValidationError as exc:
            raise BadRequest(validation_message(f"behaviors[{i}]", exc)) from None
    return out


def behavior_to_pb(b: Behavior, item_name: str = "") -> pb.Behavior:
    return pb.Behavior(user_id=b.user_id, ts=b.ts, domain=b.domain.value, action=b.action.value,
                       item_id=b.item_id, item_name=item_name)


def ads_from_pb(items: Sequence[pb.AdFeatures]) -> list[Ad]:
    out = []
    for i, a in enumerate(items):
        try:
            out.append(Ad(ad_id=a.ad_id, name=a.name, product_type=a.product_type,
                          category_l1=a.category_l1, category_l2=a.category_l2,
                          attributes=list(a.attributes), advertiser_id=a.advertiser_id,
                          ecpm=a.ecpm, bid=a.bid, status=a.status or "active"))
        except ValidationError as exc:
            raise BadRequest(validation_message(f"ads[{i}]", exc)) from None
    return out


def ad_to_pb(ad: Ad) -> pb.AdFeatures:
    return pb.AdFeatures(ad_id=ad.ad_id, name=ad.name, product_type=ad.product_type,
                         category_l1=ad.category_l1, category_l2=ad.category_l2,
                         attributes=ad.attributes, advertiser_id=ad.advertiser_id, ecpm=ad.ecpm,
                         bid=ad.bid, status=str(ad.status))


def scored_ad(ad_id: str, score: float, provenance: int, ad: Ad | None) -> pb.ScoredAd:
    if ad is None:
        return pb.ScoredAd(ad_id=ad_id, score=score, provenance=provenance)
    return pb.ScoredAd(ad_id=ad_id, score=score, provenance=provenance, name=ad.name,
                       category=ad.category_l2, advertiser_id=ad.advertiser_id, ecpm=ad.ecpm)


def profile_to_pb(user: User, tier: int) -> pb.Profile:
    return pb.Profile(user_id=user.user_id, age=-1 if user.age is None else user.age,
                      gender=user.gender or "", residence=user.residence or "",
                      education=user.education or "", occupation=user.occupation or "",
                      consumption_level=user.consumption_level or "", arpu=user.arpu, tier=tier)
