"""Readiness tells a spool that is not draining, or too old; a restart loses nothing."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bastion.settings import IngestSettings, Settings
from tests.conftest import PgOutage, start_live_server
from tests.server.ingest_support import get, otlp_body, plain_span, post_otlp, rejected
from tests.server.test_otlp_receiver import http


def test_readyz_degrades_while_spans_wait_in_the_spool_and_a_restart_loses_none(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=pg_outage.url,
        ingest=IngestSettings(spool_stale_after_s=0.5, spool_replay_interval_s=0.1),
    )
    server, stop = start_live_server(settings)
    traces = [os.urandom(16).hex() for _ in range(5)]
    try:
        assert get(server, "/readyz")[0] == 200
        pg_outage.down()
        for trace in traces:
            spans = [plain_span(trace, os.urandom(8).hex()) for _ in range(10)]
            assert post_otlp(server, otlp_body(spans))[0] == 200  # spooled, acknowledged
        status, ready = get(server, "/readyz")
        assert (status, ready["status"]) == (503, "degraded")
        assert any(r.startswith("database unavailable") for r in ready["reasons"]), ready
        assert any(r.startswith("spool not draining") for r in ready["reasons"]), ready
        assert ready["spool"]["spans"] == 50
        time.sleep(0.7)
        _, ready = get(server, "/readyz")
        assert any("oldest record is" in r for r in ready["reasons"]), ready
        _, _, metrics = http("GET", server.url + "/metrics")
        assert "bastion_ingest_spool_spans 50.0" in metrics.decode()
    finally:
        stop()  # the server goes down while the database still is

    pg_outage.up()
    server, stop = start_live_server(settings)
    try:
        deadline = time.monotonic() + 30
        while not server.state.pipeline.spool.empty and time.monotonic() < deadline:
            time.sleep(0.05)
        for trace in traces:
            status, tree = get(server, f"/api/v1/traces/{trace}")
            assert status == 200, tree
            assert tree["trace"]["span_count"] == 10
        status, ready = get(server, "/readyz")
        assert (status, ready["status"], ready["reasons"]) == (200, "ok", [])
        assert rejected(server) == []
    finally:
        stop()
