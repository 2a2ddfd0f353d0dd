"""The dashboards' side panels: top spenders, budget usage, the response cache and breakers.

Top spenders and budget usage read the roll-ups (:func:`metrics_summary` by user, feature or
tenant). The cache outcome of a call is an attribute of its gateway span, which no roll-up
keeps: :func:`cache_usage` reads the gateway's spans of a bounded range (at most
:data:`CACHE_MAX_RANGE_S`, and :data:`CACHE_MAX_SPANS` of them). Breakers are the gateway's
live state, in memory of the process serving the gateway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from bastion.gateway.breaker import Breakers
from bastion.gateway.limits_config import BudgetRule, LimitsConfig, period_bounds
from bastion.store.schema import spans
from bastion.tracing.attributes import CACHE_SAVED_USD, CACHE_STATUS
from bastion.ui.rollup_totals import rollup_totals

__all__ = [
    "CACHE_MAX_RANGE_S",
    "BreakerRow",
    "BudgetUsage",
    "CacheUsage",
    "Spender",
    "breaker_rows",
    "budget_usage",
    "cache_usage",
    "top_spenders",
]

CACHE_MAX_RANGE_S = 7 * 86_400
CACHE_MAX_SPANS = 100_000
TOP_N = 10
_NS = 1_000_000_000
_SCOPE_DIMENSIONS: dict[str, str | None] = {
    "project": None,
    "feature": "feature",
    "user": "user",
    "tenant": "tenant",
}


@dataclass(frozen=True, slots=True)
class Spender:
    """One user, feature or tenant among the largest spenders of the range."""

    value: str | None
    cost_usd: float
    requests: int
    tokens: int
    errors: int


def top_spenders(
    conn: sa.Connection, project_id: int, dimension: str, start_s: int, end_s: int
) -> list[Spender]:
    """The :data:`TOP_N` values of ``dimension`` with the largest cost, from the roll-ups."""
    totals = rollup_totals(conn, project_id, dimension, start_s, end_s)
    rows = [
        Spender(value or None, t.cost_usd, t.count, t.tokens, t.errors)
        for value, t in totals.items()
        if t.count
    ]
    rows.sort(key=lambda r: (-r.cost_usd, -r.requests, r.value or ""))
    return rows[:TOP_N]


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    """One budget rule and its usage this period by the values it counts (most used first)."""

    rule: BudgetRule
    period_start: int
    period_end: int
    usage: list[tuple[str, float]]  # (value, used in the rule's unit)
    note: str = ""

    @property
    def unit(self) -> str:
        return "tokens" if self.rule.in_tokens else "USD"


def budget_usage(
    conn: sa.Connection, project_id: int, slug: str, limits: LimitsConfig, now_s: float
) -> list[BudgetUsage]:
    """Usage of every budget rule in its current period, computed from the roll-ups as the
    gateway counts it (cost, or input plus output tokens, of the calls it counted). Rules
    scoped by key, team or shadow copy count values no roll-up keeps: they carry a note."""
    out: list[BudgetUsage] = []
    for rule in limits.budgets:
        start, end = period_bounds(rule.period, now_s)
        if rule.scope not in _SCOPE_DIMENSIONS:
            note = f"{rule.scope} budgets are counted by the gateway alone (not in the roll-ups)"
            out.append(BudgetUsage(rule, int(start), int(end), [], note))
            continue
        dimension = _SCOPE_DIMENSIONS[rule.scope] or "total"
        totals = rollup_totals(conn, project_id, dimension, int(start), math.ceil(now_s))
        usage: list[tuple[str, float]] = []
        for value, t in totals.items():
            shown = slug if dimension == "total" else value
            if not shown or (rule.match is not None and shown != rule.match):
                continue
            usage.append((shown, float(t.tokens) if rule.in_tokens else t.cost_usd))
        if rule.scope == "project" and rule.match not in (None, slug):
            usage = []
        usage.sort(key=lambda item: -item[1])
        out.append(BudgetUsage(rule, int(start), int(end), usage[:5]))
    return out


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """Response cache outcomes of the gateway's calls in a range."""

    start_s: int
    hits: int
    misses: int
    other: int  # bypassed or skipped
    saved_usd: float
    truncated: bool

    @property
    def hit_rate(self) -> float | None:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else None


def cache_usage(conn: sa.Connection, project_id: int, start_s: int, end_s: int) -> CacheUsage:
    """Hits, misses and the provider cost they saved, over at most the last 7 days of the range."""
    start_s = max(start_s, end_s - CACHE_MAX_RANGE_S)
    s = spans.c
    marker = f'%"{CACHE_STATUS}":%'
    stmt = (
        sa.select(s.attributes)
        .where(
            s.project_id == project_id,
            s.start_ns >= start_s * _NS,
            s.start_ns < end_s * _NS,
            s.request_id.is_not(None),  # the gateway's own call spans
            s.attributes.like(marker),
        )
        .limit(CACHE_MAX_SPANS + 1)
    )
    hits = misses = other = seen = 0
    saved = 0.0
    for (document,) in conn.execute(stmt):
        seen += 1
        if seen > CACHE_MAX_SPANS:
            break
        attributes = orjson.loads(document)
        status = attributes.get(CACHE_STATUS)
        if status == "hit":
            hits += 1
            value = attributes.get(CACHE_SAVED_USD)
            saved += float(value) if isinstance(value, int | float) else 0.0
        elif status == "miss":
            misses += 1
        else:
            other += 1
    return CacheUsage(start_s, hits, misses, other, saved, seen > CACHE_MAX_SPANS)


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """One deployment's circuit breaker as the gateway holds it now."""

    deployment: str
    state: str
    retry_after_s: float


def breaker_rows(breakers: Breakers | None) -> list[BreakerRow] | None:
    """Every breaker's state; None when this process does not serve the gateway."""
    if breakers is None:
        return None
    rows = []
    for label in breakers.labels():
        breaker = breakers.get(label)
        if breaker is not None:
            rows.append(BreakerRow(label, breaker.state, round(breaker.retry_after_s(), 1)))
    return rows
