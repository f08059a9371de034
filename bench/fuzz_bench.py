"""Fuzzing at depth (issue 22): the real Mixer and User Server as processes, on a seeded
world, fed generated and malformed input. One ``name: value`` a line, all from one run:

  cases_per_operation_min   HTTP cases sent to the least-fuzzed operation of the Mixer's
                            OpenAPI spec (schemathesis: positive and negative generation,
                            each case with a generated extra query string and header, so an
                            operation without parameters is fuzzed too)
  http_operations           operations in the spec
  grpc_cases_per_method_min malformed or mutated protobuf bytes sent to the least-fuzzed gRPC
                            method (Mixer, User Server, and both servers' health service)
  grpc_methods              methods fuzzed
  server_errors             HTTP 5xx plus gRPC INTERNAL / UNKNOWN answers (target 0)
  errors_without_message    HTTP errors without a non-empty JSON ``detail``, gRPC errors
                            without details (target 0)
  http_status_<code>, grpc_status_<CODE>   how the cases were answered

    python bench/fuzz_bench.py [--cases 1000] [--redis redis://127.0.0.1:6379/11]

The Redis db is flushed first and after. Failures are printed (``failure: …``) up to 10.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from leadre_model.data.store import load_ads
from leadre_model.data.synth import SynthConfig, generate_world
from leadre_model.index.build import build_index
from leadre_model.index.rqvae import PRESETS
from leadre_model.index.sid_index import IndexConfig
from services.common import keys
from services.common.contracts import Retrieval, RetrievedAd
from services.common.pb import leadre_pb2 as pb
from services.common.redis_client import redis_client
from services.common.settings import Settings
from services.launcher import free_port
from services.nearline.writer import ListWriter
from services.user_server.seed import seed_world

sys.path.insert(0, str(Path(__file__).parent))
from serving_bench import stop_procs, wait_http

SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Query and header names/values beyond the spec: odd names, long and non-ASCII values.
_TEXT = st.text(min_size=0, max_size=40)
_NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12)
EXTRA = st.tuples(st.dictionaries(_NAMES, _TEXT, max_size=3),
                  st.dictionaries(_NAMES.map(lambda n: "x-" + n),
                                  st.text(alphabet=st.characters(min_codepoint=32,
                                                                 max_codepoint=126),
                                          max_size=60), max_size=2))


class Tally:
    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.server_errors = 0
        self.without_message = 0
        self.failures: list[str] = []

    def fail(self, what: str) -> None:
        if len(self.failures) < 20:
            self.failures.append(what)


# ------------------------------------------------------------------------------- HTTP
def _message(r: requests.Response) -> bool:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return False
    return bool(detail)


def fuzz_http(base: str, cases: int, tally: Tally) -> dict[str, int]:
    """``cases`` schemathesis cases per operation (half positive, half negative generation;
    more rounds with new seeds while an operation falls short: hypothesis stops early on a
    small input space); cases sent per operation."""
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    session = requests.Session()
    sent: dict[str, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        name = f"{op.method.upper()} {op.path}"
        sent[name] = 0
        modes = list(GenerationMode)  # a mode with nothing to generate is dropped
        for round_ in range(10):
            if sent[name] >= cases:
                break
            for i, mode in enumerate(list(modes)):
                want = -(-(cases - sent[name]) // (len(modes) - i))  # the rest, split evenly

                @hypothesis.seed(round_ * 2 + (mode is GenerationMode.NEGATIVE))
                @hypothesis.settings(max_examples=max(want, 1), deadline=None, database=None,
                                     suppress_health_check=list(hypothesis.HealthCheck),
                                     phases=[hypothesis.Phase.generate])
                @hypothesis.given(case=op.as_strategy(generation_mode=mode), extra=EXTRA)
                def run(case: schemathesis.Case, extra: tuple[dict[str, str], dict[str, str]]
                        ) -> None:
                    query, headers = extra
                    try:
                        r = case.call(base_url=base, session=session, timeout=10,
                                      params={**query, **(case.query or {})},
                                      headers={**headers, **(case.headers or {})})
                    except (requests.exceptions.InvalidHeader, ValueError, UnicodeError):
                        return  # the client refused to send it: not a case
                    sent[name] += 1  # noqa: B023 (run() is called in this iteration)
                    tally.statuses[f"http_status_{r.status_code}"] += 1
                    if r.status_code >= 500:
                        tally.server_errors += 1
                        tally.fail(f"{case.method} {case.formatted_path} {case.body!r:.200} -> "
                                   f"{r.status_code}: {r.text[:200]}")
                    if r.status_code >= 400 and not _message(r):
                        tally.without_message += 1
                        tally.fail(f"no message: {case.method} {case.formatted_path} -> "
                                   f"{r.status_code}: {r.text[:200]}")

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:  # nothing to negate (no parameters)
                    modes.remove(mode)
    return sent


# ------------------------------------------------------------------------------- gRPC
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _request_type(method: str) -> type:
    """The request message class of a full method name."""
    service, name = method.strip("/").split("/")
    if service.startswith("grpc.health"):
        from grpc_health.v1 import health_pb2

        return health_pb2.HealthCheckRequest
    desc = pb.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[1]].methods_by_name[name]
    return getattr(pb, desc.input_type.name)


_NASTY_STR = ["", " ", "u0001", "a" * 70, "ü" * 40, "\x00", "{u}", "a:b", "../x", "\n", "%s",
              "x" * 10_000]
_NASTY_NUM = [0, -1, 1, 2**31 - 1, -2**31, 10**6, 63]
_NASTY_FLOAT = [0.0, -0.0, -1.0, 1e308, -1e308, float("nan"), float("inf"), float("-inf"), 5e-324]


def adversarial(cls: type, rng: random.Random, ids: list[str], depth: int = 0) -> object:
    """A well-formed message of ``cls`` whose fields hold odd values: empty, too long,
    non-ASCII, NaN and infinities, extreme integers, real ids mixed in."""
    from google.protobuf.descriptor import FieldDescriptor as F

    msg = cls()
    for f in cls.DESCRIPTOR.fields:
        if rng.random() < 0.3:
            continue
        n = rng.choice([1, 1, 2, 3, 50]) if f.is_repeated else 1
        for _ in range(n):
            if f.type == F.TYPE_MESSAGE:
                if depth > 2:
                    continue
                v = adversarial(getattr(pb, f.message_type.name), rng, ids, depth + 1)
            elif f.type == F.TYPE_STRING:
                v = rng.choice(_NASTY_STR + ids)
            elif f.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
                v = rng.choice(_NASTY_FLOAT)
            elif f.type == F.TYPE_BOOL:
                v = rng.random() < 0.5
            elif f.type == F.TYPE_ENUM:
                v = rng.choice([x.number for x in f.enum_type.values])
            else:
                v = rng.choice(_NASTY_NUM)
                if f.type in (F.TYPE_UINT32, F.TYPE_UINT64):
                    v = abs(v)
                if f.type in (F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_SINT64):
                    v *= rng.choice([1, 10**9])
            if f.is_repeated:
                field = getattr(msg, f.name)
                field.add().CopyFrom(v) if f.type == F.TYPE_MESSAGE else field.append(v)
            elif f.type == F.TYPE_MESSAGE:
                getattr(msg, f.name).CopyFrom(v)
            else:
                setattr(msg, f.name, v)
    return msg


def malformed(cls: type, rng: random.Random, ids: list[str]) -> bytes:
    """One case: random bytes, an over-long varint, a truncated or overlong length, a string
    field that is not UTF-8, a wrong wire type, deep nesting, bit flips / cuts / splices of a
    well-formed message, or a well-formed message with odd values (:func:`adversarial`)."""
    kind = rng.randrange(10)
    field = rng.randrange(1, 8)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return _varint(field << 3) + b"\xff" * rng.randrange(10, 30) + b"\x01"
    if kind == 2:
        return _varint(field << 3 | 2) + _varint(rng.randrange(5, 1 << 30)) + b"ab"
    if kind == 3:
        junk = bytes(rng.choice([0xff, 0xfe, 0xc0, 0x80, 0xed]) for _ in range(rng.randrange(1, 9)))
        return _varint(1 << 3 | 2) + _varint(len(junk)) + junk
    if kind == 4:
        return _varint(field << 3 | rng.choice([3, 4, 6, 7])) + b"\x00" * rng.randrange(4)
    if kind == 5:
        return (_varint(field << 3 | 3) * rng.randrange(50, 200)) + b"\x00"
    data = bytearray(adversarial(cls, rng, ids).SerializeToString())  # type: ignore[attr-defined]
    if kind == 6 and data:
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 7 and data:
        data = data[:rng.randrange(len(data))] + bytes([0x80 | rng.randrange(128)])
    elif kind == 8:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20)))
    return bytes(data)


def grpc_methods() -> list[tuple[str, bool]]:
    """(full method, server streaming) of the Mixer's or the User Server's port."""
    out = []
    for service in ("Mixer", "UserServer"):
        out += [(f"/leadre.v1.{service}/{m.name}", False)
                for m in pb.DESCRIPTOR.services_by_name[service].methods]
    return out


def fuzz_grpc(targets: dict[str, str], cases: int, users: list[str], ads: list[str],
              tally: Tally, seed: int = 7) -> dict[str, int]:
    """``cases`` malformed messages per method; ``targets``: service name → address."""
    rng = random.Random(seed)
    ids = users[:5] + ads[:5]
    sent: dict[str, int] = {}
    health = [("/grpc.health.v1.Health/Check", False), ("/grpc.health.v1.Health/Watch", True)]
    for service, target in targets.items():
        methods = [m for m in grpc_methods() if f".{service}/" in m[0]] + health
        with grpc.insecure_channel(target) as ch:
            for method, streaming in methods:
                call: Callable[..., object] = (ch.unary_stream if streaming else ch.unary_unary)(method)
                cls = _request_type(method)
                key = f"{target} {method}"
                sent[key] = 0
                for _ in range(cases):
                    raw = malformed(cls, rng, ids)
                    code, details = _call(call, raw, streaming)
                    sent[key] += 1
                    tally.statuses[f"grpc_status_{code.name}"] += 1
                    if code in SERVER_ERRORS:
                        tally.server_errors += 1
                        tally.fail(f"{method} {raw[:40]!r} -> {code.name}: {details[:200]}")
                    if code is not grpc.StatusCode.OK and not details:
                        tally.without_message += 1
                        tally.fail(f"no message: {method} {raw[:40]!r} -> {code.name}")
    return sent


def _call(call: Callable[..., object], raw: bytes, streaming: bool) -> tuple[grpc.StatusCode, str]:
    try:
        out = call(raw, timeout=5)
        if streaming:  # Watch answers the status, then waits for changes: one is enough
            it: Iterator[object] = iter(out)  # type: ignore[call-overload]
            next(it)
            out.cancel()  # type: ignore[attr-defined]
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="cases per operation / method")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    a = ap.parse_args()

    s = Settings(redis_url=a.redis, log_json=False, user_metrics_port=0)
    r = redis_client(s)
    r.flushdb()
    procs: list[subprocess.Popen[bytes]] = []
    tally = Tally()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            world = Path(tmp) / "world"
            generate_world(world, SynthConfig(n_users=50, n_ads=600, n_content=150, seed=5),
                           progress=False)
            seed_world(r, world, s)
            registry = Path(tmp) / "registry"  # an index for rank-features (no model needed)
            build_index(load_ads(world), registry / "versions" / "v1" / "index",
                        IndexConfig(rqvae=PRESETS["tiny"]), progress=False)
            (registry / "CURRENT").write_text("v1")
            users = sorted(r.smembers(keys.USERS))
            ads = sorted(r.hkeys(keys.ADS))
            writer = ListWriter(redis_client(s, decode_responses=False), s.list_ttl_s, 20)
            for u in users[:25]:  # half the users have a LEADRE list, half get the fallback
                writer.write(u, 1, Retrieval(ads=[RetrievedAd(ad_id=x, score=-0.1 * (i + 1))
                                                  for i, x in enumerate(ads[:20])],
                                             model_version="fuzz"))
            us_port, http_port, grpc_port = (free_port() for _ in range(3))
            env = {**os.environ, "LEADRE_REDIS_URL": a.redis, "LEADRE_LOG_LEVEL": "CRITICAL",
                   "LEADRE_USER_METRICS_PORT": "0", "LEADRE_API_KEYS": "",
                   "LEADRE_USER_SERVER_ADDR": f"127.0.0.1:{us_port}",
                   "LEADRE_REGISTRY_DIR": str(registry),
                   "LEADRE_LIVE_INDEX_DIR": str(Path(tmp) / "live_index")}
            leadre = str(Path(sys.executable).parent / "leadre")
            procs.append(subprocess.Popen([leadre, "serve", "user-server", "--port", str(us_port)],
                                          env=env))
            procs.append(subprocess.Popen([leadre, "serve", "mixer", "--http-port", str(http_port),
                                           "--grpc-port", str(grpc_port)], env=env))
            base = f"http://127.0.0.1:{http_port}"
            wait_http(f"{base}/readyz")
            http_sent = fuzz_http(base, a.cases, tally)
            grpc_sent = fuzz_grpc({"Mixer": f"127.0.0.1:{grpc_port}",
                                   "UserServer": f"127.0.0.1:{us_port}"},
                                  a.cases, users, ads, tally)
            alive = all(p.poll() is None for p in procs)
    finally:
        stop_procs(procs)
        r.flushdb()

    for f in tally.failures:
        print(f"failure: {f}")
    print(f"http_operations: {len(http_sent)}")
    print(f"cases_per_operation_min: {min(http_sent.values())}")
    print(f"http_cases_per_operation: {json.dumps(http_sent)}")
    print(f"grpc_methods: {len(grpc_sent)}")
    print(f"grpc_cases_per_method_min: {min(grpc_sent.values())}")
    print(f"server_errors: {tally.server_errors}")
    print(f"errors_without_message: {tally.without_message}")
    print(f"servers_alive_after: {int(alive)}")
    for name, n in sorted(tally.statuses.items()):
        print(f"{name}: {n}")


if __name__ == "__main__":
    main()
