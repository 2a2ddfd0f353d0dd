"""The traces list: filters, sortable columns, cursor pages, saved views and a latency chart.

``GET /ui/p/<project>/traces`` renders the page; an htmx request for the next page gets only
the results block, and the browser's address bar gets the page's URL, so every state can be
shared or reloaded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from aiohttp import web

from bastion.auth import Permission
from bastion.store.queries_trace_search import first_token_ms, search_traces
from bastion.store.queries_traces import TracePage
from bastion.ui.pages import Page, UiRoute, page
from bastion.ui.saved_views import SavedView, views_for
from bastion.ui.trace_params import FILTER_FIELDS, RANGES, TraceListParams, parse_params

__all__ = ["ROUTES"]

_COLUMNS = (
    # (label, sort key or None when the column cannot be sorted)
    ("Time", "time"),
    ("Name", None),
    ("Latency", "latency"),
    ("TTFT", None),
    ("Tokens", "tokens"),
    ("Cost", "cost"),
    ("Status", None),
)


def _chart(result: TracePage) -> dict[str, Any]:
    """The page's traces for the latency chart: start (Unix s) and latency (ms), oldest first."""
    points = sorted((t.start_ns / 1e9, round(t.latency_ms, 3)) for t in result.items)
    return {"x": [p[0] for p in points], "y": [p[1] for p in points]}


def _load(
    conn: sa.Connection, p: Page, params: TraceListParams
) -> tuple[TracePage, dict[str, float]]:
    result = search_traces(
        conn,
        p.project_id,
        params.to_search(datetime.now(UTC)),
        order=params.order,
        limit=params.limit,
        cursor=params.cursor,
    )
    ttft = first_token_ms(conn, p.project_id, [t.trace_id for t in result.items])
    return result, ttft


async def traces(p: Page) -> web.StreamResponse:
    params, problem = parse_params(p.request.query)
    user_id = p.viewer.session.user_id
    views: list[SavedView] = await p.read(lambda c: views_for(c, p.project_id, user_id))
    result: TracePage = TracePage(items=[])
    ttft: dict[str, float] = {}
    if problem is None:
        try:
            result, ttft = await p.read(lambda c: _load(c, p, params))
        except ValueError as exc:  # a cursor from another list or made up
            problem = str(exc)
    context: dict[str, Any] = {
        "params": params,
        "problem": problem,
        "result": result,
        "ttft": ttft,
        "chart": _chart(result),
        "columns": _COLUMNS,
        "filter_fields": FILTER_FIELDS,
        "ranges": list(RANGES),
        "views": views,
        "current": "traces",
        "can_write": p.can(Permission.VIEWS_SAVE),
    }
    status = 400 if problem else 200
    headers = p.request.headers
    fragment = headers.get("HX-Request") == "true" and "HX-History-Restore-Request" not in headers
    if fragment and not problem:
        return p.render("traces/_results.html", status, **context)
    return p.render("traces/list.html", status, **context)


ROUTES = [UiRoute("GET", "/ui/p/{project}/traces", page(traces))]
