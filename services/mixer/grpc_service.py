"""The Mixer's gRPC service (``leadre.v1.Mixer``): the same core as the HTTP API."""

from __future__ import annotations

from typing import TypeVar

import grpc
from pydantic import BaseModel, ValidationError

from services.common.errors import BadRequest
from services.common.grpcio import rpc, validation_message
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.mixer.core import MixerCore
from services.mixer.models import RankFeaturesRequest, RetrieveRequest, ServedAd

SERVICE = "leadre.v1.Mixer"
M = TypeVar("M", bound=BaseModel)
_PROVENANCE = {"leadre": pb.LEADRE, "fallback": pb.FALLBACK}


def _ad(a: ServedAd) -> pb.ScoredAd:
    return pb.ScoredAd(ad_id=a.ad_id, score=a.score, provenance=_PROVENANCE[a.provenance],
                       name=a.name, category=a.category, advertiser_id=a.advertiser_id,
                       ecpm=a.ecpm, also_in_other_branch=a.also_in_other_branch)


def _validated(model: type[M], **fields: object) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise BadRequest(validation_message("request", exc)) from None


class MixerService(pb_grpc.MixerServicer):
    def __init__(self, core: MixerCore) -> None:
        self.core = core
        self.latency = core.m.latency

    @rpc("grpc Retrieve")
    async def Retrieve(self, req: pb.RetrieveRequest, context: grpc.aio.ServicerContext
                       ) -> pb.RetrieveResponse:
        r = _validated(RetrieveRequest, user_id=req.user_id, k=req.k)
        res = await self.core.retrieve(r.user_id, r.k)
        c = res.consumption
        return pb.RetrieveResponse(
            user_id=res.user_id, ads=[_ad(a) for a in res.ads], list_version=res.list_version,
            list_age_s=-1.0 if res.list_age_s is None else res.list_age_s,
            model_version=res.model_version, list_hit=res.list_hit,
            leadre_exclusive=c.leadre_exclusive, fallback_exclusive=c.fallback_exclusive,
            both=c.both)

    @rpc("grpc RankFeatures")
    async def RankFeatures(self, req: pb.RankFeaturesRequest, context: grpc.aio.ServicerContext
                           ) -> pb.RankFeaturesResponse:
        r = _validated(RankFeaturesRequest, user_id=req.user_id,
                       candidate_ad_ids=list(req.candidate_ad_ids))
        res = await self.core.rank_features(r.user_id, r.candidate_ad_ids)
        return pb.RankFeaturesResponse(
            user_id=res.user_id, retrieved=[_ad(a) for a in res.retrieved],
            advertiser_priors=[pb.AdvertiserPrior(advertiser_id=a.advertiser_id, score=a.score)
                               for a in res.advertiser_priors],
            candidates=[pb.CandidateFeatures(**c.model_dump()) for c in res.candidates],
            list_version=res.list_version, model_version=res.model_version,
            sid_levels=res.sid_levels)
