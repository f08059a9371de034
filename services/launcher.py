"""Local process topology: inference instances, nearline worker, user server and mixer as
child processes (`leadre serve all`, the live demo, the end-to-end benchmark and test).

Every child gets the parent's settings as ``LEADRE_*`` environment variables, writes its
own log file, and is stopped with SIGTERM (each drains) in the reverse order of the data
flow: mixer, user server, worker, inference.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from pydantic import SecretStr

from leadre_model.errors import LeadreError, UsageError
from services.common import keys
from services.common.contracts import INSTANCES_KEY
from services.common.redis_client import redis_client
from services.common.settings import Settings

CLI = [sys.executable, "-m", "leadre"]
STOP_ORDER = ("mixer", "user-server", "worker", "inference")


class StackError(LeadreError, ValueError):
    """A process did not come up or died; the message names its log file (the CLI prints
    it as one line)."""


def require_redis(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``; StackError (one line) when Redis does not answer."""
    r = redis_client(settings)
    try:
        r.ping()
    except redis.RedisError as exc:
        raise StackError(f"Redis at {settings.redis_url} is not answering ({exc}); "
                         "`make redis` starts one") from None
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(n: int, start: int = 21000) -> int:
    """First port p >= start with p .. p+n-1 free (inference instances use 3 each)."""
    for base in range(start, 60000, n):
        try:
            for p in range(base, base + n):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as the environment variables that reproduce them in a child (secrets
    such as the Redis password in clear: ``str(SecretStr)`` is ``'**********'``)."""
    env = {}
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"LEADRE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass
class LocalStack:
    settings: Settings
    instances: int = 1
    base_port: int = 8001
    log_dir: Path = Path("runs/logs")
    worker_name: str = "worker-0"
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.r = redis_client(self.settings)

    # -- processes ------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        env = {**os.environ, **settings_env(self.settings), "LEADRE_WORKER_NAME": self.worker_name}
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 — the child owns it
        # Own session: a terminal's Ctrl-C reaches the launcher only, which then drains all.
        self.procs[name] = subprocess.Popen([*CLI, "serve", *args], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start(self, which: tuple[str, ...] = ("inference", "worker", "user-server", "mixer")) -> None:
        for name in which:
            if name == "inference":
                self._spawn(name, ["inference", "--registry", self.settings.registry_dir,
                                   "--instances", str(self.instances), "--base-port",
                                   str(self.base_port)])
            else:
                self._spawn(name, [name])

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill9(self, name: str) -> None:
        """SIGKILL, as a crash: nothing drains, nothing is acked."""
        self.procs[name].kill()
        self.procs[name].wait()

    def stop(self, timeout_s: float = 60) -> dict[str, int | None]:
        """SIGTERM in STOP_ORDER, wait for each (SIGKILL after ``timeout_s``); exit codes."""
        codes: dict[str, int | None] = {}
        for name in STOP_ORDER:
            p = self.procs.get(name)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            codes[name] = p.returncode
        self.procs.clear()
        return codes

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]

    # -- readiness ------------------------------------------------------------------------
    def healthy_instances(self) -> int:
        now = time.time()
        beats = self.r.hgetall(INSTANCES_KEY)
        return sum(1 for hb in beats.values() if now - float(hb) <= self.settings.instance_ttl_s)

    def worker_joined(self) -> bool:
        try:
            stream = keys.behavior_streams(self.settings.behavior_partitions)[0][0]
            consumers = self.r.xinfo_consumers(stream, keys.WORKER_GROUP)
        except redis.ResponseError:
            return False
        return any(c["name"] == self.worker_name for c in consumers)

    def mixer_ready(self) -> bool:
        url = f"http://{self.settings.bind_host}:{self.settings.mixer_http_port}/readyz"
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout_s: float = 300,
                   on_wait: Callable[[str], None] | None = None) -> None:
        """Block until every started process is ready; StackError naming the one that
        died or did not come up (see its log file)."""
        checks = {"inference": lambda: self.healthy_instances() >= self.instances,
                  "worker": self.worker_joined, "mixer": self.mixer_ready,
                  "user-server": lambda: True}  # the mixer's readiness checks it
        waiting = [n for n in self.procs if n in checks]
        deadline = time.monotonic() + timeout_s
        while waiting:
            if self.dead():
                name = self.dead()[0]
                raise StackError(f"{name} exited (code {self.procs[name].returncode}); "
                                 f"see {self.log_dir / (name + '.log')}")
            waiting = [n for n in waiting if not checks[n]()]
            if time.monotonic() > deadline:
                raise StackError(f"not ready after {timeout_s:g} s: {', '.join(waiting)} "
                                 f"(logs in {self.log_dir})")
            if waiting and on_wait is not None:
                on_wait(", ".join(waiting))
            time.sleep(0.5)


def publish_if_missing(settings: Settings, model: Path | None, index: Path | None,
                       world: Path | None) -> str:
    """The registry's current version; publishes ``model`` + ``index`` when there is none."""
    from services.inference.registry import current_version, publish_version

    current = current_version(settings.registry_dir)
    if current is not None:
        return current
    if model is None or index is None:
        raise UsageError(f"{settings.registry_dir} has no current version: pass --model and "
                         "--index (a trained model and the index it was trained on)")
    return publish_version(settings.registry_dir, model, index, world=world)


def serve_all(settings: Settings, world: Path | None, model: Path | None, index: Path | None,
              instances: int, base_port: int, log_dir: Path) -> None:
    """`leadre serve all`: publish/seed if needed, start everything, wait for SIGTERM or
    SIGINT (or a child dying), then drain and stop everything."""
    from leadre_model.clikit import console
    from services.user_server.seed import seed_world

    r = require_redis(settings)
    version = publish_if_missing(settings, model, index, world)
    if world is not None and not r.exists(keys.ADS):
        res = seed_world(r, world, settings)
        console.print(f"seeded {res.users:,} users, {res.ads:,} ads, {res.behaviors:,} behaviours")
    stack = LocalStack(settings, instances=instances, base_port=base_port, log_dir=log_dir)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        stack.start()
        stack.wait_ready(settings.inference_startup_s)
        console.print(f"serving version {version}: mixer http://{settings.bind_host}:"
                      f"{settings.mixer_http_port} (gRPC :{settings.mixer_grpc_port}), user server "
                      f":{settings.user_server_port}, {instances} inference instance(s) from "
                      f":{base_port}; logs in {log_dir}. Ctrl-C stops.")
        while not stop.wait(1.0):
            if stack.dead():
                raise StackError(f"{stack.dead()[0]} exited; see {log_dir}")
    finally:
        console.print(f"stopping: {stack.stop()}")
