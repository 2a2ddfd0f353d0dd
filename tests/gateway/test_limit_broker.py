"""The host's ledger of ``serve --workers N``: a real Unix socket and broker thread, clients
from two event loops (as two workers), atomic admission, warnings, bad frames and a lost
ledger."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bastion.gateway.limit_broker import BrokerLimitStore, LimitBroker
from bastion.gateway.limit_store import BudgetCheck, BudgetCommit, MemoryLimitStore, RateCheck
from bastion.gateway.shared_state import SharedState

NOW = 1_800_000_000.0


@pytest.fixture
def broker() -> Iterator[LimitBroker]:
    ledger = LimitBroker(MemoryLimitStore())
    ledger.start()
    try:
        yield ledger
    finally:
        ledger.stop()


def _worker(path: str, n: int, out: list[bool], checks: tuple[RateCheck, BudgetCheck]) -> None:
    """A worker: its own event loop and connection, ``n`` admissions at once."""

    async def main() -> None:
        store = BrokerLimitStore(path, timeout_s=10)
        try:
            verdicts = await asyncio.gather(
                *(store.admit([checks[0]], [checks[1]], NOW) for _ in range(n))
            )
            out.extend(v.ok for v in verdicts)
        finally:
            await store.aclose()

    asyncio.run(main())


def test_two_workers_admit_exactly_the_limit(broker: LimitBroker) -> None:
    rate = RateCheck("0:7", rpm=100, tpm=None, tokens=0)
    budget = BudgetCheck("1:0:acme", limit=1000.0, reserve=1.0, ttl_s=3600)
    results: list[list[bool]] = [[], []]
    threads = [
        threading.Thread(target=_worker, args=(broker.path, 150, results[i], (rate, budget)))
        for i in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    admitted = sum(results[0]) + sum(results[1])
    assert len(results[0]) + len(results[1]) == 300
    assert admitted == 100  # one counter for both workers
    assert broker.store.rate("0:7", int(NOW // 60)) == (100, 0)
    assert broker.store.budget(budget.key) == (0.0, 100.0)  # every admitted one reserved


def test_budget_settles_and_warns_once_through_the_ledger(broker: LimitBroker) -> None:
    budget = BudgetCheck("0:0:acme", limit=1.0, reserve=0.4, ttl_s=3600)

    async def main() -> None:
        one, two = BrokerLimitStore(broker.path), BrokerLimitStore(broker.path)
        try:
            assert (await one.admit([], [budget], NOW)).ok
            assert (await two.admit([], [budget], NOW)).ok
            commit = BudgetCommit(budget.key, 1.0, 0.4, 0.3, 3600)
            first = await one.commit([commit], [])
            second = await two.commit([commit], [])
            assert [w.threshold for w in first] == []
            assert [w.threshold for w in second] == [0.5]  # $0.60: crossed once, by one worker
            verdict = await one.admit([], [BudgetCheck(budget.key, 0.6, 0.1, 3600)], NOW)
            assert not verdict.ok
            assert verdict.spent == (pytest.approx(0.6),)
        finally:
            await one.aclose()
            await two.aclose()

    asyncio.run(main())


def test_only_this_user_can_reach_the_ledger_and_bad_frames_are_dropped(
    broker: LimitBroker,
) -> None:
    directory = Path(broker.path).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(broker.path).st_mode) == 0o600
    for garbage in (struct.pack("!I", 5) + b"{nope", struct.pack("!I", 1 << 30),
                    struct.pack("!I", 12) + b'["explode"]\n'):  # fmt: skip
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(broker.path)
            sock.sendall(garbage)
            assert sock.recv(64) == b""  # the broker hung up on it
    # ... and went on serving everyone else.
    rate = RateCheck("0:1", rpm=1, tpm=None, tokens=0)

    async def main() -> None:
        store = BrokerLimitStore(broker.path)
        try:
            assert (await store.admit([rate], [], NOW)).ok
            assert not (await store.admit([rate], [], NOW)).ok
        finally:
            await store.aclose()

    asyncio.run(main())


def test_a_lost_ledger_degrades_to_memory(tmp_path: Path) -> None:
    ledger = LimitBroker(MemoryLimitStore())
    ledger.start()
    registry = CollectorRegistry()
    rate = RateCheck("0:1", rpm=100, tpm=None, tokens=0)

    async def main() -> None:
        shared = SharedState(None, broker_path=ledger.path, registry=registry, retry_s=0.1)
        await shared.start()
        try:
            verdict, on_ledger = await shared.admit([rate], [], NOW)
            assert verdict.ok
            assert on_ledger
            assert shared.store_name(on_ledger) == "host"
            ledger.stop()
            verdict, on_ledger = await shared.admit([rate], [], NOW)
            assert verdict.ok  # served from this process's memory
            assert not on_ledger
            assert registry.get_sample_value("bastion_gateway_shared_state_degraded") == 1
        finally:
            await shared.close()

    asyncio.run(main())
