"""LLM metrics summaries checked against a brute-force computation, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.store import queries
from bastion.store.queries import MetricsGroup, SpanFilter, TraceFilter
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode

MIN_NS = 60 * 1_000_000_000
HOUR_NS = 60 * MIN_NS
DAY_NS = 24 * HOUR_NS
MS = 1_000_000
BASE = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z, a UTC midnight
FIRST = BASE - 5 * HOUR_NS
LAST = BASE + 40 * HOUR_NS


def build_spans(rng: random.Random, count: int) -> list[Span]:
    """LLM calls (and some plain spans) spread over [FIRST, LAST), some on hour boundaries."""
    out: list[Span] = []
    for i in range(count):
        if i % 25 == 0:
            start = FIRST + rng.randrange(0, 45) * HOUR_NS  # exactly on an hour
        else:
            start = rng.randrange(FIRST, LAST)
        latency_ms = min(60_000.0, max(0.5, rng.lognormvariate(6.0, 1.3)))
        end = start + int(latency_ms * MS)
        common: dict[str, Any] = {
            "trace_id": f"{rng.getrandbits(128):032x}",
            "span_id": f"{rng.getrandbits(64):016x}",
            "start_ns": start,
            "end_ns": end,
            "user_id": rng.choice(["u1", "u2", "u3", "u4", "", None]),
            "feature": rng.choice(["chat", "search", None]),
            "tenant": rng.choice(["acme", "globex", None]),
        }
        kind = rng.random()
        if kind < 0.1:
            out.append(Span(name="plain work", **common))  # not an LLM call: never counted
            continue
        error = rng.random()
        llm: dict[str, Any] = {
            "provider": rng.choice(["openai", "anthropic", None]),
            "input_tokens": rng.choice([None, rng.randrange(1, 4000)]),
            "output_tokens": rng.choice([None, rng.randrange(1, 1000)]),
            "cached_tokens": rng.choice([None, 0, rng.randrange(1, 500)]),
            "cost_usd": None if rng.random() < 0.2 else round(rng.random() / 50, 6),
            "ttft_ms": None if rng.random() < 0.3 else latency_ms * rng.uniform(0.05, 0.9),
            "status_code": StatusCode.ERROR if error < 0.05 else StatusCode.OK,
            "error_class": "Timeout" if 0.05 <= error < 0.08 else None,
        }
        if kind < 0.2:
            # An embeddings call that names no request model: an LLM call with no model.
            out.append(Span(name="embed", operation="embeddings", **common, **llm))
            continue
        model = rng.choice(["gpt-4o", "claude", "llama"])
        response = rng.choice([None, model, model + "-2025", ""])
        out.append(
            Span(
                name=f"chat {model}",
                operation=rng.choice(["chat", None]),
                request_model=model,
                response_model=response,
                **common,
                **llm,
            )
        )
    return out


@dataclass
class Expected:
    count: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    unknown: int = 0
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)


def key_value(span: Span, dimension: str) -> str | None:
    raw = {
        "model": span.response_model or span.request_model,
        "feature": span.feature,
        "user": span.user_id,
        "tenant": span.tenant,
        "provider": span.provider,
    }[dimension]
    return raw or None


def time_value(start_ns: int, time: str) -> str:
    moment = datetime.fromtimestamp(start_ns // 1_000_000_000, UTC)
    if time == "day":
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m-%dT%H:00:00Z")


def span_matches(s: Span, f: TraceFilter | None) -> bool:
    if f is None:
        return True
    checks = [
        f.status is None or s.is_error == (f.status == "error"),
        f.model is None or f.model in (s.request_model, s.response_model),
        f.min_cost_usd is None or (s.cost_usd is not None and s.cost_usd >= f.min_cost_usd),
        f.min_latency_ms is None or s.latency_ms >= f.min_latency_ms,
        f.start_ns is None or s.start_ns >= f.start_ns,
        f.end_ns is None or s.start_ns < f.end_ns,
    ]
    names = ["user_id", "feature", "tenant", "session_id", "error_class"]
    if isinstance(f, SpanFilter):
        names += ["provider", "operation"]
    checks += [getattr(f, n) is None or getattr(s, n) == getattr(f, n) for n in names]
    return all(checks)


def brute_force(
    spans: Sequence[Span],
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str],
    flt: TraceFilter | None = None,
) -> dict[tuple[tuple[str, str | None], ...], Expected]:
    out: dict[tuple[tuple[str, str | None], ...], Expected] = {}
    for s in spans:
        if not (s.is_llm and start_ns <= s.start_ns < end_ns and span_matches(s, flt)):
            continue
        key = tuple(
            (g, time_value(s.start_ns, g) if g in ("day", "hour") else key_value(s, g))
            for g in group_by
        )
        e = out.setdefault(key, Expected())
        e.count += 1
        e.errors += s.is_error
        e.input_tokens += s.input_tokens or 0
        e.output_tokens += s.output_tokens or 0
        e.cached_tokens += s.cached_tokens or 0
        if s.cost_usd is None:
            e.unknown += 1
        else:
            e.cost += s.cost_usd
        e.latencies.append(s.latency_ms)
        if s.ttft_ms is not None:
            e.ttfts.append(s.ttft_ms)
    return out


def exact_quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_matches(got: MetricsGroup, want: Expected) -> None:
    assert got.count == want.count
    assert got.error_count == want.errors
    assert got.error_rate == pytest.approx(want.errors / want.count)
    assert got.input_tokens == want.input_tokens
    assert got.output_tokens == want.output_tokens
    assert got.cached_tokens == want.cached_tokens
    assert got.cost_usd == pytest.approx(want.cost, rel=1e-9, abs=1e-12)
    assert got.cost_unknown_count == want.unknown
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        for values, metric in ((want.latencies, "latency_ms"), (want.ttfts, "ttft_ms")):
            exact = exact_quantile(values, q)
            estimate = getattr(got, f"{name}_{metric}")
            if exact is None:
                assert estimate is None
            else:
                assert estimate == pytest.approx(exact, rel=0.05), (name, metric)


def check(
    engine: sa.Engine | sa.Connection,
    spans: Sequence[Span],
    start_ns: int,
    end_ns: int,
    group_by: Sequence[str],
    flt: TraceFilter | None = None,
) -> queries.MetricsSummary:
    summary = queries.metrics_summary(
        engine, 1, start_ns=start_ns, end_ns=end_ns, group_by=list(group_by), filter=flt
    )
    expected = brute_force(spans, start_ns, end_ns, group_by, flt)
    if group_by:
        got = {tuple((g, row.keys[g]) for g in group_by): row for row in summary.groups}
        assert set(got) == set(expected)
        for key, want in expected.items():
            assert_matches(got[key], want)
    else:
        assert summary.groups == []
    total = brute_force(spans, start_ns, end_ns, [], flt).get((), Expected())
    if total.count:
        assert_matches(summary.total, total)
    else:
        assert summary.total.count == 0
        assert summary.total.p50_latency_ms is None
    return summary


@pytest.fixture
def llm_spans(engine: sa.Engine) -> list[Span]:
    spans = build_spans(random.Random(5), 900)
    writer = SpanWriter(engine)
    # Several batches, so that hours are rolled up by merging upserts.
    for i in range(0, len(spans), 250):
        writer.write([(1, s) for s in spans[i : i + 250]])
    return spans


RANGES = {
    "whole hours": (FIRST, LAST),
    "partial edges": (FIRST + HOUR_NS + 17 * MIN_NS + 123, BASE + 30 * HOUR_NS + 41 * MIN_NS),
    "inside one hour": (BASE + 2 * HOUR_NS + 5 * MIN_NS, BASE + 2 * HOUR_NS + 50 * MIN_NS),
    "across one boundary": (BASE + 2 * HOUR_NS + 30 * MIN_NS, BASE + 3 * HOUR_NS + 30 * MIN_NS),
    "one whole hour": (BASE + 7 * HOUR_NS, BASE + 8 * HOUR_NS),
    "wider than the data": (FIRST - 3 * DAY_NS, LAST + 2 * DAY_NS + 7),
}
GROUPINGS: list[list[str]] = [
    [],
    ["model"],
    ["feature"],
    ["user"],
    ["tenant"],
    ["provider"],
    ["day"],
    ["hour"],
    ["model", "day"],
    ["hour", "user"],
    ["provider", "hour"],
]


@pytest.mark.parametrize("range_name", list(RANGES))
def test_summary_matches_brute_force(
    engine: sa.Engine, llm_spans: list[Span], range_name: str
) -> None:
    start_ns, end_ns = RANGES[range_name]
    for group_by in GROUPINGS:
        summary = check(engine, llm_spans, start_ns, end_ns, group_by)
        assert summary.source == "rollups"
        assert summary.group_by == group_by


def test_summary_keys_and_order(engine: sa.Engine, llm_spans: list[Span]) -> None:
    summary = check(engine, llm_spans, FIRST, LAST, ["model", "day"])
    days = [g.keys["day"] for g in summary.groups]
    assert days == sorted(days)  # type: ignore[type-var]
    assert set(days) == {"2025-12-31", "2026-01-01", "2026-01-02"}
    first_day = [g for g in summary.groups if g.keys["day"] == "2025-12-31"]
    counts = [g.count for g in first_day]
    assert counts == sorted(counts, reverse=True)
    models = {g.keys["model"] for g in summary.groups}
    assert None in models  # embeddings calls that named no model
    assert "" not in models
    users = {g.keys["user"] for g in check(engine, llm_spans, FIRST, LAST, ["user"]).groups}
    assert users == {"u1", "u2", "u3", "u4", None}  # '' and unset are both "not set"
    hours = check(engine, llm_spans, FIRST, LAST, ["hour"]).groups
    assert hours[0].keys == {"hour": "2025-12-31T19:00:00Z"}
    assert len(hours) == 45


FILTERED = [
    (TraceFilter(feature="chat"), [], "rollups"),
    (TraceFilter(feature="chat"), ["feature", "day"], "rollups"),
    (TraceFilter(user_id="u2"), ["hour"], "rollups"),
    (SpanFilter(provider="openai"), ["provider"], "rollups"),
    (TraceFilter(tenant="acme"), ["model"], "spans"),
    (TraceFilter(model="gpt-4o"), ["model"], "spans"),  # asked for; served under two names
    (TraceFilter(model="claude-2025"), [], "spans"),
    (TraceFilter(status="error"), ["feature"], "spans"),
    (TraceFilter(status="ok"), ["day"], "spans"),
    (TraceFilter(error_class="Timeout"), [], "spans"),
    (TraceFilter(min_cost_usd=0.01), ["tenant"], "spans"),
    (TraceFilter(min_latency_ms=1000), ["hour"], "spans"),
    (TraceFilter(user_id="", feature="search"), ["user"], "spans"),
    (TraceFilter(user_id="u1", tenant="globex"), ["model", "hour"], "spans"),
    (SpanFilter(operation="embeddings"), ["model"], "spans"),
    (TraceFilter(start_ns=BASE, end_ns=BASE + 26 * HOUR_NS + 1), ["day"], "rollups"),
]


@pytest.mark.parametrize(("flt", "group_by", "source"), FILTERED)
def test_filtered_summary_matches_brute_force(
    engine: sa.Engine,
    llm_spans: list[Span],
    flt: TraceFilter,
    group_by: list[str],
    source: str,
) -> None:
    for start_ns, end_ns in (RANGES["partial edges"], RANGES["whole hours"]):
        summary = check(engine, llm_spans, start_ns, end_ns, group_by, flt)
        assert summary.source == source
        assert summary.total.count > 0


def test_filter_times_narrow_the_range(engine: sa.Engine, llm_spans: list[Span]) -> None:
    flt = TraceFilter(start_ns=BASE + 3 * HOUR_NS + 7, end_ns=LAST + DAY_NS)
    summary = queries.metrics_summary(
        engine, 1, start_ns=FIRST, end_ns=BASE + 9 * HOUR_NS, filter=flt
    )
    assert (summary.start_ns, summary.end_ns) == (BASE + 3 * HOUR_NS + 7, BASE + 9 * HOUR_NS)
    want = brute_force(llm_spans, BASE + 3 * HOUR_NS + 7, BASE + 9 * HOUR_NS, [])[()]
    assert_matches(summary.total, want)


def test_unknown_costs_stay_visible(engine: sa.Engine) -> None:
    spans = [
        Span(
            trace_id=f"{i:032x}",
            span_id=f"{i:016x}",
            name="chat",
            start_ns=BASE + (i + 1) * MIN_NS,
            end_ns=BASE + (i + 1) * MIN_NS + 200 * MS,
            request_model="mystery" if i % 2 else "priced",
            cost_usd=None if i % 2 else 0.5,
        )
        for i in range(10)
    ]
    SpanWriter(engine).write([(1, s) for s in spans])
    for start in (BASE, BASE + 1):  # roll-ups, then raw spans
        summary = queries.metrics_summary(
            engine, 1, start_ns=start, end_ns=BASE + HOUR_NS, group_by=["model"]
        )
        rows = {g.keys["model"]: g for g in summary.groups}
        assert rows["mystery"].cost_usd == 0
        assert rows["mystery"].cost_unknown_count == 5
        assert rows["priced"].cost_usd == pytest.approx(2.5)
        assert rows["priced"].cost_unknown_count == 0
        assert summary.total.cost_unknown_count == 5
        assert summary.total.p50_latency_ms == pytest.approx(200, rel=0.04)
        assert summary.total.p50_ttft_ms is None


def test_empty_and_reversed_ranges(engine: sa.Engine, llm_spans: list[Span]) -> None:
    for start_ns, end_ns in ((LAST + DAY_NS, LAST + 2 * DAY_NS), (BASE, BASE), (BASE, FIRST)):
        summary = queries.metrics_summary(
            engine, 1, start_ns=start_ns, end_ns=end_ns, group_by=["model", "hour"]
        )
        assert summary.groups == []
        assert summary.total.count == 0
        assert summary.total.error_rate is None
        assert summary.total.cost_usd == 0
    empty = queries.metrics_summary(engine, 3, start_ns=FIRST, end_ns=LAST, group_by=["user"])
    assert empty.groups == []
    assert empty.total.count == 0


def test_accepts_a_connection(engine: sa.Engine, llm_spans: list[Span]) -> None:
    with engine.connect() as conn:
        check(conn, llm_spans, *RANGES["partial edges"], ["tenant", "day"])
        check(conn, llm_spans, *RANGES["partial edges"], ["tenant"], TraceFilter(status="ok"))


@pytest.mark.parametrize(
    ("group_by", "bad"),
    [
        (["bogus"], "'bogus'"),
        (["model", "Day"], "'Day'"),
        (["model", "user"], "'user'"),
        (["feature", "feature"], "'feature'"),
        (["day", "hour"], "'hour'"),
        (["hour", "model", "day"], "'day'"),
        (["trace"], "'trace'"),
    ],
)
def test_group_by_is_validated(engine: sa.Engine, group_by: list[str], bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        queries.metrics_summary(engine, 1, start_ns=FIRST, end_ns=LAST, group_by=group_by)


def test_whole_days_come_from_day_rows_folded_or_not(engine: sa.Engine) -> None:
    spans = build_spans(random.Random(11), 900)
    writer = SpanWriter(engine)
    # As ingest writes: deltas, the first half folded into hour and day rows, the rest not yet.
    for i in range(0, len(spans), 150):
        prepared = writer.prepare([(1, s) for s in spans[i : i + 150]])
        with writer.transaction() as conn:
            writer.write_prepared(conn, prepared, defer_rollups=True)
            if i == 300:
                writer.fold_rollups(conn)
    with engine.connect() as conn:
        days = conn.execute(
            sa.text("SELECT DISTINCT hour FROM span_rollups WHERE dimension = 'user:day'")
        ).all()
    assert {hour for (hour,) in days} >= {BASE // 1_000_000_000}
    for range_name in ("whole hours", "partial edges", "wider than the data"):
        start_ns, end_ns = RANGES[range_name]
        for group_by in GROUPINGS:
            check(engine, spans, start_ns, end_ns, group_by)
