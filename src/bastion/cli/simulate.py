"""``bastion simulate``: the provider simulator on its own port."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

__all__ = ["simulate"]

console = Console()


def simulate(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on", min=0, max=65535)] = 9001,
    latency_ms: Annotated[
        float, typer.Option(help="mean time to the response head, in ms (0: none)")
    ] = 0.0,
    latency_jitter: Annotated[
        float, typer.Option(help="lognormal sigma of the latency (0: constant)")
    ] = 0.0,
    tokens_per_second: Annotated[
        float, typer.Option(help="output pace in tokens per second (0: unlimited)")
    ] = 0.0,
    error_rate: Annotated[
        float, typer.Option(help="probability in [0, 1] that a request gets a fault")
    ] = 0.0,
    faults: Annotated[
        str,
        typer.Option(help="faults to draw from: 429,500,503,timeout,reset,drop,garbage"),
    ] = "500,503,429",
    seed: Annotated[int, typer.Option(help="seed for content, faults and latency")] = 0,
    timeout_s: Annotated[
        float, typer.Option(help="how long a 'timeout' fault hangs, in seconds")
    ] = 30.0,
    api_key: Annotated[
        str | None, typer.Option(help="require this API key (default: accept any)")
    ] = None,
) -> None:
    """Run a fake LLM provider (OpenAI and Anthropic APIs) for tests, demos and chaos runs.

    Model names pick a variant: sim-small, sim-large or any name, plus options such as
    sim-small~quality=bad, sim-small~error_rate=0.3, sim-small~latency_ms=200~tps=50.
    """
    from bastion.providers.simulator import SimulatorConfig, SimulatorConfigError, run_simulator

    try:
        config = SimulatorConfig(
            seed=seed,
            latency_ms=latency_ms,
            latency_jitter=latency_jitter,
            tokens_per_second=tokens_per_second,
            error_rate=error_rate,
            faults=tuple(f.strip() for f in faults.split(",") if f.strip()),
            timeout_s=timeout_s,
            api_key=api_key,
        )
    except SimulatorConfigError as exc:
        option = "--" + exc.field.replace("_", "-")
        raise typer.BadParameter(str(exc).split(": ", 1)[-1], param_hint=option) from exc

    def ready(url: str) -> None:
        console.print(
            f"bastion simulator on [bold]{url}[/bold] (OpenAI {url}/v1, Anthropic {url}); "
            "Ctrl-C to stop",
            highlight=False,
            soft_wrap=True,
        )

    try:
        run_simulator(config, host, port, ready=ready)
    except OSError as exc:
        console.print(f"[red]cannot listen on {host}:{port}:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
