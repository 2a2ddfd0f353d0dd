"""A span the database refuses is set aside; it never stops ingestion, nor is it retried.

The storable rule (bastion.store.storable) makes every value writable, so these tests switch
it off for the writer to get spans the database really refuses past it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from bastion.ingest.pipeline import IngestMetrics, IngestPipeline
from bastion.ingest.spool import Spool
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span
from tests.conftest import PgOutage
from tests.ingest.test_pipeline import Acks, count_spans, make_spans, pipeline_for


@pytest.fixture
def rule_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Spans reach the database as given, as if the storable rule had missed a value."""
    monkeypatch.setattr("bastion.store.writer.make_span_storable", lambda span: None)


def rejects(engine: sa.Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT project_id, span_id, reason, record FROM ingest_rejects ORDER BY id"
                )
            )
        )


def _bad_span(kind: str) -> Span:
    span = make_spans(1)[0]
    if kind == "range":
        span.input_tokens = 2**63  # one past the widest integer of both databases
    elif kind == "encoding":
        span.user_id = "u\ud800"  # a lone surrogate: no UTF-8 can carry it
    else:
        span.name = "a\x00b"  # PostgreSQL text cannot hold NUL
    return span


def _kinds(backend: str) -> list[str]:
    return ["range", "encoding", "nul"] if backend == "postgresql" else ["range", "encoding"]


def wait_for(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.usefixtures("rule_off")
def test_a_refused_span_is_isolated_and_the_rest_of_its_batch_committed(
    engine: sa.Engine, tmp_path: Path, db_backend: str
) -> None:
    # Unawaited spans linger, so both projects' spans and the bad ones form one batch.
    pipeline = pipeline_for(engine, tmp_path / "spool", batch_linger_s=0.5)
    acks = Acks()
    bad = [_bad_span(kind) for kind in _kinds(db_backend)]
    project_one = make_spans(30)
    project_one[10:10] = bad
    pipeline.submit_nowait(1, project_one, acks.callback(len(project_one)))
    pipeline.submit_nowait(2, make_spans(25), acks.callback(25))
    assert pipeline.flush(30)
    pipeline.stop()

    assert (acks.acked, acks.failed) == (len(project_one) + 25, 0)
    assert count_spans(engine) == 55
    stored = rejects(engine)
    assert [(r.project_id, r.span_id, r.reason) for r in stored] == [
        (1, span.span_id, kind) for span, kind in zip(bad, _kinds(db_backend), strict=True)
    ]
    assert pipeline.spool.empty
    assert pipeline.database_ok
    counted = {
        kind: pipeline.metrics.dead_lettered.labels(kind)._value.get()
        for kind in _kinds(db_backend)
    }
    assert counted == dict.fromkeys(_kinds(db_backend), 1.0)


@pytest.mark.usefixtures("rule_off")
def test_dead_letters_keep_the_span_whole_and_once(engine: sa.Engine, tmp_path: Path) -> None:
    pipeline = pipeline_for(engine, tmp_path / "spool")
    bad = _bad_span("range")
    bad.attributes = {"k": "v", "n": 3}
    acks = Acks()
    pipeline.submit_nowait(1, [bad], acks.callback(1))
    pipeline.submit_nowait(1, [bad], acks.callback(1))  # an exporter retrying it
    assert pipeline.flush(30)
    pipeline.stop()
    assert acks.acked == 2
    [stored] = rejects(engine)
    record = orjson.loads(stored.record)
    assert record["input_tokens"] == 2**63  # kept exactly
    assert record["attributes"] == {"k": "v", "n": 3}
    assert record["span_id"] == bad.span_id


@pytest.mark.usefixtures("rule_off")
def test_spool_replay_dead_letters_a_refused_span_and_completes_the_segment(
    engine: sa.Engine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    good = make_spans(40)
    bad = _bad_span("range")
    spool.append([(1, s) for s in good[:20]] + [(1, bad)] + [(2, s) for s in good[20:30]])
    spool.append([(2, s) for s in good[30:]])

    pipeline = pipeline_for(engine, tmp_path / "spool")
    drained = wait_for(lambda: pipeline.spool.empty)
    pipeline.stop()
    assert drained, "the segment holding a refused span must still complete"
    assert count_spans(engine) == 40
    assert [(r.project_id, r.span_id, r.reason) for r in rejects(engine)] == [
        (1, bad.span_id, "range")
    ]


def test_a_locked_sqlite_database_spools_and_dead_letters_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bastion.db"
    engine = create_engine(f"sqlite:///{db}", sqlite_busy_timeout_ms=50)
    migrate.upgrade(engine)
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    pipeline = pipeline_for(engine, tmp_path / "spool")
    acks = Acks()
    pipeline.submit_nowait(1, make_spans(50), acks.callback(50))
    assert pipeline.flush(10)
    assert acks.acked == 50
    assert not pipeline.spool.empty
    assert not pipeline.database_ok
    assert any("not draining" in reason for reason in pipeline.health().reasons)
    blocker.execute("ROLLBACK")
    blocker.close()
    assert wait_for(lambda: pipeline.spool.empty)
    pipeline.stop()
    assert count_spans(engine) == 50
    assert rejects(engine) == []
    assert pipeline.health().ok
    engine.dispose()


def test_a_postgres_outage_spools_and_dead_letters_nothing(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    engine = create_engine(pg_outage.url, connect_args={"connect_timeout": 2})
    migrate.upgrade(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool")
    acks = Acks()
    pipeline.submit_nowait(1, make_spans(10), acks.callback(10))
    assert pipeline.flush(10)
    pg_outage.down()
    pipeline.submit_nowait(1, make_spans(40), acks.callback(40))
    assert pipeline.flush(20)
    assert not pipeline.spool.empty
    pg_outage.up()
    assert wait_for(lambda: pipeline.spool.empty, 30)
    pipeline.stop()
    assert acks.acked == 50
    assert count_spans(engine) == 50
    assert rejects(engine) == []
    engine.dispose()


def test_health_and_gauges_report_a_spool_older_than_the_threshold(
    engine: sa.Engine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([(1, s) for s in make_spans(3)])
    spool.append([(1, s) for s in make_spans(2)])
    past = time.time() - 120  # as if spooled two minutes ago, before a restart
    os.utime(spool.segments()[0], (past, past))
    registry = CollectorRegistry()
    pipeline = IngestPipeline(
        SpanWriter(engine),
        Spool(tmp_path / "spool"),
        metrics=IngestMetrics(registry),
        spool_stale_after_s=60,
        replay_interval_s=0.05,
    )
    [reason] = pipeline.health().reasons
    assert re.search(r"oldest record is 1[12]\d s old \(more than 60 s\)", reason), reason
    pipeline.spool.count_spans()  # what the writer thread does first
    assert registry.get_sample_value("bastion_ingest_spool_spans") == 5
    assert registry.get_sample_value("bastion_ingest_spool_segments") == 1
    assert registry.get_sample_value("bastion_ingest_spool_oldest_age_seconds") >= 119

    pipeline.start()
    assert wait_for(lambda: pipeline.spool.empty)
    pipeline.stop()
    assert pipeline.health().ok
    assert count_spans(engine) == 5
    assert registry.get_sample_value("bastion_ingest_spool_spans") == 0
    assert registry.get_sample_value("bastion_ingest_spool_oldest_age_seconds") == 0
