"""A private Redis that speaks only TLS: a throwaway CA and a server certificate for
127.0.0.1 / localhost made with the ``openssl`` CLI, and ``redis-server --port 0
--tls-port P`` with ``requirepass`` (no plain-text port, clients need no certificate of
their own). Tests that need a TLS-capable ``redis-server`` are skipped, with the reason,
where it is missing or built without TLS. And a local Redis Cluster (``cluster.py``): 3 masters
+ 3 replicas on loopback ports, for the session."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.launcher import free_port
from tests.services.common.cluster import LocalCluster

SERVER_EXT = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
subjectAltName = IP:127.0.0.1, DNS:localhost
"""


@dataclass(frozen=True)
class TlsRedis:
    port: int
    ca: Path  # the CA that signed the server certificate (what clients trust)
    password: str

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path, client_auth: bool = False) -> None:
    """``ca.crt`` / ``ca.key`` (a self-signed CA) and ``server.crt`` / ``server.key`` (signed
    by it, SAN 127.0.0.1 and localhost) in ``d``; P-256 keys, valid two days. ``client_auth``:
    the certificate may serve as a client's too (cluster nodes present it to each other)."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=leadre test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    ext = SERVER_EXT.replace("= serverAuth", "= serverAuth, clientAuth") if client_auth else SERVER_EXT
    (d / "server.ext").write_text(ext)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext", cwd=d)


@pytest.fixture(scope="session")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    """A TLS-only ``redis-server`` with a password, for the session; stopped at the end."""
    for tool in ("redis-server", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"Redis TLS tests need `{tool}` on PATH")
    d = tmp_path_factory.mktemp("redis-tls")
    make_certs(d)
    server = TlsRedis(port=free_port(), ca=d / "ca.crt", password="pw-tls-" + d.name)
    log = d / "redis.log"
    args = ["--port", "0", "--tls-port", str(server.port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(d / "server.crt"), "--tls-key-file", str(d / "server.key"),
            "--tls-ca-cert-file", str(server.ca), "--tls-auth-clients", "no",
            "--requirepass", server.password, "--save", "", "--appendonly", "no", "--dir", str(d)]
    with log.open("wb") as out:
        proc = subprocess.Popen(["redis-server", *args], stdout=out, stderr=subprocess.STDOUT)
    client = redis.Redis.from_url(server.url, password=server.password,
                                  ssl_ca_certs=str(server.ca))
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                text = log.read_text(errors="replace") if log.exists() else ""
                if "bad directive" in text.lower() and "tls" in text.lower():  # built without TLS
                    pytest.skip(f"redis-server lacks TLS support: {text.strip()[-300:]}")
                raise RuntimeError(f"redis-server --tls-port exited ({proc.returncode}): {text[-2000:]}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        client.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A Redis Cluster of 3 masters + 3 replicas with a password, for the session; stopped
    at the end."""
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            pytest.skip(f"Redis Cluster tests need `{tool}` on PATH")
    d = tmp_path_factory.mktemp("redis-cluster")
    cluster = LocalCluster(d, password="pw-cluster-" + d.name)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """The same cluster speaking only TLS (certificates as for ``tls_redis``)."""
    for tool in ("redis-server", "redis-cli", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"Redis Cluster TLS tests need `{tool}` on PATH")
    d = tmp_path_factory.mktemp("redis-cluster-tls")
    make_certs(d, client_auth=True)
    cluster = LocalCluster(d, password="pw-cluster-tls-" + d.name, tls=True)
    try:
        try:
            cluster.start()
        except RuntimeError as exc:
            if "bad directive" in str(exc).lower() and "tls" in str(exc).lower():
                pytest.skip(f"redis-server lacks TLS support: {str(exc)[-300:]}")
            raise
        yield cluster
    finally:
        cluster.stop()
