"""OTLP ingest throughput: spans/s persisted by a real `bastion serve`, SQLite and PostgreSQL.

A client process posts pre-built OTLP/HTTP protobuf requests (500 spans each, ~2 KB of GenAI
attributes per span) over loopback with a fixed concurrency; the figure is acknowledged spans
per second, and an acknowledgement means the spans are durable (committed or fsync'd to the
spool). A second phase overloads the server (many concurrent senders, small queue) and samples
its RSS to show back-pressure (429 + Retry-After) instead of memory growth.

    python benchmarks/ingest_throughput.py --db both --spans 200000

Throughput is measured with one server process (the baseline) and with each count of
``--workers`` (default: one per core, and one more than cores), each against an empty table,
or with ``--stored N`` against tables already holding N spans of the past 30 days: an index
that has outgrown the page cache costs a write more than an empty one does. ``--repeat N``
runs each setting N times and reports the median: on a shared machine one run's figure can be
several percent off the next one's.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
import psutil
import sqlalchemy as sa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from harness import free_port

console = Console(width=160)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SPANS_PER_REQUEST = 500


def _kv(key: str, value: object) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    if isinstance(value, list):
        items = [AnyValue(string_value=str(item)) for item in value]
        return KeyValue(key=key, value=AnyValue(array_value=ArrayValue(values=items)))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def build_request(seed: int) -> bytes:
    """One request of SPANS_PER_REQUEST realistic GenAI spans (5 spans per trace)."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.extend([_kv("service.name", "bench-app")])
    ss = rs.scope_spans.add()
    ss.scope.name = "bench"
    now = time.time_ns()
    prompt = orjson.dumps(
        [
            {"role": "system", "content": "You are a helpful support assistant. " * 10},
            {"role": "user", "content": f"Question {seed}: how do I reset my password? " * 11},
        ]
    ).decode()
    answer = orjson.dumps(
        [{"role": "assistant", "content": "Go to settings and click reset. " * 14}]
    ).decode()
    trace_id = b""
    parent = b""
    for i in range(SPANS_PER_REQUEST):
        if i % 5 == 0:
            trace_id = uuid.uuid4().bytes
            parent = b""
        span = ss.spans.add()
        span.trace_id = trace_id
        span.span_id = os.urandom(8)
        span.parent_span_id = parent
        if i % 5 == 0:
            parent = span.span_id
        span.name = "chat gpt-4o-mini"
        span.kind = Span.SPAN_KIND_CLIENT
        span.start_time_unix_nano = now + i * 1000
        span.end_time_unix_nano = now + i * 1000 + 350_000_000
        span.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.provider.name", "openai"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                _kv("gen_ai.usage.input_tokens", 420 + i % 50),
                _kv("gen_ai.usage.output_tokens", 80 + i % 20),
                _kv("gen_ai.usage.cache_read.input_tokens", 128 if i % 3 == 0 else 0),
                _kv("gen_ai.request.temperature", 0.2),
                _kv("gen_ai.request.max_tokens", 512),
                _kv("gen_ai.response.id", f"chatcmpl-{seed:06d}{i:04d}"),
                _kv("gen_ai.response.finish_reasons", ["stop"]),
                _kv("server.address", "api.openai.com"),
                _kv("server.port", 443),
                _kv("session.id", f"session-{(seed * 3 + i // 25) % 2000}"),
                _kv("gen_ai.input.messages", prompt),
                _kv("gen_ai.output.messages", answer),
                _kv("bastion.user", f"user-{(seed * 7 + i) % 500}"),
                _kv("bastion.feature", f"feature-{i % 8}"),
                _kv("bastion.tenant", f"tenant-{i % 12}"),
            ]
        )
    return request.SerializeToString()


def start_server(
    home: Path, database_url: str, port: int, queue_max: int, workers: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "BASTION_HOME": str(home),
        "BASTION_DATABASE_URL": database_url,
        "BASTION_PORT": str(port),
        "BASTION_INGEST__QUEUE_MAX_SPANS": str(queue_max),
        "BASTION_WORKERS": str(workers),
        "BASTION_LOG_LEVEL": "WARNING",
    }
    proc = subprocess.Popen([sys.executable, "-m", "bastion.cli.main", "serve"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def create_key(database_url: str) -> str:
    from bastion.auth import create_key as make
    from bastion.store import migrate
    from bastion.store.engine import create_engine

    engine = create_engine(database_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        secret = make(conn, "default", name="bench").secret
    engine.dispose()
    return secret


async def send_all(
    url: str, key: str, bodies: list[bytes], concurrency: int, progress: Progress | None
) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    stats = {"ok": 0, "throttled": 0, "errors": 0}
    task = progress.add_task("sending", total=len(bodies)) if progress else None

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status == 200:
                        stats["ok"] += 1
                        break
                    if response.status in (429, 503):
                        stats["throttled"] += 1
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")) / 10)
                        continue
                    stats["errors"] += 1
                    break
            if progress is not None and task is not None:
                progress.advance(task)

    # A connection per request: `serve --workers` shares its port through SO_REUSEPORT, which
    # hashes each connection to one worker, and eight kept-alive connections split unevenly
    # (six tries with 2 workers: 7/1, 6/2 twice, 5/3 twice, 4/4), so a run measured its luck.
    # Fresh connections spread as many clients' would.
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        stats["seconds"] = time.perf_counter() - started
    return stats


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def cpu_model() -> str:
    """The processor's name, as Linux reports it: figures are only comparable on one model."""
    try:
        with open("/proc/cpuinfo") as info:
            names = [
                line.partition(":")[2].strip() for line in info if line.startswith("model name")
            ]
    except OSError:  # not Linux
        names = []
    return next((name for name in names if name), "unknown processor")


def prefill(database_url: str, count: int) -> None:
    """Store ``count`` spans spread over the 30 days before now, written as ingest writes them
    (5,000 per transaction, fresh ids, users and sessions varying like the benchmark's)."""
    from bastion.store.engine import create_engine
    from bastion.store.writer import SpanWriter
    from bastion.tracing.otlp import decode_request

    engine = create_engine(database_url, sqlite_wal_autocheckpoint_pages=2_500)
    writer = SpanWriter(engine)
    with engine.connect() as conn:
        project_id = conn.execute(
            sa.text("SELECT id FROM projects WHERE slug = 'default'")
        ).scalar_one()
    templates = [
        decode_request(
            build_request(seed),
            content_type="application/x-protobuf",
            content_encoding=None,
            max_bytes=2**30,
            max_message_chars=20_000,
        ).spans
        for seed in range(50)
    ]
    month = 30 * 86_400 * 10**9
    first = time.time_ns() - month - 3_600 * 10**9
    step = month // max(count, 1)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"storing {count:,} spans first", total=count)
        written = 0
        while written < count:
            batch = []
            first_template = (written // 5_000) % 5 * 10  # ten requests of 500: 5,000 spans
            for template in templates[first_template : first_template + 10]:
                trace_ids: dict[str, str] = {}
                for span in template:
                    stored = copy.copy(span)
                    stored.trace_id = trace_ids.setdefault(span.trace_id, os.urandom(16).hex())
                    stored.span_id = os.urandom(8).hex()
                    stored.start_ns = first + (written + len(batch)) * step
                    stored.end_ns = stored.start_ns + 350_000_000
                    batch.append((project_id, stored))
            batch = batch[: count - written]
            prepared = writer.prepare(batch)
            with writer.transaction() as conn:
                writer.write_prepared(conn, prepared, defer_rollups=True)
                writer.fold_rollups(conn)
            written += len(batch)
            progress.update(task, completed=written)
    engine.dispose()


def count_spans(database_url: str) -> int:
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        n = int(conn.execute(sa.text("SELECT COUNT(*) FROM spans")).scalar_one())
    engine.dispose()
    return n


def forget_run(database_url: str, since: int | None) -> None:
    """Take back what a run stored, so the next one sends the same spans again: everything
    (TRUNCATE on PostgreSQL, where DELETE would leave dead rows and bloated indexes), or with
    a history, the spans and traces starting after ``since``."""
    engine = sa.create_engine(database_url)
    tables = ("span_rollup_deltas", "span_rollups", "traces", "spans")
    with engine.begin() as conn:
        if since is not None:
            for table in ("traces", "spans"):
                conn.execute(
                    sa.text(f"DELETE FROM {table} WHERE start_ns >= :since"), {"since": since}
                )
        elif engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"TRUNCATE {', '.join(tables)}"))
        else:
            for table in tables:
                conn.execute(sa.text(f"DELETE FROM {table}"))
    if since is not None and engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM (ANALYZE) spans, traces"))
    engine.dispose()


def run_backend(
    name: str, database_url: str, bodies: list[bytes], args: argparse.Namespace
) -> list[list[str]]:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as home:
        key = create_key(database_url)
        if args.stored:
            prefill(database_url, args.stored)
        history = f"on {args.stored:,} stored spans" if args.stored else "from empty"
        # One process is the baseline; `serve --workers N` is how a multi-core machine is used.
        baseline: float | None = None
        for workers in sorted({1, *args.workers}):
            rates: list[float] = []
            cpu_us: list[float] = []  # the server's own CPU time per span (its processes)
            stored_ok = True
            throttled = 0.0
            spans = (len(bodies) - 4) * SPANS_PER_REQUEST
            for run in range(args.repeat):
                port = free_port()
                server_home = Path(home) / f"w{workers}-{run}"
                server = start_server(server_home, database_url, port, 200_000, workers)
                url = f"http://127.0.0.1:{port}/v1/traces"
                try:
                    asyncio.run(send_all(url, key, bodies[:4], 2, None))  # warm-up
                    tree = [psutil.Process(server.pid)]
                    tree += tree[0].children(recursive=True)
                    cpu_before = _cpu_seconds(tree)
                    with Progress(console=console, transient=True) as progress:
                        stats = asyncio.run(
                            send_all(url, key, bodies[4:], args.concurrency, progress)
                        )
                    cpu_us.append((_cpu_seconds(tree) - cpu_before) / spans * 1e6)
                finally:
                    server.send_signal(signal.SIGINT)
                    server.wait(60)
                rates.append(spans / stats["seconds"])
                throttled += stats["throttled"]
                stored_ok &= count_spans(database_url) - args.stored >= spans
                forget_run(database_url, args.sent_from if args.stored else None)
            # This machine's speed wanders by several percent from run to run: the median of
            # --repeat runs, with the spread beside it.
            rate = statistics.median(rates)
            baseline = baseline or rate
            spread = f", runs {min(rates):,.0f} to {max(rates):,.0f}" if len(rates) > 1 else ""
            rows.append(
                [
                    name,
                    f"throughput, {workers} worker{'s' if workers > 1 else ''}",
                    f"{spans:,} spans x {len(rates)}",
                    f"{rate:,.0f} spans/s ({rate / baseline:.2f}x)",
                    f"c={args.concurrency}, {history}, {throttled:.0f} throttled, server CPU "
                    f"{statistics.median(cpu_us):.0f} µs/span{spread}",
                    "PASS" if rate >= 20_000 else "FAIL",
                ]
            )
            rows.append(
                [
                    name,
                    "persisted",
                    f"every acknowledged span, {len(rates)} run{'s' if len(rates) > 1 else ''}",
                    "",
                    "",
                    "PASS" if stored_ok else "FAIL",
                ]
            )

        # Overload: a small queue (5,000 spans per worker) and more spans in flight than all
        # queues hold (twice as many); RSS must plateau (back-pressure, not growth) and 429s
        # must appear.
        most = max(args.workers)
        overload_concurrency = max(args.concurrency * 4, 20 * most)
        port = free_port()
        server = start_server(Path(home), database_url, port, 5_000, most)
        url = f"http://127.0.0.1:{port}/v1/traces"
        process = psutil.Process(server.pid)
        samples: list[float] = []

        async def overload() -> dict[str, float]:
            async def sample() -> None:
                while True:
                    tree = [process, *process.children(recursive=True)]
                    samples.append(sum(p.memory_info().rss for p in tree) / 2**20)
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            try:
                return await send_all(url, key, bodies[4:] * 2, overload_concurrency, None)
            finally:
                sampler.cancel()

        try:
            stats = asyncio.run(overload())
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(60)
        half = len(samples) // 2
        first, second = max(samples[:half] or [0]), max(samples[half:] or [0])
        flat = second <= first * 1.15 + 20
        rows.append(
            [
                name,
                "overload RSS",
                f"max {first:.0f} → {second:.0f} MiB",
                "",
                f"{stats['throttled']:.0f} x 429",
                "PASS" if flat and stats["throttled"] > 0 else "FAIL",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--spans", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=8)
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[cores, cores + 1],
        help="bastion serve --workers counts to measure beside 1 worker (default: cores and "
        "cores + 1: PostgreSQL's own processes leave gaps one more Python process fills)",
    )
    parser.add_argument(
        "--stored",
        type=int,
        default=0,
        help="spans stored before each run (spread over the past 30 days); default: none",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per worker count; the median is reported"
    )
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args()

    requests = max(8, args.spans // SPANS_PER_REQUEST) + 4
    args.sent_from = time.time_ns()  # every span sent starts after this, every stored one before
    with console.status(f"building {requests} OTLP requests…"):
        bodies = [build_request(i) for i in range(requests)]
    size = len(bodies[0])
    console.print(f"request size: {size / 1024:.0f} KiB ({size / SPANS_PER_REQUEST:.0f} B/span)")
    console.print(f"machine: {os.cpu_count()} x {cpu_model()}")

    table = Table("database", "measure", "volume", "rate", "notes", "bar (20k spans/s)")
    if args.db in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            for row in run_backend("sqlite", f"sqlite:///{tmp}/bench.db", bodies, args):
                table.add_row(*row)
    if args.db in ("postgresql", "both"):
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        try:
            url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
            for row in run_backend("postgresql", url, bodies, args):
                table.add_row(*row)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    console.print(table)


if __name__ == "__main__":
    main()
