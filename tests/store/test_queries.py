"""Trace and span listings, trace trees and project isolation, on SQLite and PostgreSQL.

Expected results are computed by brute force over the very ``Span`` objects written.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.store import queries
from bastion.store.queries import SpanFilter, TraceFilter
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, SpanKind, StatusCode

HOUR_NS = 3_600 * 1_000_000_000
MS = 1_000_000
BASE = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
MODELS = ["gpt-4o", "claude-3-5-sonnet", "llama-3-70b"]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]


def _hex(rng: random.Random, bits: int) -> str:
    return f"{rng.getrandbits(bits):0{bits // 4}x}"


def build_traces(rng: random.Random, count: int, *, ties: bool = True) -> list[list[Span]]:
    """``count`` random traces (root, optional retrieval, 0-2 LLM calls), some sharing a start."""
    out: list[list[Span]] = []
    for i in range(count):
        trace_id = _hex(rng, 128)
        if ties and out and i % 4 == 0:
            start = out[-1][0].start_ns  # same start as the previous trace
        else:
            start = BASE + rng.randrange(0, 6 * HOUR_NS)
        common: dict[str, Any] = {
            "user_id": rng.choice(["alice", "bob", "carol", None]),
            "session_id": rng.choice(["s1", "s2", None]),
            "feature": rng.choice(["chat", "search", "summary", None]),
            "tenant": rng.choice(["acme", "globex", None]),
            "service_name": rng.choice(["api", "worker"]),
        }
        root_id = _hex(rng, 64)
        duration = rng.randrange(5, 5_000) * MS
        spans = [
            Span(
                trace_id=trace_id,
                span_id=root_id,
                name=rng.choice(["POST /chat", "POST /search"]),
                start_ns=start,
                end_ns=start + duration,
                kind=SpanKind.SERVER,
                **common,
            )
        ]
        if rng.random() < 0.7:
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=_hex(rng, 64),
                    parent_span_id=root_id,
                    name="retrieval",
                    start_ns=start + MS,
                    end_ns=start + 3 * MS,
                    input=" ".join(rng.choices(WORDS, k=5)),
                    **common,
                )
            )
        for _ in range(rng.randrange(0, 3)):
            model = rng.choice(MODELS)
            error = rng.random() < 0.2
            at = start + rng.randrange(2, 4) * MS
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=_hex(rng, 64),
                    parent_span_id=root_id,
                    name="chat " + model,
                    start_ns=at,
                    end_ns=at + rng.randrange(1, duration // MS + 1) * MS,
                    kind=SpanKind.CLIENT,
                    status_code=StatusCode.ERROR if error else StatusCode.OK,
                    operation="chat",
                    provider="openai" if model.startswith("gpt") else "other",
                    request_model=model,
                    response_model=rng.choice([None, model, model + "-2025"]),
                    input_tokens=rng.randrange(10, 500),
                    output_tokens=rng.randrange(1, 200),
                    cost_usd=rng.choice([None, rng.random() / 100]),
                    error_class=rng.choice(["RateLimitError", "Timeout"]) if error else None,
                    input=rng.choice(["Hello NEEDLE here", "100% off_now", "plain question"]),
                    output=rng.choice(["an answer", "the needle", "x-y"]),
                    **common,
                )
            )
        out.append(spans)
    return out


def write(engine: sa.Engine, project_id: int, traces: Sequence[Sequence[Span]]) -> None:
    SpanWriter(engine).write([(project_id, s) for spans in traces for s in spans])


def trace_facts(spans: Sequence[Span]) -> dict[str, Any]:
    known = [s.cost_usd for s in spans if s.cost_usd is not None]
    root = next(s for s in spans if s.parent_span_id is None)
    return {
        "trace_id": root.trace_id,
        "name": root.name,
        "start_ns": min(s.start_ns for s in spans),
        "end_ns": max(s.end_ns for s in spans),
        "span_count": len(spans),
        "error_count": sum(s.is_error for s in spans),
        "llm_count": sum(s.is_llm for s in spans),
        "input_tokens": sum(s.input_tokens or 0 for s in spans),
        "output_tokens": sum(s.output_tokens or 0 for s in spans),
        "cost_usd": sum(known) if known else None,
        "user_id": root.user_id,
        "session_id": root.session_id,
        "feature": root.feature,
        "tenant": root.tenant,
        "service_name": root.service_name,
    }


def _contains(span: Span, text: str) -> bool:
    needle = text.lower()
    return needle in (span.input or "").lower() or needle in (span.output or "").lower()


def trace_matches(spans: Sequence[Span], f: TraceFilter) -> bool:
    t = trace_facts(spans)
    checks = [
        f.start_ns is None or t["start_ns"] >= f.start_ns,
        f.end_ns is None or t["start_ns"] < f.end_ns,
        f.status is None or (t["error_count"] > 0) == (f.status == "error"),
        f.min_latency_ms is None or (t["end_ns"] - t["start_ns"]) / 1e6 >= f.min_latency_ms,
        f.min_cost_usd is None or (t["cost_usd"] is not None and t["cost_usd"] >= f.min_cost_usd),
        f.name is None or t["name"] == f.name,
        f.model is None or any(f.model in (s.request_model, s.response_model) for s in spans),
        f.error_class is None or any(s.error_class == f.error_class for s in spans),
        not f.text or any(_contains(s, f.text) for s in spans),
    ]
    for field in ("user_id", "session_id", "feature", "tenant", "service_name"):
        checks.append(getattr(f, field) is None or t[field] == getattr(f, field))
    return all(checks)


def span_matches(s: Span, f: TraceFilter) -> bool:
    checks = [
        f.start_ns is None or s.start_ns >= f.start_ns,
        f.end_ns is None or s.start_ns < f.end_ns,
        f.status is None or s.is_error == (f.status == "error"),
        f.min_latency_ms is None or s.latency_ms >= f.min_latency_ms,
        f.min_cost_usd is None or (s.cost_usd is not None and s.cost_usd >= f.min_cost_usd),
        f.model is None or f.model in (s.request_model, s.response_model),
        not f.text or _contains(s, f.text),
    ]
    fields = ["user_id", "session_id", "feature", "tenant", "service_name", "name", "error_class"]
    if isinstance(f, SpanFilter):
        fields += ["trace_id", "operation", "provider", "prompt_name", "release_id"]
        checks.append(not f.llm_only or s.is_llm)
    checks += [getattr(f, n) is None or getattr(s, n) == getattr(f, n) for n in fields]
    return all(checks)


def all_traces(engine: sa.Engine, project_id: int, f: TraceFilter, limit: int = 1000) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = queries.list_traces(engine, project_id, f, limit=limit, cursor=cursor)
        ids += [t.trace_id for t in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def all_spans(engine: sa.Engine, project_id: int, f: TraceFilter, limit: int = 1000) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = queries.list_spans(engine, project_id, f, limit=limit, cursor=cursor)
        ids += [f"{s.trace_id}:{s.span_id}" for s in page.items]
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor


def expected_traces(traces: Sequence[Sequence[Span]], f: TraceFilter) -> list[str]:
    chosen = [trace_facts(t) for t in traces if trace_matches(t, f)]
    chosen.sort(key=lambda t: (t["start_ns"], t["trace_id"]), reverse=True)
    return [t["trace_id"] for t in chosen]


def expected_spans(traces: Sequence[Sequence[Span]], f: TraceFilter) -> list[str]:
    chosen = [s for t in traces for s in t if span_matches(s, f)]
    chosen.sort(key=lambda s: (s.start_ns, s.trace_id, s.span_id), reverse=True)
    return [f"{s.trace_id}:{s.span_id}" for s in chosen]


FILTERS: list[TraceFilter] = [
    TraceFilter(),
    TraceFilter(start_ns=BASE + HOUR_NS, end_ns=BASE + 4 * HOUR_NS),
    TraceFilter(start_ns=BASE + 5 * HOUR_NS),
    TraceFilter(end_ns=BASE + HOUR_NS),
    TraceFilter(user_id="alice"),
    TraceFilter(session_id="s2"),
    TraceFilter(feature="search"),
    TraceFilter(tenant="globex"),
    TraceFilter(model="gpt-4o"),  # asked for, or served
    TraceFilter(model="llama-3-70b-2025"),  # served only
    TraceFilter(status="error"),
    TraceFilter(status="ok"),
    TraceFilter(error_class="Timeout"),
    TraceFilter(text="needle"),
    TraceFilter(text="NeEdLe", start_ns=BASE + 2 * HOUR_NS, end_ns=BASE + 5 * HOUR_NS),
    TraceFilter(text="0% o"),  # LIKE wildcards are matched literally
    TraceFilter(text="f_n"),
    TraceFilter(text="x-y"),
    TraceFilter(text=""),
    TraceFilter(min_latency_ms=2500),
    TraceFilter(min_latency_ms=0.001),
    TraceFilter(min_cost_usd=0.005),
    TraceFilter(service_name="worker"),
    TraceFilter(name="POST /search"),
    TraceFilter(user_id="bob", feature="chat", status="ok"),
    TraceFilter(model="claude-3-5-sonnet", text="needle", tenant="acme"),
]


@pytest.fixture
def dataset(engine: sa.Engine) -> list[list[Span]]:
    traces = build_traces(random.Random(7), 120)
    write(engine, 1, traces)
    return traces


@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: repr(f.model_dump(exclude_none=True)))
def test_list_traces_applies_each_filter(
    engine: sa.Engine, dataset: list[list[Span]], flt: TraceFilter
) -> None:
    expected = expected_traces(dataset, flt)
    assert all_traces(engine, 1, flt) == expected
    assert expected, "the data set should have traces that match"


def test_trace_summary_fields(engine: sa.Engine, dataset: list[list[Span]]) -> None:
    by_id = {t[0].trace_id: t for t in dataset}
    page = queries.list_traces(engine, 1, None, limit=1000)
    assert len(page.items) == len(dataset)
    assert page.next_cursor is None
    for item in page.items:
        facts = trace_facts(by_id[item.trace_id])
        got = item.model_dump()
        for key, value in facts.items():
            if key == "cost_usd" and value is not None:
                assert got[key] == pytest.approx(value)
            else:
                assert got[key] == value, key
        assert item.latency_ms == (facts["end_ns"] - facts["start_ns"]) / 1e6
        assert item.total_tokens == facts["input_tokens"] + facts["output_tokens"]
        assert item.status == ("error" if facts["error_count"] else "ok")
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        assert item.start_time == epoch + timedelta(microseconds=facts["start_ns"] // 1000)
        assert item.end_time == epoch + timedelta(microseconds=facts["end_ns"] // 1000)
        assert item.model_dump(mode="json")["start_time"].endswith("Z")


@pytest.mark.parametrize("limit", [1, 3, 7, 30])
def test_trace_pages_have_no_duplicates_or_gaps(
    engine: sa.Engine, dataset: list[list[Span]], limit: int
) -> None:
    expected = expected_traces(dataset, TraceFilter())
    starts = [trace_facts(t)["start_ns"] for t in dataset]
    assert len(set(starts)) < len(starts), "the data set must have start ties"
    assert all_traces(engine, 1, TraceFilter(), limit=limit) == expected
    flt = TraceFilter(status="ok", start_ns=BASE + HOUR_NS)
    assert all_traces(engine, 1, flt, limit=limit) == expected_traces(dataset, flt)


def test_trace_pages_with_all_starts_equal(engine: sa.Engine) -> None:
    rng = random.Random(3)
    traces = build_traces(rng, 25, ties=False)
    for spans in traces:
        shift = BASE - spans[0].start_ns
        for s in spans:
            s.start_ns += shift
            s.end_ns += shift
    write(engine, 1, traces)
    expected = sorted((t[0].trace_id for t in traces), reverse=True)
    for limit in (1, 4, 5, 25, 26):
        assert all_traces(engine, 1, TraceFilter(), limit=limit) == expected
    # A page that ends exactly at the last trace says there is nothing more.
    page = queries.list_traces(engine, 1, None, limit=25)
    assert len(page.items) == 25
    assert page.next_cursor is None


def test_min_latency_is_inclusive_to_the_nanosecond(engine: sa.Engine) -> None:
    exact = Span(
        trace_id="e" * 32, span_id="e" * 16, name="x", start_ns=BASE, end_ns=BASE + 100_000
    )
    short = Span(trace_id="d" * 32, span_id="d" * 16, name="x", start_ns=BASE, end_ns=BASE + 99_999)
    write(engine, 1, [[exact], [short]])
    assert all_traces(engine, 1, TraceFilter(min_latency_ms=0.1)) == ["e" * 32]
    assert all_spans(engine, 1, TraceFilter(min_latency_ms=0.1)) == ["e" * 32 + ":" + "e" * 16]


def test_bad_cursor_and_limit_are_rejected(engine: sa.Engine, dataset: list[list[Span]]) -> None:
    page = queries.list_traces(engine, 1, None, limit=2)
    assert page.next_cursor is not None
    for bad in ["", "not a cursor!", "Zm9v", "W10", page.next_cursor[:-3] + "@@@"]:
        with pytest.raises(ValueError, match="invalid cursor"):
            queries.list_traces(engine, 1, None, cursor=bad)
    span_page = queries.list_spans(engine, 1, None, limit=2)
    assert span_page.next_cursor is not None
    with pytest.raises(ValueError, match="invalid cursor"):
        queries.list_traces(engine, 1, None, cursor=span_page.next_cursor)
    with pytest.raises(ValueError, match="invalid cursor"):
        queries.list_spans(engine, 1, None, cursor=page.next_cursor)
    for limit in (0, -1, 1001):
        with pytest.raises(ValueError, match="limit"):
            queries.list_traces(engine, 1, None, limit=limit)
        with pytest.raises(ValueError, match="limit"):
            queries.list_spans(engine, 1, None, limit=limit)
    with pytest.raises(ValueError, match="operation"):
        queries.list_traces(engine, 1, SpanFilter(operation="chat"))
    assert queries.list_traces(engine, 1, None, limit=1000).next_cursor is None


SPAN_FILTERS: list[TraceFilter] = [
    TraceFilter(),
    TraceFilter(start_ns=BASE + HOUR_NS, end_ns=BASE + 2 * HOUR_NS),
    TraceFilter(model="gpt-4o"),
    TraceFilter(model="claude-3-5-sonnet-2025"),
    TraceFilter(status="error"),
    TraceFilter(status="ok", user_id="carol"),
    TraceFilter(feature="summary"),
    TraceFilter(text="NEEDLE"),
    TraceFilter(min_latency_ms=1000),
    TraceFilter(min_cost_usd=0.003),
    TraceFilter(name="retrieval"),
    SpanFilter(operation="chat"),
    SpanFilter(llm_only=True, tenant="acme"),
    SpanFilter(provider="openai", status="ok"),
    SpanFilter(error_class="RateLimitError"),
]


@pytest.mark.parametrize("flt", SPAN_FILTERS, ids=lambda f: repr(f.model_dump(exclude_none=True)))
def test_list_spans_applies_each_filter(
    engine: sa.Engine, dataset: list[list[Span]], flt: TraceFilter
) -> None:
    assert all_spans(engine, 1, flt) == expected_spans(dataset, flt)


def test_list_spans_by_trace_and_pages(engine: sa.Engine, dataset: list[list[Span]]) -> None:
    some = dataset[5]
    flt = SpanFilter(trace_id=some[0].trace_id)
    assert all_spans(engine, 1, flt, limit=1) == expected_spans(dataset, flt)
    expected = expected_spans(dataset, TraceFilter())
    for limit in (1, 9, 50):
        assert all_spans(engine, 1, TraceFilter(), limit=limit) == expected


def test_list_spans_returns_every_column(engine: sa.Engine) -> None:
    span = Span(
        trace_id="a" * 32,
        span_id="b" * 16,
        name="chat gpt-4o",
        start_ns=BASE,
        end_ns=BASE + 1234 * MS,
        kind=SpanKind.CLIENT,
        status_code=StatusCode.ERROR,
        status_message="rate limited",
        attributes={"gen_ai.system": "openai", "n": 2},
        resource={"service.name": "api"},
        events=[{"name": "retry", "time_ns": BASE + 5}],
        service_name="api",
        operation="chat",
        provider="openai",
        request_model="gpt-4o",
        response_model="gpt-4o-2024-08-06",
        input_tokens=10,
        output_tokens=20,
        cached_tokens=3,
        cache_write_tokens=1,
        cost_usd=0.25,
        ttft_ms=120.5,
        error_class="RateLimitError",
        user_id="u",
        session_id="s",
        feature="f",
        tenant="t",
        prompt_name="p",
        prompt_version=4,
        release_id="r1",
        input="question",
        output="answer",
    )
    write(engine, 1, [[span]])
    (item,) = queries.list_spans(engine, 1, None).items
    got = item.model_dump()
    for name in Span.__slots__:
        assert got[name] == getattr(span, name), name
    assert item.latency_ms == 1234
    assert item.is_llm
    assert item.model == "gpt-4o-2024-08-06"
    assert item.status == "error"
    assert item.ingested_ns > 0


def _node(
    trace_id: str, span_id: str, parent: str | None, start_ms: int, end_ms: int, **kw: Any
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        start_ns=BASE + start_ms * MS,
        end_ns=BASE + end_ms * MS,
        **kw,
    )


def _shape(nodes: Sequence[queries.SpanNode]) -> list[Any]:
    return [(n.name, _shape(n.children)) for n in nodes]


def test_get_trace_builds_the_tree_and_keeps_orphans(engine: sa.Engine) -> None:
    tid = "1" * 32
    llm = {"operation": "chat", "provider": "openai", "request_model": "gpt-4o"}
    spans = [
        _node(tid, "0000000000000001", None, 0, 900, name="agent", kind=SpanKind.SERVER),
        _node(tid, "0000000000000002", "0000000000000001", 10, 50, name="retrieval"),
        _node(
            tid,
            "0000000000000003",
            "0000000000000001",
            60,
            400,
            name="llm plan",
            input_tokens=100,
            output_tokens=20,
            cost_usd=0.01,
            ttft_ms=80.0,
            input="plan it",
            attributes={"gen_ai.request.model": "gpt-4o"},
            events=[{"name": "tool_call"}],
            **llm,
        ),
        _node(tid, "0000000000000004", "0000000000000003", 300, 350, name="tool search"),
        _node(
            tid,
            "0000000000000005",
            "0000000000000004",
            360,
            390,
            name="llm answer",
            input_tokens=50,
            output_tokens=70,
            status_code=StatusCode.ERROR,
            error_class="Timeout",
            **llm,
        ),
        # Its parent never arrived: it must still be shown, as a root.
        _node(tid, "0000000000000006", "00000000000000ff", 500, 600, name="orphan"),
        _node(tid, "0000000000000007", "0000000000000001", 5, 20, name="cache lookup"),
    ]
    write(engine, 1, [spans])
    tree = queries.get_trace(engine, 1, tid)
    assert tree is not None
    assert _shape(tree.roots) == [
        (
            "agent",
            [
                ("cache lookup", []),
                ("retrieval", []),
                ("llm plan", [("tool search", [("llm answer", [])])]),
            ],
        ),
        ("orphan", []),
    ]
    plan = tree.roots[0].children[2]
    assert plan.is_llm
    assert plan.model == "gpt-4o"
    assert plan.request_model == "gpt-4o"
    assert plan.input_tokens == 100
    assert plan.cost_usd == 0.01
    assert plan.ttft_ms == 80.0
    assert plan.attributes == {"gen_ai.request.model": "gpt-4o"}
    assert plan.events == [{"name": "tool_call"}]
    assert plan.resource == {}
    assert plan.latency_ms == 340
    answer = plan.children[0].children[0]
    assert answer.status == "error"
    assert answer.error_class == "Timeout"
    assert tree.trace.span_count == 7
    assert tree.trace.error_count == 1
    assert tree.trace.llm_count == 2
    assert tree.trace.input_tokens == 150
    assert tree.trace.name == "agent"
    assert tree.trace.latency_ms == 900
    assert queries.get_trace(engine, 1, "2" * 32) is None
    # The model serialises (the server sends it as JSON).
    assert '"children"' in tree.model_dump_json()


def test_get_trace_survives_a_parent_cycle(engine: sa.Engine) -> None:
    tid = "3" * 32
    spans = [
        _node(tid, "000000000000000a", None, 0, 100, name="root"),
        _node(tid, "000000000000000b", "000000000000000c", 10, 20, name="b"),
        _node(tid, "000000000000000c", "000000000000000b", 15, 30, name="c"),
        _node(tid, "000000000000000d", "000000000000000d", 40, 50, name="self"),
    ]
    write(engine, 1, [spans])
    tree = queries.get_trace(engine, 1, tid)
    assert tree is not None
    assert _shape(tree.roots) == [("root", []), ("b", [("c", [])]), ("self", [])]


def test_projects_are_isolated(engine: sa.Engine) -> None:
    rng = random.Random(11)
    mine = build_traces(rng, 30)
    write(engine, 1, mine)
    # Project 2 reuses the very same trace and span ids with other values.
    theirs = [
        [
            Span(
                trace_id=s.trace_id,
                span_id=s.span_id,
                parent_span_id=s.parent_span_id,
                name="intruder",
                start_ns=s.start_ns + 7,
                end_ns=s.end_ns + 10 * MS,
                user_id="mallory",
                feature="chat",
                operation="chat",
                request_model="gpt-4o",
                input="needle secret",
                status_code=StatusCode.ERROR,
                cost_usd=1.0,
            )
            for s in spans
        ]
        for spans in mine
    ]
    write(engine, 2, theirs)
    assert all_traces(engine, 1, TraceFilter()) == expected_traces(mine, TraceFilter())
    assert all_traces(engine, 2, TraceFilter()) == expected_traces(theirs, TraceFilter())
    for flt in FILTERS:
        assert all_traces(engine, 1, flt) == expected_traces(mine, flt)
    assert all_traces(engine, 1, TraceFilter(user_id="mallory")) == []
    assert all_spans(engine, 1, TraceFilter(text="secret")) == []
    assert all_spans(engine, 1, TraceFilter()) == expected_spans(mine, TraceFilter())
    names = {s.name for s in queries.list_spans(engine, 1, None, limit=1000).items}
    assert "intruder" not in names
    for spans in mine[:5]:
        tree = queries.get_trace(engine, 1, spans[0].trace_id)
        assert tree is not None
        assert tree.trace.span_count == len(spans)
        assert "intruder" not in tree.model_dump_json()
    summaries: list[Callable[[], queries.MetricsSummary]] = [
        lambda: queries.metrics_summary(
            engine, 1, start_ns=BASE - HOUR_NS, end_ns=BASE + 8 * HOUR_NS, group_by=["user"]
        ),
        lambda: queries.metrics_summary(
            engine,
            1,
            start_ns=BASE - HOUR_NS,
            end_ns=BASE + 8 * HOUR_NS,
            group_by=["user"],
            filter=TraceFilter(status="error"),
        ),
        lambda: queries.metrics_summary(
            engine,
            1,
            start_ns=BASE - HOUR_NS,
            end_ns=BASE + 8 * HOUR_NS,
            filter=TraceFilter(feature="chat"),
        ),
    ]
    llm = [s for spans in mine for s in spans if s.is_llm]
    expected_counts = [
        len(llm),
        sum(s.is_error for s in llm),
        sum(s.feature == "chat" for s in llm),
    ]
    for summary, count in zip(summaries, expected_counts, strict=True):
        result = summary()
        assert result.total.count == count
        assert all(g.keys.get("user") != "mallory" for g in result.groups)
