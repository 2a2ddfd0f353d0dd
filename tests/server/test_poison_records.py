"""A record PostgreSQL refuses as sent is stored, made storable, on both databases, and
never holds back what comes after it: the OTLP receiver and the gateway, over loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from bastion.settings import Settings
from tests.conftest import LiveServer
from tests.server.ingest_support import (
    chat,
    gateway_server,
    get,
    otlp_body,
    plain_span,
    post_otlp,
    project_key,
    rejected,
    stored_spans,
)


def test_a_span_named_with_nul_is_stored_and_ingestion_goes_on(live_server: LiveServer) -> None:
    poison = os.urandom(16).hex()
    status, _ = post_otlp(
        live_server, otlp_body([plain_span(poison, os.urandom(8).hex(), "a\x00b")])
    )
    assert status == 200

    # Spans of every project sent afterwards are stored as soon as they are acknowledged.
    other_key = project_key(live_server, "other")
    later = []
    for i in range(10):
        trace = os.urandom(16).hex()
        key = other_key if i % 2 else None
        assert (
            post_otlp(live_server, otlp_body([plain_span(trace, os.urandom(8).hex())]), key)[0]
            == 200
        )
        later.append((trace, key))
    for trace, key in later:
        assert len(stored_spans(live_server, trace, key)) == 1

    [span] = stored_spans(live_server, poison)
    assert span["name"] == "a\ufffdb"
    assert rejected(live_server) == []
    assert live_server.state.pipeline.spool.empty
    status, ready = get(live_server, "/readyz")
    assert (status, ready["status"]) == (200, "ok")


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    with gateway_server(settings, tmp_path) as server:
        yield server


def test_a_gateway_call_with_nul_in_user_is_stored_and_ingestion_goes_on(
    gateway: LiveServer,
) -> None:
    other_key = project_key(gateway, "other")
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.admin_key, max_retries=0) as c,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=other_key, max_retries=0) as other,
    ):
        poisoned = chat(
            c, model="chat", messages=[{"role": "user", "content": "hi"}], user="u\x00x"
        )
        after = chat(other, model="chat", messages=[{"role": "user", "content": "hi"}], user="ok")
    assert poisoned is not None
    assert after is not None
    [span] = stored_spans(gateway, poisoned, timeout=10)
    assert span["user_id"] == "u\ufffdx"
    [later] = stored_spans(gateway, after, other_key, timeout=10)
    assert later["user_id"] == "ok"
    assert rejected(gateway) == []
    assert gateway.state.pipeline.spool.empty
    assert gateway.state.pipeline.database_ok
