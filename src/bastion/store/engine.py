"""Engines for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from bastion.store import histogram

__all__ = ["create_engine", "is_sqlite"]

_WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
# A span row is about 2 KB: a 4 KiB page (SQLite's default) holds one and leaves the rest
# empty, a 16 KiB page holds seven, which makes a write of many spans touch a third of the
# pages. Only a new database takes it; an existing file keeps the size it was created with.
_PAGE_SIZE_BYTES = 16384


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"


def _sqlite_on_connect(
    synchronous: str,
    busy_timeout_ms: int,
    cache_mib: int,
    heap_limit_mib: int,
    wal_autocheckpoint_pages: int,
) -> Any:
    def on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # WAL lets readers run beside the single writer; FULL makes a commit an fsync'd,
        # acknowledged-and-durable point, which the ingest pipeline relies on.
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA page_size={_PAGE_SIZE_BYTES}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA temp_store=MEMORY")
        # A checkpoint copies the WAL's pages into the database file and fsyncs it, inside the
        # commit that crosses the threshold. Rarer, larger checkpoints write each index page
        # once for many commits instead of once per commit; the WAL file is cut back to the
        # size limit after each one.
        cursor.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint_pages)}")
        cursor.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT_BYTES}")
        # The page cache is per connection and fills up to its size as the database grows,
        # so with a pool of connections it dominates the process's resident memory: keep each
        # one small, and cap SQLite's heap for the whole process (the limit is global).
        cursor.execute(f"PRAGMA cache_size={-1024 * int(cache_mib)}")
        cursor.execute(f"PRAGMA soft_heap_limit={1024 * 1024 * int(heap_limit_mib)}")
        cursor.close()
        dbapi_connection.create_function(
            "bastion_hist_merge", 2, histogram.merge_encoded, deterministic=True
        )

    return on_connect


def create_engine(
    url: str,
    *,
    sqlite_synchronous: str = "FULL",
    sqlite_busy_timeout_ms: int = 10_000,
    sqlite_cache_mib: int = 4,
    sqlite_heap_limit_mib: int = 32,
    sqlite_wal_autocheckpoint_pages: int = 1000,
    **kwargs: Any,
) -> sa.Engine:
    """Create an engine for ``url``, creating the SQLite file's directory when needed.

    ``sqlite_cache_mib`` is each SQLite connection's page cache and ``sqlite_heap_limit_mib``
    the soft limit on SQLite's memory in this process, page caches of all connections included.
    ``sqlite_wal_autocheckpoint_pages`` is how many WAL pages a commit leaves before it runs a
    checkpoint (SQLite's default is 1,000; the server, which writes spans, uses more).
    """
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
        engine = sa.create_engine(parsed, connect_args=connect_args, **kwargs)
        event.listen(
            engine,
            "connect",
            _sqlite_on_connect(
                sqlite_synchronous,
                sqlite_busy_timeout_ms,
                sqlite_cache_mib,
                sqlite_heap_limit_mib,
                sqlite_wal_autocheckpoint_pages,
            ),
        )
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 8)
    return sa.create_engine(parsed, **kwargs)
