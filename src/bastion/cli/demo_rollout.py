"""``bastion demo``, second half of the release loop: canary rollouts on a route.

Releases are created, deployed and rolled out through the server's releases API, the way the
``bastion release`` commands do it against a server; simulated users call the route through
the gateway while the server's own rollout controller analyses each step. A candidate whose
model fails half its calls is rolled back by the controller with the reason recorded; a
healthy one is then promoted through every step. The route's history tells what served when.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from rich.console import Console

from bastion.cli.demo_loop import DEMO_MODEL, GateOutcome, PromptVersions

__all__ = ["BAD_MODEL", "DEMO_ROUTE", "demo_models", "run_rollouts"]

DEMO_ROUTE = "checkout"
#: The candidate's model: the same simulated model, failing half its calls with HTTP 500.
BAD_MODEL = "demo-chat-next"
_USERS = 400  # distinct users: the canary share is decided per user, so traffic needs many
_TENANTS = ("acme", "globex", "initech")  # so the Users page has tenants to compare
_CLIENTS = 4  # concurrent simulated clients
_ENDED = {"promoted", "rolled_back", "aborted"}


def demo_models(simulator_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``providers:`` and ``models:`` entries the demo adds for its releases."""
    providers = {"demo-sim": {"type": "openai", "base_url": f"{simulator_url}/v1"}}
    models = {
        DEMO_MODEL: {"deployments": [{"provider": "demo-sim", "model": "sim-small"}]},
        BAD_MODEL: {
            "deployments": [
                {"provider": "demo-sim", "model": "sim-small~error_rate=0.5~faults=500"}
            ]
        },
    }
    return providers, models


def _tenant(n: int) -> str:
    return _TENANTS[n % len(_TENANTS)]


@dataclass
class _Traffic:
    """Simulated users calling the route until stopped; counts answers by status."""

    http: aiohttp.ClientSession
    base: str
    statuses: Counter[int] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def client(self, users: itertools.count[int]) -> None:
        while not self.stop.is_set():
            n = next(users)
            body = {
                "model": f"route:{DEMO_ROUTE}",
                "prompt": {"variables": {"order": str(1000 + n % 997), "customer": "Ada"}},
            }
            headers = {"x-bastion-user": f"user-{n % _USERS}", "x-bastion-tenant": _tenant(n)}
            try:
                async with self.http.post(
                    f"{self.base}/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                    self.statuses[response.status] += 1
            except aiohttp.ClientError:
                self.statuses[0] += 1
            await asyncio.sleep(0.02)  # steady, not flat out: the demo shares its process


async def _api(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as response:
        doc = await response.json()
        if response.status >= 400:
            message = (doc.get("error") or {}).get("message") if isinstance(doc, dict) else doc
            raise RuntimeError(f"{method} {url}: {response.status} {message}")
        return doc


def _line(rollout: dict[str, Any], statuses: Counter[int], elapsed: float) -> str:
    """One status line: step, canary weight, requests and error rate per arm."""
    steps = rollout["policy"]["steps"]
    text = (
        f"{elapsed:4.1f}s {rollout['state']:<11} step {rollout['step'] + 1}/{len(steps)} "
        f"at {rollout['weight']:>3g}%"
    )
    analysis = rollout.get("analysis")
    if analysis:
        for arm, name in (("stable", "stable"), ("candidate", "canary")):
            s = analysis[arm]
            text += f" │ {name} {s['requests']:>3} req {s['error_rate']:>5.1%} err"
    sent = sum(statuses.values())
    return text + f" │ users: {sent - statuses[200]}/{sent} failed"


async def _watch(
    http: aiohttp.ClientSession,
    base: str,
    rollout_id: str,
    traffic: _Traffic,
    console: Console,
    timeout_s: float,
) -> tuple[dict[str, Any], str | None]:
    """Follow the rollout until it ends, printing a line per change of step or state; returns
    its final state and a moment during its first step (for the history query)."""
    started = time.monotonic()
    last: tuple[str, int] | None = None
    printed = started
    during: str | None = None
    rollout: dict[str, Any] = {}
    with console.status("starting…") as status:
        while time.monotonic() - started < timeout_s:
            doc = await _api(http, "GET", f"{base}/api/v1/routes/{DEMO_ROUTE}")
            found = [r for r in doc["recent_rollouts"] if r["rollout_id"] == rollout_id]
            rollout = doc["rollout"] if doc["rollout"] is not None else found[0]
            line = _line(rollout, traffic.statuses, time.monotonic() - started)
            status.update(line)
            # a line per change, and one a second between: readable in a log file too
            now = time.monotonic()
            if (rollout["state"], rollout["step"]) != last or now - printed >= 1.0:
                last = (rollout["state"], rollout["step"])
                printed = now
                console.print(line, highlight=False)
            if during is None and rollout["state"] == "running" and rollout.get("analysis"):
                during = datetime.now(UTC).isoformat()
            if rollout["state"] in _ENDED:
                return rollout, during
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the rollout did not end within {timeout_s:.0f}s: {rollout}")


async def _rollout(
    http: aiohttp.ClientSession,
    base: str,
    candidate: str,
    policy: dict[str, Any],
    console: Console,
) -> tuple[dict[str, Any], str | None]:
    """Start a canary of ``candidate`` and drive user traffic until the controller ends it."""
    started = await _api(
        http,
        "POST",
        f"{base}/api/v1/routes/{DEMO_ROUTE}/rollout",
        json={"candidate": candidate, "strategy": "canary", **policy},
    )
    console.print(
        f"canary {started['rollout_id'][:12]} of {candidate}: steps "
        f"{'→'.join(f'{s:g}%' for s in started['policy']['steps'])}, bake "
        f"{started['policy']['bake_s']:g}s, at least {started['policy']['min_requests']} "
        f"requests per arm before a verdict"
        + (f"\n  {started['reason']}" if started["reason"] else ""),
        highlight=False,
    )
    traffic = _Traffic(http, base)
    users = itertools.count()
    clients = [asyncio.create_task(traffic.client(users)) for _ in range(_CLIENTS)]
    try:
        return await _watch(http, base, started["rollout_id"], traffic, console, timeout_s=60)
    finally:
        traffic.stop.set()
        for task in clients:
            task.cancel()
        for task in clients:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _wait_serving(http: aiohttp.ClientSession, base: str) -> None:
    """Wait until the gateway's route table (polled) serves the freshly deployed route."""
    body = {
        "model": f"route:{DEMO_ROUTE}",
        "prompt": {"variables": {"order": "1", "customer": "Ada"}},
    }
    for _ in range(100):
        async with http.post(f"{base}/v1/chat/completions", json=body) as response:
            await response.read()
            if response.status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"route {DEMO_ROUTE} is not served after its deploy")


async def run_rollouts(
    http: aiohttp.ClientSession,
    base: str,
    versions: PromptVersions,
    gate: GateOutcome,
    console: Console,
) -> dict[str, Any]:
    """Deploy the stable release, canary a bad candidate (rolled back by itself), then a good
    one (promoted); print the reasons and the route's history. Returns the bad rollout."""
    ids = await _create_releases(http, base, versions, console)
    since = datetime.now(UTC) - timedelta(seconds=1)  # this run's history, not earlier runs'
    await _deploy_stable(http, base, ids["stable"], console)
    # Both arms share this one process, so a stall on a loaded machine hits single requests of
    # either arm; real latency regressions are far larger than this floor.
    thresholds = {"latency_floor_ms": 500}
    bad, during = await _bad_canary(
        http, base, ids["bad candidate"], versions, gate, thresholds, console
    )
    await _good_canary(http, base, ids["good candidate"], thresholds, console)
    await _show_history(http, base, since, during, console)
    return bad


async def _create_releases(
    http: aiohttp.ClientSession, base: str, versions: PromptVersions, console: Console
) -> dict[str, str]:
    """The stable release and the two candidates; their ids by role."""

    def spec(version: int, model: str) -> dict[str, Any]:
        return {
            "name": DEMO_ROUTE,
            "prompts": {versions.name: version},
            "model": model,
            "params": {"max_tokens": 20},
        }

    ids = {}
    for what, version, model in (
        ("stable", versions.production, DEMO_MODEL),
        ("bad candidate", versions.change, BAD_MODEL),
        ("good candidate", versions.change, DEMO_MODEL),
    ):
        doc = await _api(
            http, "POST", f"{base}/api/v1/releases", json={"spec": spec(version, model)}
        )
        ids[what] = doc["release_id"]
        console.print(
            f"[green]✓[/green] release {doc['release_id']} ({what}): {versions.name} v{version} "
            f"on {model}",
            highlight=False,
        )
    return ids


async def _deploy_stable(
    http: aiohttp.ClientSession, base: str, release_id: str, console: Console
) -> None:
    """Deploy the stable release on the route and wait until the gateway serves it."""
    await _api(
        http,
        "POST",
        f"{base}/api/v1/routes/{DEMO_ROUTE}/deploy",
        json={"release": release_id, "reason": "the demo's stable release"},
    )
    await _wait_serving(http, base)
    console.print(f"[green]✓[/green] route [bold]{DEMO_ROUTE}[/bold] serves {release_id}")


async def _bad_canary(
    http: aiohttp.ClientSession,
    base: str,
    release_id: str,
    versions: PromptVersions,
    gate: GateOutcome,
    thresholds: dict[str, Any],
    console: Console,
) -> tuple[dict[str, Any], str | None]:
    """Canary the candidate whose model fails half its calls, gated on the eval runs, until the
    controller rolls it back; show why. Returns the rollout and a moment during it."""
    from bastion.cli.release_views import print_status

    console.rule("[bold]4 · Canary a bad candidate: watch it roll back by itself")
    console.print(
        f"The candidate passed the eval gate (v{versions.change} answers better), but its new "
        f"model deployment {BAD_MODEL} fails half its calls under live traffic."
    )
    bad, during = await _rollout(
        http,
        base,
        release_id,
        {
            "steps": [20, 50, 100],
            "bake": "3s",
            "min_requests": 20,
            "thresholds": thresholds,
            "gate": {"baseline": gate.baseline_run, "candidate": gate.candidate_run},
            "reason": f"{versions.name} v{versions.change} on {BAD_MODEL}",
        },
        console,
    )
    verdict = (
        "[bold red]rolled back automatically[/]" if bad["state"] == "rolled_back" else bad["state"]
    )
    console.print(f"→ {verdict}: {bad['reason']}", highlight=False)
    # the route's status with the ended rollout's last analysis: per-arm metrics, the breach
    status = await _api(http, "GET", f"{base}/api/v1/routes/{DEMO_ROUTE}")
    print_status({**status, "rollout": bad})
    return bad, during


async def _good_canary(
    http: aiohttp.ClientSession,
    base: str,
    release_id: str,
    thresholds: dict[str, Any],
    console: Console,
) -> None:
    """Canary the healthy candidate until the controller has promoted it step by step."""
    console.rule("[bold]5 · Canary a good candidate: promoted step by step")
    good, _ = await _rollout(
        http,
        base,
        release_id,
        {"steps": [25, 50, 100], "bake": "2s", "min_requests": 20, "thresholds": thresholds},
        console,
    )
    colour = "green" if good["state"] == "promoted" else "red"
    console.print(f"→ [bold {colour}]{good['state']}[/]: {good['reason'] or ''}", highlight=False)


async def _show_history(
    http: aiohttp.ClientSession,
    base: str,
    since: datetime,
    during: str | None,
    console: Console,
) -> None:
    """The route's history since ``since``, and what it served at ``during`` (the bad canary)."""
    from bastion.cli.release_views import print_history

    console.rule(f"[bold]6 · What was serving when: the history of route {DEMO_ROUTE}")
    history = await _api(http, "GET", f"{base}/api/v1/routes/{DEMO_ROUTE}/history")
    events = [e for e in history["items"] if datetime.fromisoformat(e["at"]) >= since]
    print_history(events, compact=True)
    if during is None:
        return
    at = await _api(
        http, "GET", f"{base}/api/v1/routes/{DEMO_ROUTE}/history", params={"at": during}
    )
    served = at["serving"]
    if served and served["candidate_release_id"]:
        console.print(
            f"at {during[11:19]} UTC (during the bad canary) {DEMO_ROUTE} served "
            f"{served['stable_release_id']} with {served['candidate_release_id']} at "
            f"{served['weight']:g}% ({served['strategy']})",
            highlight=False,
        )
