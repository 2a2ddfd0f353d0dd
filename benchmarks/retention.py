"""Retention under load: a real `bastion serve` deletes expired spans while it ingests.

The store first holds ``--spans`` spans (default 1,000,000) spread over the 30 days before
now, written as ingestion writes them. A server then starts with ``retention.spans_days``
(default 15: about half of them have expired) and its retention job's first pass due
``--baseline`` seconds after start. A client posts OTLP/HTTP protobuf requests (500 fresh
spans each, ~2 KB of GenAI attributes per span) at a fixed concurrency for the whole run.

A server's ingest rate falls as its store grows (bigger indexes, heavier checkpoints), so the
rate before the pass flatters the comparison. A control run therefore does everything again
on a copy of the same store without retention, and its rate over the same seconds of its
run is the fair baseline. Reported: ingest throughput during the pass against the control
(the goal is at least 80%) and against the minutes before the pass, the deletion rate
(spans the job deleted per second of its pass, from its own metrics), that every expired
span went and every acknowledged one stayed, with the load average and CPU model beside
them (figures are only comparable on one machine at one load).

    python benchmarks/retention.py --db sqlite --spans 200000
    python benchmarks/retention.py --db both                       # the full run, 1M spans
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import sqlalchemy as sa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rich.console import Console
from rich.table import Table

from harness import free_port
from ingest_throughput import SPANS_PER_REQUEST, build_request, cpu_model, create_key, prefill

console = Console(width=160)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DAY_NS = 86_400 * 10**9
_METRIC = re.compile(r'^bastion_retention_(rows_total\{kind="spans"\}|running) (\S+)$', re.M)


class Bodies:
    """Fresh OTLP requests fast: one template request whose trace and span ids are overwritten
    with new random ones in place (a parent's id changes with it in its children), instead of
    building and serialising 500 spans per request in the client."""

    def __init__(self, seed: int) -> None:
        self.template = build_request(seed)
        decoded = ExportTraceServiceRequest.FromString(self.template)
        ids = {
            bytes(getattr(span, name))
            for rs in decoded.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
            for name in ("trace_id", "span_id")
        }
        self.offsets: list[tuple[int, list[int]]] = []  # id length, where it appears
        for old in ids:
            at, start = [], self.template.find(old)
            while start != -1:
                at.append(start)
                start = self.template.find(old, start + 1)
            self.offsets.append((len(old), at))

    def next(self) -> bytes:
        body = bytearray(self.template)
        for size, where in self.offsets:
            new = os.urandom(size)
            for start in where:
                body[start : start + size] = new
        return bytes(body)


@dataclass
class Run:
    """What the client and the metrics poller saw, on one clock (time.monotonic)."""

    acked: list[tuple[float, int]] = field(default_factory=list)  # (when, spans)
    errors: int = 0
    throttled: int = 0
    pass_started: float | None = None
    pass_wall_ns: int = 0  # time.time_ns() when the pass was seen starting
    pass_ended: float | None = None
    deleted: float = 0.0
    load: list[tuple[float, float]] = field(default_factory=list)  # (when, 1-minute load)

    @property
    def origin(self) -> float:
        """The first acknowledgement: offsets are counted from it, in a run and its control."""
        return self.acked[0][0] if self.acked else 0.0

    def rate(self, start: float, end: float) -> float:
        """Spans acknowledged per second between two offsets from :attr:`origin`."""
        first, last = self.origin + start, self.origin + end
        spans = sum(n for when, n in self.acked if first <= when < last)
        return spans / (end - start) if end > start else float("nan")

    def load_between(self, start: float, end: float) -> float:
        values = [v for when, v in self.load if start <= when <= end]
        return max(values) if values else float("nan")


def start_server(
    home: Path, url: str, port: int, args: argparse.Namespace, *, retention: bool
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BASTION_HOME": str(home),
        "BASTION_DATABASE_URL": url,
        "BASTION_PORT": str(port),
        "BASTION_LOG_LEVEL": "WARNING",
        # The first pass comes this long after start (at most 30 s): the baseline before it.
        "BASTION_RETENTION__INTERVAL_S": str(args.baseline),
        "BASTION_RETENTION__BATCH_SIZE": str(args.batch_size),
        "BASTION_RETENTION__DUTY_CYCLE": str(args.duty_cycle),
    }
    if retention:
        env["BASTION_RETENTION__SPANS_DAYS"] = str(args.days)
    process = subprocess.Popen([sys.executable, "-m", "bastion.cli.main", "serve"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("server did not start")


async def send(
    url: str, key: str, bodies: Bodies, run: Run, stop: asyncio.Event, concurrency: int
) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"}

    async def worker(session: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            body = bodies.next()
            while not stop.is_set():
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                if response.status == 200:
                    run.acked.append((time.monotonic(), SPANS_PER_REQUEST))
                    break
                if response.status in (429, 503):
                    run.throttled += 1
                    await asyncio.sleep(0.05)
                    continue
                run.errors += 1
                break

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def watch(
    base: str, run: Run, stop: asyncio.Event, until: float | None, max_s: float
) -> None:
    """Poll the server's metrics: when the pass starts and ends, and how much it deleted.
    Stop the client 3 s after the pass, or (a control run) ``until`` s after its first ack."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < max_s:
            now = time.monotonic()
            run.load.append((now, os.getloadavg()[0]))
            if until is not None:
                if run.acked and now - run.origin >= until:
                    break
                await asyncio.sleep(0.25)
                continue
            async with session.get(base + "/metrics") as response:
                found = dict(_METRIC.findall(await response.text()))
            running = float(found.get("running", 0))
            run.deleted = float(found.get('rows_total{kind="spans"}', run.deleted))
            if running and run.pass_started is None:
                run.pass_started, run.pass_wall_ns = now, time.time_ns()
            if run.pass_started is not None and not running and run.pass_ended is None:
                run.pass_ended = now
                await asyncio.sleep(3)  # a little ingestion after the pass, then stop
                break
            await asyncio.sleep(0.25)
    stop.set()


async def drive(base: str, key: str, args: argparse.Namespace, until: float | None) -> Run:
    run, stop = Run(), asyncio.Event()
    bodies = Bodies(seed=1)
    watcher = asyncio.create_task(watch(base, run, stop, until, args.max_seconds))
    await send(base + "/v1/traces", key, bodies, run, stop, args.concurrency)
    await watcher
    return run


def serve_and_drive(
    url: str, key: str, args: argparse.Namespace, *, control_for: float | None
) -> Run:
    """Start a server on ``url`` (with retention, or a control run without it for
    ``control_for`` seconds), drive it, stop it."""
    port = free_port()
    with tempfile.TemporaryDirectory() as home:
        server = start_server(Path(home), url, port, args, retention=control_for is None)
        try:
            return asyncio.run(drive(f"http://127.0.0.1:{port}", key, args, control_for))
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(120)


def counts(url: str, cutoff_ns: int) -> tuple[int, int]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        expired = conn.execute(
            sa.text("SELECT COUNT(*) FROM spans WHERE start_ns < :c"), {"c": cutoff_ns}
        ).scalar_one()
        total = conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar_one()
    engine.dispose()
    return int(expired), int(total)


def prepare_store(url: str, control_url: str, spans: int) -> tuple[str, str]:
    """Store ``spans`` spans in the run's store and the same in the control's (SQLite: a copy
    of the file; PostgreSQL: stored again); returns an API key of each."""
    key = create_key(url)
    prefill(url, spans)
    if url.startswith("sqlite"):
        shutil.copyfile(url.removeprefix("sqlite:///"), control_url.removeprefix("sqlite:///"))
        return key, key
    control_key = create_key(control_url)
    prefill(control_url, spans)
    return key, control_key


def run_backend(name: str, url: str, control_url: str, args: argparse.Namespace) -> list[list[str]]:
    prefill_started = time.monotonic()
    key, control_key = prepare_store(url, control_url, args.spans)
    console.print(
        f"{name}: stored {args.spans:,} spans in {time.monotonic() - prefill_started:.0f}s"
    )
    cutoff_ns = time.time_ns() - args.days * DAY_NS
    expired_before, _ = counts(url, cutoff_ns)
    run = serve_and_drive(url, key, args, control_for=None)
    # What the pass's own cut-off left: it came later than the one counted above.
    # Gone: everything the pass's own cut-off (a little later than the one above) took.
    expired_after, total = counts(url, run.pass_wall_ns - args.days * DAY_NS - 10**9)
    if run.pass_started is None or run.pass_ended is None:
        return [[name, "retention pass", "did not finish within --max-seconds", "", "", "FAIL"]]
    start, end = run.pass_started - run.origin, run.pass_ended - run.origin
    control = serve_and_drive(control_url, control_key, args, control_for=end + 3)
    acked = sum(n for _, n in run.acked)
    before, during, fair = run.rate(3, start), run.rate(start, end), control.rate(start, end)
    control_before = control.rate(3, start)
    kept_ok = total == args.spans - run.deleted + acked
    load_before = run.load_between(run.origin + 3, run.pass_started)
    load_during = run.load_between(run.pass_started, run.pass_ended)
    load_control = control.load_between(control.origin + start, control.origin + end)
    stored = f"{total:,} stored = {args.spans:,} - {run.deleted:,.0f} + {acked:,} acknowledged"
    return [
        [name, "ingest before the pass", f"{start - 3:.0f}s", f"{before:,.0f} spans/s",
         f"c={args.concurrency}, load {load_before:.2f}", ""],
        [name, "ingest, control run, same seconds", f"{end - start:.0f}s", f"{fair:,.0f} spans/s",
         f"no retention, load {load_control:.2f}; {control_before:,.0f} spans/s before "
         f"({fair / control_before:.0%}: the store's growth alone)", ""],
        [name, "ingest during the pass", f"{end - start:.0f}s", f"{during:,.0f} spans/s",
         f"{during / fair:.0%} of control, {during / before:.0%} of before, load {load_during:.2f}",
         "PASS" if during >= 0.8 * fair else "FAIL"],
        [name, "deletion", f"{run.deleted:,.0f} spans", f"{run.deleted / (end - start):,.0f}/s",
         f"batch {args.batch_size}, duty cycle {args.duty_cycle:g}", ""],
        [name, "expired spans gone, acknowledged kept", f"{expired_before:,} expired", "",
         f"{expired_after} left; {stored}; {run.throttled} throttled, {run.errors} errors",
         "PASS" if expired_after == 0 and kept_ok and not run.errors else "FAIL"],
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--spans", type=int, default=1_000_000, help="spans stored first")
    parser.add_argument("--days", type=int, default=15, help="retention.spans_days of the run")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument(
        "--baseline", type=float, default=25.0, help="seconds from start to the first pass (≤ 30)"
    )
    parser.add_argument("--batch-size", type=int, default=1000, help="retention.batch_size")
    parser.add_argument("--duty-cycle", type=float, default=0.25, help="retention.duty_cycle")
    parser.add_argument("--max-seconds", type=float, default=1800, help="give up after this")
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args()

    console.print(f"machine: {os.cpu_count()} x {cpu_model()}, load average {os.getloadavg()}")
    table = Table("database", "measure", "volume", "rate", "notes", "bar (≥ 80% of control)")
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            urls = (f"sqlite:///{tmp}/bench.db", f"sqlite:///{tmp}/control.db")
            for row in run_backend("sqlite", *urls, args):
                table.add_row(*row)
    if args.db in ("postgresql", "both"):
        schemas = [f"bench_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            urls = [f"{args.pg_url}?options=-csearch_path%3D{schema}" for schema in schemas]
            for row in run_backend("postgresql", *urls, args):
                table.add_row(*row)
        finally:
            with admin.connect() as conn:
                for schema in schemas:
                    conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    console.print(table)
    console.print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
