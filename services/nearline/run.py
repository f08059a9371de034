"""The worker process: the nearline worker on the main thread, the catalog applier on a
second one; SIGTERM stops both and drains in-flight inference."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.common.versions import current_version_dir, version_index_dir
from services.nearline.balancer import RetrievalClient
from services.nearline.catalog import CatalogApplier
from services.nearline.worker import NearlineWorker

log = logging.getLogger(__name__)


def triton_client(settings: Settings) -> Callable[[str], RetrievalClient]:
    from services.inference.client import TritonRetrievalClient

    def make(url: str) -> RetrievalClient:
        return TritonRetrievalClient(url, timeout_s=settings.inference_timeout_s)

    return make


def catalog_loop(settings: Settings, name: str, stop: threading.Event) -> None:
    r = redis_client(settings)
    applier = CatalogApplier(r, name, Path(settings.live_index_dir),
                             lambda: version_index_dir(settings),
                             cache_path=Path(settings.live_index_dir).parent / "live_embeddings.npz")
    while not stop.is_set():
        try:
            applier.run_once(block_ms=500)
        except Exception:  # logged; this batch stays pending, later ones go on
            log.exception("catalog applier round failed")
            stop.wait(2.0)


def serve(settings: Settings) -> None:
    name = settings.worker_name or socket.gethostname()
    worker = NearlineWorker(settings, triton_client(settings),
                            lambda: current_version_dir(Path(settings.registry_dir)))
    worker.m.serve(settings.worker_metrics_port, settings.bind_host)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    catalog = threading.Thread(target=catalog_loop, args=(settings, name, worker.stopping),
                               name="catalog", daemon=True)
    catalog.start()
    log.info("worker started", extra={"consumer": name})
    worker.run()
    catalog.join(timeout=5)
    log.info("stopped")
