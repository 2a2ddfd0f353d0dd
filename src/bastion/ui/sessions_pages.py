"""Sessions and users: a session read as one conversation across its traces, and the cost,
latency and errors of the application's end users and tenants.

``/ui/p/<project>/sessions`` lists the sessions of a range; ``/sessions/<id>`` reads one as a
thread (each trace's new user message and its answers, in order, each linked to its trace).
``/ui/p/<project>/users`` has a table per user and per tenant from the roll-ups, and a chart of
cost by user whose numbers are also a table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bastion.ui.dashboard_params import RANGES, DashboardParams
from bastion.ui.dashboard_series import Chart, load_series
from bastion.ui.pages import Page, UiRoute, page
from bastion.ui.rollup_totals import rollup_totals
from bastion.ui.session_queries import MAX_THREAD_TRACES, session_thread, sessions_in

__all__ = ["ROUTES"]

_NS = 1_000_000_000
_MAX_ROWS = 50


def _range(p: Page) -> tuple[str, str | None]:
    chosen = p.request.query.get("range", "7d")
    if chosen not in RANGES:
        return "7d", f"range must be one of {', '.join(RANGES)}: got {chosen!r}"
    return chosen, None


async def sessions(p: Page) -> web.StreamResponse:
    chosen, problem = _range(p)
    start = int(time.time()) - RANGES[chosen]
    rows = [] if problem else await p.read(lambda c: sessions_in(c, p.project_id, start))
    return p.render(
        "sessions/list.html",
        400 if problem else 200,
        rows=rows,
        range=chosen,
        ranges=list(RANGES),
        problem=problem,
        current="sessions",
    )


async def session(p: Page) -> web.StreamResponse:
    session_id = p.request.match_info["session_id"]
    turns, more = await p.read(lambda c: session_thread(c, p.project_id, session_id))
    if not turns:
        return p.error(404, "No such session in this project.")
    return p.render(
        "sessions/thread.html",
        session_id=session_id,
        turns=turns,
        more=more,
        limit=MAX_THREAD_TRACES,
        current="sessions",
    )


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """One user's or tenant's figures over the range."""

    value: str | None  # None: calls that did not set it
    count: int
    cost_usd: float
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    error_count: int
    error_rate: float | None


def _by(conn: Any, project_id: int, dimension: str, start_s: int, end_s: int) -> list[MetricsRow]:
    """The most costly values of ``dimension``: ranked on the roll-ups' counters, then the
    latency histograms of those alone."""
    ranked = rollup_totals(conn, project_id, dimension, start_s, end_s)
    top = sorted(
        (v for v, t in ranked.items() if t.count),
        key=lambda v: (-ranked[v].cost_usd, -ranked[v].count, v),
    )[:_MAX_ROWS]
    detail = rollup_totals(conn, project_id, dimension, start_s, end_s, values=top, latency=True)
    rows = []
    for value in top:
        t = detail.get(value, ranked[value])
        p50, p95, _ = t.latency_ms()
        rows.append(
            MetricsRow(value or None, t.count, t.cost_usd, p50, p95, t.errors, t.error_rate)
        )
    return rows


async def users(p: Page) -> web.StreamResponse:
    chosen, problem = _range(p)
    by_user: list[MetricsRow] = []
    by_tenant: list[MetricsRow] = []
    if problem is None:
        end = int(time.time())
        start = end - RANGES[chosen]
        by_user, by_tenant = await p.read(
            lambda c: (
                _by(c, p.project_id, "user", start, end),
                _by(c, p.project_id, "tenant", start, end),
            )
        )
    return p.render(
        "users/list.html",
        400 if problem else 200,
        problem=problem,
        range=chosen,
        ranges=list(RANGES),
        by_user=by_user,
        by_tenant=by_tenant,
        limit=_MAX_ROWS,
        current="users",
    )


async def users_chart(p: Page) -> web.StreamResponse:
    """The cost-by-user chart, loaded after the page (its tables do not wait for it)."""
    chosen, problem = _range(p)
    if problem:
        return p.error(400, problem)
    end = int(time.time())
    params = DashboardParams("user", chosen, "hour" if RANGES[chosen] <= 2 * 86_400 else "day")

    def load(conn: Any) -> Chart:
        series = load_series(conn, p.project_id, params, end)
        return next(c for c in series.charts(grouped=True) if c.key == "cost")

    return p.render("users/_chart.html", chart=await p.read(load))


ROUTES = [
    UiRoute("GET", "/ui/p/{project}/sessions", page(sessions)),
    UiRoute("GET", "/ui/p/{project}/sessions/{session_id}", page(session)),
    UiRoute("GET", "/ui/p/{project}/users", page(users)),
    UiRoute("GET", "/ui/p/{project}/users/chart", page(users_chart)),
]
