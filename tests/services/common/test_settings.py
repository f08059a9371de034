"""Settings: every process drains by its own setting, read from its own variable."""

from __future__ import annotations

import pytest

from services.common.settings import Settings


def test_each_process_has_its_own_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADRE_WORKER_DRAIN_S", "7")
    monkeypatch.setenv("LEADRE_MIXER_DRAIN_S", "3")
    monkeypatch.setenv("LEADRE_USER_SERVER_DRAIN_S", "4")
    s = Settings()
    assert (s.worker_drain_s, s.mixer_drain_s, s.user_server_drain_s) == (7.0, 3.0, 4.0)
    monkeypatch.delenv("LEADRE_MIXER_DRAIN_S")
    assert Settings().mixer_drain_s == 30.0  # not the worker's

