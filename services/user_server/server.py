"""The User Server's gRPC service (``leadre.v1.UserServer`` + health) and its process."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

import grpc

from services.common.convert import (
    ad_to_pb,
    ads_from_pb,
    behavior_to_pb,
    behaviors_from_pb,
    check_count,
    check_id,
    check_user_id,
    profile_to_pb,
    scored_ad,
)
from services.common.errors import BadRequest
from services.common.grpcio import add_health, add_servicer, rpc, set_not_serving
from services.common.metrics import Metrics
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.security import add_port, grpc_options
from services.common.settings import Settings
from services.user_server.store import ListedAd, UserStore

log = logging.getLogger(__name__)
SERVICE = "leadre.v1.UserServer"
MAX_LIST = 1000


class UserServerMetrics(Metrics):
    def __init__(self) -> None:
        super().__init__("leadre_user_server")
        self.latency = self.histogram("rpc_seconds", "RPC latency", ("method", "code"))
        self.lists = self.counter("lists_total", "GetList answers", ("result",))
        self.behaviors = self.counter("behaviors_total", "behaviours recorded", ("result",))
        self.ads = self.counter("ad_updates_total", "ad feature updates", ("change",))


def _scored(items: list[ListedAd], provenance: int) -> list[pb.ScoredAd]:
    return [scored_ad(a.ad_id, a.score, provenance, a.ad) for a in items]


class UserServerService(pb_grpc.UserServerServicer):
    def __init__(self, store: UserStore, settings: Settings, metrics: UserServerMetrics) -> None:
        self.store, self.s, self.m = store, settings, metrics
        self.latency = metrics.latency

    @rpc("GetList")
    async def GetList(self, req: pb.GetListRequest, context: grpc.aio.ServicerContext) -> pb.UserList:
        check_user_id(req.user_id)
        check_count("k", req.k, 0, MAX_LIST)
        check_count("fallback_k", req.fallback_k, 0, MAX_LIST)
        res = await self.store.get_list(req.user_id, req.k, req.fallback_k)
        self.m.lists.labels("hit" if res.stored else "miss").inc()
        out = pb.UserList(user_id=req.user_id, hit=res.stored is not None,
                          ads=_scored(res.ads, pb.LEADRE), fallback=_scored(res.fallback, pb.FALLBACK))
        if res.stored is not None:
            out.version, out.updated_ms = res.stored.version, res.stored.updated_ms
            out.model_version = res.stored.model_version
            out.advertisers.extend(pb.AdvertiserPrior(advertiser_id=a.ad_id, score=a.score)
                                   for a in res.stored.advertisers)
        return out

    @rpc("GetUser")
    async def GetUser(self, req: pb.GetUserRequest, context: grpc.aio.ServicerContext) -> pb.UserState:
        check_user_id(req.user_id)
        recent = check_count("recent", req.recent or 10, 1, self.s.history_max)
        view = await self.store.get_user(req.user_id, recent)
        return pb.UserState(profile=profile_to_pb(view.user, view.tier), known=view.known,
                            recent=[behavior_to_pb(b, name) for b, name in view.recent],
                            state_version=view.seq, list_version=view.list_version)

    @rpc("RecordBehaviors")
    async def RecordBehaviors(self, req: pb.RecordBehaviorsRequest,
                              context: grpc.aio.ServicerContext) -> pb.RecordBehaviorsResponse:
        check_count("behaviors (count)", len(req.behaviors), 1, self.s.user_max_batch)
        behaviors = behaviors_from_pb(req.behaviors)
        ids = await self.store.record_behaviors(behaviors)
        recorded = sum(1 for i in ids if i)
        self.m.behaviors.labels("recorded").inc(recorded)
        self.m.behaviors.labels("duplicate").inc(len(ids) - recorded)
        return pb.RecordBehaviorsResponse(recorded=recorded, event_ids=ids)

    @rpc("UpdateAds")
    async def UpdateAds(self, req: pb.UpdateAdsRequest,
                        context: grpc.aio.ServicerContext) -> pb.UpdateAdsResponse:
        check_count("ads (count)", len(req.ads), 1, self.s.user_max_batch)
        ads = ads_from_pb(req.ads)
        if len({a.ad_id for a in ads}) != len(ads):
            raise BadRequest("ads: an ad_id appears twice in one request")
        n_new, n_status = await self.store.update_ads(ads)
        self.m.ads.labels("new").inc(n_new)
        self.m.ads.labels("status").inc(n_status)
        self.m.ads.labels("features").inc(len(ads) - n_new - n_status)
        return pb.UpdateAdsResponse(updated=len(ads), new_ads=n_new, status_changes=n_status)

    @rpc("GetAds")
    async def GetAds(self, req: pb.GetAdsRequest, context: grpc.aio.ServicerContext) -> pb.GetAdsResponse:
        check_count("ad_ids (count)", len(req.ad_ids), 1, self.s.user_max_batch)
        for i, ad_id in enumerate(req.ad_ids):
            check_id(f"ad_ids[{i}]", ad_id)
        ads = await self.store.ads(list(req.ad_ids))
        return pb.GetAdsResponse(ads=[ad_to_pb(a) for a in ads if a is not None])


async def start_user_server(settings: Settings, port: int | None = None
                            ) -> tuple[grpc.aio.Server, int, UserStore, object]:
    """Start the server (port 0: any free port); returns (server, bound port, store, health)."""
    metrics = UserServerMetrics()
    store = UserStore(settings)
    server = grpc.aio.server(options=grpc_options(settings))
    add_servicer(pb_grpc.add_UserServerServicer_to_server,
                 UserServerService(store, settings, metrics), server)
    health = await add_health(server, [SERVICE])
    bound = add_port(server, f"{settings.bind_host}:{settings.user_server_port if port is None else port}",
                     settings)
    await server.start()
    metrics.serve(settings.user_metrics_port if port is None else 0, settings.bind_host)
    log.info("user server listening", extra={"port": bound})
    return server, bound, store, health


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then stop taking calls and drain in-flight ones."""
    server, _, store, health = await start_user_server(settings)
    gc.collect()
    gc.freeze()  # start-up objects out of the collector's way (tail latency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining")
    await set_not_serving(health, [SERVICE])  # type: ignore[arg-type]
    await server.stop(grace=settings.user_server_drain_s)
    await store.close()
    log.info("stopped")
