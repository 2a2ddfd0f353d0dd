"""The span tree behind the waterfall: parents and roots, cycles, totals per subtree, the
rows a view shows, windows of children and bars."""

from __future__ import annotations

from datetime import UTC, datetime

from bastion.store.queries_span_tree import OutlineSpan, TraceOutline
from bastion.store.queries_traces import TraceSummary
from bastion.ui.span_tree import EXPAND_ALL_UP_TO, WINDOW, build_tree


def _span(span_id: str, parent: str | None, start: int, end: int, **extra: object) -> OutlineSpan:
    values: dict[str, object] = {
        "span_id": span_id,
        "parent_span_id": parent,
        "name": f"span {span_id}",
        "start_ns": start,
        "end_ns": end,
        "is_error": False,
        "model": None,
        "operation": None,
        "input_tokens": 0,
        "output_tokens": 0,
        "cost_usd": None,
        "ttft_ms": None,
        "counted": True,
    }
    values.update(extra)
    return OutlineSpan(**values)  # type: ignore[arg-type]


def _outline(spans: list[OutlineSpan]) -> TraceOutline:
    spans.sort(key=lambda s: (s.start_ns, s.span_id))
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    moment = datetime.fromtimestamp(0, tz=UTC)
    summary = TraceSummary(
        trace_id="a" * 32,
        name="t",
        start_ns=start,
        end_ns=end,
        start_time=moment,
        end_time=moment,
        latency_ms=(end - start) / 1e6,
        span_count=len(spans),
        error_count=0,
        llm_count=0,
        input_tokens=0,
        output_tokens=0,
        total_tokens=0,
        cost_usd=None,
        user_id=None,
        session_id=None,
        feature=None,
        tenant=None,
        service_name=None,
        status="ok",
    )
    return TraceOutline(summary, spans)


def test_totals_roll_up_and_duplicates_are_not_counted() -> None:
    tree = build_tree(
        _outline(
            [
                _span("r", None, 0, 100),
                _span("a", "r", 10, 50, input_tokens=5, output_tokens=5, cost_usd=0.5),
                _span(
                    "b", "a", 20, 30, input_tokens=1, output_tokens=2, cost_usd=0.25, is_error=True
                ),
                # A client's span of a call the gateway traced too: shown, never counted.
                _span(
                    "c", "a", 21, 29, input_tokens=1, output_tokens=2, cost_usd=0.25, counted=False
                ),
                _span("orphan", "missing", 60, 70),
            ]
        )
    )
    root = tree.node("r")
    assert root is not None
    assert (root.total_input_tokens, root.total_output_tokens) == (6, 7)
    assert root.total_cost_usd == 0.75
    assert (root.descendants, root.errors_below) == (3, 1)
    assert [tree.nodes[i].span.span_id for i in tree.roots] == ["r", "orphan"]
    assert tree.ancestors("b") == ["r", "a"]
    child = tree.node("a")
    assert child is not None
    assert child.depth == 1


def test_a_cycle_loses_no_span() -> None:
    tree = build_tree(
        _outline([_span("r", None, 0, 10), _span("x", "y", 1, 2), _span("y", "x", 3, 4)])
    )
    assert len(tree) == 3
    reached = {row.span.span_id for row in tree.rows(None) if row.span is not None}
    assert reached == {"r", "x", "y"}


def test_rows_follow_the_open_branches_depth_first_in_windows() -> None:
    wide = [_span(f"w{i:05d}", "fan", 100 + i, 101 + i) for i in range(WINDOW + 150)]
    deep = [_span(f"d{i:03d}", f"d{i - 1:03d}" if i else "r", 10 + i, 20) for i in range(40)]
    spans = [_span("r", None, 0, 1000), _span("fan", "r", 50, 900), *deep, *wide]
    assert len(spans) > EXPAND_ALL_UP_TO
    tree = build_tree(_outline(spans))
    rows = tree.rows(None, {"r"})
    assert [(r.span.span_id if r.span else "more", r.depth) for r in rows] == [
        ("r", 0),
        ("d000", 1),
        ("fan", 1),
    ]
    opened = tree.rows(None, {"r", *(f"d{i:03d}" for i in range(39))})
    ids = [r.span.span_id for r in opened if r.span is not None]
    assert ids == ["r", *(f"d{i:03d}" for i in range(40)), "fan"]
    assert opened[40].depth == 40
    window = tree.rows("fan")
    assert len(window) == WINDOW + 1
    assert window[-1].span is None
    assert (window[-1].more_offset, window[-1].more_left) == (WINDOW, 150)
    rest = tree.rows("fan", offset=WINDOW)
    assert len(rest) == 150
    assert all(r.span is not None for r in rest)


def test_a_small_trace_opens_whole_and_bars_stay_on_the_axis() -> None:
    tree = build_tree(
        _outline([_span("r", None, 0, 1000), _span("a", "r", 0, 0), _span("b", "a", 999, 2000)])
    )
    assert [r.span.span_id for r in tree.rows(None) if r.span] == ["r", "a", "b"]
    r, a, b = (tree.nodes[tree.index[x]] for x in "rab")
    assert tree.bar(r.span) == (0, 500)
    assert tree.bar(a.span) == (0, 1)  # never invisible
    offset, width = tree.bar(b.span)
    assert offset + width <= 1000


def test_windows_on_the_way_to_a_span_show_it_and_load_what_is_before() -> None:
    leaves = [_span(f"w{i:05d}", "fan", 100 + i, 101 + i) for i in range(3 * WINDOW + 10)]
    tree = build_tree(_outline([_span("r", None, 0, 10_000), _span("fan", "r", 1, 9000), *leaves]))
    target = f"w{2 * WINDOW + 5:05d}"
    focus = tree.focus(target)
    assert focus == {"": 0, "r": 0, "fan": 2 * WINDOW + 5}
    rows = tree.rows(None, {"r", "fan"}, focus=focus)
    ids = [r.span.span_id if r.span else ("earlier" if r.more_until else "later") for r in rows]
    assert ids[:3] == ["r", "fan", "earlier"]
    assert target in ids
    assert ids[-1] == "later"
    earlier = rows[2]
    assert (earlier.more_offset, earlier.more_until, earlier.more_left) == (WINDOW, 2 * WINDOW, 400)
    assert len(ids) == 2 + 1 + WINDOW + 1
    # What "show earlier" loads: that window and, before it, the next "show earlier".
    before = tree.rows("fan", offset=WINDOW, until=2 * WINDOW)
    assert before[0].more_until == WINDOW
    assert before[0].more_offset == 0
    assert [r.span.span_id for r in before[1:] if r.span] == [
        f"w{i:05d}" for i in range(WINDOW, 2 * WINDOW)
    ]
    assert before[-1].span is not None  # nothing after: those rows are on the page already
    first = tree.rows("fan", offset=0, until=WINDOW)
    assert len(first) == WINDOW
    assert all(r.span for r in first)
