"""The rate-limit and budget counters, in memory and in a real Redis (same tests for both)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis

from bastion.gateway.limit_store import (
    BudgetCheck,
    BudgetCommit,
    LimitStore,
    MemoryLimitStore,
    RateCheck,
    RedisLimitStore,
    TokenCommit,
    window_of,
)

REDIS_URL = os.environ.get("BASTION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def connect() -> Any:
    """A client whose callers queue for a connection rather than fail when all are busy."""
    pool = aioredis.BlockingConnectionPool.from_url(REDIS_URL, max_connections=32, timeout=20)
    return aioredis.Redis.from_pool(pool)


async def drop_prefix(client: Any, prefix: str) -> None:
    """Delete only this test's keys."""
    keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)


@asynccontextmanager
async def open_store(kind: str) -> AsyncIterator[LimitStore]:
    if kind == "memory":
        yield MemoryLimitStore(clock=lambda: T0)
        return
    client = connect()
    prefix = f"bastion-test:{uuid.uuid4().hex}:"
    try:
        yield RedisLimitStore(client, prefix)
    finally:
        await drop_prefix(client, prefix)
        await client.aclose()


def run(kind: str, test: Callable[[LimitStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with open_store(kind) as store:
            await test(store)

    asyncio.run(main())


KINDS = ["memory", "redis"]


def budget(reserve: float, limit: float = 1.0, *, force: bool = False) -> BudgetCheck:
    return BudgetCheck("0:1799971200:acme", limit, reserve, ttl_s=3600, force=force)


@pytest.mark.parametrize("kind", KINDS)
def test_reserve_commit_release(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        admitted = [(await store.admit([], [budget(0.25)], T0)).ok for _ in range(5)]
        # Admitted while spent + reserved < limit: 0, .25, .5, .75 pass; at 1.0 refused.
        assert admitted == [True, True, True, True, False]
        refused = await store.admit([], [budget(0.25)], T0)
        assert refused.exceeded == (0,)
        assert refused.spent == (1.0,)
        # Two requests finish at 0.125 each: their 0.25 reservations are released.
        b = budget(0.25)
        await store.commit([BudgetCommit(b.key, 1.0, 0.25, 0.125, 3600)] * 2, [])
        again = await store.admit([], [budget(0.25)], T0)
        assert again.ok
        assert again.spent == (0.75,)  # 0.25 spent + 0.5 still reserved

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_forced_reservation_counts_without_refusing(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        assert (await store.admit([], [budget(1.5)], T0)).ok
        assert not (await store.admit([], [budget(0.5)], T0)).ok
        forced = await store.admit([], [budget(0.5, force=True)], T0)
        assert forced.ok
        assert forced.spent == (1.5,)
        assert (await store.admit([], [budget(0.5, force=True)], T0)).spent == (2.0,)

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_warnings_are_emitted_once_per_threshold(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        key = budget(0).key
        crossed: list[float] = []
        for _ in range(12):  # 12 x 0.1 = 1.2: crosses 50, 75, 90 and 100% once each
            warnings = await store.commit([BudgetCommit(key, 1.0, 0.0, 0.1, 3600)], [])
            crossed += [w.threshold for w in warnings]
        assert crossed == [0.5, 0.75, 0.9, 1.0]
        # One batch jumping over several thresholds reports each of them.
        other = "1:1799971200:acme"
        jump = await store.commit([BudgetCommit(other, 10.0, 0.0, 9.5, 3600)], [])
        assert [w.threshold for w in jump] == [0.5, 0.75, 0.9]
        assert jump[0].spent == pytest.approx(9.5)

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_requests_per_minute_sliding_window(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        check = RateCheck("0:key-1", rpm=4, tpm=None, tokens=0)
        results = [(await store.admit([check], [], T0 + 10)).ok for _ in range(5)]
        assert results == [True, True, True, True, False]
        denied = await store.admit([check], [], T0 + 59)
        assert denied.rate_denied == 0
        assert denied.rate_load == (4.0, 0.0)
        # Half way through the next minute the previous one weighs half: 4 * 0.5 = 2 used.
        mid = T0 + 60 + 30
        assert [(await store.admit([check], [], mid)).ok for _ in range(3)] == [True, True, False]
        # Two minutes later the first minute no longer counts at all.
        late = T0 + 180
        assert [(await store.admit([check], [], late)).ok for _ in range(5)] == [True] * 4 + [False]

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_per_minute_with_correction(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        check = RateCheck("1:team-a", rpm=None, tpm=1000, tokens=400)
        first = await store.admit([check], [], T0)
        assert first.ok
        assert (await store.admit([check], [], T0)).ok
        assert (await store.admit([check], [], T0)).rate_denied == 0  # 800 + 400 > 1000
        # The first two used only 100 tokens each: 600 are given back.
        window, _ = window_of(T0)
        await store.commit([], [TokenCommit(check.key, window, -300)] * 2)
        assert (await store.admit([check], [], T0)).ok  # 200 + 400
        verdict = await store.admit([check], [], T0)
        assert verdict.ok  # 600 + 400 = 1000: at the limit, not over
        assert (await store.admit([check], [], T0)).rate_load == (4.0, 1000.0)

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_refusal_changes_nothing(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        rate = RateCheck("0:key-1", rpm=10, tpm=None, tokens=0)
        assert (await store.admit([rate], [budget(2.0)], T0)).ok
        # The budget refuses: the request must not be counted against the rate limit either.
        for _ in range(20):
            assert (await store.admit([rate], [budget(0.1)], T0)).exceeded == (0,)
        ok = [(await store.admit([rate], [], T0)).ok for _ in range(10)]
        assert ok.count(True) == 9

    run(kind, test)


@pytest.mark.parametrize("kind", KINDS)
def test_concurrent_admissions_are_atomic(kind: str) -> None:
    async def test(store: LimitStore) -> None:
        rate = RateCheck("0:project", rpm=100, tpm=None, tokens=0)
        verdicts = await asyncio.gather(*(store.admit([rate], [], T0 + 5) for _ in range(300)))
        assert sum(v.ok for v in verdicts) == 100
        money = BudgetCheck("2:1799971200:acme", 10.0, 0.25, ttl_s=3600)
        verdicts = await asyncio.gather(*(store.admit([], [money], T0) for _ in range(300)))
        assert sum(v.ok for v in verdicts) == 40  # 40 x 0.25 = 10

    run(kind, test)


def test_redis_state_is_shared_between_clients() -> None:
    """Two stores on the same prefix (two replicas) see one counter."""

    async def main() -> None:
        prefix = f"bastion-test:{uuid.uuid4().hex}:"
        one, two = connect(), connect()
        try:
            a, b = RedisLimitStore(one, prefix), RedisLimitStore(two, prefix)
            rate = RateCheck("0:key-1", rpm=50, tpm=None, tokens=0)
            verdicts = await asyncio.gather(*(store.admit([rate], [], T0) for store in [a, b] * 60))
            assert sum(v.ok for v in verdicts) == 50
            assert await one.hget(a.rate_key("0:key-1", window_of(T0)[0]), "r") == b"50"
            ttl = await one.pttl(a.rate_key("0:key-1", window_of(T0)[0]))
            assert 0 < ttl <= 130_000
        finally:
            await drop_prefix(one, prefix)
            await one.aclose()
            await two.aclose()

    asyncio.run(main())
