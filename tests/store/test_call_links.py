"""A call the gateway served and a client also reported is counted once, whatever order its
spans arrive in: trace rows, roll-ups (folded or not), raw-span summaries, prompt usage and
datasets from traces, on both databases."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.evals.from_traces import TraceSelection, snapshot
from bastion.ingest.spool import Spool
from bastion.prompts.usage import prompt_usage
from bastion.store.call_links import CallSpan, match_calls
from bastion.store.queries import (
    SpanFilter,
    TraceFilter,
    get_trace,
    list_spans,
    list_traces,
    metrics_summary,
)
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span

_HOUR_NS = 3_600 * 1_000_000_000
_COST = 0.064


# -- matching, span by span -------------------------------------------------------------------


def _node(
    span_id: str,
    parent: str | None,
    *,
    gateway: bool = False,
    llm: bool = True,
    model: str = "chat",
    start: int = 0,
    duplicate_of: str | None = None,
) -> CallSpan:
    return CallSpan(
        span_id=span_id,
        parent_span_id=parent,
        request_id=f"req-{span_id}" if gateway else None,
        duplicate_of=duplicate_of,
        operation="chat" if llm else None,
        request_model=model if llm else None,
        start_ns=start,
    )


def test_a_gateway_span_under_the_client_span_is_its_call() -> None:
    trace = [
        _node("app", None, llm=False),
        _node("client", "app"),
        _node("gw", "client", gateway=True),
    ]
    assert match_calls(trace) == [("client", "gw")]


def test_an_http_span_between_client_and_gateway_is_looked_through() -> None:
    trace = [
        _node("client", "app"),
        _node("http", "client", llm=False),
        _node("gw", "http", gateway=True),
    ]
    assert match_calls(trace) == [("client", "gw")]


def test_siblings_pair_by_model_and_nearest_start() -> None:
    trace = [
        _node("app", None, llm=False),
        _node("early", "app", start=100),
        _node("late", "app", start=900),
        _node("other-model", "app", model="embed", start=500),
        _node("gw-late", "app", gateway=True, start=905),
        _node("gw-early", "app", gateway=True, start=103),
    ]
    assert sorted(match_calls(trace)) == [("early", "gw-early"), ("late", "gw-late")]


def test_links_are_one_to_one_and_never_redone() -> None:
    # An SDK retry: two gateway calls inside one client span; the gateway served both.
    retried = [_node("client", "app"), _node("gw1", "client", gateway=True, start=1),
               _node("gw2", "client", gateway=True, start=2)]  # fmt: skip
    assert match_calls(retried) == [("client", "gw1")]
    linked = [_node("client", "app", duplicate_of="gw1"), *retried[1:]]
    assert match_calls(linked) == []


@pytest.mark.parametrize(
    "trace",
    [
        [_node("client", "app"), _node("gw", None, gateway=True)],  # no caller's context
        [_node("gw0", "app", gateway=True), _node("gw", "gw0", gateway=True)],  # gateway twice
        [_node("client", "app", model="other"), _node("gw", "app", gateway=True)],  # not the call
        [_node("tool", "app", llm=False), _node("gw", "tool", gateway=True)],  # no client span
    ],
)
def test_what_is_not_the_same_call_stays_apart(trace: list[CallSpan]) -> None:
    assert match_calls(trace) == []


# -- stored, in every arrival order -----------------------------------------------------------


@dataclass
class Call:
    """One call as an instrumented application and the gateway each report it."""

    trace_id: str
    app: Span
    client: Span
    gateway: Span


def _call(start_ns: int, *, client_parent_of_gateway: bool = True) -> Call:
    trace_id = os.urandom(16).hex()
    ids = [os.urandom(8).hex() for _ in range(3)]
    app = Span(trace_id, ids[0], "answer question", start_ns, start_ns + 50_000_000)
    common: dict[str, Any] = {
        "operation": "chat",
        "request_model": "chat",
        "response_model": "sim-small",
        "provider": "openai",
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_usd": _COST,
        "prompt_name": "summarize",
        "prompt_version": 1,
        "input": '[{"role": "user", "content": "hi"}]',
        "output": "hello",
    }
    client = Span(
        trace_id, ids[1], "chat chat", start_ns + 1_000_000, start_ns + 40_000_000,
        parent_span_id=ids[0], user_id="client-user", service_name="app", **common,
    )  # fmt: skip
    gateway = Span(
        trace_id, ids[2], "chat chat", start_ns + 2_000_000, start_ns + 39_000_000,
        parent_span_id=ids[1] if client_parent_of_gateway else ids[0],
        service_name="bastion-gateway", request_id="req-" + ids[2], **common,
    )  # fmt: skip
    return Call(trace_id, app, client, gateway)


Writer = Callable[[list[Span]], None]


@pytest.fixture(params=["deferred", "direct"])
def write(request: pytest.FixtureRequest, engine: sa.Engine) -> Writer:
    """Writes a batch as the ingest pipeline does (roll-up deltas) or as SpanWriter.write does
    (roll-ups upserted at once)."""
    writer = SpanWriter(engine)

    def run(batch: list[Span]) -> None:
        pairs = [(1, span) for span in batch]
        if request.param == "direct":
            writer.write(pairs)
            return
        prepared = writer.prepare(pairs)
        with writer.transaction() as conn:
            writer.write_prepared(conn, prepared, defer_rollups=True)

    return run


def _fold(engine: sa.Engine) -> None:
    writer = SpanWriter(engine)
    with writer.transaction() as conn:
        writer.fold_rollups(conn)


def _totals(engine: sa.Engine, start_ns: int) -> dict[str, object]:
    """What every summary says about the hour of ``start_ns``: from the trace rows, the
    roll-ups (whole hours) and raw spans (a range inside the hour)."""
    hour = start_ns // _HOUR_NS * _HOUR_NS
    with engine.connect() as conn:
        page = list_traces(conn, 1, TraceFilter(start_ns=hour, end_ns=hour + _HOUR_NS))
        rolled = metrics_summary(conn, 1, start_ns=hour, end_ns=hour + _HOUR_NS, group_by=["user"])
        raw = metrics_summary(conn, 1, start_ns=hour + 1, end_ns=hour + _HOUR_NS - 1)
    assert rolled.source == "rollups"
    return {
        "traces": [(t.llm_count, t.input_tokens, t.output_tokens, t.cost_usd) for t in page.items],
        "rolled": (rolled.total.count, rolled.total.input_tokens, rolled.total.cost_usd),
        "users": [g.keys["user"] for g in rolled.groups],
        "raw": (raw.total.count, raw.total.input_tokens, raw.total.cost_usd),
    }


def _once(calls: int) -> dict[str, object]:
    return {
        "traces": [(1, 100, 50, pytest.approx(_COST))] * calls,
        "rolled": (calls, 100 * calls, pytest.approx(_COST * calls)),
        "users": [None],
        "raw": (calls, 100 * calls, pytest.approx(_COST * calls)),
    }


ORDERS = list(itertools.permutations(["app", "client", "gateway"]))


@pytest.mark.parametrize("order", ORDERS, ids=["-".join(o) for o in ORDERS])
def test_each_arrival_order_counts_the_call_once(
    engine: sa.Engine, write: Writer, order: tuple[str, ...]
) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    for name in order:  # one batch each: the link is made by whichever completes it
        write([getattr(call, name)])
    assert _totals(engine, start) == _once(1)
    _fold(engine)
    assert _totals(engine, start) == _once(1)
    with engine.connect() as conn:
        client = list_spans(conn, 1, SpanFilter(trace_id=call.trace_id, service_name="app"))
        tree = get_trace(conn, 1, call.trace_id)
    assert [s.duplicate_of for s in client.items if s.is_llm] == [call.gateway.span_id]
    assert tree is not None
    assert tree.trace.llm_count == 1


def test_a_folded_client_span_is_taken_back_out(engine: sa.Engine, write: Writer) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    write([call.app, call.client])
    _fold(engine)  # counted and folded into the hour before the gateway span arrives
    assert _totals(engine, start)["rolled"] == (1, 100, pytest.approx(_COST))
    write([call.gateway])
    assert _totals(engine, start) == _once(1)
    _fold(engine)
    assert _totals(engine, start) == _once(1)


def test_one_batch_holding_both_spans_and_a_retried_one(engine: sa.Engine, write: Writer) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    calls = [_call(start + i * 1_000_000_000) for i in range(3)]
    write([s for c in calls for s in (c.gateway, c.client, c.app)])
    write([calls[0].client, calls[1].gateway])  # an exporter retrying: stored already
    assert _totals(engine, start) == _once(3)


def test_siblings_under_the_app_span_are_linked(engine: sa.Engine, write: Writer) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start, client_parent_of_gateway=False)
    write([call.gateway])
    write([call.client, call.app])
    assert _totals(engine, start) == _once(1)


def test_gateway_traffic_alone_is_counted_as_before(engine: sa.Engine, write: Writer) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    call.gateway.parent_span_id = None  # no traceparent: a trace of its own
    call.gateway.trace_id = os.urandom(16).hex()
    write([call.gateway])
    write([call.app, call.client])  # the client's own trace: nothing links the two
    totals = _totals(engine, start)
    assert totals["rolled"] == (2, 200, pytest.approx(2 * _COST))
    assert totals["raw"] == (2, 200, pytest.approx(2 * _COST))


def test_usage_and_datasets_see_the_call_once(engine: sa.Engine, write: Writer) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    write([call.client, call.app])
    write([call.gateway])
    with engine.connect() as conn:
        usage = prompt_usage(conn, 1, "summarize")
        taken = snapshot(conn, 1, TraceSelection(limit=10))
    (version,) = usage.versions
    assert (version.span_count, version.input_tokens) == (1, 100)
    assert version.cost_usd == pytest.approx(_COST)
    assert [i.metadata["source"]["span_id"] for i in taken.items] == [call.gateway.span_id]


def test_links_stay_within_a_project(engine: sa.Engine) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    writer = SpanWriter(engine)
    writer.write([(1, call.client), (1, call.app)])
    writer.write([(2, call.gateway)])  # same ids, another project: another trace
    with engine.connect() as conn:
        spans = list_spans(conn, 1, SpanFilter(trace_id=call.trace_id)).items
    assert all(s.duplicate_of is None for s in spans)


def test_a_gateway_span_replayed_from_the_spool_is_still_the_gateway_s(
    engine: sa.Engine, tmp_path: Path
) -> None:
    start = (time.time_ns() // _HOUR_NS - 2) * _HOUR_NS + 600 * 10**9
    call = _call(start)
    spool = Spool(tmp_path / "spool")
    spool.append([(1, call.gateway)])  # the database was down when the gateway wrote it
    writer = SpanWriter(engine)
    writer.write([(1, call.client), (1, call.app)])
    segment = spool.oldest()
    assert segment is not None
    with writer.transaction() as conn:
        for batch in spool.read_segment(segment):
            writer.write_in(conn, batch)  # as the pipeline replays a segment
    assert _totals(engine, start) == _once(1)
