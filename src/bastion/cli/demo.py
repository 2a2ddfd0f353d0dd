"""``bastion demo``: start the server on the embedded database and show a trace arriving."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bastion.cli.common import ConfigOption, load

console = Console()


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
) -> None:
    """Start Bastion with the provider simulator (SQLite, no provider keys), call a model
    through the gateway, send a multi-step trace over OTLP, and show both traced."""
    settings = load(config)
    settings.gateway.simulator = True
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_demo(settings, exit_after))


async def _demo(settings: object, exit_after: bool) -> None:
    import aiohttp
    from aiohttp import web

    from bastion.auth import create_key
    from bastion.cli.traces import render_tree
    from bastion.server.app import create_app
    from bastion.server.state import build_state
    from bastion.settings import Settings
    from bastion.tracing.demo_trace import demo_trace_request

    assert isinstance(settings, Settings)
    with console.status("opening the database (created and migrated on first start)…"):
        state = await asyncio.get_running_loop().run_in_executor(None, build_state, settings)
        with state.engine.begin() as conn:
            key = create_key(conn, "default", name="demo").secret
        state.keys.reload()
    port = _free_port(settings.host, settings.port)
    app = create_app(settings, state=state)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, settings.host, port).start()
    base = f"http://{settings.host}:{port}"
    console.print(
        f"[green]✓[/green] bastion serving on {base}  (database: {settings.resolved_database_url})"
    )
    headers = {"Authorization": f"Bearer {key}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            body, trace_id = demo_trace_request()
            with console.status("sending a 5-span trace over OTLP/HTTP (protobuf)…"):
                async with http.post(
                    f"{base}/v1/traces",
                    data=body,
                    headers={"Content-Type": "application/x-protobuf"},
                ) as response:
                    response.raise_for_status()
            console.print(
                f"[green]✓[/green] trace {trace_id} acknowledged (durable once acknowledged)"
            )
            async with http.get(f"{base}/api/v1/traces/{trace_id}") as response:
                response.raise_for_status()
                tree = await response.json()
            console.print(render_tree(tree))
            await _gateway_calls(http, base)
            async with http.get(
                f"{base}/api/v1/metrics/summary", params={"group_by": "model"}
            ) as response:
                response.raise_for_status()
                summary = await response.json()
        table = Table(
            "model",
            "calls",
            "p50 ms",
            "p95 ms",
            "tokens in/out",
            "cost",
            title="last 24 h by model",
        )
        for group in summary["groups"]:
            table.add_row(
                group["keys"].get("model") or "?",
                str(group["count"]),
                f"{group['p50_latency_ms'] or 0:.0f}",
                f"{group['p95_latency_ms'] or 0:.0f}",
                f"{group['input_tokens']}/{group['output_tokens']}",
                f"${group['cost_usd']:.5f}"
                + (" (+unknown)" if group["cost_unknown_count"] else ""),
            )
        console.print(table)
        console.print(
            "\nCall models through the gateway (OpenAI or Anthropic SDK, no provider keys):\n"
            f'  OpenAI(base_url="{base}/v1", api_key="{key}")  model="sim-small" or "sim-large"\n'
            f'  Anthropic(base_url="{base}", api_key="{key}")\n'
            "Point any OpenTelemetry exporter at it:\n"
            f"  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT={base}/v1/traces\n"
            f'  OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer {key}"\n'
            f"Read traces:  bastion traces list --url {base} --key {key}\n"
        )
        if not exit_after:
            console.print("[dim]serving until Ctrl-C[/dim]")
            await asyncio.Event().wait()
    finally:
        await runner.cleanup()


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
