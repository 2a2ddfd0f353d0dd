"""``bastion``: serve, manage keys and the database, read traces, run the demo."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from bastion.cli import (
    approvals,
    audit,
    demo,
    eval_datasets,
    eval_redteam,
    evals,
    ingest,
    keys,
    prompts,
    releases,
    replay,
    retention,
    simulate,
    traces,
    users,
)
from bastion.cli.common import ConfigOption, load
from bastion.settings import ConfigError
from bastion.version import __version__

__all__ = ["app", "main"]

app = typer.Typer(
    name="bastion",
    help="Bastion: self-hosted LLMOps (gateway, tracing, prompts, evals, releases).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys.app, name="keys")
app.add_typer(users.app, name="users")
app.add_typer(traces.app, name="traces")
app.add_typer(ingest.app, name="ingest")
app.add_typer(prompts.app, name="prompts")
app.add_typer(evals.app, name="eval")
# Every group and every command kept outside its group's module is attached here, in one place.
evals.app.add_typer(evals.dataset_app, name="dataset")
evals.dataset_app.command("from-traces")(eval_datasets.from_traces)
evals.dataset_app.command("lock")(eval_datasets.lock)
evals.dataset_app.command("show")(eval_datasets.show)
evals.app.command("redteam")(eval_redteam.redteam)
app.add_typer(releases.app, name="release")
app.add_typer(audit.app, name="audit")
app.add_typer(approvals.app, name="approvals")
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.command("demo")(demo.demo)
app.command("simulate")(simulate.simulate)
app.command("replay")(replay.replay)
app.add_typer(retention.app, name="retention")
app.command("erase")(retention.erase)

console = Console(stderr=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


HostOption = Annotated[str | None, typer.Option(help="interface to listen on")]
PortOption = Annotated[int | None, typer.Option(help="port to listen on")]
SimulatorOption = Annotated[
    bool,
    typer.Option(
        "--with-simulator",
        help="start the provider simulator and serve the models sim-small and sim-large",
    ),
]


WorkersOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=64,
        help="server processes sharing the port (default 1; use the number of cores)",
    ),
]


def _run(
    config: Path | None,
    host: str | None,
    port: int | None,
    with_simulator: bool,
    workers: int | None,
    *,
    api: bool,
    what: str,
) -> None:
    from aiohttp import web

    from bastion.server.access_log import RedactingAccessLogger
    from bastion.server.app import create_app
    from bastion.server.event_loop import new_event_loop
    from bastion.server.gc_tuning import tune_gc
    from bastion.server.malloc import limit_malloc_arenas
    from bastion.server.workers import rebalance_spool

    limit_malloc_arenas()  # before any thread allocates
    overrides: dict[str, object] = {}
    if host:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if workers is not None:
        overrides["workers"] = workers
    settings = load(config, **overrides)
    if with_simulator:
        settings.gateway.simulator = True
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    processes = "" if settings.workers == 1 else f", {settings.workers} workers"
    console.print(
        f"bastion {__version__} {what} on http://{settings.host}:{settings.port}  "
        f"(database: {_redacted(settings.resolved_database_url)}{processes})"
    )
    if settings.workers > 1:
        from bastion.server.workers import serve_workers

        raise SystemExit(serve_workers(settings, api=api))
    rebalance_spool(settings.spool_dir, 1)  # segments a former multi-worker run left
    application = create_app(settings, api=api, gateway=True)
    tune_gc(settings.gc_young_threshold)
    web.run_app(
        application,
        host=settings.host,
        port=settings.port,
        print=None,
        loop=new_event_loop(),
        access_log_class=RedactingAccessLogger,
    )


@app.command()
def serve(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    with_simulator: SimulatorOption = False,
    workers: WorkersOption = None,
) -> None:
    """Run the server: gateway, read API, OTLP receiver, health and metrics."""
    _run(config, host, port, with_simulator, workers, api=True, what="server")


@app.command()
def gateway(
    config: ConfigOption = None,
    host: HostOption = None,
    port: PortOption = None,
    with_simulator: SimulatorOption = False,
    workers: WorkersOption = None,
) -> None:
    """Run the model gateway alone (with health and metrics), e.g. as extra replicas."""
    _run(config, host, port, with_simulator, workers, api=False, what="gateway")


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Migrate the database schema up (to the latest by default)."""
    from bastion.store import migrate
    from bastion.store.engine import create_engine

    settings = load(config)
    engine = create_engine(settings.resolved_database_url)
    migrate.upgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine)}")
    engine.dispose()


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. base")],
    config: ConfigOption = None,
) -> None:
    """Migrate the database schema down to REVISION."""
    from bastion.store import migrate
    from bastion.store.engine import create_engine

    settings = load(config)
    engine = create_engine(settings.resolved_database_url)
    migrate.downgrade(engine, revision)
    console.print(f"database at revision {migrate.current_revision(engine)}")
    engine.dispose()


def main() -> None:
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise SystemExit(2) from exc


if __name__ == "__main__":
    main()
