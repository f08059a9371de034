"""The one Redis client factory: the password and TLS settings reach every client, and the
daily pipeline and the live demo build theirs through it (a real Redis whose test user
needs the password: without it the first command fails with an authentication error)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rich.console import Console

from leadre_model.data.store import read_table
from services.common import keys
from services.common.redis_client import async_redis_client, redis_client
from services.common.settings import Settings
from tests.services.helpers import REDIS_BASE, TEST_DB

PASSWORD = "pw-5d1c-test"


def test_password_and_tls_options_are_applied() -> None:
    s = Settings(redis_url="rediss://cache.example:6380/2", redis_password=PASSWORD,
                 redis_tls_ca="/etc/ssl/redis-ca.pem")
    for client in (redis_client(s), async_redis_client(s)):
        pool = client.connection_pool
        assert pool.connection_kwargs["password"] == PASSWORD
        assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ssl/redis-ca.pem"
        assert pool.connection_class.__name__ == "SSLConnection"
        assert pool.connection_kwargs["decode_responses"] is True
    plain = redis_client(Settings(redis_url="redis://cache.example:6379/0",
                                  redis_tls_ca="/etc/ssl/redis-ca.pem"), decode_responses=False)
    kw = plain.connection_pool.connection_kwargs
    assert "password" not in kw and "ssl_ca_certs" not in kw  # no CA without rediss://
    assert kw["decode_responses"] is False


def test_the_password_setting_wins_over_one_in_the_url() -> None:
    s = Settings(redis_url="redis://alice:old@cache.example:6379/0", redis_password="new")
    kw = redis_client(s).connection_pool.connection_kwargs
    assert (kw["username"], kw["password"]) == ("alice", "new")
    url_only = Settings(redis_url="redis://:inurl@cache.example:6379/0")
    assert redis_client(url_only).connection_pool.connection_kwargs["password"] == "inurl"


@pytest.fixture
def locked_url(settings: Settings) -> Iterator[str]:
    """A Redis URL (db 13) naming an ACL user whose password is ``PASSWORD``."""
    admin = redis.Redis.from_url(settings.redis_url)
    user = f"leadre-test-{os.getpid()}"
    admin.acl_setuser(user, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"],
                      channels=["*"], commands=["+@all"])
    yield f"{REDIS_BASE.replace('://', f'://{user}@')}/{TEST_DB}"
    admin.acl_deluser(user)
    admin.close()


def test_a_real_redis_sees_the_password(locked_url: str) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(locked_url).ping()
    assert redis_client(Settings(redis_url=locked_url, redis_password=PASSWORD)).ping()


def test_daily_pipeline_exports_through_the_factory(locked_url: str, rds: redis.Redis,
                                                    tmp_path: Path) -> None:
    from services.pipeline.daily import run_daily

    rds.sadd(keys.USERS, "u_locked")
    registry = tmp_path / "registry"
    (registry / "versions" / "v1").mkdir(parents=True)
    (registry / "CURRENT").write_text("v1")
    s = Settings(redis_url=locked_url, redis_password=PASSWORD, registry_dir=str(registry),
                 live_index_dir=str(tmp_path / "live"))
    with pytest.raises(FileNotFoundError):  # after the export: the version has no index
        run_daily(s, workdir=tmp_path / "day")
    users = read_table(tmp_path / "day" / "world", "users", columns=["user_id"])
    assert users["user_id"].to_pylist() == ["u_locked"]


def test_live_demo_connects_through_the_factory(locked_url: str, rds: redis.Redis,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from services.demo_live import run_live_demo

    monkeypatch.setenv("LEADRE_REDIS_URL", locked_url)
    monkeypatch.setenv("LEADRE_REDIS_PASSWORD", PASSWORD)
    rds.set("leadre:stale", "1")
    with pytest.raises(FileNotFoundError):  # after the flush: the demo has no model yet
        run_live_demo(tmp_path, Console(quiet=True))
    assert not rds.exists("leadre:stale")
