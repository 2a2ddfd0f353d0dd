"""The URL state of the dashboards: group-by, range and step, read and checked.

Model, feature, user, tenant and provider are roll-up dimensions (hourly and daily roll-ups of
the LLM spans): any range is cheap. Prompt version and release are not in the roll-ups: they
are read from the spans through the partial indexes on ``prompt_name`` and ``release_id``,
so their range is bounded (:data:`RAW_MAX_RANGE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "GROUPS",
    "RANGES",
    "RAW_GROUPS",
    "RAW_MAX_RANGE",
    "STEPS",
    "DashboardParams",
    "parse_dashboard_params",
]

# URL value -> label. "" is no grouping.
GROUPS: dict[str, str] = {
    "": "nothing (all calls)",
    "model": "model",
    "feature": "feature",
    "user": "user",
    "tenant": "tenant",
    "provider": "provider",
    "prompt": "prompt version",
    "release": "release",
}
RAW_GROUPS = frozenset({"prompt", "release"})  # not in the roll-ups: read from spans
RANGES: dict[str, int] = {"6h": 6 * 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
RAW_MAX_RANGE = "24h"
STEPS: dict[str, int] = {"hour": 3600, "day": 86_400}
_MAX_POINTS = 48  # an hourly step over more than two days is refused: use days


@dataclass(frozen=True, slots=True)
class DashboardParams:
    """What the dashboards show: grouped by ``group`` over the last ``range`` by ``step``."""

    group: str = ""
    range: str = "24h"
    step: str = "hour"

    @property
    def range_s(self) -> int:
        return RANGES[self.range]

    @property
    def step_s(self) -> int:
        return STEPS[self.step]

    def as_query(self) -> dict[str, str]:
        """The state as query parameters (group left out when empty)."""
        out = {"range": self.range, "step": self.step}
        if self.group:
            out["group"] = self.group
        return out


def parse_dashboard_params(query: Mapping[str, str]) -> tuple[DashboardParams, str | None]:
    """The parameters of ``query`` and a message naming the first bad one (None when fine);
    with a problem, the defaults stand in for the bad value."""
    group = query.get("group", "")
    range_ = query.get("range", "24h")
    step = query.get("step", "")
    problem: str | None = None
    if group not in GROUPS:
        problem = f"group must be one of {', '.join(g for g in GROUPS if g)}: got {group!r}"
        group = ""
    if range_ not in RANGES:
        problem = problem or f"range must be one of {', '.join(RANGES)}: got {range_!r}"
        range_ = "24h"
    if step == "":
        step = "hour" if RANGES[range_] <= 2 * 86_400 else "day"
    elif step not in STEPS:
        problem = problem or f"step must be hour or day: got {step!r}"
        step = "hour"
    if RANGES[range_] // STEPS[step] > _MAX_POINTS:
        problem = problem or f"an hourly step over {range_} is too many points: use step=day"
        step = "day"
    if group in RAW_GROUPS and RANGES[range_] > RANGES[RAW_MAX_RANGE]:
        problem = problem or (
            f"grouping by {GROUPS[group]} reads spans (it is not in the roll-ups):"
            f" the range is at most {RAW_MAX_RANGE}"
        )
        range_ = RAW_MAX_RANGE
    return DashboardParams(group, range_, step), problem
