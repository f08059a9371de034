"""Security and bad input on the real Mixer (uvicorn + gRPC, a real User Server, Redis db
15): API key 401/200 over HTTP and UNAUTHENTICATED over gRPC (probes stay open), body
size 413, bad ids 422 / INVALID_ARGUMENT with a message, and a bounded schemathesis run
against the Mixer's OpenAPI spec that must never see a 5xx."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import hypothesis
import pytest
import redis
import schemathesis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common import keys
from services.common.pb import leadre_pb2 as pb
from services.common.pb import leadre_pb2_grpc as pb_grpc
from services.common.security import DENIED, key_ok
from services.common.settings import Settings
from services.mixer.server import start_mixer
from tests.services.helpers import REDIS_BASE, BackgroundLoop, seed

KEY = "k-7f3a9c1e-secret"
DB = 15


@pytest.fixture
def settings() -> Iterator[Settings]:
    """This module's Redis is db 15 (flushed before and after); overrides conftest's."""
    s = Settings(redis_url=f"{REDIS_BASE}/{DB}", user_metrics_port=0, worker_metrics_port=0,
                 bind_host="127.0.0.1", log_json=False)
    r = redis.Redis.from_url(s.redis_url)
    r.flushdb()
    yield s
    r.flushdb()
    r.close()


@dataclass
class Mixer:
    base: str
    grpc_target: str
    user: str


def _mixer(bg: BackgroundLoop, settings: Settings, user_server: str, svc_world,
           **update: object) -> Iterator[Mixer]:
    s = settings.model_copy(update={"user_server_addr": user_server, "mixer_max_k": 50, **update})
    seed(s, svc_world[0])
    user = min(redis.Redis.from_url(s.redis_url, decode_responses=True).smembers(keys.USERS))
    proc, _ = bg.run(start_mixer(s, lambda: svc_world[1], http_port=0, grpc_port=0))
    yield Mixer(f"http://127.0.0.1:{proc.http_port}", f"127.0.0.1:{proc.grpc_port}", user)
    bg.run(proc.stop(0.5))


@pytest.fixture
def locked(bg, settings, user_server, svc_world) -> Iterator[Mixer]:
    """A Mixer with API keys, a 2 KiB HTTP body limit and 4 KiB gRPC messages."""
    yield from _mixer(bg, settings, user_server, svc_world, api_keys=f"other-key, {KEY}",
                      max_request_bytes=2048, grpc_max_message_bytes=4096)


@pytest.fixture
def open_mixer(bg, settings, user_server, svc_world) -> Iterator[Mixer]:
    yield from _mixer(bg, settings, user_server, svc_world)


def test_key_check_is_all_or_nothing() -> None:
    ks = (b"abc", b"def")
    assert key_ok("def", ks) and key_ok("abc", ks)
    assert not key_ok("ab", ks) and not key_ok("", ks) and not key_ok(None, ks)
    assert key_ok(None, ())  # no keys configured: auth off


def test_http_api_key(locked: Mixer) -> None:
    body = {"user_id": locked.user, "k": 5}
    with httpx.Client(base_url=locked.base, timeout=10) as http:
        for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": KEY[:-1]},
                        {"authorization": "Basic " + KEY}):
            r = http.post("/v1/retrieve", json=body, headers=headers)
            assert r.status_code == 401 and r.json() == {"detail": DENIED}
        assert http.get(f"/v1/users/{locked.user}").status_code == 401
        assert http.post("/v1/retrieve", json=body, headers={"x-api-key": KEY}).status_code == 200
        assert http.post("/v1/retrieve", json=body,
                         headers={"authorization": f"Bearer {KEY}"}).status_code == 200
        # Probes and Prometheus stay open.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(path).status_code == 200, path
        metrics = http.get("/metrics").text  # rejected before routing: "unmatched"
        assert 'request_seconds_count{code="401",method="POST unmatched"} 4.0' in metrics
        assert 'request_seconds_count{code="200",method="POST /v1/retrieve"} 2.0' in metrics


def test_http_body_limit_and_bad_ids(locked: Mixer) -> None:
    auth = {"x-api-key": KEY}
    big = {"user_id": locked.user, "candidate_ad_ids": ["a" * 60] * 100}
    with httpx.Client(base_url=locked.base, timeout=10, headers=auth) as http:
        r = http.post("/v1/rank-features", json=big)
        assert r.status_code == 413 and "2048 bytes" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no content-length: chunked transfer
            yield b'{"user_id": "u1", "candidate_ad_ids": ['
            for _ in range(200):
                yield b'"aaaaaaaaaaaaaaaa",'
            yield b'"a"]}'

        r = http.post("/v1/rank-features", content=chunks(),
                      headers={"content-type": "application/json"})
        assert r.status_code == 413
        for bad in ("u 1", "x" * 65, "{u1}", "u1:list\n", ""):
            r = http.post("/v1/retrieve", json={"user_id": bad, "k": 3})
            assert r.status_code == 422 and "user_id" in r.text, bad
        r = http.post("/v1/rank-features", json={"user_id": locked.user,
                                                 "candidate_ad_ids": ["ok", "bad id"]})
        assert r.status_code == 422 and "candidate_ad_ids" in r.text
        r = http.get("/v1/users/" + "x" * 65)
        assert r.status_code == 422 and "detail" in r.json()


def test_grpc_api_key_and_invalid_argument(locked: Mixer) -> None:
    with grpc.insecure_channel(locked.grpc_target) as ch:
        stub = pb_grpc.MixerStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Retrieve(pb.RetrieveRequest(user_id=locked.user, k=3), timeout=5)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and e.value.details() == DENIED
        with pytest.raises(grpc.RpcError) as e:
            stub.Retrieve(pb.RetrieveRequest(user_id=locked.user, k=3), timeout=5,
                          metadata=(("x-api-key", "nope"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        md = (("x-api-key", KEY),)
        assert len(stub.Retrieve(pb.RetrieveRequest(user_id=locked.user, k=3), timeout=5,
                                 metadata=md).ads) == 3
        for req, field in ((pb.RetrieveRequest(user_id="bad id", k=3), "user_id"),
                           (pb.RetrieveRequest(user_id=locked.user, k=0), "k"),
                           (pb.RetrieveRequest(user_id="x" * 65, k=3), "user_id")):
            with pytest.raises(grpc.RpcError) as e:
                stub.Retrieve(req, timeout=5, metadata=md)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in (e.value.details() or "")
        with pytest.raises(grpc.RpcError) as e:
            stub.RankFeatures(pb.RankFeaturesRequest(user_id=locked.user,
                                                     candidate_ad_ids=["a", "b/c"]),
                              timeout=5, metadata=md)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "candidate_ad_ids" in (e.value.details() or "")
        with pytest.raises(grpc.RpcError) as e:  # over LEADRE_GRPC_MAX_MESSAGE_BYTES
            stub.RankFeatures(pb.RankFeaturesRequest(user_id=locked.user,
                                                     candidate_ad_ids=["a" * 60] * 100),
                              timeout=5, metadata=md)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The health service needs no key.
        health = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="leadre.v1.Mixer"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# Bytes that are no valid message: a truncated field, an over-long varint, a string field
# (1) that is not UTF-8, a length past the end, random bytes (seeded).
MALFORMED = (b"\x0a", b"\x08" + b"\xff" * 11, b"\x0a\x02\xff\xfe", b"\x0a\x7fab",
             bytes(random.Random(5).randrange(256) for _ in range(64)))


def grpc_methods(user_server: str, mixer: str) -> list[tuple[str, str, bool]]:
    """(target, full method, server streaming) of every gRPC method of both servers."""
    out = []
    for target, names in ((mixer, ("leadre.v1.Mixer",)), (user_server, ("leadre.v1.UserServer",))):
        for name in names:
            for m in pb.DESCRIPTOR.services_by_name[name.split(".")[-1]].methods:
                out.append((target, f"/{name}/{m.name}", False))
        out += [(target, "/grpc.health.v1.Health/Check", False),
                (target, "/grpc.health.v1.Health/Watch", True)]
    return out


def test_non_finite_numbers_and_malformed_protobuf(open_mixer: Mixer, user_server: str) -> None:
    """NaN / Infinity in a JSON body is a 422 naming the field (FastAPI's handler could not
    render the NaN it echoes: 500); malformed protobuf bytes to every gRPC method of the
    Mixer and the User Server, health included, are INVALID_ARGUMENT with the parse error
    (grpc's default: UNKNOWN "Unexpected DecodeError")."""
    u = open_mixer.user
    with httpx.Client(base_url=open_mixer.base, timeout=10,
                      headers={"content-type": "application/json"}) as http:
        for path, body, field in (
                ("/v1/retrieve", f'{{"user_id":"{u}","k":NaN}}', "k"),
                ("/v1/retrieve", f'{{"user_id":"{u}","k":Infinity}}', "k"),
                ("/v1/retrieve", '{"user_id":-Infinity,"k":3}', "user_id"),
                ("/v1/retrieve", "NaN", "body"),
                ("/v1/rank-features", f'{{"user_id":"{u}","candidate_ad_ids":[NaN]}}',
                 "candidate_ad_ids")):
            r = http.post(path, content=body)
            assert r.status_code == 422, (body, r.status_code, r.text)
            assert field in r.text and r.json()["detail"], body
    for target, method, streaming in grpc_methods(user_server, open_mixer.grpc_target):
        with grpc.insecure_channel(target) as ch:
            call = (ch.unary_stream if streaming else ch.unary_unary)(method)
            for raw in MALFORMED:
                with pytest.raises(grpc.RpcError) as e:
                    out = call(raw, timeout=5)
                    if streaming:
                        next(iter(out))
                assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, raw, e.value)
                assert method in e.value.details() and "malformed" in e.value.details()


def test_schemathesis_no_5xx(open_mixer: Mixer) -> None:
    """Every operation of the OpenAPI spec, 30 generated cases each: never a 5xx."""
    schema = schemathesis.openapi.from_url(f"{open_mixer.base}/openapi.json")
    failures: list[str] = []
    ops, calls = 0, [0]
    for result in schema.get_all_operations():
        op = result.ok()
        ops += 1

        @hypothesis.settings(max_examples=30, deadline=None, database=None, derandomize=True,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
        @hypothesis.given(case=op.as_strategy())
        def run(case: schemathesis.Case) -> None:
            r = case.call(base_url=open_mixer.base, timeout=10)
            calls[0] += 1
            if r.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {r.status_code}: "
                                f"{r.text[:200]}")

        run()
    assert ops >= 6 and calls[0] >= 10 * ops
    assert not failures, failures[:5]


def test_locustfile_runs_headless(open_mixer: Mixer, settings: Settings) -> None:
    """loadtest/locustfile.py for 3 s against the real Mixer: HTTP and gRPC users both
    report requests, none fail, and the summary lines are printed."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "LEADRE_REDIS_URL": settings.redis_url,
           "LOADTEST_GRPC_TARGET": open_mixer.grpc_target, "LOADTEST_HOT_USERS": "5"}
    out = subprocess.run(
        [str(Path(sys.executable).parent / "locust"), "-f", "loadtest/locustfile.py",
         "--headless", "-u", "4", "-r", "4", "-t", "3s", "--host", open_mixer.base,
         "--only-summary", "--stop-timeout", "2"],
        check=False, cwd=root, env=env, capture_output=True, text=True, timeout=60)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    lines = {ln.split()[1]: ln for ln in text.splitlines()
             if ln.strip().startswith(("grpc", "POST", "ALL"))
             and "p50/p95/p99" in ln}
    assert {"Retrieve", "/v1/retrieve"} <= set(lines), text[-2000:]
    assert "errors 0.00%" in lines["Aggregated"], text[-2000:]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_grpc_tls_between_mixer_and_user_server(bg: BackgroundLoop, settings: Settings,
                                                svc_world, tmp_path: Path) -> None:
    """With a self-signed cert: the user server and the mixer's gRPC port serve TLS, the
    mixer dials the user server over TLS (retrieve works, readyz is ready); a plaintext
    client is refused."""
    from services.user_server.server import start_user_server

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    s = settings.model_copy(update={"grpc_tls_cert": str(cert), "grpc_tls_key": str(key),
                                    "grpc_tls_ca": str(cert)})
    us, us_port, store, _ = bg.run(start_user_server(s, port=0))
    mixers = _mixer(bg, s, f"localhost:{us_port}", svc_world)
    m = next(mixers)
    try:
        with httpx.Client(base_url=m.base, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            r = http.post("/v1/retrieve", json={"user_id": m.user, "k": 3})
            assert r.status_code == 200 and len(r.json()["ads"]) == 3
        port = m.grpc_target.rsplit(":", 1)[1]
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds) as ch:
            got = pb_grpc.MixerStub(ch).Retrieve(pb.RetrieveRequest(user_id=m.user, k=3), timeout=5)
            assert len(got.ads) == 3
        with grpc.insecure_channel(m.grpc_target) as ch, pytest.raises(grpc.RpcError) as e:
            pb_grpc.MixerStub(ch).Retrieve(pb.RetrieveRequest(user_id=m.user, k=3), timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        next(mixers, None)
        bg.run(us.stop(grace=0.5))
        bg.run(store.close())
