# Generated from proto/leadre.proto by `python -m services.common.proto_gen`; do not edit.
# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Provenance(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVENANCE_UNSPECIFIED: _ClassVar[Provenance]
    LEADRE: _ClassVar[Provenance]
    FALLBACK: _ClassVar[Provenance]
PROVENANCE_UNSPECIFIED: Provenance
LEADRE: Provenance
FALLBACK: Provenance

class ScoredAd(_message.Message):
    __slots__ = ("ad_id", "score", "provenance", "name", "category", "advertiser_id", "ecpm", "also_in_other_branch")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    ECPM_FIELD_NUMBER: _ClassVar[int]
    ALSO_IN_OTHER_BRANCH_FIELD_NUMBER: _ClassVar[int]
    ad_id: str
    score: float
    provenance: Provenance
    name: str
    category: str
    advertiser_id: str
    ecpm: float
    also_in_other_branch: bool
    def __init__(self, ad_id: _Optional[str] = ..., score: _Optional[float] = ..., provenance: _Optional[_Union[Provenance, str]] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., advertiser_id: _Optional[str] = ..., ecpm: _Optional[float] = ..., also_in_other_branch: _Optional[bool] = ...) -> None: ...

class AdvertiserPrior(_message.Message):
    __slots__ = ("advertiser_id", "score")
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    advertiser_id: str
    score: float
    def __init__(self, advertiser_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("user_id", "k")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ...) -> None: ...

class RetrieveResponse(_message.Message):
    __slots__ = ("user_id", "ads", "list_version", "list_age_s", "model_version", "list_hit", "leadre_exclusive", "fallback_exclusive", "both")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ADS_FIELD_NUMBER: _ClassVar[int]
    LIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIST_AGE_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIST_HIT_FIELD_NUMBER: _ClassVar[int]
    LEADRE_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_EXCLUSIVE_FIELD_NUMBER: _ClassVar[int]
    BOTH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    ads: _containers.RepeatedCompositeFieldContainer[ScoredAd]
    list_version: int
    list_age_s: float
    model_version: str
    list_hit: bool
    leadre_exclusive: int
    fallback_exclusive: int
    both: int
    def __init__(self, user_id: _Optional[str] = ..., ads: _Optional[_Iterable[_Union[ScoredAd, _Mapping]]] = ..., list_version: _Optional[int] = ..., list_age_s: _Optional[float] = ..., model_version: _Optional[str] = ..., list_hit: _Optional[bool] = ..., leadre_exclusive: _Optional[int] = ..., fallback_exclusive: _Optional[int] = ..., both: _Optional[int] = ...) -> None: ...

class RankFeaturesRequest(_message.Message):
    __slots__ = ("user_id", "candidate_ad_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_AD_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    candidate_ad_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., candidate_ad_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class CandidateFeatures(_message.Message):
    __slots__ = ("ad_id", "known", "max_prefix_overlap", "mean_prefix_overlap", "max_cosine", "mean_cosine", "weighted_prefix_overlap", "weighted_cosine", "advertiser_prior", "retrieved")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    MAX_PREFIX_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MEAN_PREFIX_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MAX_COSINE_FIELD_NUMBER: _ClassVar[int]
    MEAN_COSINE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_PREFIX_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_COSINE_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_PRIOR_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_FIELD_NUMBER: _ClassVar[int]
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
    def __init__(self, ad_id: _Optional[str] = ..., known: _Optional[bool] = ..., max_prefix_overlap: _Optional[int] = ..., mean_prefix_overlap: _Optional[float] = ..., max_cosine: _Optional[float] = ..., mean_cosine: _Optional[float] = ..., weighted_prefix_overlap: _Optional[float] = ..., weighted_cosine: _Optional[float] = ..., advertiser_prior: _Optional[float] = ..., retrieved: _Optional[bool] = ...) -> None: ...

class RankFeaturesResponse(_message.Message):
    __slots__ = ("user_id", "retrieved", "advertiser_priors", "candidates", "list_version", "model_version", "sid_levels")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RETRIEVED_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_PRIORS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    LIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SID_LEVELS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    retrieved: _containers.RepeatedCompositeFieldContainer[ScoredAd]
    advertiser_priors: _containers.RepeatedCompositeFieldContainer[AdvertiserPrior]
    candidates: _containers.RepeatedCompositeFieldContainer[CandidateFeatures]
    list_version: int
    model_version: str
    sid_levels: int
    def __init__(self, user_id: _Optional[str] = ..., retrieved: _Optional[_Iterable[_Union[ScoredAd, _Mapping]]] = ..., advertiser_priors: _Optional[_Iterable[_Union[AdvertiserPrior, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[CandidateFeatures, _Mapping]]] = ..., list_version: _Optional[int] = ..., model_version: _Optional[str] = ..., sid_levels: _Optional[int] = ...) -> None: ...

class GetListRequest(_message.Message):
    __slots__ = ("user_id", "k", "fallback_k")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_K_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    fallback_k: int
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., fallback_k: _Optional[int] = ...) -> None: ...

class UserList(_message.Message):
    __slots__ = ("user_id", "hit", "ads", "fallback", "advertisers", "version", "updated_ms", "model_version")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    ADS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    ADVERTISERS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATED_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    hit: bool
    ads: _containers.RepeatedCompositeFieldContainer[ScoredAd]
    fallback: _containers.RepeatedCompositeFieldContainer[ScoredAd]
    advertisers: _containers.RepeatedCompositeFieldContainer[AdvertiserPrior]
    version: int
    updated_ms: int
    model_version: str
    def __init__(self, user_id: _Optional[str] = ..., hit: _Optional[bool] = ..., ads: _Optional[_Iterable[_Union[ScoredAd, _Mapping]]] = ..., fallback: _Optional[_Iterable[_Union[ScoredAd, _Mapping]]] = ..., advertisers: _Optional[_Iterable[_Union[AdvertiserPrior, _Mapping]]] = ..., version: _Optional[int] = ..., updated_ms: _Optional[int] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetUserRequest(_message.Message):
    __slots__ = ("user_id", "recent")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    recent: int
    def __init__(self, user_id: _Optional[str] = ..., recent: _Optional[int] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("user_id", "age", "gender", "residence", "education", "occupation", "consumption_level", "arpu", "tier")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AGE_FIELD_NUMBER: _ClassVar[int]
    GENDER_FIELD_NUMBER: _ClassVar[int]
    RESIDENCE_FIELD_NUMBER: _ClassVar[int]
    EDUCATION_FIELD_NUMBER: _ClassVar[int]
    OCCUPATION_FIELD_NUMBER: _ClassVar[int]
    CONSUMPTION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    ARPU_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    age: int
    gender: str
    residence: str
    education: str
    occupation: str
    consumption_level: str
    arpu: float
    tier: int
    def __init__(self, user_id: _Optional[str] = ..., age: _Optional[int] = ..., gender: _Optional[str] = ..., residence: _Optional[str] = ..., education: _Optional[str] = ..., occupation: _Optional[str] = ..., consumption_level: _Optional[str] = ..., arpu: _Optional[float] = ..., tier: _Optional[int] = ...) -> None: ...

class Behavior(_message.Message):
    __slots__ = ("user_id", "ts", "domain", "action", "item_id", "item_name")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_NAME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    ts: int
    domain: str
    action: str
    item_id: str
    item_name: str
    def __init__(self, user_id: _Optional[str] = ..., ts: _Optional[int] = ..., domain: _Optional[str] = ..., action: _Optional[str] = ..., item_id: _Optional[str] = ..., item_name: _Optional[str] = ...) -> None: ...

class UserState(_message.Message):
    __slots__ = ("profile", "known", "recent", "state_version", "list_version")
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    STATE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIST_VERSION_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    known: bool
    recent: _containers.RepeatedCompositeFieldContainer[Behavior]
    state_version: int
    list_version: int
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ..., known: _Optional[bool] = ..., recent: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ..., state_version: _Optional[int] = ..., list_version: _Optional[int] = ...) -> None: ...

class RecordBehaviorsRequest(_message.Message):
    __slots__ = ("behaviors",)
    BEHAVIORS_FIELD_NUMBER: _ClassVar[int]
    behaviors: _containers.RepeatedCompositeFieldContainer[Behavior]
    def __init__(self, behaviors: _Optional[_Iterable[_Union[Behavior, _Mapping]]] = ...) -> None: ...

class RecordBehaviorsResponse(_message.Message):
    __slots__ = ("recorded", "event_ids")
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    EVENT_IDS_FIELD_NUMBER: _ClassVar[int]
    recorded: int
    event_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, recorded: _Optional[int] = ..., event_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class AdFeatures(_message.Message):
    __slots__ = ("ad_id", "name", "product_type", "category_l1", "category_l2", "attributes", "advertiser_id", "ecpm", "bid", "status")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_L1_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_L2_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    ECPM_FIELD_NUMBER: _ClassVar[int]
    BID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ad_id: str
    name: str
    product_type: str
    category_l1: str
    category_l2: str
    attributes: _containers.RepeatedScalarFieldContainer[str]
    advertiser_id: str
    ecpm: float
    bid: float
    status: str
    def __init__(self, ad_id: _Optional[str] = ..., name: _Optional[str] = ..., product_type: _Optional[str] = ..., category_l1: _Optional[str] = ..., category_l2: _Optional[str] = ..., attributes: _Optional[_Iterable[str]] = ..., advertiser_id: _Optional[str] = ..., ecpm: _Optional[float] = ..., bid: _Optional[float] = ..., status: _Optional[str] = ...) -> None: ...

class UpdateAdsRequest(_message.Message):
    __slots__ = ("ads",)
    ADS_FIELD_NUMBER: _ClassVar[int]
    ads: _containers.RepeatedCompositeFieldContainer[AdFeatures]
    def __init__(self, ads: _Optional[_Iterable[_Union[AdFeatures, _Mapping]]] = ...) -> None: ...

class GetAdsRequest(_message.Message):
    __slots__ = ("ad_ids",)
    AD_IDS_FIELD_NUMBER: _ClassVar[int]
    ad_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ad_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAdsResponse(_message.Message):
    __slots__ = ("ads",)
    ADS_FIELD_NUMBER: _ClassVar[int]
    ads: _containers.RepeatedCompositeFieldContainer[AdFeatures]
    def __init__(self, ads: _Optional[_Iterable[_Union[AdFeatures, _Mapping]]] = ...) -> None: ...

class UpdateAdsResponse(_message.Message):
    __slots__ = ("updated", "new_ads", "status_changes")
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    NEW_ADS_FIELD_NUMBER: _ClassVar[int]
    STATUS_CHANGES_FIELD_NUMBER: _ClassVar[int]
    updated: int
    new_ads: int
    status_changes: int
    def __init__(self, updated: _Optional[int] = ..., new_ads: _Optional[int] = ..., status_changes: _Optional[int] = ...) -> None: ...
