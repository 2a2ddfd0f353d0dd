"""Admission of gateway requests against rate limits and budgets, and their settlement.

:meth:`Admission.admit` runs once per request, after routing and before the cache lookup and
the upstream call: it finds the rules that apply (by project, key, team, feature, user, model),
estimates the request's tokens and maximum cost, and asks the store (memory or Redis, see
:mod:`bastion.gateway.shared_state`) to check and reserve everything in one atomic step. A
refusal is a 429 in the API's own error shape with ``Retry-After``; an exhausted budget whose
rule says ``on_exceed: {degrade_to: alias}`` serves the cheaper alias instead. Admission comes
before the cache lookup because a degraded request is cached under the alias it is served by.

:meth:`Admission.settle` runs in the handler's ``finally``: the actual cost (0 for a cache hit,
else tokens times catalog prices of the served model) and tokens replace the reservation, off the
response path.

The maximum cost is ``input estimate * input price + max output * output price`` of the most
expensive deployment in the alias's fallback chain; max output is the request's
``max_tokens`` (or ``max_completion_tokens``), else ``gateway.budget_default_max_tokens``. A
token budget reserves ``input estimate + max output`` and is charged the tokens used. A
deployment without a price is named on the span (``bastion.budget.price_unknown``) and each
dollar budget applies its ``unpriced`` policy (:func:`bastion.gateway.limit_costs.budget_charge`):
refuse the request (``block``, the default), count $0 (``allow``) or price its tokens as
another model (``estimate_from``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from bastion.auth import Principal
from bastion.catalog import Catalog
from bastion.gateway.errors import GatewayError
from bastion.gateway.limit_costs import applies, budget_charge, scope_values
from bastion.gateway.limit_store import (
    WINDOW_S,
    BudgetCheck,
    BudgetCommit,
    BudgetWarning,
    RateCheck,
    TokenCommit,
    Verdict,
)
from bastion.gateway.limits_config import BudgetRule, LimitsConfig, RateRule, period_bounds
from bastion.gateway.recording import Call
from bastion.gateway.shared_state import SharedState
from bastion.providers.config import GatewayConfig, ModelAlias, fallback_chains
from bastion.tracing.attributes import (
    ADMISSION_SHADOW,
    ADMISSION_STORE,
    BUDGET_COST_USD,
    BUDGET_DECISION,
    BUDGET_DEGRADED_FROM,
    BUDGET_DEGRADED_TO,
    BUDGET_LIMIT_PREFIX,
    BUDGET_PERIOD,
    BUDGET_PRICE_UNKNOWN,
    BUDGET_RESERVED_TOKENS,
    BUDGET_RESERVED_USD,
    BUDGET_RULE,
    BUDGET_SCOPE,
    BUDGET_SPENT_PREFIX,
    BUDGET_THRESHOLD,
    BUDGET_THRESHOLD_PERCENT,
    BUDGET_UNPRICED,
    BUDGET_VALUE,
    GATEWAY_ALIAS,
    GATEWAY_KEY_ID,
    RATELIMIT_DECISION,
    RATELIMIT_RULE,
    RATELIMIT_RULES,
)

__all__ = ["Admission", "Ticket"]

log = logging.getLogger("bastion.gateway")

_PERIOD_WORD = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(slots=True)
class Ticket:
    """What one admitted request holds until it is settled."""

    alias: ModelAlias
    shared: bool
    window: int
    project_id: int
    rates: list[RateCheck] = field(default_factory=list)
    budgets: list[BudgetCheck] = field(default_factory=list)
    rules: list[BudgetRule] = field(default_factory=list)  # the rule of each of ``budgets``
    settled: bool = False


class Admission:
    """Rate limits and budgets of the gateway (see the module docstring)."""

    def __init__(
        self,
        limits: LimitsConfig,
        config: GatewayConfig,
        catalog: Catalog | None,
        shared: SharedState,
        *,
        default_max_tokens: int = 4096,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.config = config
        self.catalog = catalog
        self.shared = shared
        self.default_max_tokens = default_max_tokens
        self.clock = clock
        self._chains = fallback_chains(config)
        shared.on_warning = self._on_warning
        self.on_event: Callable[..., None] | None = None
        # Told of budget warnings, blocks and degrades: (kind, rule, value, project id,
        # facts), for the audit log; called on the request path, so it must not block.
        self.on_decision: Callable[..., None] | None = None
        self._project_ids: dict[str, int] = {}  # slug → id, for events of project budgets
        """Told of every budget threshold crossed (the recorder keeps it as an event span)."""
        self._decisions: Counter | None = None
        self._warnings: Counter | None = None
        if registry is not None:
            self._decisions = Counter(
                "bastion_gateway_admission",
                "Gateway admission decisions (admitted, rate_limited, budget_exceeded, degraded)",
                ["outcome"],
                registry=registry,
            )
            self._warnings = Counter(
                "bastion_gateway_budget_warnings",
                "Budget thresholds crossed (once per budget and period; 1.0 = exhausted)",
                ["scope", "period", "threshold"],
                registry=registry,
            )

    # -- admission -------------------------------------------------------------------------

    async def admit(
        self,
        call: Call,
        principal: Principal,
        alias: ModelAlias,
        body: Mapping[str, Any],
    ) -> Ticket | None:
        """Check and reserve; the ticket's ``alias`` is the one to serve (a budget may have
        degraded it). Raises a 429 :class:`GatewayError` when a limit refuses the request (a
        403 when a budget cannot price it); returns None when no rule is configured."""
        if self.limits.empty:
            return None
        now = self.clock()
        values = scope_values(principal.project_slug, principal.key_id, call.attribution)
        if call.shadow_route is not None:
            # The gateway's own copy for a shadow rollout: only `shadow` rules (by route) count
            # it; the caller's limits and budgets never pay for the candidate's trial.
            values = {"shadow": call.shadow_route}
            call.attributes[ADMISSION_SHADOW] = call.shadow_route  # for a rebuild
        self._project_ids[principal.project_slug] = principal.project_id
        # The key is not a span column: kept so a restart can rebuild key-scoped counters.
        call.attributes[GATEWAY_KEY_ID] = principal.key_id
        ticket = await self._admit(call, principal, alias, body, values, now, frozenset())
        self._count("admitted")
        return ticket

    async def _admit(
        self,
        call: Call,
        principal: Principal,
        alias: ModelAlias,
        body: Mapping[str, Any],
        values: dict[str, str],
        now: float,
        forced: frozenset[int],
    ) -> Ticket:
        if "shadow" not in values:
            values = {**values, "model": alias.name}
        call.attributes[GATEWAY_ALIAS] = alias.name
        estimate = _Estimate(call, body, self.default_max_tokens)
        rate_rules: list[tuple[RateRule, str]] = []
        rates: list[RateCheck] = []
        for rule in self.limits.rate_limits:
            value = applies(rule.scope, rule.match, values, principal.project_id)
            if value is not None:
                tokens = estimate.tokens() if rule.tpm is not None else 0
                rate_rules.append((rule, value))
                rates.append(RateCheck(f"{rule.id}:{value}", rule.rpm, rule.tpm, tokens))
        budget_rules: list[tuple[BudgetRule, str]] = []
        budgets: list[BudgetCheck] = []
        for budget, value, check in self._budget_checks(
            call, principal, alias, values, estimate, now, forced
        ):
            budget_rules.append((budget, value))
            budgets.append(check)
        verdict, shared = await self.shared.admit(rates, budgets, now)
        call.attributes[ADMISSION_STORE] = self.shared.store_name(shared)
        if rates:
            call.attributes[RATELIMIT_RULES] = len(rates)
            call.attributes[RATELIMIT_DECISION] = (
                "rejected" if verdict.rate_denied is not None else "admitted"
            )
        if verdict.rate_denied is not None:
            rule, value = rate_rules[verdict.rate_denied]
            self._count("rate_limited")
            raise self._rate_error(call, rule, value, verdict, rates[verdict.rate_denied], now)
        if verdict.ok:
            if budgets:
                call.attributes.setdefault(BUDGET_DECISION, "admitted")
            rules = [rule for rule, _ in budget_rules]
            project = principal.project_id
            return Ticket(alias, shared, verdict.window, project, rates, budgets, rules)
        exceeded = [budget_rules[i] for i in verdict.exceeded]
        blocking = [(r, v) for r, v in exceeded if r.degrade_to is None]
        if blocking or forced:
            rule_b, value = (blocking or exceeded)[0]
            spent = verdict.spent[[r.id for r, _ in budget_rules].index(rule_b.id)]
            self._count("budget_exceeded")
            self._decided("block", rule_b, value, principal.project_id, {"spent": spent})
            raise self._budget_error(call, rule_b, value, spent, now)
        rule_d, value = exceeded[0]
        assert rule_d.degrade_to is not None
        target = self.config.alias(rule_d.degrade_to)
        if target is None:  # validated at load; the alias table may have been swapped since
            raise self._budget_error(call, rule_d, value, verdict.spent[0], now)
        self._count("degraded")
        self._decided(
            "degrade", rule_d, value, principal.project_id,
            {"degraded_from": alias.name, "degraded_to": target.name},
        )  # fmt: skip
        call.attributes[BUDGET_DECISION] = "degraded"
        call.attributes[BUDGET_RULE] = _describe(rule_d, value)
        call.attributes[BUDGET_DEGRADED_FROM] = alias.name
        call.attributes[BUDGET_DEGRADED_TO] = target.name
        forced_ids = frozenset(r.id for r, _ in exceeded)
        return await self._admit(call, principal, target, body, values, now, forced_ids)

    def _budget_checks(
        self,
        call: Call,
        principal: Principal,
        alias: ModelAlias,
        values: Mapping[str, str],
        estimate: _Estimate,
        now: float,
        forced: frozenset[int],
    ) -> list[tuple[BudgetRule, str, BudgetCheck]]:
        """Each budget that applies, with what it reserves (tokens, or dollars)."""
        found: list[tuple[BudgetRule, str, BudgetCheck]] = []
        chain: _ChainCost | None = None
        for budget in self.limits.budgets:
            value = applies(budget.scope, budget.match, values, principal.project_id)
            if value is None:
                continue
            if budget.in_tokens:
                reserve = float(estimate.input_tokens() + estimate.max_output())
                call.attributes[BUDGET_RESERVED_TOKENS] = reserve
            else:
                if chain is None:
                    chain = self._max_cost(call, alias, estimate, principal.project_id)
                reserve = self._usd_reserve(call, budget, value, chain, estimate, principal)
                reserved_usd = call.attributes.get(BUDGET_RESERVED_USD, 0.0)
                call.attributes[BUDGET_RESERVED_USD] = max(reserved_usd, reserve)
            start, end = period_bounds(budget.period, now)
            key = f"{budget.id}:{int(start)}:{value}"
            ttl_s = int(end - now) + 3600
            check = BudgetCheck(key, budget.limit, reserve, ttl_s, force=budget.id in forced)
            found.append((budget, value, check))
        return found

    def _max_cost(
        self, call: Call, alias: ModelAlias, estimate: _Estimate, project_id: int
    ) -> _ChainCost:
        catalog = self.catalog
        if catalog is None:
            return _ChainCost(0.0, ())
        worst = 0.0
        unknown: list[str] = []
        for member in self._chains.get(alias.name, (alias,)):
            for dep in member.deployments:
                info = catalog.lookup(dep.model, project_id=project_id)
                cost = (
                    info.cost(estimate.input_tokens(), estimate.max_output())
                    if info is not None
                    else None
                )
                if cost is None:
                    unknown.append(dep.model)
                else:
                    worst = max(worst, cost)
        if unknown:
            call.attributes[BUDGET_PRICE_UNKNOWN] = sorted(set(unknown))
        return _ChainCost(worst, tuple(sorted(set(unknown))))

    def _usd_reserve(
        self,
        call: Call,
        rule: BudgetRule,
        value: str,
        chain: _ChainCost,
        estimate: _Estimate,
        principal: Principal,
    ) -> float:
        """What a dollar budget reserves; a model it cannot price is handled by its policy."""
        if not chain.unknown or rule.unpriced == "allow":
            if chain.unknown:
                _note_policy(call, rule, "allow")
            return chain.worst
        if rule.unpriced == "estimate" and rule.estimate_from is not None:
            _note_policy(call, rule, f"estimate_from:{rule.estimate_from}")
            guess = None
            if self.catalog is not None:
                info = self.catalog.lookup(rule.estimate_from, project_id=principal.project_id)
                if info is not None:
                    guess = info.cost(estimate.input_tokens(), estimate.max_output())
            return max(chain.worst, guess or 0.0)
        _note_policy(call, rule, "block")
        self._count("budget_unpriced")
        call.attributes[BUDGET_DECISION] = "blocked"
        call.attributes[BUDGET_RULE] = _describe(rule, value)
        names = ", ".join(repr(m) for m in chain.unknown)
        raise GatewayError(
            403,
            f"budget cannot price this request: no price is known for {names}, which it may "
            f"be served by, and budgets[{rule.id}] ({rule.scope} {value!r}) refuses what it "
            "cannot count (unpriced: block); add the model under prices: in bastion.yaml, or "
            "set unpriced: allow or unpriced: {estimate_from: <model>} on the budget",
            error_class="budget_unpriced",
            code="budget_unpriced",
        )

    def unpriced_models(self) -> dict[str, list[str]]:
        """Per model without a price (any project's catalog), the aliases deploying it; empty
        when no dollar budget is configured."""
        if self.catalog is None or not any(not b.in_tokens for b in self.limits.budgets):
            return {}
        found: dict[str, list[str]] = {}
        for alias in self.config.aliases.values():
            for dep in alias.deployments:
                info = self.catalog.lookup(dep.model)
                if info is None or info.cost(1, 1) is None:
                    found.setdefault(dep.model, []).append(alias.name)
        return found

    def log_unpriced(self) -> None:
        """Warn once, at start-up, about models dollar budgets cannot price, and what each
        budget will do about them."""
        unknown = self.unpriced_models()
        if not unknown:
            return
        models = ", ".join(f"{m!r} (alias {', '.join(a)})" for m, a in sorted(unknown.items()))
        policies = ", ".join(
            f"budgets[{b.id}] "
            + ("refuses requests that may reach them" if b.unpriced == "block" else "")
            + ("counts them as $0" if b.unpriced == "allow" else "")
            + (f"prices them as {b.estimate_from!r}" if b.unpriced == "estimate" else "")
            for b in self.limits.budgets
            if not b.in_tokens
        )
        log.warning(
            "budgets: no price is known for %s; %s (set prices: in bastion.yaml, or a "
            "budget's unpriced: block | allow | {estimate_from: <model>})",
            models,
            policies,
        )

    def _rate_error(
        self,
        call: Call,
        rule: RateRule,
        value: str,
        verdict: Verdict,
        check: RateCheck,
        now: float,
    ) -> GatewayError:
        wait = max(1, math.ceil(WINDOW_S - (now % WINDOW_S)))
        requests, tokens = verdict.rate_load
        if rule.rpm is not None and requests + 1 > rule.rpm:
            what = f"{rule.rpm} requests per minute ({requests:.0f} in the last minute)"
        else:
            what = (
                f"{rule.tpm} tokens per minute (about {tokens:.0f} in the last minute, "
                f"this request needs about {check.tokens})"
            )
        where = f"rate_limits[{rule.id}]"
        call.attributes[RATELIMIT_RULE] = f"{where} {rule.scope}={value}"
        return GatewayError(
            429,
            f"rate limit exceeded: {rule.scope} {value!r} may send {what} ({where}); "
            f"retry in {wait}s",
            error_class="rate_limited",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

    def _budget_error(
        self, call: Call, rule: BudgetRule, value: str, spent: float, now: float
    ) -> GatewayError:
        _, end = period_bounds(rule.period, now)
        wait = max(1, math.ceil(end - now))
        call.attributes[BUDGET_DECISION] = "blocked"
        call.attributes[BUDGET_RULE] = _describe(rule, value)
        used = f"{spent:.0f} tokens" if rule.in_tokens else f"${spent:.4f}"
        return GatewayError(
            429,
            f"budget exceeded: {rule.scope} {value!r} has spent {used} (including "
            f"requests in flight) of its {_PERIOD_WORD[rule.period]} budget of "
            f"{rule.describe_limit()} (budgets[{rule.id}]); it resets in {wait}s",
            error_class="budget_exceeded",
            code="budget_exceeded",
            headers={"Retry-After": str(wait)},
        )

    # -- settlement ------------------------------------------------------------------------

    def settle(self, ticket: Ticket | None, call: Call) -> None:
        """Replace the reservation by the actual cost and tokens (never waits; idempotent)."""
        if ticket is None or ticket.settled:
            return
        ticket.settled = True
        budgets: list[BudgetCommit] = []
        used = 0 if call.cost_usd == 0 else _used_tokens(call)  # a cache hit uses none
        if ticket.budgets:
            priced = self._actual_cost(call, ticket.project_id)
            if priced is not None:
                call.attributes[BUDGET_COST_USD] = priced

            def estimate(model: str) -> float | None:
                return self._cost_as(model, call, ticket.project_id)

            for b, rule in zip(ticket.budgets, ticket.rules, strict=True):
                charge = budget_charge(rule, priced, used, estimate, b.reserve)
                budgets.append(BudgetCommit(b.key, b.limit, b.reserve, charge, b.ttl_s))
        tokens: list[TokenCommit] = []
        for check in ticket.rates:
            if check.tpm is not None and used != check.tokens:
                tokens.append(TokenCommit(check.key, ticket.window, used - check.tokens))
        self.shared.settle(budgets, tokens, ticket.shared)

    def _actual_cost(self, call: Call, project_id: int) -> float | None:
        """The call's cost at the served model's prices; None when no price is known."""
        if call.cost_usd is not None:
            return call.cost_usd  # known here already (a cache hit costs nothing)
        usage = call.usage
        if self.catalog is None or (usage.input_tokens is None and usage.output_tokens is None):
            return 0.0
        names = [call.served_model]
        if call.deployment:
            names.append(call.deployment.partition("/")[2])
        for name in names:
            cost = self._cost_as(name, call, project_id)
            if cost is not None:
                return cost
        call.attributes[BUDGET_PRICE_UNKNOWN] = [n for n in names if n]
        return None

    def _cost_as(self, model: str | None, call: Call, project_id: int) -> float | None:
        info = self.catalog.lookup(model, project_id=project_id) if self.catalog else None
        if info is None:
            return None
        usage = call.usage
        return info.cost(
            usage.input_tokens, usage.output_tokens, usage.cached_tokens, usage.cache_write_tokens
        )

    # -- events ----------------------------------------------------------------------------

    def _on_warning(self, warning: BudgetWarning) -> None:
        rule_id, _, value = warning.key.split(":", 2)
        rule = self.limits.budgets[int(rule_id)]
        percent = round(warning.threshold * 100)
        unit = "tokens" if rule.in_tokens else "usd"
        if self._warnings is not None:
            self._warnings.labels(rule.scope, rule.period, f"{warning.threshold:g}").inc()
        log.warning(
            "budget event=budget_threshold scope=%s value=%r period=%s threshold=%d%% "
            "spent=%.6f limit=%g unit=%s rule=budgets[%d]",
            rule.scope,
            value,
            rule.period,
            percent,
            warning.spent,
            warning.limit,
            unit,
            rule.id,
        )
        # A project's own budget is its business; the others are the operator's.
        project_id = self._project_ids.get(value) if rule.scope == "project" else None
        spent = round(warning.spent, 6)
        facts = {"threshold_percent": percent, "spent": spent, "limit": warning.limit, "unit": unit}
        self._decided("warn", rule, value, project_id, facts)
        if self.on_event is not None:
            self.on_event(
                BUDGET_THRESHOLD,
                {
                    BUDGET_SCOPE: rule.scope,
                    BUDGET_VALUE: value,
                    BUDGET_PERIOD: rule.period,
                    BUDGET_THRESHOLD_PERCENT: percent,
                    f"{BUDGET_SPENT_PREFIX}{unit}": round(warning.spent, 6),
                    f"{BUDGET_LIMIT_PREFIX}{unit}": warning.limit,
                    BUDGET_RULE: f"budgets[{rule.id}]",
                },
                project_id=project_id,
            )

    def _decided(
        self, kind: str, rule: BudgetRule, value: str, project_id: int | None, facts: Any
    ) -> None:
        if self.on_decision is not None:
            self.on_decision(kind, rule, value, project_id, facts)

    def _count(self, outcome: str) -> None:
        if self._decisions is not None:
            self._decisions.labels(outcome).inc()


class _Estimate:
    """The request's token estimate, computed at most once per call and only when a rule
    needs it (see :meth:`Call.estimated_input_tokens`)."""

    __slots__ = ("_body", "_call", "_default_max")

    def __init__(self, call: Call, body: Mapping[str, Any], default_max: int) -> None:
        self._call = call
        self._body = body
        self._default_max = default_max

    def input_tokens(self) -> int:
        return self._call.estimated_input_tokens(self._body)

    def max_output(self) -> int:
        body = self._body
        if "input" in body and "messages" not in body:
            return 0  # embeddings
        for key in ("max_tokens", "max_completion_tokens"):
            value = body.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return self._default_max

    def tokens(self) -> int:
        """Input estimate plus the output the client asked for at most (for ``tpm``)."""
        body = self._body
        asked = body.get("max_tokens") or body.get("max_completion_tokens")
        output = asked if isinstance(asked, int) and not isinstance(asked, bool) else 0
        return self.input_tokens() + max(0, output)


def _describe(rule: BudgetRule, value: str) -> str:
    limit = f"{rule.limit_tokens} tokens" if rule.in_tokens else f"${rule.limit:g}"
    return f"budgets[{rule.id}] {rule.scope}={value} {rule.period} {limit}"


def _note_policy(call: Call, rule: BudgetRule, policy: str) -> None:
    """Say on the span how each dollar budget counted a model without a price."""
    noted = call.attributes.setdefault(BUDGET_UNPRICED, [])
    entry = f"budgets[{rule.id}]={policy}"
    if entry not in noted:
        noted.append(entry)


@dataclass(frozen=True, slots=True)
class _ChainCost:
    """The dearest priced deployment's cost for a request, and the models without a price."""

    worst: float
    unknown: tuple[str, ...]


def _used_tokens(call: Call) -> int:
    usage = call.usage
    return (usage.input_tokens or 0) + (usage.output_tokens or 0)
