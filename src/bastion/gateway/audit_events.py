"""The audit records of the gateway's automatic decisions: circuit breaker transitions and
budget warnings, blocks and degrades.

They happen on the request path, which must not wait for the database: each is queued to the
:class:`~bastion.audit.SystemAuditWriter` (a lock and an append) and appended by its thread
moments later — at least once after the decision, not in a transaction with it (see
:mod:`bastion.audit.system` for what that guarantees).

A budget blocks or degrades every request once exhausted; only the first block (and the first
degrade) of each budget, value and period is recorded by each server process, not every
request. The budget's value
is kept as is for project, key, model, team and feature budgets; a user's or tenant's value is
personal data and is recorded as its digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from bastion.audit import AuditEvent, Scalar, SystemAuditWriter, digest, system_actor
from bastion.gateway.breaker import Transition
from bastion.gateway.limits_config import BudgetRule, period_bounds

__all__ = ["BREAKER_ACTOR", "BUDGET_ACTOR", "GatewayAudit"]

BREAKER_ACTOR = system_actor("breaker")
BUDGET_ACTOR = system_actor("budget")
_VERB = {"open": "open", "closed": "close", "half_open": "half_open"}
_PERSONAL_SCOPES = frozenset({"user", "tenant"})
_MAX_REMEMBERED = 100_000  # distinct (decision, budget, value) kept to record each once


class GatewayAudit:
    """Turns the gateway's decisions into audit events for the writer's queue."""

    def __init__(self, writer: SystemAuditWriter, clock: Callable[[], float] = time.time) -> None:
        self.writer = writer
        self.clock = clock
        self._recorded: dict[tuple[str, int, str], float] = {}  # → start of its period

    def breaker_transition(self, transition: Transition) -> None:
        """A breaker listener: record a transition made here (one learnt from another
        replica was recorded by that replica)."""
        if transition.remote:
            return
        self.writer.submit(
            AuditEvent(
                actor=BREAKER_ACTOR,
                action=f"breaker.{_VERB[transition.to_state]}",
                object_type="deployment",
                object_id=transition.deployment,
                before={"state": transition.from_state},
                after={"state": transition.to_state},
                details={"from_state": transition.from_state, "to_state": transition.to_state},
                reason=transition.reason,
            )
        )

    def budget_decision(
        self,
        kind: str,
        rule: BudgetRule,
        value: str,
        project_id: int | None,
        facts: Mapping[str, Scalar],
    ) -> None:
        """Record a budget ``warn`` (a threshold crossed: once per period already), or the
        first ``block`` or ``degrade`` of this budget and value in its period."""
        if kind != "warn" and not self._first_in_period(kind, rule, value):
            return
        shown: dict[str, Scalar] = (
            {"value_digest": digest(value)}
            if rule.scope in _PERSONAL_SCOPES
            else {"value": value[:200]}
        )
        self.writer.submit(
            AuditEvent(
                actor=BUDGET_ACTOR,
                action=f"budget.{kind}",
                object_type="budget",
                object_id=f"budgets[{rule.id}]",
                project_id=project_id,
                details={"scope": rule.scope, "period": rule.period, **shown, **facts},
            )
        )

    def _first_in_period(self, kind: str, rule: BudgetRule, value: str) -> bool:
        start, _ = period_bounds(rule.period, self.clock())
        key = (kind, rule.id, value)
        if self._recorded.get(key) == start:
            return False
        if len(self._recorded) >= _MAX_REMEMBERED:
            self._recorded.clear()  # at worst a decision is recorded once more
        self._recorded[key] = start
        return True
