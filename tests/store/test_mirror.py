"""The table mirror: marker-gated loads, single flight, state applied on the loop, miss refresh."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import sqlalchemy as sa

from bastion.store.mirror import TableMirror

log = logging.getLogger("tests.mirror")

rows = sa.Table(
    "mirror_rows",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(40), nullable=False),
)


class Mirrored:
    """A mirror of ``mirror_rows`` (marker: the row count) that records what it did where."""

    def __init__(self, engine: sa.Engine, *, miss_refresh_s: float = 0.5) -> None:
        self.names: list[str] = []
        self.loads = 0
        self.load_threads: set[int] = set()
        self.apply_threads: set[int] = set()
        self.gate: threading.Event | None = None
        self.mirror = TableMirror(
            engine,
            marker=self._marker,
            load=self._load,
            apply=self._apply,
            what="mirror rows",
            log=log,
            miss_refresh_s=miss_refresh_s,
        )

    @staticmethod
    def _marker(conn: sa.Connection) -> int:
        return int(conn.execute(sa.select(sa.func.count()).select_from(rows)).scalar_one())

    def _load(self, conn: sa.Connection, marker: int) -> list[str]:
        if self.gate is not None:
            self.gate.wait(10)
        self.loads += 1
        self.load_threads.add(threading.get_ident())
        return [r.name for r in conn.execute(sa.select(rows.c.name).order_by(rows.c.id))]

    def _apply(self, names: list[str]) -> None:
        self.apply_threads.add(threading.get_ident())
        self.names = names


def _insert(engine: sa.Engine, *names: str) -> None:
    with engine.begin() as conn:
        conn.execute(rows.insert(), [{"name": n} for n in names])


@pytest.fixture
def table(engine: sa.Engine) -> sa.Engine:
    rows.create(engine)
    return engine


def test_loads_only_when_the_marker_moves_and_applies_on_the_loop(table: sa.Engine) -> None:
    mirrored = Mirrored(table)

    async def scenario() -> None:
        assert not mirrored.mirror.loaded
        await mirrored.mirror.refresh()
        assert mirrored.mirror.loaded
        assert (mirrored.loads, mirrored.names) == (1, [])  # an empty table is loaded once
        await mirrored.mirror.refresh()
        assert mirrored.loads == 1  # marker unchanged: no reload
        _insert(table, "a", "b")
        await mirrored.mirror.refresh()
        assert (mirrored.loads, mirrored.names) == (2, ["a", "b"])
        assert mirrored.apply_threads == {threading.get_ident()}
        assert threading.get_ident() not in mirrored.load_threads
        await mirrored.mirror.work.drain()

    asyncio.run(scenario())


def test_concurrent_refreshes_share_one_load(table: sa.Engine) -> None:
    mirrored = Mirrored(table)
    _insert(table, "a")

    async def scenario() -> None:
        mirrored.gate = threading.Event()
        first = asyncio.create_task(mirrored.mirror.refresh())
        await asyncio.sleep(0)  # the first reload is in flight, held by the gate
        assert mirrored.mirror.busy
        others = [asyncio.create_task(mirrored.mirror.refresh()) for _ in range(5)]
        await asyncio.sleep(0)
        mirrored.gate.set()
        await asyncio.gather(first, *others)
        assert (mirrored.loads, mirrored.names) == (1, ["a"])
        await mirrored.mirror.work.drain()

    asyncio.run(scenario())


def test_a_miss_refreshes_once_per_interval(table: sa.Engine) -> None:
    mirrored = Mirrored(table, miss_refresh_s=3600)

    async def scenario() -> None:
        await mirrored.mirror.refresh_on_miss()  # the first miss refreshes
        assert mirrored.names == []
        _insert(table, "a")
        await mirrored.mirror.refresh_on_miss()  # within the interval: no database trip
        assert (mirrored.loads, mirrored.names) == (1, [])
        mirrored.mirror.miss_refresh_s = 0
        await mirrored.mirror.refresh_on_miss()
        assert (mirrored.loads, mirrored.names) == (2, ["a"])
        await mirrored.mirror.work.drain()

    asyncio.run(scenario())


def test_a_failed_miss_refresh_is_logged_and_keeps_the_state(
    table: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    mirrored = Mirrored(table, miss_refresh_s=0)
    _insert(table, "a")

    async def scenario() -> None:
        await mirrored.mirror.refresh()
        rows.drop(table)  # the marker query now fails
        with caplog.at_level(logging.WARNING, logger="tests.mirror"):
            await mirrored.mirror.refresh_on_miss()
        assert mirrored.names == ["a"]
        assert "could not refresh mirror rows on a miss" in caplog.text
        with pytest.raises(sa.exc.SQLAlchemyError):
            await mirrored.mirror.refresh()
        await mirrored.mirror.work.drain()

    asyncio.run(scenario())
