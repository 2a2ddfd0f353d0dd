"""Budgets and limits by tenant and in tokens, models without a price, and counters rebuilt
from stored spans (SQLite and PostgreSQL) equal to the ones admission kept."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from bastion.auth import Principal, ensure_project
from bastion.auth.keys import Role
from bastion.catalog import Catalog
from bastion.gateway.admission import Admission, Ticket
from bastion.gateway.errors import GatewayError
from bastion.gateway.limit_costs import check_estimate_models
from bastion.gateway.limit_rebuild import rebuild_ledger
from bastion.gateway.limit_store import BudgetCommit, MemoryLimitStore, window_of
from bastion.gateway.recording import Call, TraceContext
from bastion.gateway.shared_state import SharedState
from bastion.providers.translate import Usage
from bastion.settings import ConfigError
from bastion.store.writer import SpanWriter
from tests.gateway.test_admission_units import BODY, PRICES, Harness, limits_from, settings_from

MYSTERY = {**BODY, "model": "mystery"}


def test_tenant_budget_and_rate_limit(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        """
budgets:
  - {scope: tenant, match: acme-corp, period: day, limit_usd: 0.3}
rate_limits:
  - {scope: tenant, rpm: 2}
""",
    )
    first = h.call(tenant="acme-corp")
    h.serve(h.admit(first), first, "pricey", (200, 200))  # $0.40: over the tenant's budget
    with pytest.raises(GatewayError) as caught:
        h.admit(h.call(tenant="acme-corp"))
    assert caught.value.error_class == "budget_exceeded"
    assert "tenant 'acme-corp'" in caught.value.message
    assert h.admit(h.call(tenant="globex")) is not None  # another tenant, its own limits
    assert h.admit(h.call(tenant="globex")) is not None
    with pytest.raises(GatewayError) as limited:
        h.admit(h.call(tenant="globex"))
    assert "tenant 'globex' may send 2 requests per minute" in limited.value.message
    assert h.admit(h.call()) is not None  # no tenant: neither rule applies


def test_token_budget_reserves_and_charges_tokens(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        "budgets:\n  - {scope: feature, match: search, period: day, limit_tokens: 500}\n",
    )
    call = h.call(feature="search")
    ticket = h.admit(call)
    assert ticket is not None
    estimate = call.estimated_input_tokens(BODY)
    assert call.attributes["bastion.budget.reserved_tokens"] == estimate + BODY["max_tokens"]
    key = ticket.budgets[0].key
    assert h.shared.memory.budget(key) == (0.0, estimate + BODY["max_tokens"])
    h.serve(ticket, call, "pricey", (150, 120))
    assert h.shared.memory.budget(key) == (270.0, 0.0)  # tokens used, whatever they cost
    # A cache hit uses no tokens.
    hit = h.call(feature="search")
    hit_ticket = h.admit(hit)
    hit.cost_usd = 0.0
    h.serve(hit_ticket, hit, "pricey", (150, 120))
    assert h.shared.memory.budget(key) == (270.0, 0.0)
    over = h.call(feature="search")
    h.serve(h.admit(over), over, "pricey", (200, 100))  # 570 tokens: exhausted
    with pytest.raises(GatewayError) as caught:
        h.admit(h.call(feature="search"))
    assert "has spent 570 tokens" in caught.value.message
    assert "daily budget of 500 tokens (budgets[0])" in caught.value.message


def test_unpriced_model_is_blocked_by_default_with_the_fix_named(tmp_path: Path) -> None:
    h = Harness(tmp_path, "budgets:\n  - {scope: project, period: day, limit_usd: 5}\n")
    call = h.call()
    with pytest.raises(GatewayError) as caught:
        h.admit(call, MYSTERY, alias="mystery")
    error = caught.value
    assert error.status == 403
    assert error.error_class == "budget_unpriced"
    assert "no price is known for 'unpriced-model'" in error.message
    assert "budgets[0] (project 'acme')" in error.message
    assert "prices:" in error.message
    assert "unpriced: allow" in error.message
    assert call.attributes["bastion.budget.price_unknown"] == ["unpriced-model"]
    assert call.attributes["bastion.budget.unpriced"] == ["budgets[0]=block"]
    assert h.metric("bastion_gateway_admission_total", outcome="budget_unpriced") == 1
    assert h.admit(h.call()) is not None  # priced models pass


def test_unpriced_model_estimated_from_another(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        "budgets:\n  - {scope: project, period: day, limit_usd: 0.002,\n"
        "     unpriced: {estimate_from: cheap}}\n",
    )
    call = h.call()
    ticket = h.admit(call, MYSTERY, alias="mystery")
    assert ticket is not None
    estimate = call.estimated_input_tokens(MYSTERY)
    reserved = (estimate + MYSTERY["max_tokens"]) * 1 / 1e6  # at cheap's $1/M both ways
    assert call.attributes["bastion.budget.reserved_usd"] == pytest.approx(reserved)
    assert call.attributes["bastion.budget.unpriced"] == ["budgets[0]=estimate_from:cheap"]
    h.serve(ticket, call, "unpriced-model", (1500, 600))
    assert h.shared.memory.budget(ticket.budgets[0].key) == (pytest.approx(0.0021), 0.0)
    with pytest.raises(GatewayError) as caught:  # and it trips like any other budget
        h.admit(h.call(), MYSTERY, alias="mystery")
    assert caught.value.error_class == "budget_exceeded"


def test_startup_warning_names_unpriced_models_and_policies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(
        tmp_path,
        """
budgets:
  - {scope: project, period: day, limit_usd: 5}
  - {scope: user, period: day, limit_usd: 5, unpriced: allow}
  - {scope: team, period: day, limit_usd: 5, unpriced: {estimate_from: cheap}}
  - {scope: key, period: day, limit_tokens: 5000}
""",
    )
    caplog.set_level(logging.WARNING, "bastion.gateway")
    h.admission.log_unpriced()
    [message] = [r.getMessage() for r in caplog.records]
    assert "no price is known for 'unpriced-model' (alias mystery)" in message
    assert "budgets[0] refuses requests that may reach them" in message
    assert "budgets[1] counts them as $0" in message
    assert "budgets[2] prices them as 'cheap'" in message
    assert "budgets[3]" not in message  # a token budget needs no price


def test_estimate_from_an_unpriced_model_is_a_config_error(tmp_path: Path) -> None:
    limits = (
        "budgets:\n  - {scope: user, period: day, limit_usd: 1,\n"
        "     unpriced: {estimate_from: nothing-known}}\n"
    )
    settings = settings_from(tmp_path, limits)
    config_limits, _ = limits_from(tmp_path, limits)
    with pytest.raises(ConfigError) as caught:
        check_estimate_models(settings, config_limits, Catalog.load(PRICES))
    assert ":13: budgets[0].unpriced.estimate_from: no price is known for 'nothing-known'" in str(
        caught.value
    )


# -- rebuilt from stored spans ---------------------------------------------------------------

REBUILD_LIMITS = """
budgets:
  - {scope: project, period: day, limit_usd: 100, unpriced: allow}
  - {scope: tenant, period: month, limit_usd: 100}
  - {scope: key, period: week, limit_tokens: 1000000}
  - {scope: team, match: red, period: day, limit_usd: 0.0001, on_exceed: {degrade_to: chat-cheap}}
  - {scope: user, period: day, limit_usd: 100, unpriced: {estimate_from: cheap}}
  - {scope: feature, match: strict, period: day, limit_usd: 100}
rate_limits:
  - {scope: tenant, rpm: 1000, tpm: 1000000}
  - {scope: model, rpm: 1000}
  - {scope: key, rpm: 1000}
"""


def _traffic(admission: Admission, principal: Principal) -> list[Call]:
    """A mix of requests: tenants, teams, users, a degrade, a cache hit, an unpriced model
    (estimated by one budget, refused by another), a refusal; settled like the handler does."""
    plan: list[tuple[dict[str, str], str, tuple[int, int], bool]] = [
        ({"tenant": "t1", "user_id": "ann"}, "chat", (120, 40), False),
        ({"tenant": "t1", "team": "red"}, "chat", (100, 100), False),
        ({"tenant": "t2", "team": "red"}, "chat", (80, 20), False),  # degraded to chat-cheap
        ({"tenant": "t2", "user_id": "bob"}, "chat", (60, 10), True),  # a cache hit
        ({"user_id": "ann"}, "mystery", (300, 90), False),  # unpriced: estimated / allowed
        ({"feature": "strict"}, "mystery", (0, 0), False),  # unpriced: refused
        ({"tenant": "t1", "feature": "search"}, "chat-cheap", (10, 5), False),
    ]
    calls = []
    for attribution, alias_name, (tokens_in, tokens_out), hit in plan:
        call = Call(api="openai", operation="chat", request_id=f"r{len(calls)}",
                    context=TraceContext.from_headers({}))  # fmt: skip
        call.project_id = principal.project_id
        call.attribution.update(attribution)
        call.requested_model = alias_name
        alias = admission.config.alias(alias_name)
        assert alias is not None
        ticket: Ticket | None = None
        try:
            ticket = asyncio.run(
                admission.admit(call, principal, alias, {**BODY, "model": alias_name})
            )
            assert ticket is not None
            call.served_model = ticket.alias.deployments[0].model
            call.usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
            if hit:
                call.cost_usd = 0.0
                call.attributes["bastion.cache.status"] = "hit"
        except GatewayError as exc:
            call.fail(exc.status, exc.error_class, exc.message)
        admission.settle(ticket, call)
        calls.append(call)
    return calls


def test_counters_rebuilt_from_stored_spans_equal_the_live_ones(
    tmp_path: Path, engine: sa.Engine
) -> None:
    if time.time() % 60 > 55:  # rate windows are calendar minutes: stay inside one
        time.sleep(61 - time.time() % 60)
    with engine.begin() as conn:
        project_id = ensure_project(conn, "acme")
    principal = Principal(project_id=project_id, project_slug="acme", key_id=7, role=Role.WRITE)
    limits, config = limits_from(tmp_path, REBUILD_LIMITS)
    catalog = Catalog.load(PRICES)
    shared = SharedState(None)
    admission = Admission(limits, config, catalog, shared, default_max_tokens=1000)
    calls = _traffic(admission, principal)
    assert calls[2].attributes["bastion.budget.decision"] == "degraded"
    assert calls[5].error_class == "budget_unpriced"
    SpanWriter(engine).write([(project_id, c.to_span(10_000)) for c in calls])

    seed = rebuild_ledger(engine, limits, catalog)
    rebuilt = MemoryLimitStore()
    seed.apply(rebuilt)
    live = shared.memory
    live_budgets = live.budget_ttls()
    assert len(live_budgets) == 7  # project, 2 tenants, key, team, 2 users
    assert set(seed.budgets) == set(live_budgets)
    for key in live_budgets:
        spent, reserved = live.budget(key) or (0.0, 0.0)
        assert reserved == 0
        assert (rebuilt.budget(key) or (0.0, 0.0))[0] == pytest.approx(spent, abs=1e-12), key
    window = window_of(time.time())[0]
    live_rates: dict[tuple[str, int], Any] = live._rates
    assert {k for k in live_rates if k[1] == window} == {k for k in seed.rates if k[1] == window}
    for key, counter in live_rates.items():
        assert rebuilt.rate(*key) == (counter[0], counter[1]), key


def test_a_rebuilt_budget_does_not_announce_thresholds_again() -> None:
    store = MemoryLimitStore()
    store.seed_budget("0:0:acme", 0.8, 1.0, 3600)  # 50% and 75% were announced before
    [warning] = store.commit_now([BudgetCommit("0:0:acme", 1.0, 0.0, 0.15, 3600)], [])
    assert warning.threshold == 0.9
