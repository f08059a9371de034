"""The Mixer process: uvicorn (HTTP) and a gRPC server on one event loop, sharing one
:class:`MixerCore`. SIGTERM: gRPC health goes NOT_SERVING, uvicorn stops accepting and
finishes in-flight requests, then gRPC drains with a grace period."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvicorn

from services.common.grpcio import add_health, add_servicer, set_not_serving
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.security import ApiKeyInterceptor, add_port, api_keys, grpc_options
from services.common.settings import Settings
from services.mixer.core import MixerCore
from services.mixer.grpc_service import SERVICE, MixerService
from services.mixer.http import create_app

log = logging.getLogger(__name__)


@dataclass
class MixerProcess:
    core: MixerCore
    http: uvicorn.Server
    grpc_server: grpc.aio.Server
    health: object
    grpc_port: int

    @property
    def http_port(self) -> int:
        return int(self.http.servers[0].sockets[0].getsockname()[1])

    async def stop(self, grace_s: float) -> None:
        await set_not_serving(self.health, [SERVICE])  # type: ignore[arg-type]
        self.http.should_exit = True
        await self.grpc_server.stop(grace=grace_s)
        await self.core.close()


async def start_mixer(settings: Settings, index_dir: Callable[[], Path | None],
                      http_port: int | None = None, grpc_port: int | None = None,
                      ) -> tuple[MixerProcess, asyncio.Task[None]]:
    """Start both servers (ports 0: any free port). Returns the process handle and the
    task running uvicorn (it ends after :meth:`MixerProcess.stop` or a signal)."""
    core = MixerCore(settings, index_dir)
    keys = api_keys(settings)
    server = grpc.aio.server(interceptors=[ApiKeyInterceptor(keys)] if keys else None,
                             options=grpc_options(settings))
    add_servicer(pb_grpc.add_MixerServicer_to_server, MixerService(core), server)
    health = await add_health(server, [SERVICE])
    port = add_port(
        server, f"{settings.bind_host}:{settings.mixer_grpc_port if grpc_port is None else grpc_port}",
        settings)
    await server.start()
    config = uvicorn.Config(create_app(core), host=settings.bind_host,
                            port=settings.mixer_http_port if http_port is None else http_port,
                            log_config=None, access_log=False,
                            timeout_graceful_shutdown=int(settings.mixer_drain_s))
    http = uvicorn.Server(config)
    # Signals are ours (serve()): uvicorn would re-raise SIGTERM after its own drain and
    # kill the process before gRPC drains.
    http.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]
    task = asyncio.create_task(http.serve())
    while not http.started:
        if task.done():
            await task  # re-raise why uvicorn could not start (port taken, …)
            raise RuntimeError("uvicorn exited before starting")
        await asyncio.sleep(0.02)
    proc = MixerProcess(core, http, server, health, port)
    log.info("mixer listening", extra={"http_port": proc.http_port, "grpc_port": port})
    return proc, task


async def serve(settings: Settings, index_dir: Callable[[], Path | None]) -> None:
    """Run until SIGTERM/SIGINT, then drain both servers."""
    proc, task = await start_mixer(settings, index_dir)
    # Everything loaded at start-up (torch, pydantic schemas, the app) goes to the permanent
    # generation: a full collection no longer walks it, which showed as tail latency.
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([task, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    log.info("draining")
    await proc.stop(settings.mixer_drain_s)
    await task
    log.info("stopped")
