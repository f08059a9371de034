"""A real local Redis Cluster for the tests: 3 masters + 3 replicas, each a ``redis-server
--cluster-enabled yes`` on a loopback port (7100-7199, cluster bus at +10000), all with
``requirepass``/``masterauth``, joined by ``redis-cli --cluster create --cluster-replicas 1``;
optionally TLS only (``--tls-port``, ``--tls-cluster``, ``--tls-replication``).
:meth:`LocalCluster.failover` promotes a master's replica (``CLUSTER FAILOVER``: the replica
catches up with the master's replication offset first, so no acknowledged write is lost)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

NODES, PORT_RANGE, BUS_OFFSET = 6, range(7100, 7200), 10_000


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports() -> list[int]:
    """Six consecutive ports in 7100-7199 (else in 30000-39999) whose cluster bus ports
    (+10000) are free too."""
    for span in (PORT_RANGE, range(30_000, 40_000)):
        for base in range(span.start, span.stop - NODES + 1, NODES):
            ports = list(range(base, base + NODES))
            if all(_free(p) and _free(p + BUS_OFFSET) for p in ports):
                return ports
    raise RuntimeError("no 6 free ports (and bus ports +10000) in 7100-7199 or 30000-39999")


@dataclass
class LocalCluster:
    d: Path  # nodes' config files, logs; with ``tls``, also ca.crt, server.crt/.key
    password: str
    tls: bool = False  # TLS only: clients, the cluster bus and replication
    ports: list[int] = field(default_factory=free_cluster_ports)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The first node: where clients start (they learn the rest from it)."""
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.ports[0]}/0"

    @property
    def ca(self) -> Path:
        return self.d / "ca.crt"

    def _listen(self, port: int) -> list[str]:
        if not self.tls:
            return ["--port", str(port)]
        return ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes",
                "--tls-replication", "yes", "--tls-cert-file", str(self.d / "server.crt"),
                "--tls-key-file", str(self.d / "server.key"), "--tls-ca-cert-file",
                str(self.ca), "--tls-auth-clients", "no"]

    @property
    def other_nodes(self) -> str:
        """The other nodes as ``LEADRE_REDIS_CLUSTER_NODES`` (startup nodes)."""
        return ",".join(f"127.0.0.1:{p}" for p in self.ports[1:])

    def node(self, port: int) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.ca)} if self.tls else {}
        return redis.Redis(port=port, password=self.password, decode_responses=True,
                           socket_timeout=5, **tls)

    def start(self, timeout_s: float = 30) -> LocalCluster:
        for p in self.ports:
            with (self.d / f"{p}.log").open("wb") as out:
                self.procs.append(subprocess.Popen(
                    ["redis-server", *self._listen(p), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{p}.conf",
                     "--cluster-node-timeout", "2000", "--dir", str(self.d),
                     "--save", "", "--appendonly", "no", "--requirepass", self.password,
                     "--masterauth", self.password, "--repl-diskless-sync-delay", "0",
                     "--repl-ping-replica-period", "1"],
                    stdout=out, stderr=subprocess.STDOUT))
        for p in self.ports:
            self._wait(lambda p=p: self.node(p).ping(), timeout_s, f"node {p} answering")
        tls = ["--tls", "--cacert", str(self.ca)] if self.tls else []
        subprocess.run(["redis-cli", *tls, "-a", self.password, "--no-auth-warning", "--cluster",
                        "create", *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", "1", "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout_s)
        self._wait(self.healthy, timeout_s, "cluster_state:ok and every replica linked")
        return self

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    # -- topology -------------------------------------------------------------------------
    def role(self, port: int) -> str:
        return str(self.node(port).execute_command("ROLE")[0])

    def masters(self) -> list[int]:
        return [p for p in self.ports if self.role(p) == "master"]

    def replica_of(self, master: int) -> int:
        for p in self.ports:
            role = self.node(p).execute_command("ROLE")
            if role[0] == "slave" and int(role[2]) == master:
                return p
        raise LookupError(f"no replica of {master}")

    def master_of(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        slot = key_slot(key.encode())
        for start, end, master, *_ in self.node(self.ports[0]).execute_command("CLUSTER SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
        raise LookupError(f"slot {slot} has no owner")

    def healthy(self) -> bool:
        """Every node sees cluster_state:ok and a replica beside every master in its slot
        map, there are 3 masters and every replica is linked."""
        with contextlib.suppress(redis.RedisError):
            for p in self.ports:
                node = self.node(p)
                if (node.execute_command("CLUSTER INFO")["cluster_state"] != "ok"
                        or any(len(r) < 4 for r in node.execute_command("CLUSTER SLOTS"))):
                    return False
            infos = [self.node(p).info("replication") for p in self.ports]
            masters = [i for i in infos if i["role"] == "master"]
            return len(masters) == 3 and all(
                i.get("master_link_status") == "up" for i in infos if i["role"] == "slave")
        return False

    def failover(self, master: int, timeout_s: float = 20) -> int:
        """Promote ``master``'s replica (it takes over the slots, ``master`` becomes its
        replica); returns the new master's port once the cluster is healthy again."""
        replica = self.replica_of(master)
        asked = -1e9

        def promoted() -> bool:
            nonlocal asked
            if self.role(replica) == "master":
                return self.healthy()
            if time.monotonic() - asked > 6:  # a manual failover gives up after 5 s: ask again
                self.node(replica).execute_command("CLUSTER FAILOVER")
                asked = time.monotonic()
            return False

        self._wait(promoted, timeout_s, f"replica {replica} promoted in place of {master}")
        return replica

    def _wait(self, cond: Callable[[], object], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(redis.RedisError):
                if cond():
                    return
            for port, proc in zip(self.ports, self.procs):
                if proc.poll() is not None:
                    log = (self.d / f"{port}.log").read_text(errors="replace")[-1000:]
                    raise RuntimeError(f"redis-server on {port} exited: {log}")
            if time.monotonic() > deadline:
                logs = {p: (self.d / f"{p}.log").read_text(errors="replace")[-500:]
                        for p in self.ports}
                raise TimeoutError(f"Redis Cluster: timed out waiting for {what}; logs {logs}")
            time.sleep(0.05)
