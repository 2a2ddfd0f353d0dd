"""Budget and rate-limit counters rebuilt from the stored spans when a server starts.

Without Redis the counters live in memory (or in the host's ledger of ``serve --workers N``),
so a restart would otherwise forget what the current day, week or month has spent. Every
request the gateway serves is a span whose columns and attributes say what admission counted
it under — project, user, feature and tenant columns, ``bastion.team``,
``bastion.gateway.key_id``, the served alias (``bastion.gateway.alias``), the cost admission
settled (``bastion.budget.cost_usd``), the tokens — so :func:`rebuild_ledger` reads the gateway's
spans of the current periods once, before the gateway admits traffic (never on the request
path), and charges each to every rule of the *current* configuration with the same functions
admission uses (:mod:`bastion.gateway.limit_costs`). A budget added since still counts the
period's earlier spend; spans older than a rule's period are not read.

Rate-limit windows are rebuilt the same way from the last two calendar minutes: requests that
passed admission (``bastion.admission.store`` set, not refused) and the tokens they used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.catalog import Catalog
from bastion.gateway.limit_costs import applies, budget_charge, scope_values
from bastion.gateway.limit_store import WINDOW_S, MemoryLimitStore, window_of
from bastion.gateway.limits_config import LimitsConfig, period_bounds
from bastion.store.schema import projects, spans
from bastion.tracing.attributes import (
    ADMISSION_SHADOW,
    ADMISSION_STORE,
    BUDGET_COST_USD,
    BUDGET_RESERVED_USD,
    CACHE_STATUS,
    GATEWAY_ALIAS,
    GATEWAY_API,
    GATEWAY_KEY_ID,
    RELEASE_SHADOW_OF,
    TEAM,
)

__all__ = ["LedgerSeed", "rebuild_ledger"]

log = logging.getLogger("bastion.gateway")

GATEWAY_SERVICE = "bastion-gateway"
_REFUSED = frozenset({"rate_limited", "budget_exceeded", "budget_unpriced"})


@dataclass
class LedgerSeed:
    """Counters to start from: per budget key (spent, limit, ttl), per rate key and minute
    (requests, tokens)."""

    budgets: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    spans: int = 0

    def apply(self, store: MemoryLimitStore) -> None:
        for key, (spent, limit, ttl_s) in self.budgets.items():
            store.seed_budget(key, spent, limit, ttl_s)
        for (key, window), (requests, tokens) in self.rates.items():
            store.seed_rate(key, window, requests, tokens)

    def describe(self) -> str:
        return f"{self.spans} span(s), {len(self.budgets)} budget(s), {len(self.rates)} window(s)"


@dataclass(frozen=True, slots=True)
class _Row:
    project_id: int
    start_s: float
    cost_usd: float | None
    input_tokens: int | None
    output_tokens: int | None
    cached_tokens: int | None
    cache_write_tokens: int | None
    attribution: dict[str, str]
    error_class: str | None
    attributes: dict[str, Any]


def rebuild_ledger(
    engine: sa.Engine, limits: LimitsConfig, catalog: Catalog | None, now: float | None = None
) -> LedgerSeed:
    """The counters the stored gateway spans imply at ``now`` (blocking: run it off the loop)."""
    seed = LedgerSeed()
    if limits.empty:
        return seed
    now = time.time() if now is None else now
    window = window_of(now)[0]
    since = (window - 1) * WINDOW_S if limits.rate_limits else now
    for rule in limits.budgets:
        since = min(since, period_bounds(rule.period, now)[0])
    started = time.perf_counter()
    with engine.connect() as conn:
        found = conn.execute(sa.select(projects.c.id, projects.c.slug))
        slugs = {int(pid): str(slug) for pid, slug in found}
        for project_id, slug in slugs.items():
            for row in _rows(conn, project_id, since, now):
                seed.spans += 1
                _charge(seed, limits, catalog, slug, row, now, window)
    log.info(
        "limits: rebuilt from stored spans in %.0f ms: %s",
        (time.perf_counter() - started) * 1000,
        seed.describe(),
    )
    return seed


def _rows(conn: sa.Connection, project_id: int, since: float, now: float) -> Iterator[_Row]:
    c = spans.c
    columns = (
        c.start_ns, c.cost_usd, c.input_tokens, c.output_tokens, c.cached_tokens,
        c.cache_write_tokens, c.user_id, c.feature, c.tenant, c.error_class, c.attributes,
    )  # fmt: skip
    query = (
        sa.select(*columns)
        .where(
            c.project_id == project_id,
            c.start_ns >= int(since * 1e9),
            c.start_ns <= int(now * 1e9),
            c.service_name == GATEWAY_SERVICE,
        )
        .execution_options(yield_per=2000)
    )
    for r in conn.execute(query):
        attributes = orjson.loads(r.attributes) if r.attributes else {}
        if not isinstance(attributes, dict) or GATEWAY_API not in attributes:
            continue  # only the gateway's own call spans (not its event spans)
        attribution = {"user_id": r.user_id, "feature": r.feature, "tenant": r.tenant,
                       "team": attributes.get(TEAM)}  # fmt: skip
        yield _Row(
            project_id, r.start_ns / 1e9, r.cost_usd, r.input_tokens, r.output_tokens,
            r.cached_tokens, r.cache_write_tokens,
            {k: str(v) for k, v in attribution.items() if v},
            r.error_class, attributes,
        )  # fmt: skip


def _charge(
    seed: LedgerSeed,
    limits: LimitsConfig,
    catalog: Catalog | None,
    slug: str,
    row: _Row,
    now: float,
    window: int,
) -> None:
    if row.error_class in _REFUSED:
        return  # refused by admission: neither counted nor charged
    attrs = row.attributes
    key_id = attrs.get(GATEWAY_KEY_ID)
    values = scope_values(slug, -1, row.attribution)
    if key_id is None:
        del values["key"]  # spans from before key ids were recorded count for no key rule
    else:
        values["key"] = str(key_id)
    shadow = attrs.get(ADMISSION_SHADOW)
    if shadow is not None:
        values = {"shadow": str(shadow)}  # a rollout's shadow copy: its `shadow` rules only
    elif RELEASE_SHADOW_OF in attrs:
        return  # a shadow copy admitted without rules: the caller's rules never count it
    hit = attrs.get(CACHE_STATUS) == "hit"
    tokens = 0 if hit else (row.input_tokens or 0) + (row.output_tokens or 0)
    _charge_budgets(seed, limits, catalog, values, row, tokens, now)
    row_window = window_of(row.start_s)[0]
    if limits.rate_limits and row_window >= window - 1 and ADMISSION_STORE in attrs:
        if "shadow" not in values:
            values["model"] = str(attrs.get(GATEWAY_ALIAS) or "")
        for rule in limits.rate_limits:
            value = applies(rule.scope, rule.match, values, row.project_id)
            if value:
                counter = seed.rates.setdefault((f"{rule.id}:{value}", row_window), [0.0, 0.0])
                counter[0] += 1
                counter[1] += tokens if rule.tpm is not None else 0


def _charge_budgets(
    seed: LedgerSeed,
    limits: LimitsConfig,
    catalog: Catalog | None,
    values: Mapping[str, str],
    row: _Row,
    tokens: int,
    now: float,
) -> None:
    attrs = row.attributes
    priced = attrs.get(BUDGET_COST_USD, row.cost_usd)
    if priced is None and not tokens:
        priced = 0.0  # no usage: nothing was spent, whatever the price

    def estimate(model: str) -> float | None:
        info = catalog.lookup(model, project_id=row.project_id) if catalog else None
        if info is None:
            return None
        return info.cost(row.input_tokens, row.output_tokens, row.cached_tokens,
                         row.cache_write_tokens)  # fmt: skip

    reserved = float(attrs.get(BUDGET_RESERVED_USD) or 0.0)
    for rule in limits.budgets:
        start, end = period_bounds(rule.period, now)
        if row.start_s < start:
            continue
        value = applies(rule.scope, rule.match, values, row.project_id)
        if value is None:
            continue
        charge = budget_charge(rule, priced, tokens, estimate, reserved)
        key = f"{rule.id}:{int(start)}:{value}"
        spent, limit, ttl_s = seed.budgets.get(key, (0.0, rule.limit, int(end - now) + 3600))
        seed.budgets[key] = (spent + charge, limit, ttl_s)
