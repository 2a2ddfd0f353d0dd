"""The ingest pipeline: acknowledged spans are durable through database outages and restarts."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from bastion.ingest.pipeline import Backpressure, IngestMetrics, IngestPipeline
from bastion.ingest.spool import Spool
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import PreparedBatch, SpanWriter
from bastion.tracing.model import Span
from tests.conftest import PgOutage


def make_spans(n: int, *, trace: str | None = None) -> list[Span]:
    now = time.time_ns()
    spans = []
    for i in range(n):
        spans.append(
            Span(
                trace_id=trace or os.urandom(16).hex(),
                span_id=os.urandom(8).hex(),
                name="chat",
                start_ns=now,
                end_ns=now + 5_000_000,
                operation="chat",
                request_model="gpt-4o-mini",
                input_tokens=10 + i,
                output_tokens=5,
                input="hello",
            )
        )
    return spans


def pipeline_for(
    engine: sa.Engine, spool_dir: Path, *, writer: SpanWriter | None = None, **kwargs: object
) -> IngestPipeline:
    """A started pipeline (replaying the spool every 50 ms unless told otherwise)."""
    kwargs.setdefault("replay_interval_s", 0.05)
    pipeline = IngestPipeline(
        writer or SpanWriter(engine),
        Spool(spool_dir),
        metrics=IngestMetrics(CollectorRegistry()),
        **kwargs,  # type: ignore[arg-type]
    )
    pipeline.start()
    return pipeline


def count_spans(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar_one())


class Acks:
    """Collects the acknowledgements the pipeline gives, like a receiver would."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.lock = threading.Lock()

    def callback(self, n: int):  # type: ignore[no-untyped-def]
        def done(error: BaseException | None) -> None:
            with self.lock:
                if error is None:
                    self.acked += n
                else:
                    self.failed += n

        return done


def test_spans_are_written_and_duplicates_are_counted_once(
    engine: sa.Engine, tmp_path: Path
) -> None:
    pipeline = pipeline_for(engine, tmp_path / "spool")
    spans = make_spans(50)
    acks = Acks()
    pipeline.submit_nowait(1, spans, acks.callback(50))
    pipeline.submit_nowait(1, spans[:10], acks.callback(10))  # an exporter retrying
    assert pipeline.flush(10)
    pipeline.stop()
    assert acks.acked == 60
    assert count_spans(engine) == 50
    with engine.connect() as conn:
        total = conn.execute(
            sa.text("SELECT span_count FROM span_rollups WHERE dimension = 'total'")
        ).scalar_one()
    assert total == 50


def _rollup_state(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        deltas = conn.execute(sa.text("SELECT COUNT(*) FROM span_rollup_deltas")).scalar_one()
        total = conn.execute(
            sa.text(
                "SELECT COALESCE(SUM(span_count), 0) FROM span_rollups WHERE dimension = 'total'"
            )
        ).scalar_one()
    return int(deltas), int(total)


def test_the_writer_folds_deferred_roll_ups_once_per_interval_while_running(
    engine: sa.Engine, tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    pipeline = IngestPipeline(
        SpanWriter(engine),
        Spool(tmp_path / "spool"),
        metrics=IngestMetrics(registry),
        rollup_fold_interval_s=2.0,
    )
    pipeline.start()
    try:
        for _ in range(3):
            acks = Acks()
            pipeline.submit_nowait(1, make_spans(20), acks.callback(20), awaited=True)
            assert pipeline.flush(10)
            assert acks.acked == 20
        # Acknowledged with their batches' deltas; the fold waits for its interval.
        assert _rollup_state(engine) == (3, 0)
        deadline = time.monotonic() + 10
        while _rollup_state(engine) != (0, 60) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rollup_state(engine) == (0, 60)  # no more traffic: folded all the same
        assert registry.get_sample_value("bastion_rollup_deltas_folded_total") == 3
    finally:
        pipeline.stop()


def test_stopping_folds_what_is_left(engine: sa.Engine, tmp_path: Path) -> None:
    pipeline = pipeline_for(engine, tmp_path / "spool", rollup_fold_interval_s=60)
    pipeline.submit_nowait(1, make_spans(15), Acks().callback(15), awaited=True)
    assert pipeline.flush(10)
    assert _rollup_state(engine) == (1, 0)
    pipeline.stop()
    assert _rollup_state(engine) == (0, 15)


class CountingWriter(SpanWriter):
    """A real writer that remembers the size of every batch it committed."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.batches: list[int] = []

    def write_prepared(
        self, conn: sa.Connection, prepared: PreparedBatch, *, defer_rollups: bool = False
    ) -> int:
        written = super().write_prepared(conn, prepared, defer_rollups=defer_rollups)
        self.batches.append(len(prepared.keys))
        return written


def test_requests_queued_while_the_writer_waits_for_its_turn_join_its_batch(
    engine: sa.Engine, tmp_path: Path
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("the write lock that makes writers wait is SQLite's")
    writer = CountingWriter(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool", writer=writer)
    acks = Acks()
    try:
        with SpanWriter(engine).transaction():  # another worker's turn
            pipeline.submit_nowait(1, make_spans(4), acks.callback(4), awaited=True)
            deadline = time.monotonic() + 10
            while pipeline.queued_spans and time.monotonic() < deadline:
                time.sleep(0.01)  # the writer took the first request and waits for the lock
            for n in (3, 5):
                spans = make_spans(n)
                prepared = pipeline.prepare(1, spans)
                pipeline.submit_nowait(1, spans, acks.callback(n), awaited=True, prepared=prepared)
            time.sleep(0.1)
            assert writer.batches == []
        assert pipeline.flush(10)
    finally:
        pipeline.stop()
    assert writer.batches == [12]  # one turn, one commit for all three requests
    assert acks.acked == 12
    assert count_spans(engine) == 12


class HoldingWriter(SpanWriter):
    """Holds its transaction open until released; fails the write when told to."""

    def __init__(self, engine: sa.Engine) -> None:
        super().__init__(engine)
        self.inside = threading.Event()
        self.release = threading.Event()
        self.fail = False

    def write_prepared(
        self, conn: sa.Connection, prepared: PreparedBatch, *, defer_rollups: bool = False
    ) -> int:
        self.inside.set()
        assert self.release.wait(10)
        if self.fail:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database went away"))
        return super().write_prepared(conn, prepared, defer_rollups=defer_rollups)


def test_decoding_threads_yield_to_the_writer_while_its_transaction_is_open(
    engine: sa.Engine, tmp_path: Path
) -> None:
    writer = HoldingWriter(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool", writer=writer, replay_interval_s=1.0)
    acks = Acks()
    try:
        assert pipeline.yield_to_writer(0)  # no transaction open: no wait
        pipeline.submit_nowait(1, make_spans(3), acks.callback(3), awaited=True)
        assert writer.inside.wait(10)
        started = time.monotonic()
        assert not pipeline.yield_to_writer(0.1)  # a stalled write stalls nobody for long
        assert time.monotonic() - started >= 0.1
        waited: list[bool] = []
        waiter = threading.Thread(target=lambda: waited.append(pipeline.yield_to_writer(10)))
        waiter.start()
        time.sleep(0.1)
        assert waiter.is_alive()  # held back while the writer writes
        writer.release.set()
        waiter.join(10)
        assert waited == [True]
        assert pipeline.flush(10)

        # A write that fails opens the way again too (its spans go to the spool).
        writer.inside.clear()
        writer.release.clear()
        writer.fail = True
        pipeline.submit_nowait(1, make_spans(2), acks.callback(2), awaited=True)
        assert writer.inside.wait(10)
        assert not pipeline.yield_to_writer(0.05)
        writer.release.set()
        assert pipeline.flush(10)
        assert pipeline.yield_to_writer(0)
    finally:
        writer.release.set()
        pipeline.stop()
    assert acks.acked == 5
    assert acks.failed == 0


def test_unawaited_spans_linger_into_one_batch_and_an_awaited_one_cuts_it_short(
    engine: sa.Engine, tmp_path: Path
) -> None:
    writer = CountingWriter(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool", writer=writer, batch_linger_s=60.0)
    acks = Acks()
    for span in make_spans(20):  # the gateway: one span per call, nobody waiting
        pipeline.submit_nowait(1, [span], acks.callback(1))
    time.sleep(0.2)
    assert writer.batches == []  # still lingering
    awaited = threading.Event()
    pipeline.submit_nowait(1, make_spans(5), lambda error: awaited.set(), awaited=True)
    assert awaited.wait(10), "an awaited batch must not wait out the linger"
    pipeline.stop()
    assert writer.batches == [25]
    assert acks.acked == 20
    assert count_spans(engine) == 25


def test_stop_writes_lingering_spans(engine: sa.Engine, tmp_path: Path) -> None:
    writer = CountingWriter(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool", writer=writer, batch_linger_s=60.0)
    pipeline.submit_nowait(1, make_spans(3), Acks().callback(3))
    pipeline.stop(timeout=10)
    assert count_spans(engine) == 3


def test_queue_full_is_backpressure_not_growth(engine: sa.Engine, tmp_path: Path) -> None:
    pipeline = IngestPipeline(
        SpanWriter(engine),
        Spool(tmp_path / "spool"),
        metrics=IngestMetrics(CollectorRegistry()),
        queue_max_spans=1_000,
    )  # not started: nothing drains the queue
    acks = Acks()
    pipeline.submit_nowait(1, make_spans(600), acks.callback(600))
    with pytest.raises(Backpressure) as info:
        pipeline.submit_nowait(1, make_spans(600), acks.callback(600))
    assert info.value.retry_after_s >= 1
    assert pipeline.queued_spans == 600
    pipeline.start()
    assert pipeline.flush(10)
    pipeline.stop()
    assert acks.acked == 600
    assert count_spans(engine) == 600


def test_postgres_outage_mid_ingest_loses_no_acknowledged_span(
    pg_outage: PgOutage, tmp_path: Path
) -> None:
    engine = create_engine(pg_outage.url, connect_args={"connect_timeout": 2})
    migrate.upgrade(engine)
    pipeline = pipeline_for(engine, tmp_path / "spool", batch_max_spans=200)
    acks = Acks()
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            with contextlib.suppress(Backpressure):
                pipeline.submit_nowait(1, make_spans(20), acks.callback(20))
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.5)
    pg_outage.down()
    time.sleep(1.5)  # ingest goes on against a dead database
    spooled_during_outage = pipeline.metrics.spooled._value.get()
    pg_outage.up()
    time.sleep(1.0)
    stop.set()
    producer.join()
    assert pipeline.flush(30)
    deadline = time.monotonic() + 30
    while not pipeline.spool.empty and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.stop()

    assert spooled_during_outage > 0, "the outage should have sent batches to the spool"
    assert acks.failed == 0
    assert acks.acked > 0
    assert pipeline.spool.empty
    assert count_spans(engine) == acks.acked
    engine.dispose()


def test_sqlite_locked_database_spools_then_replays_after_restart(tmp_path: Path) -> None:
    db = tmp_path / "bastion.db"
    engine = create_engine(f"sqlite:///{db}", sqlite_busy_timeout_ms=50)
    migrate.upgrade(engine)
    # Another process holding the write lock makes the database unwritable for us.
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    pipeline = pipeline_for(engine, tmp_path / "spool")
    acks = Acks()
    for _ in range(5):
        pipeline.submit_nowait(1, make_spans(100), acks.callback(100))
    assert pipeline.flush(10)
    pipeline.stop()  # a restart while the database is still unavailable
    assert acks.acked == 500
    assert not pipeline.spool.empty
    blocker.execute("ROLLBACK")
    blocker.close()

    restarted = pipeline_for(engine, tmp_path / "spool")
    deadline = time.monotonic() + 10
    while not restarted.spool.empty and time.monotonic() < deadline:
        time.sleep(0.05)
    restarted.stop()
    assert count_spans(engine) == 500
    engine.dispose()


def test_torn_spool_tail_is_dropped_and_the_rest_replayed(
    engine: sa.Engine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([(1, s) for s in make_spans(30)])
    spool.append([(1, s) for s in make_spans(20)])
    segment = spool.segments()[0]
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])  # the second record was being written when the power went

    pipeline = pipeline_for(engine, tmp_path / "spool")
    deadline = time.monotonic() + 10
    while not pipeline.spool.empty and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    assert count_spans(engine) == 30


def test_corrupt_spool_segment_is_quarantined_not_deleted(
    engine: sa.Engine, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([(1, s) for s in make_spans(10)])
    spool.append([(1, s) for s in make_spans(10)])
    segment = spool.segments()[0]
    data = bytearray(segment.read_bytes())
    data[20] ^= 0xFF  # a flipped byte inside the first record
    segment.write_bytes(bytes(data))

    pipeline = pipeline_for(engine, tmp_path / "spool")
    deadline = time.monotonic() + 10
    while not pipeline.spool.empty and time.monotonic() < deadline:
        time.sleep(0.05)
    pipeline.stop()
    assert list((tmp_path / "spool").glob("*.corrupt"))
