"""What the Mixer does, independent of HTTP or gRPC: ask the user server for the user's
list and the fallback branch, merge, count consumption; compute ranking features."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpcio import BadRequest, Unavailable
from services.common.metrics import AGE_BUCKETS, Metrics
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.security import client_channel
from services.common.settings import Settings
from services.mixer.features import FeatureIndex, advertiser_priors
from services.mixer.merge import merge
from services.mixer.models import (
    AdvertiserPrior,
    BehaviorOut,
    CandidateFeatures,
    RankFeaturesResponse,
    RetrieveResponse,
    ServedAd,
    UserOut,
)

log = logging.getLogger(__name__)
_PROVENANCE = {pb.LEADRE: "leadre", pb.FALLBACK: "fallback"}


class MixerMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("leadre_mixer")
        self.latency = self.histogram("request_seconds", "request latency",
                                      ("method", "code"))
        self.served = self.counter("served_ads_total",
                                   "served ads by the branches that returned them",
                                   ("branch",))
        self.list_age = self.histogram("list_age_seconds", "age of the LEADRE list served",
                                       buckets=AGE_BUCKETS)
        self.lists = self.counter("lists_total", "requests by LEADRE list hit or miss", ("result",))


def _served(a: pb.ScoredAd) -> ServedAd:
    return ServedAd(ad_id=a.ad_id, name=a.name, category=a.category, advertiser_id=a.advertiser_id,
                    ecpm=a.ecpm, score=a.score, provenance=_PROVENANCE.get(a.provenance, "fallback"))


class MixerCore:
    def __init__(self, settings: Settings, index_dir: Callable[[], Path | None]) -> None:
        self.s = settings
        self.m = MixerMetrics()
        self.channel = client_channel(settings.user_server_addr, settings)
        self.users = pb_grpc.UserServerStub(self.channel)
        self.index_dir = index_dir
        self.features: FeatureIndex | None = None
        self._features_checked = -1e9

    async def close(self) -> None:
        await self.channel.close()

    async def _call(self, method: str, request: object) -> object:
        """A user-server call; its INVALID_ARGUMENT becomes ours, being down → Unavailable."""
        try:
            return await getattr(self.users, method)(request, timeout=self.s.mixer_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadRequest(exc.details() or "invalid argument") from None
            raise Unavailable(f"user server: {exc.code().name} {exc.details() or ''}".strip()) from None

    async def ready(self) -> bool:
        try:  # on our own channel, so TLS settings apply to the probe too
            resp = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service="leadre.v1.UserServer"),
                timeout=self.s.mixer_timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    # -- retrieval --------------------------------------------------------------------------
    async def retrieve(self, user_id: str, k: int) -> RetrieveResponse:
        if not 1 <= k <= self.s.mixer_max_k:
            raise BadRequest(f"k: must be in [1, {self.s.mixer_max_k}] (got {k})")
        lst: pb.UserList = await self._call("GetList", pb.GetListRequest(
            user_id=user_id, k=0, fallback_k=k))  # type: ignore[assignment]
        leadre = [_served(a) for a in lst.ads]
        fallback = [_served(a) for a in lst.fallback]
        ads, consumption = merge(leadre, fallback, k, self.s.mixer_leadre_share)
        self.m.served.labels("leadre_only").inc(consumption.leadre_exclusive)
        self.m.served.labels("fallback_only").inc(consumption.fallback_exclusive)
        self.m.served.labels("both").inc(consumption.both)
        self.m.lists.labels("hit" if lst.hit else "miss").inc()
        age = None
        if lst.hit:
            age = max(0.0, time.time() - lst.updated_ms / 1000)
            self.m.list_age.observe(age)
        return RetrieveResponse(user_id=user_id, ads=ads, list_hit=lst.hit,
                                list_version=lst.version, list_age_s=age,
                                model_version=lst.model_version, consumption=consumption)

    # -- ranking features -------------------------------------------------------------------
    async def _feature_index(self) -> FeatureIndex | None:
        now = time.monotonic()
        if now - self._features_checked > 10 or self.features is None:
            self._features_checked = now
            path = self.index_dir()
            if path is not None and (self.features is None or self.features.stale()
                                     or self.features.index_dir != path):
                self.features = await asyncio.to_thread(FeatureIndex, path)
        return self.features

    async def rank_features(self, user_id: str, candidates: list[str]) -> RankFeaturesResponse:
        if not 1 <= len(candidates) <= self.s.mixer_max_candidates:
            raise BadRequest(f"candidate_ad_ids: 1 .. {self.s.mixer_max_candidates} ids "
                             f"(got {len(candidates)})")
        unique = list(dict.fromkeys(candidates))
        lst, ads = await asyncio.gather(
            self._call("GetList", pb.GetListRequest(user_id=user_id, k=0, fallback_k=0)),
            self._call("GetAds", pb.GetAdsRequest(ad_ids=unique)))
        retrieved = [_served(a) for a in lst.ads]  # type: ignore[attr-defined]
        priors = advertiser_priors({a.advertiser_id: a.score for a in lst.advertisers})  # type: ignore[attr-defined]
        advertiser_of = {a.ad_id: a.advertiser_id for a in ads.ads}  # type: ignore[attr-defined]
        index = await self._feature_index()
        if index is None:
            raise Unavailable("no S-ID index yet (no version published)")
        matches = index.match(candidates, [a.ad_id for a in retrieved],
                              [a.score for a in retrieved], advertiser_of, priors)
        return RankFeaturesResponse(
            user_id=user_id, retrieved=retrieved,
            advertiser_priors=[AdvertiserPrior(advertiser_id=a, score=p) for a, p in priors.items()],
            candidates=[CandidateFeatures(**m.__dict__) for m in matches],
            list_version=lst.version, model_version=lst.model_version,  # type: ignore[attr-defined]
            sid_levels=index.levels)

    # -- user view (demo, debugging) ----------------------------------------------------------
    async def user(self, user_id: str, recent: int = 10) -> UserOut:
        st: pb.UserState = await self._call("GetUser", pb.GetUserRequest(
            user_id=user_id, recent=recent))  # type: ignore[assignment]
        p = st.profile
        profile = {"age": p.age if p.age >= 0 else None, "gender": p.gender or None,
                   "residence": p.residence or None, "education": p.education or None,
                   "occupation": p.occupation or None,
                   "consumption_level": p.consumption_level or None, "arpu": p.arpu, "tier": p.tier}
        return UserOut(user_id=user_id, known=st.known, profile=profile,
                       recent=[BehaviorOut(ts=b.ts, domain=b.domain, action=b.action,
                                           item_id=b.item_id, item_name=b.item_name)
                               for b in st.recent],
                       state_version=st.state_version, list_version=st.list_version)
