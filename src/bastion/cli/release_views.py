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
            _print_analysis(analysis)
    for past in doc.get("recent_rollouts") or []:
        if r is None or past["rollout_id"] != r["rollout_id"]:
            console.print(
                f"  earlier: {past['rollout_id'][:8]} {past['state']} "
                f"{past['candidate_release_id']}: {past.get('reason') or ''}"
            )


def _print_analysis(analysis: dict[str, Any]) -> None:
    """Per-arm figures (cache hits and refusals apart from the compared upstream calls), then
    each guard metric with the test that decided it."""
    arms = [analysis["stable"], analysis["candidate"]]
    # Older analyses named the tail "p99" whatever quantile they used; newer ones say which.
    lq = arms[0].get("latency_quantile", "p99")
    tq = arms[0].get("ttft_quantile", "p99")
    table = Table(
        "arm",
        "requests",
        "cache hits",
        "refused",
        "upstream",
        "errors",
        "error rate",
        f"{lq} ms",
        f"TTFT {tq} ms",
        "cost/call",
        "quality",
        title=f"analysis: {analysis['outcome']} (compared on upstream calls)",
    )
    for arm, s in zip(("stable", "candidate"), arms, strict=True):
        hits = s.get("cache_hits", 0)
        table.add_row(
            arm,
            str(s["requests"]),
            f"{hits} ({s.get('hit_rate', 0.0):.0%})",
            str(s.get("refused", 0)),
            str(s.get("upstream", s["requests"])),
            str(s["errors"]),
            f"{s['error_rate']:.1%}",
            _num(s.get("latency_ms", s.get("p99_ms"))),
            _num(s.get("ttft_ms", s.get("ttft_p99_ms"))),
            _num(s["cost_per_request"], 6),
            _num(s.get("quality"), 3),
        )
    console.print(table)
    for reason in analysis.get("reasons") or []:
        console.print(f"  - {reason}")
    for name, check in (analysis.get("checks") or {}).items():
        console.print(f"  {_check_line(name, check)}", highlight=False)


def _check_line(name: str, check: dict[str, Any]) -> str:
    """One compared metric: the figures, the test named, its one-sided p-value."""
    metric = check.get("metric", name.replace("_", " "))
    if name == "shadow_agreement":
        return (
            f"shadow agreement: mean similarity {check['mean_similarity']:.3f} "
            f"over {check['pairs']} pairs"
        )
    if "p_value" not in check:
        return f"{metric}: {check.get('status', 'skipped')} ({check.get('why', 'no data')})"
    if name == "error_rate":
        figures = f"{check['points']:+.1f} points (limit {check['limit_points']:g})"
    elif "quantile" in check:
        figures = f"{check['candidate']:.1f} vs stable {check['stable']:.1f} ms"
    else:
        figures = f"{check['candidate']:.6g} vs stable {check['stable']:.6g}"
    return (
        f"{metric}: {figures}; {check.get('test', 'two-proportion z-test (one-sided)')}: "
        f"p = {check['p_value']:.3g} -> {check.get('status', '-')}"
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
