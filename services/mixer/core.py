"""What the Mixer does, independent of HTTP or gRPC: read the user's list and the fallback
branch (:mod:`services.mixer.sources`), merge, count consumption; compute ranking features."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from services.common.errors import BadRequest, Unavailable
from services.common.metrics import AGE_BUCKETS, Metrics
from services.common.settings import Settings
from services.mixer.features import FeatureIndex, advertiser_priors
from services.mixer.merge import merge
from services.mixer.models import (
    RETRIEVE_JSON,
    AdvertiserPrior,
    CandidateFeatures,
    RankFeaturesResponse,
    RetrieveResponse,
    RetrieveResponseDict,
    UserOut,
)
from services.mixer.sources import ListSource, list_source

log = logging.getLogger(__name__)


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
        # children bound once: a labels() lookup per counter per request showed in the profile
        self.served_leadre, self.served_fallback, self.served_both = (
            self.served.labels(b) for b in ("leadre_only", "fallback_only", "both"))
        self.list_hit, self.list_miss = self.lists.labels("hit"), self.lists.labels("miss")
        self.degraded = self.counter("degraded_total", "answers with the cached catalog-wide "
                                     "fallback only: Redis did not answer in time")


class MixerCore:
    def __init__(self, settings: Settings, index_dir: Callable[[], Path | None]) -> None:
        self.s = settings
        self.m = MixerMetrics()
        self.source: ListSource = list_source(settings)
        self.index_dir = index_dir
        self.features: FeatureIndex | None = None
        self._features_checked = -1e9

    async def close(self) -> None:
        await self.source.close()

    async def ready(self) -> bool:
        return await self.source.ready()

    # -- retrieval --------------------------------------------------------------------------
    async def retrieve(self, user_id: str, k: int) -> RetrieveResponse:
        return RetrieveResponse.model_validate(await self._retrieve(user_id, k))

    async def retrieve_json(self, user_id: str, k: int) -> bytes:
        """:meth:`retrieve` as JSON, without building the response model (HTTP hot path)."""
        return RETRIEVE_JSON.dump_json(await self._retrieve(user_id, k))

    async def _retrieve(self, user_id: str, k: int) -> RetrieveResponseDict:
        if not 1 <= k <= self.s.mixer_max_k:
            raise BadRequest(f"k: must be in [1, {self.s.mixer_max_k}] (got {k})")
        lst = await self.source.get_list(user_id, 0, k, advertisers=False)
        ads, consumption = merge(lst.ads, lst.fallback, k, self.s.mixer_leadre_share)
        self.m.served_leadre.inc(consumption.leadre_exclusive)
        self.m.served_fallback.inc(consumption.fallback_exclusive)
        self.m.served_both.inc(consumption.both)
        (self.m.list_hit if lst.hit else self.m.list_miss).inc()
        if lst.degraded:
            self.m.degraded.inc()
        age = None
        if lst.hit:
            age = max(0.0, time.time() - lst.updated_ms / 1000)
            self.m.list_age.observe(age)
        return {"user_id": user_id, "ads": ads, "list_hit": lst.hit,  # type: ignore[typeddict-item]
                "list_version": lst.version, "list_age_s": age,
                "model_version": lst.model_version,
                "consumption": {"leadre_exclusive": consumption.leadre_exclusive,
                                "fallback_exclusive": consumption.fallback_exclusive,
                                "both": consumption.both}}

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
        lst, advertiser_of = await asyncio.gather(self.source.get_list(user_id, 0, 0),
                                                  self.source.advertisers_of(unique))
        retrieved = lst.ads
        priors = advertiser_priors(lst.advertisers)
        index = await self._feature_index()
        if index is None:
            raise Unavailable("no S-ID index yet (no version published)")
        matches = index.match(candidates, [a["ad_id"] for a in retrieved],
                              [a["score"] for a in retrieved], advertiser_of, priors)
        return RankFeaturesResponse(
            user_id=user_id, retrieved=retrieved,
            advertiser_priors=[AdvertiserPrior(advertiser_id=a, score=p) for a, p in priors.items()],
            candidates=[CandidateFeatures(**m.__dict__) for m in matches],
            list_version=lst.version, model_version=lst.model_version,
            sid_levels=index.levels)

    # -- user view (demo, debugging) ----------------------------------------------------------
    async def user(self, user_id: str, recent: int = 10) -> UserOut:
        return await self.source.user(user_id, recent)
