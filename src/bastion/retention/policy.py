"""Which retention periods apply to a project, and the cut-off times they give.

``retention:`` holds the defaults of every project; ``projects.<slug>.retention`` overrides a
period for one project (``forever`` keeps that kind there whatever the default says). A
period that is unset everywhere keeps data forever: nothing is deleted unless configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bastion.settings import Settings

__all__ = ["DAY_NS", "KINDS", "Kind", "Policy", "policy_for"]

Kind = Literal["spans", "payload", "scores"]
#: The kinds of data a policy keeps for a number of days, in the order a pass applies them:
#: spans first, so that payloads of spans about to go are never rewritten.
KINDS: tuple[Kind, ...] = ("spans", "payload", "scores")
DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Policy:
    """One project's retention periods in days (None: kept forever)."""

    spans_days: int | None = None
    payload_days: int | None = None
    scores_days: int | None = None

    def days(self, kind: Kind) -> int | None:
        """The period of ``kind``."""
        if kind == "spans":
            return self.spans_days
        if kind == "payload":
            return self.payload_days
        return self.scores_days

    def cutoff_ns(self, kind: Kind, now_ns: int) -> int | None:
        """Data of ``kind`` older than this (Unix ns) is past its period; None: kept forever."""
        days = self.days(kind)
        return None if days is None else now_ns - days * DAY_NS

    @property
    def keeps_everything(self) -> bool:
        return all(self.days(kind) is None for kind in KINDS)

    def describe(self) -> dict[str, int | None]:
        """The periods by kind, as JSON-ready data."""
        return {kind: self.days(kind) for kind in KINDS}


def _resolve(project: int | Literal["forever"] | None, default: int | None) -> int | None:
    if project == "forever":
        return None
    return default if project is None else project


def policy_for(settings: Settings, slug: str) -> Policy:
    """The policy of project ``slug``: its own periods over the defaults of ``retention:``."""
    defaults = settings.retention
    project = settings.projects.get(slug)
    if project is None:
        return Policy(defaults.spans_days, defaults.payload_days, defaults.scores_days)
    own = project.retention
    return Policy(
        spans_days=_resolve(own.spans_days, defaults.spans_days),
        payload_days=_resolve(own.payload_days, defaults.payload_days),
        scores_days=_resolve(own.scores_days, defaults.scores_days),
    )
