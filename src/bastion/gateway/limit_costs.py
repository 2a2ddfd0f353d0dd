"""Which budgets and rate limits a request counts against, and what it costs each of them.

Admission (at request time) and the start-up rebuild of the counters from stored spans
(:mod:`bastion.gateway.limit_rebuild`) both go through these functions, so a restarted server
counts exactly what the previous one counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from bastion.catalog import Catalog
from bastion.gateway.limits_config import BudgetRule, LimitsConfig
from bastion.settings import ConfigError, Settings

__all__ = [
    "ATTRIBUTION_SCOPES",
    "applies",
    "budget_charge",
    "check_estimate_models",
    "scope_values",
]

ATTRIBUTION_SCOPES = (("team", "team"), ("feature", "feature"), ("user", "user_id"),
                      ("tenant", "tenant"))  # fmt: skip
"""(scope, attribution name) of the scopes a request's attribution provides."""


def scope_values(
    project_slug: str, key_id: int | None, attribution: Mapping[str, str]
) -> dict[str, str]:
    """The value of every scope a request has (``model`` is added per alias by admission); a
    caller that is not a key (a signed-in person) has no ``key`` scope."""
    values = {"project": project_slug}
    if key_id is not None:
        values["key"] = str(key_id)
    for scope, name in ATTRIBUTION_SCOPES:
        value = attribution.get(name)
        if value:
            values[scope] = value
    return values


def applies(
    scope: str, match: str | None, values: Mapping[str, str], project_id: int
) -> str | None:
    """The value a rule counts this request under, or None when the rule does not apply.

    A project rule's ``match`` may name the project by slug or by id.
    """
    value = values.get(scope)
    if value is None:
        return None
    if match is None or match == value:
        return value
    if scope == "project" and match == str(project_id):
        return value
    return None


def budget_charge(
    rule: BudgetRule,
    priced: float | None,
    tokens: int,
    estimate: Callable[[str], float | None],
    reserved: float,
) -> float:
    """What a finished request adds to ``rule``'s budget, in the budget's unit.

    ``priced`` is the request's cost at the served model's prices (None: no price known),
    ``tokens`` the input and output tokens it used, ``estimate(model)`` its cost at another
    model's prices and ``reserved`` what admission reserved for it in this budget.
    """
    if rule.in_tokens:
        return float(tokens)
    if priced is not None:
        return priced
    if rule.unpriced == "allow":
        return 0.0
    if rule.unpriced == "estimate" and rule.estimate_from is not None:
        guess = estimate(rule.estimate_from)
        if guess is not None:
            return guess
    # Admitted on prices that have since gone missing (the served model was renamed, say):
    # the whole reservation is the only figure that cannot under-count.
    return reserved


def check_estimate_models(settings: Settings, limits: LimitsConfig, catalog: Catalog) -> None:
    """Every ``unpriced: {estimate_from: model}`` must name a model with prices; raise
    :class:`ConfigError` naming the key and line otherwise."""
    for rule in limits.budgets:
        if rule.estimate_from is None:
            continue
        info = catalog.lookup(rule.estimate_from)
        if info is None or info.cost(1, 1) is None:
            key = f"budgets.{rule.id}.unpriced.estimate_from"
            raise ConfigError(
                f"{settings.where(key)}budgets[{rule.id}].unpriced.estimate_from: no price is "
                f"known for {rule.estimate_from!r}; name a priced model, or add it under prices:"
            )
