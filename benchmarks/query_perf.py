"""Read-query latency on a realistic store: trace lists, a trace tree and LLM metric summaries.

Loads ``--spans`` spans (default 1,000,000) spread over the last 30 days through
:class:`bastion.store.writer.SpanWriter`: traces of 3-5 spans (a root, a retrieval, one or two
LLM calls and sometimes a tool), ~20 models, 10 features, 2,000 users with a Zipf-like
popularity, 20 tenants, ~2% error spans and inputs/outputs of a few hundred characters. Then it
runs ``ANALYZE`` and times each query (median of 5 runs after a warm-up) against its bar:
300 ms for a page or a trace, 1 s for a summary.

    python benchmarks/query_perf.py --db both
    python benchmarks/query_perf.py --db sqlite --spans 200000 --explain

SQLite lives in a temporary directory; PostgreSQL in a fresh schema of ``--pg-url`` that is
dropped afterwards.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from sqlalchemy import event

from bastion.store import migrate, queries
from bastion.store.engine import create_engine
from bastion.store.queries import TraceFilter
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, SpanKind, StatusCode

# A wide console when writing to a file, so the table and the plans do not wrap.
console = Console() if sys.stdout.isatty() else Console(width=160)
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PROJECT = 1
SPANS_PER_REQUEST = 500  # one OTLP export request, one ingest transaction (deferred writes)
DAY_NS = 86_400 * 1_000_000_000
MS = 1_000_000
PAGE_BAR_MS = 300.0
SUMMARY_BAR_MS = 1_000.0
NEEDLE = "kubernetes"  # a word found in ~0.3% of LLM inputs, for the text search

# (model, provider, USD per 1k input tokens, per 1k output tokens); None: not in the catalog.
MODELS: list[tuple[str, str, float | None, float | None]] = [
    ("gpt-4o", "openai", 0.0025, 0.01),
    ("gpt-4o-mini", "openai", 0.00015, 0.0006),
    ("gpt-4.1", "openai", 0.002, 0.008),
    ("gpt-4.1-mini", "openai", 0.0004, 0.0016),
    ("o3-mini", "openai", 0.0011, 0.0044),
    ("claude-3-5-sonnet", "anthropic", 0.003, 0.015),
    ("claude-3-5-haiku", "anthropic", 0.0008, 0.004),
    ("claude-3-opus", "anthropic", 0.015, 0.075),
    ("claude-sonnet-4", "anthropic", 0.003, 0.015),
    ("gemini-1.5-pro", "google", 0.00125, 0.005),
    ("gemini-1.5-flash", "google", 0.000075, 0.0003),
    ("gemini-2.0-flash", "google", 0.0001, 0.0004),
    ("mistral-large", "mistral", 0.002, 0.006),
    ("mistral-small", "mistral", 0.0002, 0.0006),
    ("command-r-plus", "cohere", 0.0025, 0.01),
    ("llama-3.1-70b", "together", 0.00088, 0.00088),
    ("llama-3.1-8b", "together", 0.00018, 0.00018),
    ("deepseek-chat", "deepseek", 0.00027, 0.0011),
    ("qwen-2.5-72b", "together", 0.0009, 0.0009),
    ("internal-ft-v3", "vllm", None, None),
]
FEATURES = [
    "chat",
    "search",
    "summarize",
    "classify",
    "extract",
    "translate",
    "support-bot",
    "code-review",
    "email-draft",
    "sql-assist",
]
TENANTS = [f"tenant-{i:02d}" for i in range(20)]
USERS = [f"user-{i:04d}" for i in range(2000)]
ERROR_CLASSES = ["RateLimitError", "Timeout", "APIConnectionError", "BadRequestError"]
_WORD_TEXT = (
    "account invoice refund password reset order shipping delivery address payment card "
    "subscription plan upgrade downgrade cancel renew billing tax receipt discount coupon "
    "product warranty return exchange size color stock available store hours contact phone "
    "email chat agent ticket priority urgent issue error login two-factor security privacy "
    "data export import report dashboard chart metric team member role permission admin "
    "integration webhook api token limit quota usage region language timezone calendar "
    "meeting schedule reminder note document file upload download share link folder search"
)
WORDS = _WORD_TEXT.split()


def _cumulative(weights: list[float]) -> list[float]:
    return list(itertools.accumulate(weights))


@dataclass
class Choices:
    """Weighted pickers built once (``random.choices`` re-scans weights on every call)."""

    rng: random.Random

    def __post_init__(self) -> None:
        self.user_cum = _cumulative([1 / (i + 1) ** 1.1 for i in range(len(USERS))])
        self.model_cum = _cumulative([1 / (i + 1) ** 0.9 for i in range(len(MODELS))])
        self.feature_cum = _cumulative([1 / (i + 1) ** 0.5 for i in range(len(FEATURES))])
        self.sentences = [
            " ".join(self.rng.choices(WORDS, k=self.rng.randrange(8, 16))).capitalize() + "."
            for _ in range(3000)
        ]

    def pick(self, cum: list[float]) -> int:
        return bisect.bisect(cum, self.rng.random() * cum[-1])

    def text(self, sentences: int) -> str:
        return " ".join(self.rng.choices(self.sentences, k=sentences))


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def generate(total: int, now_ns: int, seed: int = 1) -> Iterator[list[Span]]:
    """Traces (lists of spans) in start order over the 30 days before ``now_ns``."""
    rng = random.Random(seed)
    c = Choices(rng)
    traces = max(1, total // 4)
    step = 30 * DAY_NS / traces
    emitted = 0
    t0 = now_ns - 30 * DAY_NS
    for i in itertools.count():
        if emitted >= total:
            return
        start = int(t0 + i * step + rng.random() * step)
        trace_id = _hex(rng, 128)
        u = c.pick(c.user_cum)
        user = USERS[u]
        common: dict[str, Any] = {
            "trace_id": trace_id,
            "user_id": user,
            "session_id": f"sess-{u:04d}-{rng.randrange(40)}",
            "feature": FEATURES[c.pick(c.feature_cum)],
            "tenant": TENANTS[u % len(TENANTS)],
            "service_name": "support-api",
        }
        root_id = _hex(rng, 64)
        spans: list[Span] = []
        at = start + rng.randrange(1, 5) * MS
        retrieval_ms = rng.uniform(20, 250)
        spans.append(
            Span(
                span_id=_hex(rng, 64),
                parent_span_id=root_id,
                name="retrieval",
                start_ns=at,
                end_ns=at + int(retrieval_ms * MS),
                attributes={"db.system": "pgvector", "retrieval.top_k": 5},
                input=c.text(2),
                output=c.text(3),
                **common,
            )
        )
        at += int(retrieval_ms * MS) + MS
        calls = 1 if rng.random() < 0.55 else 2
        tool = rng.random() < 0.5
        for n in range(calls):
            m = c.pick(c.model_cum)
            model, provider, price_in, price_out = MODELS[m]
            latency_ms = min(120_000.0, rng.lognormvariate(math.log(900), 0.7))
            tokens_in = rng.randrange(200, 3000)
            tokens_out = rng.randrange(20, 800)
            cached = rng.choice([0, 0, 0, tokens_in // 2])
            cost = None
            if price_in is not None and price_out is not None:
                cost = round(tokens_in / 1000 * price_in + tokens_out / 1000 * price_out, 8)
            error = rng.random() < 0.05
            prompt = c.text(3)
            if rng.random() < 0.003:
                prompt += f" How do I deploy this on {NEEDLE}?"
            llm_id = _hex(rng, 64)
            spans.append(
                Span(
                    span_id=llm_id,
                    parent_span_id=root_id,
                    name=f"chat {model}",
                    start_ns=at,
                    end_ns=at + int(latency_ms * MS),
                    kind=SpanKind.CLIENT,
                    status_code=StatusCode.ERROR if error else StatusCode.OK,
                    status_message="provider error" if error else None,
                    attributes={
                        "gen_ai.system": provider,
                        "gen_ai.request.model": model,
                        "gen_ai.request.temperature": 0.2,
                    },
                    operation="chat",
                    provider=provider,
                    request_model=model,
                    response_model=model,
                    input_tokens=tokens_in,
                    output_tokens=None if error else tokens_out,
                    cached_tokens=cached,
                    cost_usd=cost,
                    ttft_ms=None if error else latency_ms * rng.uniform(0.1, 0.4),
                    error_class=rng.choice(ERROR_CLASSES) if error else None,
                    prompt_name=f"{common['feature']}-main",
                    prompt_version=rng.randrange(1, 6),
                    input=prompt,
                    output=None if error else c.text(3),
                    **common,
                )
            )
            at += int(latency_ms * MS) + MS
            if tool and n == 0:
                tool_ms = rng.uniform(5, 400)
                spans.append(
                    Span(
                        span_id=_hex(rng, 64),
                        parent_span_id=llm_id,
                        name="tool lookup_order",
                        start_ns=at,
                        end_ns=at + int(tool_ms * MS),
                        attributes={"tool.name": "lookup_order"},
                        input='{"order_id": "' + _hex(rng, 32) + '"}',
                        output=c.text(1),
                        **common,
                    )
                )
                at += int(tool_ms * MS) + MS
        spans.insert(
            0,
            Span(
                span_id=root_id,
                name=f"POST /v1/{common['feature']}",
                start_ns=start,
                end_ns=at + rng.randrange(1, 20) * MS,
                kind=SpanKind.SERVER,
                status_code=StatusCode.OK,
                attributes={"http.method": "POST", "http.status_code": 200},
                resource={"service.name": "support-api", "deployment.environment": "prod"},
                **common,
            ),
        )
        spans = spans[: max(1, total - emitted)]
        emitted += len(spans)
        yield spans


@dataclass
class Database:
    name: str
    engine: sa.Engine
    cleanup: Callable[[], None]


def open_sqlite(tmp: Path) -> Database:
    engine = create_engine(f"sqlite:///{tmp / 'bench.db'}")
    return Database("sqlite", engine, engine.dispose)


def open_postgresql(url: str) -> Database:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    engine = create_engine(f"{url}{sep}options=-csearch_path%3D{schema}")

    def cleanup() -> None:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    return Database("postgresql", engine, cleanup)


def _write_deferred(writer: SpanWriter, pairs: list[tuple[int, Span]]) -> int:
    # As the ingest pipeline writes: roll-ups left as deltas until the next fold.
    written = 0
    for i in range(0, len(pairs), SPANS_PER_REQUEST):
        prepared = writer.prepare(pairs[i : i + SPANS_PER_REQUEST])
        with writer.transaction() as conn:
            written += writer.write_prepared(conn, prepared, defer_rollups=True)
    return written


def load(db: Database, total: int, now_ns: int, batch: int, deferred: int) -> None:
    writer = SpanWriter(db.engine)
    pending: list[tuple[int, Span]] = []
    written = 0
    began = time.perf_counter()
    columns = (
        TextColumn(f"[bold]{db.name}[/bold] loading"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} spans"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("load", total=total, rate="")
        for spans in generate(total, now_ns):
            pending.extend((PROJECT, s) for s in spans)
            if len(pending) >= batch:
                tail = written + len(pending) > total - deferred
                written += _write_deferred(writer, pending) if tail else writer.write(pending)
                pending = []
                rate = written / (time.perf_counter() - began)
                progress.update(task, completed=written, rate=f"{rate:,.0f} spans/s")
                if not console.is_terminal and written // 100_000 > (written - batch) // 100_000:
                    # No live bar in a log file: a line every 100,000 spans instead.
                    console.print(f"{db.name}: {written:,}/{total:,} spans, {rate:,.0f} spans/s")
        written += _write_deferred(writer, pending) if deferred else writer.write(pending)
        progress.update(task, completed=written)
    elapsed = time.perf_counter() - began
    console.print(
        f"{db.name}: loaded {written:,} spans in {elapsed:.1f} s ({written / elapsed:,.0f} spans/s)"
    )
    began = time.perf_counter()
    if db.name == "sqlite":
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("ANALYZE")
    console.print(f"{db.name}: ANALYZE took {time.perf_counter() - began:.1f} s")


def create_benchmark_indexes(db: Database) -> None:
    """BENCHMARK-ONLY indexes (--bench-index): not part of the schema, marked as such."""
    statements = [
        "CREATE INDEX IF NOT EXISTS bench_only_ix_spans_project_feature_start"
        " ON spans (project_id, feature, start_ns)",
    ]
    with db.engine.begin() as conn:
        for sql in statements:
            console.print(f"[yellow]BENCHMARK-ONLY INDEX[/yellow] {sql}")
            conn.exec_driver_sql(sql)
        conn.exec_driver_sql("ANALYZE")


@dataclass
class Case:
    label: str
    bar_ms: float
    run: Callable[[sa.Connection], object]
    explain: bool = False


def time_case(conn: sa.Connection, case: Case, runs: int) -> tuple[float, object]:
    result = case.run(conn)  # warm-up
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        result = case.run(conn)
        samples.append((time.perf_counter() - began) * 1000)
    return statistics.median(samples), result


def build_cases(conn: sa.Connection, now_ns: int) -> list[Case]:
    month = (now_ns - 30 * DAY_NS, now_ns)
    day = (now_ns - DAY_NS, now_ns)
    user = USERS[40]
    feature = FEATURES[3]
    model = MODELS[7][0]
    latency_floor = 5_000.0
    first = queries.list_traces(conn, PROJECT, None, limit=50)
    trace_id = first.items[len(first.items) // 2].trace_id
    cursor = first.next_cursor
    for _ in range(8):  # pages 2..9: the cursor then points at page 10
        cursor = queries.list_traces(conn, PROJECT, None, limit=50, cursor=cursor).next_cursor
    page10 = cursor

    def traces(flt: TraceFilter | None, cur: str | None = None) -> Callable[[sa.Connection], Any]:
        return lambda c: queries.list_traces(c, PROJECT, flt, limit=50, cursor=cur)

    def summary(
        span: tuple[int, int], group_by: list[str], flt: TraceFilter | None = None
    ) -> Callable[[sa.Connection], Any]:
        return lambda c: queries.metrics_summary(
            c, PROJECT, start_ns=span[0], end_ns=span[1], group_by=group_by, filter=flt
        )

    return [
        Case("traces: first page", PAGE_BAR_MS, traces(None), explain=True),
        Case(f"traces: user={user}", PAGE_BAR_MS, traces(TraceFilter(user_id=user)), True),
        Case(f"traces: feature={feature}", PAGE_BAR_MS, traces(TraceFilter(feature=feature)), True),
        Case(f"traces: model={model}", PAGE_BAR_MS, traces(TraceFilter(model=model)), True),
        Case("traces: status=error", PAGE_BAR_MS, traces(TraceFilter(status="error")), True),
        Case(
            f"traces: latency >= {latency_floor:.0f} ms",
            PAGE_BAR_MS,
            traces(TraceFilter(min_latency_ms=latency_floor)),
            True,
        ),
        Case(
            f"traces: text '{NEEDLE}', 1 day",
            PAGE_BAR_MS,
            traces(TraceFilter(text=NEEDLE, start_ns=day[0], end_ns=day[1])),
            True,
        ),
        Case("traces: 10th page (cursor)", PAGE_BAR_MS, traces(None, page10), True),
        Case("trace tree", PAGE_BAR_MS, lambda c: queries.get_trace(c, PROJECT, trace_id)),
        Case("summary 30 d by model", SUMMARY_BAR_MS, summary(month, ["model"])),
        Case("summary 30 d by day", SUMMARY_BAR_MS, summary(month, ["day"])),
        Case("summary 30 d by user", SUMMARY_BAR_MS, summary(month, ["user"])),
        Case("summary 30 d by model+day", SUMMARY_BAR_MS, summary(month, ["model", "day"])),
        Case(
            f"summary 1 d feature={feature} by model",
            SUMMARY_BAR_MS,
            summary(day, ["model"], TraceFilter(feature=feature)),
        ),
        Case(
            f"summary 30 d feature={feature} by day",
            SUMMARY_BAR_MS,
            summary(month, ["day"], TraceFilter(feature=feature)),
        ),
    ]


def describe(result: object) -> str:
    if isinstance(result, queries.TracePage):
        return f"{len(result.items)} traces"
    if isinstance(result, queries.TraceTree):
        return f"{result.trace.span_count} spans"
    if isinstance(result, queries.MetricsSummary):
        return f"{len(result.groups)} groups, {result.total.count:,} calls ({result.source})"
    return ""


def explain(db: Database, conn: sa.Connection, case: Case) -> None:
    captured: list[tuple[str, Any]] = []

    def capture(_c: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        case.run(conn)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    prefix = "EXPLAIN QUERY PLAN " if db.name == "sqlite" else "EXPLAIN "
    console.rule(f"{db.name}: {case.label}")
    for statement, parameters in captured:
        console.print(statement, markup=False, highlight=False)
        rows = conn.exec_driver_sql(prefix + statement, parameters).fetchall()
        for row in rows:
            console.print("   " + (str(row[-1]) if db.name == "sqlite" else str(row[0])))


def bench(db: Database, args: argparse.Namespace) -> list[tuple[str, float, float, str]]:
    now_ns = time.time_ns()
    migrate.upgrade(db.engine)
    load(db, args.spans, now_ns, args.batch, args.deferred)
    if args.bench_index:
        create_benchmark_indexes(db)
    results: list[tuple[str, float, float, str]] = []
    with db.engine.connect() as conn:
        cases = build_cases(conn, now_ns)
        for case in cases:
            ms, result = time_case(conn, case, args.runs)
            results.append((case.label, ms, case.bar_ms, describe(result)))
        if args.explain:
            for case in cases:
                if case.explain:
                    explain(db, conn, case)
    table = Table(title=f"{db.name}: {args.spans:,} spans, median of {args.runs} runs")
    for column in ("query", "ms", "bar (ms)", "result", "rows"):
        table.add_column(column, justify="right" if column in ("ms", "bar (ms)") else "left")
    for label, ms, bar, rows in results:
        verdict = "[green]PASS[/green]" if ms <= bar else "[red]FAIL[/red]"
        table.add_row(label, f"{ms:,.1f}", f"{bar:,.0f}", verdict, rows)
    console.print(table)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--batch", type=int, default=5_000, help="spans per SpanWriter.write")
    parser.add_argument(
        "--deferred",
        type=int,
        default=20_000,
        help="latest spans written as the ingest pipeline writes them, their roll-ups left as "
        "deltas for summaries to add (a second of 20,000 spans/s between folds)",
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--explain", action="store_true", help="print plans of the list queries")
    parser.add_argument(
        "--bench-index",
        action="store_true",
        help="also create the BENCHMARK-ONLY indexes proposed for the schema",
    )
    args = parser.parse_args()
    names = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    summary: dict[str, list[tuple[str, float, float, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="bastion-query-perf-") as tmp:
        for name in names:
            db = open_sqlite(Path(tmp)) if name == "sqlite" else open_postgresql(args.pg_url)
            try:
                summary[name] = bench(db, args)
            finally:
                db.cleanup()
    failed = [(n, r[0]) for n, rows in summary.items() for r in rows if r[1] > r[2]]
    if failed:
        console.print(f"[red]{len(failed)} over the bar:[/red] {failed}")
        raise SystemExit(1)
    console.print("[green]all queries within their bars[/green]")


if __name__ == "__main__":
    main()
