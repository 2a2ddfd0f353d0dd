"""``bastion demo``: the whole loop on the embedded database with the provider simulator.

Start the server, send a trace and call models through the gateway; then push two versions of
a prompt, gate the change with evals, and roll it out as a canary on a route: a bad candidate
is rolled back by the server by itself, a good one is promoted. The steps live in
:mod:`bastion.cli.demo_loop` (prompts, evals) and :mod:`bastion.cli.demo_rollout` (releases).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import ConfigOption, audit_trail, fail, load
from bastion.cli.demo_ui import add_dashboard_sections, converse, print_ui_hint
from bastion.settings import Settings

if TYPE_CHECKING:
    from bastion.services.state import AppState

console = Console()

# The demo's pace: routes re-read and rollouts analysed several times a second, so a canary
# step is judged in seconds rather than the production default of ten.
_DEMO_RELEASES = {"refresh_s": 0.2, "analysis_interval_s": 0.5, "lease_s": 5, "controller": True}


def _free_port(host: str, preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind((host, preferred))
            return preferred
        except OSError:
            probe.bind((host, 0))
            return int(probe.getsockname()[1])


def demo(
    config: ConfigOption = None,
    exit_after: Annotated[bool, typer.Option("--exit", help="stop after the walkthrough")] = False,
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            min=1,
            max=65535,
            help="serve on this port (default: the configured one, or a free one when it is taken)",
        ),
    ] = None,
) -> None:
    """Start Bastion with the provider simulator (SQLite, no provider keys) and walk through the
    whole loop: a trace over OTLP, model calls through the gateway, prompts pushed, a change
    gated by evals, and canary rollouts, a bad one rolled back by itself."""
    settings = load(config)
    settings.gateway.simulator = True
    if port is not None:
        with socket.socket() as probe:
            try:
                probe.bind((settings.host, port))
            except OSError as exc:
                raise fail(
                    f"--port {port}: cannot listen on {settings.host}:{port}: {exc}"
                ) from exc
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_demo(settings, exit_after, port))


def _add_demo_sections(settings: Settings, simulator_url: str) -> None:
    """The release models (on their own simulator) and the demo's rollout pace."""
    from bastion.cli.demo_loop import DEMO_MODEL
    from bastion.cli.demo_rollout import demo_models

    providers, models = demo_models(simulator_url)
    sections = settings.sections
    sections["providers"] = {**(sections.get("providers") or {}), **providers}
    sections["models"] = {**(sections.get("models") or {}), **models}
    sections["releases"] = {**(sections.get("releases") or {}), **_DEMO_RELEASES}
    add_dashboard_sections(sections, DEMO_MODEL)


async def _demo(settings: Settings, exit_after: bool, port: int | None) -> None:
    from aiohttp import web

    from bastion.auth import create_key
    from bastion.auth.users import ensure_first_owner
    from bastion.providers.simulator import SimulatorConfig, SimulatorServer
    from bastion.server.app import create_app
    from bastion.services.state import build_state

    started = time.monotonic()
    # The releases' model aliases need a provider URL when the configuration is validated,
    # before the gateway's own simulator (sim-small, sim-large) starts: they get their own.
    with SimulatorServer(SimulatorConfig()) as release_simulator:
        _add_demo_sections(settings, release_simulator.url)
        with console.status("opening the database (created and migrated on first start)…"):
            state = await asyncio.get_running_loop().run_in_executor(None, build_state, settings)
            with state.engine.begin() as conn:
                key = create_key(conn, "default", name="demo").secret
                # The owner's name and password, or None: one exists.
                owner = ensure_first_owner(conn, audit=audit_trail(settings))
            state.keys.reload()
        port = port or _free_port(settings.host, settings.port)
        app = create_app(settings, state=state)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, settings.host, port).start()
        base = f"http://{settings.host}:{port}"
        console.print(
            f"[green]✓[/green] bastion serving on {base}  "
            f"(database: {settings.resolved_database_url})"
        )
        if owner is not None:
            console.print(
                f"[green]✓[/green] first owner created (the password is shown once): sign in "
                f"with POST {base}/auth/login  name={owner[0]}  password={owner[1]}",
                highlight=False,
                soft_wrap=True,
            )
        try:
            await _walkthrough(settings, state, base, key)
            console.print(f"[dim]walkthrough done in {time.monotonic() - started:.0f}s[/dim]")
            _print_hints(base, key)
            print_ui_hint(console, base, owner)
            if not exit_after:
                console.print("[dim]serving until Ctrl-C[/dim]")
                await asyncio.Event().wait()
        finally:
            await runner.cleanup()


async def _walkthrough(settings: Settings, state: AppState, base: str, key: str) -> None:
    import aiohttp

    from bastion.cli.demo_loop import gate_change, push_prompts
    from bastion.cli.demo_rollout import run_rollouts

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        console.rule("[bold]1 · Traces: OTLP in, model calls through the gateway")
        await _first_traces(http, base)
        console.rule("[bold]2 · Push prompts to the registry")
        engine, project_id = state.engine, state.default_project_id
        versions = await push_prompts(engine, project_id, settings.home, console)
        console.rule("[bold]3 · Gate the change with evals")
        gate = await gate_change(
            engine, project_id, settings, versions, gateway_url=base, api_key=key, console=console
        )
        if not gate.passed:
            console.print("[red]the gate failed, so nothing is rolled out[/red]")
            return
        await run_rollouts(http, base, versions, gate, console)


async def _first_traces(http: Any, base: str) -> None:
    """A 5-span trace over OTLP, two gateway calls, and the per-model summary."""
    from bastion.cli.traces import render_tree
    from bastion.tracing.demo_trace import demo_trace_request

    body, trace_id = demo_trace_request()
    with console.status("sending a 5-span trace over OTLP/HTTP (protobuf)…"):
        async with http.post(
            f"{base}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
        ) as response:
            response.raise_for_status()
    console.print(f"[green]✓[/green] trace {trace_id} acknowledged (durable once acknowledged)")
    async with http.get(f"{base}/api/v1/traces/{trace_id}") as response:
        response.raise_for_status()
        tree = await response.json()
    console.print(render_tree(tree))
    await _gateway_calls(http, base)
    await converse(console, http, base)
    async with http.get(f"{base}/api/v1/metrics/summary", params={"group_by": "model"}) as response:
        response.raise_for_status()
        summary = await response.json()
    table = Table(
        "model", "calls", "p50 ms", "p95 ms", "tokens in/out", "cost", title="last 24 h by model"
    )
    for group in summary["groups"]:
        table.add_row(
            group["keys"].get("model") or "?",
            str(group["count"]),
            f"{group['p50_latency_ms'] or 0:.0f}",
            f"{group['p95_latency_ms'] or 0:.0f}",
            f"{group['input_tokens']}/{group['output_tokens']}",
            f"${group['cost_usd']:.5f}" + (" (+unknown)" if group["cost_unknown_count"] else ""),
        )
    console.print(table)


def _print_hints(base: str, key: str) -> None:
    from bastion.cli.demo_rollout import DEMO_ROUTE

    console.print(
        "\nCall models through the gateway (OpenAI or Anthropic SDK, no provider keys):\n"
        f'  OpenAI(base_url="{base}/v1", api_key="{key}")  model="sim-small" or "sim-large"\n'
        f'  Anthropic(base_url="{base}", api_key="{key}")\n'
        f'  the route: model="route:{DEMO_ROUTE}", prompt={{"variables": {{"order": "7", '
        '"customer": "Ada"}}\n'
        "Point any OpenTelemetry exporter at it:\n"
        f"  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={base}/v1/traces\n"
        f'  OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer {key}"\n'
        f"Read traces:  bastion traces list --url {base} --key {key}\n"
        f"Releases:     bastion release status {DEMO_ROUTE} --url {base} --key {key}\n"
        f"              bastion release history {DEMO_ROUTE} --url {base} --key {key}\n",
        highlight=False,
    )


async def _gateway_calls(http: Any, base: str) -> None:
    """One OpenAI-format call and one streamed Anthropic-format call, then their spans."""
    from bastion.cli.traces import render_tree

    question = {"role": "user", "content": "Reply with: Rotate keys from Settings → API keys."}
    with console.status("calling sim-small through the gateway (OpenAI format)…"):
        async with http.post(
            f"{base}/v1/chat/completions",
            json={"model": "sim-small", "messages": [question]},
            headers={"x-bastion-feature": "demo", "x-bastion-user": "user-42"},
        ) as response:
            response.raise_for_status()
            completion = await response.json()
            openai_trace = response.headers["x-bastion-trace-id"]
    answer = completion["choices"][0]["message"]["content"]
    console.print(f"[green]✓[/green] sim-small answered: {answer!r}")
    with console.status("streaming sim-large through the gateway (Anthropic format)…"):
        async with http.post(
            f"{base}/v1/messages",
            json={"model": "sim-large", "max_tokens": 60, "stream": True, "messages": [question]},
            headers={"x-bastion-feature": "demo", "anthropic-version": "2023-06-01"},
        ) as response:
            response.raise_for_status()
            events = (await response.read()).count(b"event: content_block_delta")
            anthropic_trace = response.headers["x-bastion-trace-id"]
    console.print(f"[green]✓[/green] sim-large streamed {events} deltas")
    for trace_id in (openai_trace, anthropic_trace):
        for _ in range(50):  # gateway spans are written asynchronously, off the request path
            async with http.get(f"{base}/api/v1/traces/{trace_id}") as response:
                if response.status == 200:
                    console.print(render_tree(await response.json()))
                    break
            await asyncio.sleep(0.1)
