"""No erased byte is left in SQLite's files, and no erased text answers a query on either
database (PostgreSQL keeps dead tuples until VACUUM, as documented)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bastion.retention import ErasureRequest, erase
from bastion.store import migrate
from bastion.store.engine import create_engine
from tests.retention.support import dataset_and_run, find_text, project, reject, span, trace, write

SECRET = "ZED-PRIVATE-9f2c"
USER = "zed-4c1d9e"
BIG = f"{SECRET} " * 20_000  # ~340 KB: kept in overflow pages, not in the row's own page


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'bastion.db'}")
    migrate.upgrade(engine)
    yield engine
    engine.dispose()


def seed(engine: sa.Engine) -> int:
    pid = project(engine)
    write(engine, pid, trace(days_ago=1, text=SECRET, user=USER, session="zs", child_user=USER))
    write(engine, pid, trace(days_ago=1, text=BIG, user=USER))
    write(engine, pid, trace(days_ago=1, text="someone else", user="other-user", child_user="o"))
    dataset_and_run(engine, pid, "prod")
    reject(engine, pid, span("ef" * 16, days_ago=0, text=SECRET, user=USER))
    return pid


def file_bytes(engine: sa.Engine) -> bytes:
    path = Path(str(engine.url.database))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


def test_sqlite_files_hold_no_erased_byte(sqlite_engine: sa.Engine) -> None:
    pid = seed(sqlite_engine)
    with sqlite_engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    before = file_bytes(sqlite_engine)
    assert SECRET.encode() in before
    assert USER.encode() in before

    summary = erase(sqlite_engine, ErasureRequest.of(pid, user=USER), actor="key:1")

    assert summary.traces == 2
    assert "write-ahead log truncated" in summary.storage
    after = file_bytes(sqlite_engine)
    assert SECRET.encode() not in after
    assert USER.encode() not in after
    assert b"someone else" in after  # what was not erased is still there


def test_no_erased_text_answers_a_query(engine: sa.Engine) -> None:
    pid = seed(engine)
    summary = erase(engine, ErasureRequest.of(pid, user=USER), actor="key:1")
    assert find_text(engine, SECRET) == []
    assert find_text(engine, USER) == []
    assert find_text(engine, "someone else") != []
    if engine.dialect.name == "postgresql":
        assert "dead tuples until VACUUM" in summary.storage
