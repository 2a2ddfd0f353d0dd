"""The retention job: a pass over every project's policy, every ``retention.interval_s``.

The server runs one (in worker 0 of ``serve --workers N``; see ``server.retention_routes``).
Of several replicas sharing a PostgreSQL database one passes at a time: a pass holds a
session advisory lock and the others skip their turn. A pass is paced by
``retention.duty_cycle`` and stops at its next batch when the server shuts down.

Metrics: ``bastion_retention_rows_total{kind}`` counts what passes removed: as they go,
spans deleted (``spans``), payloads dropped (``payload``) and per-item eval results deleted
(``scores``); after each pass, ``traces_removed``, ``traces_updated``, ``rejects`` and
``eval_scores``. ``bastion_retention_running`` is 1 during a pass, and
``bastion_retention_last_pass_seconds`` is how long the last one took.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.retention.passes import apply
from bastion.retention.policy import Kind, policy_for
from bastion.retention.report import PassReport
from bastion.retention.turns import Turns
from bastion.runtime.background import ThreadWork
from bastion.settings import Settings
from bastion.store.writer import SpanWriter

__all__ = ["RetentionJob", "wants_job"]

log = logging.getLogger("bastion.retention")

# The first pass waits this long after start (at most one interval): long enough for the
# server to settle, short enough that a replica restarted often still passes.
_FIRST_PASS_DELAY_S = 30.0
_LOCK_KEY = int.from_bytes(b"retentn", "big")  # the PostgreSQL advisory lock of a pass


def wants_job(settings: Settings) -> bool:
    """Whether this server process should run the job: enabled, the first (or only) worker,
    and some retention period configured anywhere."""
    if not settings.retention.job or settings.worker_index not in (None, 0):
        return False
    slugs = ["", *settings.projects]  # "" stands for any project that is not configured
    return any(not policy_for(settings, slug).keeps_everything for slug in slugs)


class RetentionJob:
    """Runs retention passes in the background of one server process."""

    def __init__(
        self,
        engine: sa.Engine,
        settings: Settings,
        *,
        registry: CollectorRegistry | None = None,
        writer: SpanWriter | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.writer = writer
        self.stop = threading.Event()
        self.work = ThreadWork()
        registry = registry if registry is not None else CollectorRegistry()
        self.rows = Counter(
            "bastion_retention_rows",
            "Rows removed by retention passes, by kind",
            ["kind"],
            registry=registry,
        )
        self.running = Gauge(
            "bastion_retention_running", "1 while a retention pass runs", registry=registry
        )
        self.last_pass_s = Gauge(
            "bastion_retention_last_pass_seconds",
            "How long the last retention pass took",
            registry=registry,
        )
        self._seen: dict[tuple[str, Kind], int] = {}

    def _progress(self, project: str, kind: Kind, rows: int) -> None:
        key = (project, kind)
        self.rows.labels(kind).inc(rows - self._seen.get(key, 0))
        self._seen[key] = rows

    @contextmanager
    def _exclusive(self) -> Iterator[bool]:
        """True when this process may pass now (on PostgreSQL: it holds the job's lock)."""
        if self.engine.dialect.name != "postgresql":
            yield True
            return
        with self.engine.connect() as conn:
            mine = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(_LOCK_KEY))).scalar())
            conn.commit()
            try:
                yield mine
            finally:
                if mine:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_KEY)))
                    conn.commit()

    def run_pass(self) -> PassReport | None:
        """One pass now (blocking); None when another replica is passing."""
        with self._exclusive() as mine:
            if not mine:
                return None
            self._seen = {}
            self.running.set(1)
            started = time.perf_counter()
            try:
                turns = Turns(
                    self.engine,
                    duty_cycle=self.settings.retention.duty_cycle,
                    stop=self.stop,
                    writer=self.writer,
                )
                report = apply(self.engine, self.settings, turns=turns, progress=self._progress)
            finally:
                self.running.set(0)
                self.last_pass_s.set(time.perf_counter() - started)
        for result in report.results:
            _count_details(self.rows, result.details)
        if any(r.rows for r in report.results):
            log.info("retention pass: %s", _describe(report))
        return report

    async def run(self) -> None:
        """Pass every ``interval_s`` until cancelled; a failed pass is logged, not fatal."""
        interval = self.settings.retention.interval_s
        await asyncio.sleep(min(interval, _FIRST_PASS_DELAY_S))
        while True:
            try:
                await self.work.run(self.run_pass)
            except (sa.exc.SQLAlchemyError, OSError, ValueError) as exc:
                log.warning("retention pass failed (retrying next interval): %s", exc)
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Have a running pass stop at its next batch."""
        self.stop.set()


def _count_details(rows: Counter, details: dict[str, int]) -> None:
    for name in ("traces_removed", "traces_updated", "rejects"):
        if details.get(name):
            rows.labels(name).inc(details[name])
    if details.get("scores"):
        rows.labels("eval_scores").inc(details["scores"])


def _describe(report: PassReport) -> str:
    parts = [
        f"{r.project}/{r.kind}: {r.rows:,}" + "".join(f", {k} {v:,}" for k, v in r.details.items())
        for r in report.results
        if r.rows
    ]
    return f"{'; '.join(parts)} in {report.seconds:.1f}s ({report.transactions} transactions)"
