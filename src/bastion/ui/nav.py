"""The navigation: the sections of the header, in order.

A section is served at ``/ui/p/<project>/<key>``. Until its pages exist (``ready`` False) the
UI serves a page there that says what is coming; a new section's module flips ``ready`` and
registers its routes in :mod:`bastion.ui.registry` (see docs/ui.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["NAV", "Section"]


@dataclass(frozen=True, slots=True)
class Section:
    """One entry of the navigation."""

    key: str  # the URL segment after the project
    label: str
    blurb: str  # one sentence saying what the section shows
    ready: bool = True


NAV: tuple[Section, ...] = (
    Section("traces", "Traces", "Every trace of the project: filter, sort, open one."),
    Section(
        "sessions",
        "Sessions",
        "Traces grouped by session id: a conversation or agent run read from start to end.",
    ),
    Section(
        "users",
        "Users",
        "Your application's end users (the user id on spans): their traces, cost and errors.",
    ),
    Section(
        "dashboards",
        "Dashboards",
        "Volume, latency, tokens, cost and errors over time, by model, feature and tenant.",
    ),
)
