"""How ``bastion release`` prints a route's status: stable release, rollout, analysis."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["print_history", "print_status"]

console = Console()


def print_status(doc: dict[str, Any]) -> None:
    """The route's stable release, its rollout with the latest per-arm analysis, and the
    rollouts before it."""
    console.print(
        f"[bold]{doc['route']}[/bold] ({doc['environment']}): stable "
        f"[bold]{doc['stable_release_id']}[/bold]"
    )
    r = doc.get("rollout")
    if r is None:
        console.print("no rollout in progress")
    else:
        console.print(
            f"rollout {r['rollout_id']} [bold]{r['state']}[/bold]: {r['strategy']} of "
            f"{r['candidate_release_id']} at {r['weight']:g}% (step {r['step'] + 1} of "
            f"{len(r['policy']['steps'])}, since {r['step_started_at'][:19]})"
        )
        if r.get("reason"):
            console.print(f"  {r['reason']}")
        analysis = r.get("analysis")
        if analysis:
            table = Table(
                "arm",
                "requests",
                "errors",
                "error rate",
                "p99 ms",
                "TTFT p99 ms",
                "cost/request",
                title=f"analysis: {analysis['outcome']}",
            )
            for arm in ("stable", "candidate"):
                s = analysis[arm]
                table.add_row(
                    arm,
                    str(s["requests"]),
                    str(s["errors"]),
                    f"{s['error_rate']:.1%}",
                    _num(s["p99_ms"]),
                    _num(s["ttft_p99_ms"]),
                    _num(s["cost_per_request"], 6),
                )
            console.print(table)
            for reason in analysis.get("reasons") or []:
                console.print(f"  - {reason}")
            significance = (analysis.get("checks") or {}).get("error_rate")
            if significance:
                console.print(
                    f"  error rate difference: {significance['points']:+.1f} points, "
                    f"one-sided p = {significance['p_value']:.3g}"
                )
    for past in doc.get("recent_rollouts") or []:
        if r is None or past["rollout_id"] != r["rollout_id"]:
            console.print(
                f"  earlier: {past['rollout_id'][:8]} {past['state']} "
                f"{past['candidate_release_id']}: {past.get('reason') or ''}"
            )


def print_history(items: list[dict[str, Any]], *, compact: bool = False) -> None:
    """A route's history events (deploys, steps, promotions, rollbacks) as a table; or,
    ``compact`` (one environment, one day), a line per event that wraps on narrow terminals."""
    if compact:
        for e in items:
            serving = f"stable {(e['stable_release_id'] or '-')[:8]}"
            if e["candidate_release_id"]:
                serving += f" + {e['candidate_release_id'][:8]} at {e['weight']:g}%"
            console.print(
                f"{e['at'][11:19]}  [bold]{e['action']:<8}[/bold] {serving:<36} "
                f"[dim]by {e['actor']}[/dim]" + (f"  {e['reason']}" if e["reason"] else ""),
                highlight=False,
            )
        return
    table = Table("at", "env", "action", "stable", "candidate", "weight", "by", "reason")
    for e in items:
        table.add_row(
            e["at"][:19],
            e["environment"],
            e["action"],
            e["stable_release_id"] or "-",
            e["candidate_release_id"] or "-",
            f"{e['weight']:g}%",
            e["actor"],
            e["reason"] or "",
        )
    console.print(table)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
