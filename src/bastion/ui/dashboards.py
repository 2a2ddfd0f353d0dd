"""The dashboards: time series of the project's LLM calls, top spenders, budget usage, the
response cache and circuit breakers.

``GET /ui/p/<project>/dashboards`` answers at once with the controls and a placeholder per
panel; each panel is a fragment of its own (``/dashboards/<panel>``) that htmx loads after the
page, so a slow query holds up only its own panel. The URL holds the state (group, range,
step); every chart's numbers are also a table in a ``<details>`` under it.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from bastion.gateway.limits_config import LimitsConfig, load_limits_config
from bastion.gateway.state import GATEWAY
from bastion.services.state import STATE
from bastion.settings import ConfigError
from bastion.ui.dashboard_panels import (
    breaker_rows,
    budget_usage,
    cache_usage,
    top_spenders,
)
from bastion.ui.dashboard_params import (
    GROUPS,
    RANGES,
    RAW_GROUPS,
    STEPS,
    DashboardParams,
    parse_dashboard_params,
)
from bastion.ui.dashboard_series import TOP_SERIES, load_series
from bastion.ui.pages import Page, UiRoute, page

__all__ = ["ROUTES"]

_SPENDER_DIMENSIONS = (("user", "Users"), ("feature", "Features"), ("tenant", "Tenants"))


def _params(p: Page) -> tuple[DashboardParams, str | None]:
    return parse_dashboard_params(p.request.query)


async def dashboards(p: Page) -> web.StreamResponse:
    params, problem = _params(p)
    return p.render(
        "dashboards/page.html",
        400 if problem else 200,
        params=params,
        problem=problem,
        groups=GROUPS,
        ranges=list(RANGES),
        steps=list(STEPS),
        raw_groups=RAW_GROUPS,
        current="dashboards",
    )


async def charts(p: Page) -> web.StreamResponse:
    params, problem = _params(p)
    if problem:
        return p.error(400, problem)
    now = int(time.time())
    series = await p.read(lambda c: load_series(c, p.project_id, params, now))
    return p.render(
        "dashboards/_charts.html",
        params=params,
        series=series,
        charts=series.charts(bool(params.group)),
        top=TOP_SERIES,
        group_label=GROUPS[params.group],
    )


async def spenders(p: Page) -> web.StreamResponse:
    params, problem = _params(p)
    if problem:
        return p.error(400, problem)
    end = int(time.time())
    start = end - params.range_s

    def load(conn: Any) -> list[tuple[str, str, Any]]:
        return [
            (key, title, top_spenders(conn, p.project_id, key, start, end))
            for key, title in _SPENDER_DIMENSIONS
        ]

    tables = await p.read(load)
    return p.render("dashboards/_spenders.html", tables=tables, params=params)


def _limits(request: web.Request) -> LimitsConfig:
    gateway = request.app.get(GATEWAY)
    if gateway is not None:
        return gateway.admission.limits
    return load_limits_config(request.app[STATE].settings)


async def budgets(p: Page) -> web.StreamResponse:
    try:
        limits = _limits(p.request)
    except ConfigError as exc:
        return p.error(500, f"The budgets in bastion.yaml do not load: {exc}")
    now = time.time()
    slug = p.project.project_slug
    rows = await p.read(lambda c: budget_usage(c, p.project_id, slug, limits, now))
    return p.render("dashboards/_budgets.html", budgets=rows)


async def cache(p: Page) -> web.StreamResponse:
    params, problem = _params(p)
    if problem:
        return p.error(400, problem)
    end = int(time.time())
    usage = await p.read(lambda c: cache_usage(c, p.project_id, end - params.range_s, end))
    return p.render("dashboards/_cache.html", usage=usage, params=params)


async def breakers(p: Page) -> web.StreamResponse:
    gateway = p.request.app.get(GATEWAY)
    rows = breaker_rows(gateway.breakers if gateway is not None else None)
    return p.render("dashboards/_breakers.html", rows=rows)


_BASE = "/ui/p/{project}/dashboards"
ROUTES = [
    UiRoute("GET", _BASE, page(dashboards)),
    UiRoute("GET", f"{_BASE}/charts", page(charts)),
    UiRoute("GET", f"{_BASE}/spenders", page(spenders)),
    UiRoute("GET", f"{_BASE}/budgets", page(budgets)),
    UiRoute("GET", f"{_BASE}/cache", page(cache)),
    UiRoute("GET", f"{_BASE}/breakers", page(breakers)),
]
