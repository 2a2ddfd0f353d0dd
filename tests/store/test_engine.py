"""SQLite connection settings: durable commits and bounded memory."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from bastion.store.engine import create_engine


def _pragma(engine: sa.Engine, name: str) -> object:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"PRAGMA {name}").scalar()


def test_sqlite_page_cache_and_heap_limit_are_bounded(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'b.db'}", sqlite_cache_mib=16, sqlite_heap_limit_mib=64
    )
    try:
        assert _pragma(engine, "cache_size") == -16 * 1024  # KiB when negative
        assert _pragma(engine, "soft_heap_limit") == 64 * 1024 * 1024
        assert _pragma(engine, "journal_mode") == "wal"
        assert _pragma(engine, "synchronous") == 2  # FULL: a commit is durable
    finally:
        engine.dispose()


def test_sqlite_defaults_keep_every_connection_small(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        # Each pooled connection holds its own cache; a small one keeps a pool of them
        # from growing the process by tens of MiB each as the database grows.
        assert _pragma(engine, "cache_size") == -4 * 1024
        assert _pragma(engine, "soft_heap_limit") == 32 * 1024 * 1024
    finally:
        engine.dispose()
