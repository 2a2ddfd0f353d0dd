"""What a retention pass did (or, dry, would do), per project and kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bastion.retention.policy import Kind

__all__ = ["KindResult", "PassReport", "Progress"]

#: Called as rows go: (project slug, kind, rows of that kind done so far in this pass).
Progress = Callable[[str, Kind, int], None]


@dataclass(slots=True)
class KindResult:
    """What a pass did (or, dry, would do) to one kind of one project's data."""

    project: str
    kind: Kind
    days: int
    cutoff_ns: int  # data older than this (Unix ns) has expired
    rows: int = 0  # spans deleted, payloads dropped, or per-item results deleted
    details: dict[str, int] = field(default_factory=dict)

    @property
    def cutoff(self) -> datetime:
        return datetime.fromtimestamp(self.cutoff_ns / 1e9, UTC)

    def to_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "kind": self.kind,
            "days": self.days,
            "cutoff": self.cutoff.isoformat(),
            "rows": self.rows,
            **self.details,
        }


@dataclass(slots=True)
class PassReport:
    """One pass over every project (or one), kind by kind."""

    dry_run: bool
    results: list[KindResult] = field(default_factory=list)
    transactions: int = 0
    busy_s: float = 0.0
    seconds: float = 0.0
    stopped: bool = False  # asked to stop before it was done

    def total(self, kind: Kind) -> int:
        return sum(r.rows for r in self.results if r.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "results": [r.to_dict() for r in self.results],
            "transactions": self.transactions,
            "busy_s": round(self.busy_s, 3),
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
        }
