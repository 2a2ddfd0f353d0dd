"""A live server whose audit chain is HMAC-keyed, on the parametrised database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bastion.settings import AuditSettings, Settings
from tests.audit.support import SECRET, SECRET_ENV
from tests.conftest import LiveServer, start_live_server


@pytest.fixture
def hmac_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return settings.model_copy(update={"audit": AuditSettings(secret_env=SECRET_ENV)})


@pytest.fixture
def audited_server(hmac_settings: Settings) -> Iterator[LiveServer]:
    server, stop = start_live_server(hmac_settings)
    try:
        yield server
    finally:
        stop()
