"""Helpers of the service tests (imported by conftest.py and the tests): Redis locations, a
background event loop for async servers, an in-process stand-in inference client (for the
worker's scheduling tests only), Redis seeding, and the fault tests' tools: serving
processes that can be SIGKILLed, a TCP proxy that delays answers, a list-version sampler."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

import redis

from leadre_model.index.sid_index import SidIndex
from services.common.contracts import Retrieval, RetrievedAd
from services.common.settings import Settings

T = TypeVar("T")
TEST_DB = 13  # unit and integration tests; the end-to-end test uses 14
REDIS_BASE = "redis://127.0.0.1:6379"


class StandInClient:
    """Deterministic retrievals (active ads picked by a hash of the prompt), so the worker's
    scheduling, balancing and writes can be tested without a model. ``fail`` makes every
    call raise, like an instance that is down."""

    def __init__(self, url: str, index: SidIndex, fail: bool = False) -> None:
        self.url, self.index, self.fail, self.calls = url, index, fail, 0
        self.active = [a for a, on in zip(index.ad_ids, index.active) if on]

    def retrieve(self, prompts: list[str], beam_width: int, top_k: int,
                 advertiser_prompts: list[str] | None = None,
                 exclude: list[list[str]] | None = None) -> list[Retrieval]:
        self.calls += 1
        if self.fail:
            raise ConnectionError(f"{self.url} is down")
        out = []
        for j, p in enumerate(prompts):
            h = int(hashlib.sha256(p.encode()).hexdigest(), 16)
            skip = set(exclude[j]) if exclude else set()
            pool = [a for a in self.active if a not in skip]
            ads = [pool[(h + 7 * i) % len(pool)] for i in range(top_k)]
            out.append(Retrieval(ads=[RetrievedAd(ad_id=a, score=-0.5 * (i + 1))
                                      for i, a in enumerate(dict.fromkeys(ads))],
                                 model_version="standin"))
        return out


class BackgroundLoop:
    """An asyncio loop on a thread: async servers run there while a test talks to them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def seed(settings: Settings, world: Path, **kw: Any) -> Any:
    from services.user_server.seed import seed_world

    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    return seed_world(r, world, settings, **kw)


# ------------------------------------------------------------------------- fault tests
class ServeProc:
    """``leadre serve ARGS`` as a real child process in its own session, settings passed as
    ``LEADRE_*`` variables, output appended to ``log``. :meth:`kill9` sends SIGKILL to the
    whole process group (a crashed pod: PyTriton's tritonserver child dies with it)."""

    def __init__(self, args: list[str], settings: Settings, log: Path, **env: str) -> None:
        from services.launcher import settings_env

        self.args, self.log = args, Path(log)
        self.env = {**os.environ, **settings_env(settings), "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ServeProc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"--- start {self.starts + 1}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "leadre", "serve",
                                          *self.args], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def logged(self, text: str) -> int:
        """Times ``text`` occurs in the log of the current incarnation."""
        body = self.log.read_text(errors="replace") if self.log.exists() else ""
        return body.rsplit(f"--- start {self.starts}\n", 1)[-1].count(text)

    def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the process drains), SIGKILL to the group after ``timeout``; exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        code = self.proc.poll()
        with contextlib.suppress(ProcessLookupError):  # leftovers of the group, if any
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return code


def wait_until(cond: Callable[[], bool], timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


class DelayProxy:
    """A TCP proxy in front of ``target`` (``host:port``) that holds every byte coming back
    from the target until ``delay`` seconds after it arrived (settable while running; bytes
    already held follow the new value): a slow instance, as a real gRPC client sees it.
    Bytes keep their order."""

    def __init__(self, target: str, delay: float = 0.0) -> None:
        host, port = target.rsplit(":", 1)
        self.target, self.delay = (host, int(port)), delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._open: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the target is gone: the client sees the connection closed
                client.close()
                continue
            self.connections += 1
            self._open += [client, upstream]
            chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, chunks), daemon=True).start()
            threading.Thread(target=self._deliver, args=(chunks, client, upstream), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket,
              delayed: queue.SimpleQueue[tuple[float, bytes]] | None) -> None:
        try:
            while data := src.recv(65536):
                if delayed is None:
                    dst.sendall(data)
                else:
                    delayed.put((time.monotonic(), data))
        except OSError:
            pass
        if delayed is not None:
            delayed.put((0.0, b""))
        else:
            self._shut(src, dst)

    def _deliver(self, chunks: queue.SimpleQueue[tuple[float, bytes]], client: socket.socket,
                 upstream: socket.socket) -> None:
        try:
            while True:
                arrived, data = chunks.get()
                if not data:
                    break
                while time.monotonic() < arrived + self.delay:
                    if client.fileno() < 0:  # severed while holding: the bytes die here
                        return
                    time.sleep(0.01)
                client.sendall(data)
        except OSError:
            pass
        self._shut(client, upstream)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def dies_with(self, kill: Callable[[], None]) -> None:
        """``kill`` the instance behind the proxy with the answers it is still holding: they
        are held from before the kill on, then every open connection is reset (RST) and
        what was held is dropped, never delivered."""
        self.delay = float("inf")
        kill()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD)  # wakes the pump blocked in recv; sends nothing
            s.close()  # with linger 0: the peer gets a reset
        self._open = []

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
        for s in self._open:
            with contextlib.suppress(OSError):
                s.close()


class VersionSampler:
    """Samples every user's list version (``lv`` and the stored list's own version) on a
    thread every ``every`` seconds and records any value lower than one seen before. ``r``
    must return bytes (the list is binary)."""

    def __init__(self, r: redis.Redis, users: list[str], every: float = 0.02) -> None:
        self.r, self.users, self.every = r, users, every
        self.last: dict[tuple[str, str], int] = {}
        self.decreases: list[tuple[str, str, int, int]] = []  # user, key, before, after
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from services.common.keys import user_key
        from services.common.listcodec import version_of

        while not self._stop.wait(self.every):
            pipe = self.r.pipeline(transaction=False)
            for u in self.users:
                pipe.get(user_key(u, "lv"))
                pipe.get(user_key(u, "l"))
            vals = pipe.execute()
            for i, u in enumerate(self.users):
                lv, blob = vals[2 * i], vals[2 * i + 1]
                for key, v in (("lv", None if lv is None else int(lv)),
                               ("list", None if blob is None else version_of(blob))):
                    if v is None:
                        continue
                    before = self.last.get((u, key), -1)
                    if v < before:
                        self.decreases.append((u, key, before, v))
                    self.last[(u, key)] = max(v, before)
            self.samples += 1


def retrieve_via_mixer(bg: BackgroundLoop, settings: Settings, user_server: str, index_dir: Path,
                       users: dict[str, list[str]], k: int) -> dict[str, list[dict[str, Any]]]:
    """``POST /v1/retrieve`` for ``users[source]`` through a real Mixer (uvicorn on ``bg``)
    per list source (``redis``: its own store; ``grpc``: through ``user_server``), each
    after its ``/readyz`` answered 200. Returns the answers per source."""
    import httpx

    from services.mixer.server import start_mixer

    out: dict[str, list[dict[str, Any]]] = {}
    for source, ids in users.items():
        s = settings.model_copy(update={"user_server_addr": user_server,
                                        "mixer_list_source": source})
        proc, _ = bg.run(start_mixer(s, lambda: index_dir, http_port=0, grpc_port=0))
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{proc.http_port}", timeout=10) as http:
                assert http.get("/readyz").status_code == 200, source
                out[source] = [http.post("/v1/retrieve", json={"user_id": u, "k": k}).json()
                               for u in ids]
        finally:
            bg.run(proc.stop(0.5))
    return out


def one_registry_version(settings: Settings, version_dir: Path) -> None:
    """``<registry>/versions/v1`` → ``version_dir`` and CURRENT naming it (what a worker
    needs to start; no weights are loaded)."""
    registry = Path(settings.registry_dir)
    (registry / "versions").mkdir(parents=True)
    (registry / "versions" / "v1").symlink_to(version_dir, target_is_directory=True)
    (registry / "CURRENT").write_text("v1")
