"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import getpass
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import sqlalchemy as sa
import typer
from rich.console import Console

from bastion.audit import AuditChain, AuditConfigError, AuditTrail, system_actor
from bastion.auth import ensure_project
from bastion.settings import Settings, load_settings
from bastion.store import migrate
from bastion.store.engine import create_engine

__all__ = [
    "ConfigOption",
    "QuietOption",
    "actor",
    "api_call",
    "audit_trail",
    "echo_json",
    "errors",
    "fail",
    "load",
    "local_engine",
    "read_local",
    "run_local",
    "write_audited",
    "write_local",
]

_T = TypeVar("_T")

#: Where every command prints its errors (stderr, so that ``--json`` output stays clean).
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="bastion.yaml (default: $BASTION_HOME/bastion.yaml)"),
]


#: ``--quiet`` of every command that creates something: only the new thing's id is printed, on
#: stdout (messages still go to stderr), so that ``ID=$(bastion … --quiet)`` works.
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="print only the id of what was created")
]


def load(config: Path | None, **overrides: Any) -> Settings:
    """The settings from ``config`` (or the default file), with ``overrides`` on top."""
    return load_settings(config, **overrides)


@contextmanager
def local_engine(settings: Settings) -> Iterator[sa.Engine]:
    """An engine on the configured database, migrated, with the default project in place."""
    engine = create_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        with engine.begin() as conn:
            ensure_project(conn)
        yield engine
    finally:
        engine.dispose()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``message`` in red on stderr and return the exit to raise: ``raise fail(...)``."""
    errors.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def actor() -> str:
    """Who a change made from the command line is recorded as: ``<os user> (cli)``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"{user} (cli)"


def audit_trail(settings: Settings) -> AuditTrail:
    """The audit trail of changes made from the command line directly on the database: the
    actor is ``system:cli:<os user>`` (the person is known to the host, not to Bastion)."""
    try:
        chain = AuditChain.from_settings(settings.audit)
    except AuditConfigError as exc:
        raise fail(str(exc)) from exc
    try:
        user = "".join(c for c in getpass.getuser() if c.isprintable() and not c.isspace())
    except (OSError, KeyError):
        user = ""
    return AuditTrail(chain, system_actor(f"cli:{user[:100] or 'unknown'}"))


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def api_call(
    url: str,
    key: str | None,
    method: str,
    path: str,
    *,
    params: dict[str, Any] | None = None,
    body: Any = None,
) -> Any:
    """One JSON request to the server at ``url``; an HTTP or network error is printed, exit 1.

    ``params`` with a ``None`` value are left out of the query string.
    """
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(f"--url {url!r}: must start with http:// or https://")
    query = urllib.parse.urlencode({k: v for k, v in (params or {}).items() if v is not None})
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        f"{url.rstrip('/')}{path}" + (f"?{query}" if query else ""),
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {key or ''}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            detail = orjson.loads(raw or b"{}").get("error", {}).get("message", exc.reason)
        except orjson.JSONDecodeError:
            detail = raw.decode(errors="replace") or exc.reason
        raise fail(f"{exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise fail(f"cannot reach {url}: {exc.reason}") from exc


def run_local(
    config: Path | None,
    project: str,
    work: Callable[[sa.Engine, int], _T],
    *,
    create: bool = True,
    expected: tuple[type[Exception], ...] = (),
) -> _T:
    """Run ``work(engine, project_id)`` on the local store.

    ``create`` makes the project when it is missing; without it a missing project exits 1.
    An ``expected`` error (the domain's own, with a message for the user) is printed, exit 1.
    """
    from bastion.store.schema import projects

    settings = load(config)
    with local_engine(settings) as engine:
        if create:
            with engine.begin() as conn:
                project_id = ensure_project(conn, project)
        else:
            with engine.connect() as conn:
                found = conn.execute(
                    sa.select(projects.c.id).where(projects.c.slug == project)
                ).scalar()
            if found is None:
                raise fail(f"no project {project!r}")
            project_id = int(found)
        try:
            return work(engine, project_id)
        except expected as exc:
            raise fail(str(exc)) from exc


def read_local(
    config: Path | None,
    project: str,
    work: Callable[[sa.Connection, int], _T],
    *,
    create: bool = True,
    expected: tuple[type[Exception], ...] = (),
) -> _T:
    """Run ``work(conn, project_id)`` on one read connection of the local store (see
    :func:`run_local` for ``create`` and ``expected``)."""

    def run(engine: sa.Engine, project_id: int) -> _T:
        with engine.connect() as conn:
            return work(conn, project_id)

    return run_local(config, project, run, create=create, expected=expected)


def write_local(
    config: Path | None,
    project: str,
    work: Callable[[sa.Connection, int], _T],
    *,
    expected: tuple[type[Exception], ...] = (),
) -> _T:
    """Run ``work(conn, project_id)`` in one write transaction on the local store, retried
    whole on a lost race; the project is made when missing."""
    from bastion.store.transactions import run_write

    def run(engine: sa.Engine, project_id: int) -> _T:
        return run_write(engine, lambda conn: work(conn, project_id))

    return run_local(config, project, run, expected=expected)


def write_audited(
    config: Path | None,
    project: str,
    work: Callable[[sa.Connection, int, AuditTrail], _T],
    *,
    expected: tuple[type[Exception], ...] = (),
) -> _T:
    """:func:`write_local` for changes: ``work(conn, project_id, trail)`` gets the command
    line's audit trail (:func:`audit_trail`) to record them with."""
    trail = audit_trail(load(config))
    return write_local(config, project, lambda conn, pid: work(conn, pid, trail), expected=expected)
