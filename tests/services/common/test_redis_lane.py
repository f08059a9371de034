"""The pipelined read lane against real Redis (db 13): replies go back to the right callers
under concurrency, the URL's db and the password apply, error replies, a killed
connection (the next command reconnects), a server that never answers (timeout), and
Redis down."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.exceptions
from pydantic import SecretStr

from services.common.redis_lane import ReadLane, pack_command
from services.common.settings import Settings


def test_pack_command() -> None:
    assert pack_command("MGET", b"k\r\n", "é") == b"*3\r\n$4\r\nMGET\r\n$3\r\nk\r\n\r\n$2\r\n\xc3\xa9\r\n"


def test_concurrent_reads_get_their_own_replies(settings: Settings, rds: redis.Redis) -> None:
    rds.mset({f"lane:{i}": f"v{i}" for i in range(300)})
    rds.hset("lane:hash", "f", "1")

    async def go() -> None:
        lane = ReadLane(settings, timeout_s=5)
        try:
            got = await asyncio.gather(*(lane.mget([f"lane:{i}", "lane:none", f"lane:{i + 1}"])
                                         for i in range(299)))
            assert got == [[f"v{i}".encode(), None, f"v{i + 1}".encode()] for i in range(299)]
            with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
                await lane.command("GET", "lane:hash")
            assert await lane.mget(["lane:7"]) == [b"v7"]  # the connection is still in step
            # Killed under it: the next command reconnects.
            rds.execute_command("CLIENT", "KILL", "ID", await lane.command("CLIENT", "ID"))
            await asyncio.sleep(0.05)
            assert await lane.mget(["lane:8"]) == [b"v8"]
        finally:
            await lane.close()

    asyncio.run(go())


def test_password_and_refusals(settings: Settings) -> None:
    async def go() -> None:
        wrong = ReadLane(settings.model_copy(update={"redis_password": SecretStr("not-it")}))
        with pytest.raises(redis.exceptions.ConnectionError):  # AUTH refused (no password set)
            await wrong.mget(["x"])
        down = ReadLane(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
        with pytest.raises(redis.exceptions.ConnectionError, match="127.0.0.1:1"):
            await down.mget(["x"])

    asyncio.run(go())


def test_a_server_that_never_answers_times_out(settings: Settings) -> None:
    async def go() -> None:
        silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = silent.sockets[0].getsockname()[1]
        lane = ReadLane(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}),
                        timeout_s=0.2)
        try:
            with pytest.raises(redis.exceptions.TimeoutError, match="no reply within 0.2s"):
                await lane.mget(["x"])
        finally:
            silent.close()
            await lane.close()

    asyncio.run(go())
