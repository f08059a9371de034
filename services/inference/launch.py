"""`leadre serve inference --instances N`: N Triton servers, one process each, on distinct
ports (instance i: gRPC base+3i, HTTP base+3i+1, metrics base+3i+2).

One instance runs in this process. Several run as child processes (the same command with
``--instances 1``), each in its own session so a terminal's Ctrl-C reaches only this
launcher, which then sends SIGTERM to every child (each drains its in-flight requests)
and waits for them. If a child dies, the others are stopped too and the launcher fails:
a supervisor restarts the set.
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
from pathlib import Path

from leadre_model.errors import UsageError
from services.common.settings import Settings
from services.inference.client import TritonRetrievalClient
from services.inference.server import InferenceService, instance_ports

Echo = Callable[[str], None]


def check_ports_free(host: str, ports: list[int]) -> None:
    """ValueError naming the first port something else already listens on."""
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                raise UsageError(f"port {port} on {host} is in use; "
                                 "choose another --base-port") from None


def instance_device(spec: str, i: int, gpus: int | None = None) -> str:
    """Instance ``i``'s device: with ``auto`` or a bare ``cuda`` on a machine with G GPUs
    (``gpus``, default: what torch sees), GPU ``i mod G`` — one instance per GPU, more
    instances than GPUs share them round-robin; otherwise ``spec`` as given."""
    if spec not in ("auto", "cuda"):
        return spec
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if gpus == 0:
        return spec  # auto → CPU; a bare cuda fails in the instance with a clear message
    return f"cuda:{i % gpus}"


def describe(settings: Settings, base_port: int, i: int) -> str:
    grpc, http, metrics = instance_ports(base_port, i)
    return (f"instance {i}: grpc://{settings.inference_advertise_host}:{grpc} "
            f"(http :{http}, metrics :{metrics})")


def run(settings: Settings, registry: Path, instances: int, base_port: int, echo: Echo) -> None:
    """Serve until SIGTERM/SIGINT (see module doc)."""
    ports = [p for i in range(instances) for p in instance_ports(base_port, i)]
    if max(ports) > 65_535:
        raise UsageError(f"--base-port {base_port} leaves no room for {instances} instances")
    check_ports_free(settings.bind_host, ports)
    if instances == 1:
        service = InferenceService(settings, registry, *instance_ports(base_port, 0))
        service.serve_forever(on_ready=lambda: echo(describe(settings, base_port, 0)))
        return
    _run_children(settings, registry, instances, base_port, echo)


def _run_children(settings: Settings, registry: Path, instances: int, base_port: int,
                  echo: Echo) -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    env = dict(os.environ)
    if settings.inference_threads is None:  # share the cores instead of oversubscribing them
        env["LEADRE_INFERENCE_THREADS"] = str(max(1, (os.cpu_count() or 1) // instances))
    children = [subprocess.Popen(
        [sys.executable, "-m", "leadre", "serve", "inference", "--registry", str(registry),
         "--instances", "1", "--base-port", str(instance_ports(base_port, i)[0]), "--child"],
        env={**env, "LEADRE_DEVICE": instance_device(settings.device, i)},
        start_new_session=True) for i in range(instances)]
    try:
        _wait_ready(settings, children, base_port, stop, echo)
        while not stop.wait(0.5):
            dead = [i for i, c in enumerate(children) if c.poll() is not None]
            if dead:
                raise RuntimeError(f"instance {dead[0]} exited with code {children[dead[0]].returncode}")
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + settings.inference_drain_s + 30
        for c in children:
            try:
                c.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.kill()


def _wait_ready(settings: Settings, children: list[subprocess.Popen[bytes]], base_port: int,
                stop: threading.Event, echo: Echo) -> None:
    host = "127.0.0.1" if settings.bind_host in ("", "0.0.0.0") else settings.bind_host
    clients = [TritonRetrievalClient(f"{host}:{instance_ports(base_port, i)[0]}", timeout_s=2)
               for i in range(len(children))]
    waiting = set(range(len(children)))
    deadline = time.monotonic() + settings.inference_startup_s
    while waiting and not stop.is_set():
        for i in sorted(waiting):
            if children[i].poll() is not None:
                raise RuntimeError(f"instance {i} failed to start (exit code {children[i].returncode})")
            if clients[i].is_ready():
                waiting.discard(i)
                echo(describe(settings, base_port, i))
        if time.monotonic() > deadline:
            raise RuntimeError(f"instances {sorted(waiting)} not ready after "
                               f"{settings.inference_startup_s:g} s")
        stop.wait(0.5)
    for c in clients:
        c.close()


__all__ = ["check_ports_free", "run"]
