"""The store reads behind the UI, on SQLite and PostgreSQL: trace search with criteria on a
trace's spans, every order paged by cursor, trace outlines, single spans, first tokens."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.store.queries_span_tree import get_span, trace_outline, trace_stamp
from bastion.store.queries_trace_search import (
    SORT_KEYS,
    TraceOrder,
    TraceSearch,
    first_token_ms,
    search_traces,
)
from bastion.store.queries_traces import TraceSummary
from bastion.store.writer import SpanWriter
from bastion.tracing.attributes import PROMPT_LABEL, RELEASE_ARM
from bastion.tracing.model import Span

MS = 1_000_000
BASE = 1_700_000_000 * 10**9


def _trace(n: int, **extra: object) -> list[Span]:
    """Trace n: a root and a model call, latency and tokens that tie in pairs, cost unknown
    for every third trace."""
    trace_id = f"{n:032x}"
    start = BASE + n * 1000 * MS
    root = Span(trace_id, f"{1:016x}", f"t{n}", start, start + (n // 2 + 1) * MS)
    chat = Span(
        trace_id,
        f"{2:016x}",
        "chat",
        start + MS // 2,
        start + MS,
        parent_span_id=root.span_id,
        request_model="m",
        operation="chat",
        input_tokens=n // 2,
        output_tokens=1,
        cost_usd=None if n % 3 == 0 else n / 100,
        ttft_ms=float(n),
        **extra,  # type: ignore[arg-type]
    )
    return [root, chat]


@pytest.fixture
def stored(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        ensure_project(conn, "default")
        ensure_project(conn, "other")
    batch = [(1, s) for n in range(12) for s in _trace(n)]
    batch += [
        (1, s)
        for s in _trace(
            20,
            provider="anthropic",
            prompt_name="p",
            prompt_version=3,
            release_id="rel1",
            attributes={PROMPT_LABEL: "prod", RELEASE_ARM: "candidate"},
        )
    ]
    batch += [(2, s) for s in _trace(30, provider="anthropic")]
    SpanWriter(engine).write(batch)
    return engine


def _all_pages(
    engine: sa.Engine, order: TraceOrder, search: TraceSearch | None = None
) -> list[str]:
    names: list[str] = []
    cursor = None
    while True:
        page = search_traces(engine, 1, search, order=order, limit=5, cursor=cursor)
        names += [t.name or "" for t in page.items]
        if page.next_cursor is None:
            return names
        cursor = page.next_cursor


@pytest.mark.parametrize("key", SORT_KEYS)
@pytest.mark.parametrize("descending", [True, False])
def test_every_order_pages_without_repeats_or_gaps(
    stored: sa.Engine, key: str, descending: bool
) -> None:
    order = TraceOrder.model_validate({"key": key, "descending": descending})
    names = _all_pages(stored, order)
    full = search_traces(stored, 1, order=order, limit=100).items

    def value(t: TraceSummary) -> tuple[float, str]:
        v = {
            "time": t.start_ns,
            "latency": t.end_ns - t.start_ns,
            "tokens": t.total_tokens,
            "cost": -1.0 if t.cost_usd is None else t.cost_usd,
            "spans": t.span_count,
        }[key]
        return (v, t.trace_id)

    expected = sorted(full, key=value, reverse=descending)
    assert names == [t.name for t in expected]
    assert len(names) == 13  # the other project's trace is never listed


def test_criteria_on_a_traces_spans(stored: sa.Engine) -> None:
    def found(**criteria: object) -> list[str]:
        page = search_traces(stored, 1, TraceSearch.model_validate(criteria), limit=50)
        return [t.name or "" for t in page.items]

    assert found(provider="anthropic") == ["t20"]
    assert found(prompt_name="p", prompt_version=3, prompt_label="prod") == ["t20"]
    assert found(prompt_version=4) == []
    assert found(prompt_label="staging") == []
    assert found(release_id="rel1", release_arm="candidate") == ["t20"]
    assert found(release_arm="stable") == []
    assert found(start_ns=BASE + 10_000 * MS, provider="anthropic") == ["t20"]


def test_a_cursor_only_fits_its_own_order(stored: sa.Engine) -> None:
    page = search_traces(stored, 1, order=TraceOrder(key="cost"), limit=2)
    assert page.next_cursor is not None
    with pytest.raises(ValueError, match="sorted the same way"):
        search_traces(stored, 1, order=TraceOrder(key="latency"), cursor=page.next_cursor)
    with pytest.raises(ValueError, match="invalid cursor"):
        search_traces(stored, 1, cursor="garbage")


def test_outline_span_and_first_tokens_stay_in_their_project(stored: sa.Engine) -> None:
    mine, theirs = f"{5:032x}", f"{30:032x}"
    outline = trace_outline(stored, 1, mine)
    assert outline is not None
    assert [s.name for s in outline.spans] == ["t5", "chat"]
    assert outline.spans[1].input_tokens == 2
    assert outline.spans[1].model == "m"
    assert trace_stamp(stored, 1, mine) == (2, outline.trace.start_ns, outline.trace.end_ns)
    assert trace_outline(stored, 1, theirs) is None
    assert trace_stamp(stored, 1, theirs) is None
    assert get_span(stored, 1, theirs, f"{1:016x}") is None
    assert get_span(stored, 2, theirs, f"{1:016x}") is not None
    span = get_span(stored, 1, mine, f"{2:016x}")
    assert span is not None
    assert span.ttft_ms == 5.0
    assert first_token_ms(stored, 1, [mine, theirs]) == {mine: 5.0}
    assert first_token_ms(stored, 1, []) == {}
