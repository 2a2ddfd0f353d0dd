"""Write failures are told apart by the database's error class: data error or outage."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from bastion.store.engine import create_engine
from bastion.store.write_errors import is_data_error, reject_reason
from tests.conftest import PgOutage


def _error_of(engine: sa.Engine, sql: str, params: dict[str, object] | None = None) -> Exception:
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), params or {})
    except Exception as exc:  # the error under test, whatever its class
        return exc
    raise AssertionError(f"{sql} with {params} did not fail")


@pytest.fixture
def table(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (a VARCHAR(3) NOT NULL, b BIGINT UNIQUE)"))
        conn.execute(sa.text("INSERT INTO t VALUES ('x', 1)"))
    return engine


def test_refused_values_are_data_errors_on_both_databases(table: sa.Engine) -> None:
    insert = "INSERT INTO t VALUES (:a, :b)"
    cases = [
        (_error_of(table, insert, {"a": None, "b": 2}), "database_data_error"),  # NOT NULL
        (_error_of(table, insert, {"a": "y", "b": 1}), "database_data_error"),  # UNIQUE
        (_error_of(table, insert, {"a": "y", "b": 2**64}), "range"),
        (_error_of(table, insert, {"a": "\ud800", "b": 3}), "encoding"),
    ]
    for error, reason in cases:
        assert is_data_error(error), error
        assert reject_reason(error, has_nul=False) == reason


def test_postgres_refusals_carry_their_reason(pg_schema_url: str) -> None:
    # PostgreSQL only: SQLite stores NUL and ignores VARCHAR lengths.
    table = create_engine(pg_schema_url)
    with table.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (a VARCHAR(3) NOT NULL, b BIGINT UNIQUE)"))
    insert = "INSERT INTO t VALUES (:a, :b)"
    nul = _error_of(table, insert, {"a": "\x00", "b": 5})
    too_long = _error_of(table, insert, {"a": "abcd", "b": 6})
    too_big = _error_of(table, "SELECT CAST(:v AS SMALLINT)", {"v": 40_000})
    assert all(is_data_error(e) for e in (nul, too_long, too_big))
    assert reject_reason(nul, has_nul=True) == "nul"
    assert reject_reason(too_long, has_nul=False) == "length"
    assert reject_reason(too_big, has_nul=False) == "range"
    table.dispose()


def test_a_statement_the_schema_does_not_match_is_not_a_data_error(table: sa.Engine) -> None:
    # A missing table fails every record alike: spool and retry, never set records aside.
    assert not is_data_error(_error_of(table, "INSERT INTO missing VALUES (1)"))


def test_an_unreachable_postgres_is_an_outage(pg_outage: PgOutage) -> None:
    engine = create_engine(pg_outage.url, connect_args={"connect_timeout": 2})
    pg_outage.down()
    with pytest.raises(sa.exc.OperationalError) as caught, engine.connect():
        pass
    assert not is_data_error(caught.value)
    engine.dispose()


def test_a_locked_sqlite_is_an_outage(tmp_path: Path) -> None:
    db = tmp_path / "bastion.db"
    engine = create_engine(f"sqlite:///{db}", sqlite_busy_timeout_ms=20)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (a TEXT)"))
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        locked = _error_of(engine, "INSERT INTO t VALUES ('x')")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert not is_data_error(locked)
    engine.dispose()
