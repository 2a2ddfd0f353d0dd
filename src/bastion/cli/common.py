"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import sqlalchemy as sa
import typer

from bastion.auth import ensure_project
from bastion.settings import Settings, load_settings
from bastion.store import migrate
from bastion.store.engine import create_engine

__all__ = ["ConfigOption", "load", "local_engine"]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="bastion.yaml (default: $BASTION_HOME/bastion.yaml)"),
]


def load(config: Path | None, **overrides: Any) -> Settings:
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
