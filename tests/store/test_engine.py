"""SQLite connection settings: durable commits and bounded memory."""

from __future__ import annotations

import sqlite3
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


def test_wal_checkpoints_at_the_configured_size_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    engine = create_engine(f"sqlite:///{path}", sqlite_wal_autocheckpoint_pages=200)
    try:
        assert _pragma(engine, "wal_autocheckpoint") == 200
        assert _pragma(engine, "journal_size_limit") == 64 * 1024 * 1024
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE blobs (body BLOB)")
        for _ in range(40):  # 40 commits of ~400 KiB: 16 MiB through the WAL
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
                    " WHERE i < 100) INSERT INTO blobs SELECT randomblob(4000) FROM n"
                )
        wal = path.with_name("w.db-wal").stat().st_size
        page = int(_pragma(engine, "page_size"))  # type: ignore[call-overload]
        # Checkpoints kept the log near its threshold (200 pages + one commit), not 16 MiB.
        assert wal < (200 * page + 500 * 1024) * 1.1 < 16 * 1024 * 1024
        assert _pragma(engine, "wal_autocheckpoint") == 200
    finally:
        engine.dispose()


def test_a_new_database_gets_large_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
        # Span rows are ~2 KB: several fit in a 16 KiB page, one in SQLite's default 4 KiB.
        assert _pragma(engine, "page_size") == 16384
    finally:
        engine.dispose()

    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.execute("PRAGMA page_size=4096")
    con.execute("CREATE TABLE t (x)")
    con.execute("INSERT INTO t VALUES (1)")
    con.commit()
    con.close()
    engine = create_engine(f"sqlite:///{old}")
    try:
        assert _pragma(engine, "page_size") == 4096
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalar_one() == 1
        assert _pragma(engine, "journal_mode") == "wal"
    finally:
        engine.dispose()


def test_server_engine_takes_its_checkpoint_size_from_settings(tmp_path: Path) -> None:
    from bastion.services.state import build_state
    from bastion.settings import Settings

    settings = Settings(
        home=tmp_path / "home",
        ingest={"sqlite_wal_autocheckpoint_pages": 5_000},  # type: ignore[arg-type]
    )
    state = build_state(settings)
    try:
        assert _pragma(state.engine, "wal_autocheckpoint") == 5_000
    finally:
        state.close()
