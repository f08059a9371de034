"""Where the Mixer reads a user's lists from (``LEADRE_MIXER_LIST_SOURCE``):

* ``redis`` (default): the user server's own store code (:class:`UserStore`) in the Mixer's
  process: one Redis round trip per request on a warm cache. The serving profile showed
  the gRPC hop to the user server costing more CPU than everything else together (Python
  gRPC: ~0.6 ms on the calling side and ~0.9 ms on the serving side per call, against
  ~0.45 ms for a whole minimal FastAPI request), so the latency-critical read skips it.
* ``grpc``: through the user server (``UserServer.GetList`` / ``GetAds`` / ``GetUser``),
  for deployments where only the user server may reach Redis.

Both give the same :class:`UserLists`; the user server keeps the write path (behaviours,
ad updates) either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import grpc
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc

from leadre_model.data.records import Ad
from services.common.errors import BadRequest, Unavailable
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.security import client_channel
from services.common.settings import Settings
from services.mixer.models import BehaviorOut, Provenance, UserOut
from services.user_server import store as us

_PROVENANCE = {pb.LEADRE: "leadre", pb.FALLBACK: "fallback"}


@dataclass(frozen=True)
class UserLists:
    hit: bool
    version: int
    updated_ms: int
    model_version: str
    # Plain dicts with ServedAd's fields: the response model validates them once, in
    # pydantic's Rust core; a model object per ad cost ~0.5 ms a request (profile).
    ads: list[dict]  # LEADRE list, active ads only
    fallback: list[dict]
    advertisers: dict[str, float]  # advertiser priors of the LEADRE list
    degraded: bool = False  # Redis was too slow: the cached catalog-wide fallback only


class ListSource(Protocol):
    async def get_list(self, user_id: str, k: int, fallback_k: int,
                       advertisers: bool = True) -> UserLists: ...
    async def advertisers_of(self, ad_ids: Sequence[str]) -> dict[str, str]: ...
    async def user(self, user_id: str, recent: int) -> UserOut: ...
    async def ready(self) -> bool: ...
    async def close(self) -> None: ...


def _profile(age: int | None, gender: str, residence: str, education: str, occupation: str,
             consumption_level: str, arpu: float, tier: int) -> dict[str, str | int | float | None]:
    return {"age": age, "gender": gender or None, "residence": residence or None,
            "education": education or None, "occupation": occupation or None,
            "consumption_level": consumption_level or None, "arpu": arpu, "tier": tier}


# -- in process -------------------------------------------------------------------------
def _unknown(ad_id: str) -> dict:
    return {"ad_id": ad_id, "name": "", "category": "", "advertiser_id": "", "ecpm": 0.0}


def _from_store(items: Sequence[us.ServedAd], provenance: Provenance,
                served: dict[str, dict]) -> list[dict]:
    """``served``: the hot cache's fields of each cached ad (one dict merge per ad)."""
    return [{**(served.get(a.ad_id) or _unknown(a.ad_id)), "score": a.score,
             "provenance": provenance} for a in items]


@contextmanager
def _redis_down_is_unavailable(timeouts: bool = True) -> Iterator[None]:
    """Redis refusing (or, with ``timeouts``, not answering in time) → Unavailable."""
    caught = ((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) if timeouts
              else redis.exceptions.ConnectionError)
    try:
        yield
    except caught as exc:
        raise Unavailable(f"redis: {exc}") from None


class RedisSource:
    def __init__(self, settings: Settings) -> None:
        self.store = us.UserStore(settings)
        # The read lane (one node) times out by itself; redis-py's cluster client retries
        # through a failover for as long as it takes, so the deadline is set here.
        self.deadline_s = settings.mixer_timeout_s if self.store.lane is None else None

    async def _list(self, user_id: str, k: int, fallback_k: int, advertisers: bool
                    ) -> us.ListResult:
        if self.deadline_s is None:
            return await self.store.get_list(user_id, k, fallback_k, advertisers)
        try:
            async with asyncio.timeout(self.deadline_s):
                return await self.store.get_list(user_id, k, fallback_k, advertisers)
        except TimeoutError:
            raise redis.exceptions.TimeoutError(
                f"no answer within {self.deadline_s:g}s") from None

    async def get_list(self, user_id: str, k: int, fallback_k: int,
                       advertisers: bool = True) -> UserLists:
        try:
            with _redis_down_is_unavailable(timeouts=False):
                res = await self._list(user_id, k, fallback_k, advertisers)
        except redis.exceptions.TimeoutError as exc:
            # Redis answered nothing within mixer_timeout_s (the read lane's deadline): the
            # request still gets an answer in time, the catalog-wide fallback as last read.
            if not (stale := self.store.stale_fallback(fallback_k)):
                raise Unavailable(f"redis: {exc}") from None
            return UserLists(hit=False, version=0, updated_ms=0, model_version="", ads=[],
                             fallback=_from_store(stale, "fallback", self.store.cache.served),
                             advertisers={}, degraded=True)
        st = res.stored
        return UserLists(
            hit=st is not None, version=st.version if st else 0,
            updated_ms=st.updated_ms if st else 0, model_version=st.model_version if st else "",
            ads=_from_store(res.ads, "leadre", self.store.cache.served),
            fallback=_from_store(res.fallback, "fallback", self.store.cache.served),
            advertisers={a.ad_id: a.score for a in st.advertisers} if st else {})

    async def advertisers_of(self, ad_ids: Sequence[str]) -> dict[str, str]:
        with _redis_down_is_unavailable():
            ads: list[Ad | None] = await self.store.ads(list(ad_ids))
        return {a.ad_id: a.advertiser_id for a in ads if a is not None}

    async def user(self, user_id: str, recent: int) -> UserOut:
        with _redis_down_is_unavailable():
            v = await self.store.get_user(user_id, recent)
        u = v.user
        return UserOut(user_id=user_id, known=v.known,
                       profile=_profile(u.age, u.gender or "", u.residence or "",
                                        u.education or "", u.occupation or "",
                                        u.consumption_level or "", u.arpu, v.tier),
                       recent=[BehaviorOut(ts=b.ts, domain=b.domain.value, action=b.action.value,
                                           item_id=b.item_id, item_name=name)
                               for b, name in v.recent],
                       state_version=v.seq, list_version=v.list_version)

    async def ready(self) -> bool:
        try:
            return await self.store.ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    async def close(self) -> None:
        await self.store.close()


# -- through the user server ------------------------------------------------------------
def _served(a: pb.ScoredAd) -> dict:
    return {"ad_id": a.ad_id, "name": a.name, "category": a.category,
            "advertiser_id": a.advertiser_id, "ecpm": a.ecpm, "score": a.score,
            "provenance": _PROVENANCE.get(a.provenance, "fallback")}


class GrpcSource:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.channel = client_channel(settings.user_server_addr, settings)
        self.users = pb_grpc.UserServerStub(self.channel)

    async def _call(self, method: str, request: object) -> object:
        """A user-server call; its INVALID_ARGUMENT becomes ours, being down → Unavailable."""
        try:
            return await getattr(self.users, method)(request, timeout=self.s.mixer_timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise BadRequest(exc.details() or "invalid argument") from None
            raise Unavailable(f"user server: {exc.code().name} {exc.details() or ''}".strip()) from None

    async def get_list(self, user_id: str, k: int, fallback_k: int,
                       advertisers: bool = True) -> UserLists:
        lst: pb.UserList = await self._call("GetList", pb.GetListRequest(  # type: ignore[assignment]
            user_id=user_id, k=k, fallback_k=fallback_k))
        return UserLists(hit=lst.hit, version=lst.version, updated_ms=lst.updated_ms,
                         model_version=lst.model_version, ads=[_served(a) for a in lst.ads],
                         fallback=[_served(a) for a in lst.fallback],
                         advertisers={a.advertiser_id: a.score for a in lst.advertisers})

    async def advertisers_of(self, ad_ids: Sequence[str]) -> dict[str, str]:
        resp: pb.GetAdsResponse = await self._call(  # type: ignore[assignment]
            "GetAds", pb.GetAdsRequest(ad_ids=list(ad_ids)))
        return {a.ad_id: a.advertiser_id for a in resp.ads}

    async def user(self, user_id: str, recent: int) -> UserOut:
        st: pb.UserState = await self._call("GetUser", pb.GetUserRequest(  # type: ignore[assignment]
            user_id=user_id, recent=recent))
        p = st.profile
        return UserOut(user_id=user_id, known=st.known,
                       profile=_profile(p.age if p.age >= 0 else None, p.gender, p.residence,
                                        p.education, p.occupation, p.consumption_level,
                                        p.arpu, p.tier),
                       recent=[BehaviorOut(ts=b.ts, domain=b.domain, action=b.action,
                                           item_id=b.item_id, item_name=b.item_name)
                               for b in st.recent],
                       state_version=st.state_version, list_version=st.list_version)

    async def ready(self) -> bool:
        try:  # on our own channel, so TLS settings apply to the probe too
            resp = await health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service="leadre.v1.UserServer"),
                timeout=self.s.mixer_timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self.channel.close()


def list_source(settings: Settings) -> ListSource:
    return RedisSource(settings) if settings.mixer_list_source == "redis" else GrpcSource(settings)
