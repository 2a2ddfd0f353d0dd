"""Rate limits, budgets and breaker state shared by gateway replicas through Redis.

Without ``BASTION_REDIS_URL`` everything lives in this process's memory. With it:

- **Admission** is one Lua script per request (every rate limit and budget of the request,
  checked and reserved in a single round trip).
- **Settlement** never waits on the response path: finished requests are queued and a
  background task commits them in batches (one Lua call per batch).
- **Breakers**: an open transition on one replica is written as a key whose TTL is the
  cooldown; every replica reads those keys about once a second and opens its own breaker for
  the time left, so a dead deployment is learnt once for the whole fleet.
- **Redis going away**: the first failure switches admission to the in-memory counters, seeded
  with the last budget figures seen in Redis (a budget does not restart from zero), sets the
  ``bastion_gateway_shared_state_degraded`` gauge and logs once. A task pings Redis every
  second; on recovery it adds the spend counted locally during the outage to Redis, flushes the
  settlements that were waiting, and goes back to shared counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.gateway.breaker import Breakers, Transition
from bastion.gateway.limit_store import (
    BudgetCheck,
    BudgetCommit,
    BudgetWarning,
    MemoryLimitStore,
    RateCheck,
    RedisLimitStore,
    TokenCommit,
    Verdict,
    window_of,
)

__all__ = ["SharedState"]

log = logging.getLogger("bastion.gateway")

_MAX_PENDING = 100_000  # settlements held while Redis is away; older ones are dropped beyond
_MAX_SEEN = 100_000
_FLUSH_INTERVAL_S = 0.02
_FLUSH_BATCH = 500


class SharedState:
    """Where admission counters live: memory, or Redis with memory as the fallback.

    ``redis_url`` None: memory only. ``on_warning`` receives every budget threshold crossed
    for the first time in its period (in the whole fleet, when shared).
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        prefix: str = "bastion:",
        registry: CollectorRegistry | None = None,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        clock: Callable[[], float] = time.time,
        breaker_sync_s: float = 1.0,
        retry_s: float = 1.0,
        timeout_s: float = 0.5,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.clock = clock
        self.memory = MemoryLimitStore(clock=clock)
        self.on_warning = on_warning
        self.breaker_sync_s = breaker_sync_s
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.client: Any = None
        self.redis: RedisLimitStore | None = None
        self.degraded = False
        self._pending_budgets: list[BudgetCommit] = []
        self._pending_tokens: list[TokenCommit] = []
        self._seen: dict[str, tuple[float, int]] = {}  # budget key -> (spend in Redis, ttl)
        self._base: dict[str, float] = {}  # budget key -> spend seeded into memory at outage
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._breakers: Breakers | None = None
        self._opened: dict[str, float] = {}  # deployment -> cooldown, to announce
        self._degraded_gauge: Gauge | None = None
        self._errors: Counter | None = None
        if registry is not None:
            self._degraded_gauge = Gauge(
                "bastion_gateway_shared_state_degraded",
                "1 while Redis is unreachable and limits, budgets and breakers are per process",
                registry=registry,
            )
            self._errors = Counter(
                "bastion_gateway_shared_state_errors",
                "Redis operations of the gateway's shared state that failed",
                ["operation"],
                registry=registry,
            )

    @property
    def shared(self) -> bool:
        """Whether counters are currently read from and written to Redis."""
        return self.redis is not None and not self.degraded

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, breakers: Breakers | None = None) -> None:
        """Connect (without failing when Redis is down) and start the background tasks."""
        if self.redis_url is None:
            return
        import redis.asyncio as aioredis  # the `redis` extra; only needed when configured

        # A bounded pool whose callers queue for a connection (a burst of admissions must not
        # open a socket each, nor fail with "too many connections").
        pool = aioredis.BlockingConnectionPool.from_url(
            self.redis_url,
            max_connections=64,
            timeout=self.timeout_s,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
        )
        self.client = aioredis.Redis.from_pool(pool)
        self.redis = RedisLimitStore(self.client, self.prefix)
        try:
            await self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means: serve locally
            self._degrade("connect", exc)
        self._tasks.append(asyncio.create_task(self._flusher()))
        if breakers is not None:
            self._breakers = breakers
            breakers.listeners.append(self._on_transition)
            self._tasks.append(asyncio.create_task(self._breaker_sync()))

    async def close(self) -> None:
        """Flush what is pending (when Redis answers) and stop the tasks."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._breakers is not None:
            self._breakers.listeners.remove(self._on_transition)
        if self.client is not None:
            if self.shared:
                with contextlib.suppress(Exception):
                    await self._flush()
            await self.client.aclose()

    # -- admission and settlement ----------------------------------------------------------

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> tuple[Verdict, bool]:
        """The verdict, and whether it was taken on the shared counters (to settle there)."""
        if not rates and not budgets:  # no rule applies to this request: nothing to ask Redis
            return Verdict(True, window_of(now)[0]), self.shared
        if self.redis is not None and not self.degraded:
            try:
                verdict = await self.redis.admit(rates, budgets, now)
            except Exception as exc:  # noqa: BLE001 - connection, timeout, script: go local
                self._degrade("admit", exc)
            else:
                if budgets:
                    if len(self._seen) > _MAX_SEEN:
                        self._seen.clear()
                    for check, spent in zip(budgets, verdict.spent, strict=False):
                        self._seen[check.key] = (spent + check.reserve, check.ttl_s)
                return verdict, True
        return self.memory.admit_now(rates, budgets, now), False

    def settle(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit], shared: bool
    ) -> None:
        """Record finished requests without waiting: queued for Redis, or applied in memory."""
        if not budgets and not tokens:
            return
        if shared or self.shared:
            if not shared:
                # Admitted locally during an outage that has ended: its reservation was never
                # in Redis, only its spend goes there.
                budgets = [BudgetCommit(b.key, b.limit, 0.0, b.actual, b.ttl_s) for b in budgets]
                tokens = ()
            self._pending_budgets.extend(budgets)
            self._pending_tokens.extend(tokens)
            overflow = len(self._pending_budgets) - _MAX_PENDING
            if overflow > 0:  # Redis away for long: bounded memory beats complete accounting
                del self._pending_budgets[:overflow]
                if self._errors is not None:
                    self._errors.labels("dropped_settlement").inc(overflow)
            if len(self._pending_tokens) > _MAX_PENDING:
                del self._pending_tokens[: len(self._pending_tokens) - _MAX_PENDING]
            if len(self._pending_budgets) + len(self._pending_tokens) >= _FLUSH_BATCH:
                self._wake.set()
            return
        for warning in self.memory.commit_now(budgets, tokens):
            self._warn(warning)

    # -- background ------------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), _FLUSH_INTERVAL_S)
            self._wake.clear()
            if self.degraded:
                await self._recover()
                continue
            try:
                await self._flush()
            except Exception as exc:  # noqa: BLE001 - kept pending, retried after recovery
                self._degrade("commit", exc)

    async def _flush(self) -> None:
        assert self.redis is not None
        while self._pending_budgets or self._pending_tokens:
            budgets = self._pending_budgets[:_FLUSH_BATCH]
            tokens = self._pending_tokens[:_FLUSH_BATCH]
            warnings = await self.redis.commit(budgets, tokens)
            del self._pending_budgets[: len(budgets)]
            del self._pending_tokens[: len(tokens)]
            for entry in budgets:  # keep the figure an outage would start from current
                seen = self._seen.get(entry.key)
                if seen is not None:
                    self._seen[entry.key] = (seen[0] + entry.actual - entry.reserved, seen[1])
            for warning in warnings:
                self._warn(warning)

    async def _recover(self) -> None:
        await asyncio.sleep(self.retry_s)
        assert self.client is not None
        assert self.redis is not None
        try:
            # Connections pooled before the outage are dead; each would fail once more.
            await self.client.connection_pool.disconnect()
            await self.client.ping()
            # Spend counted here while Redis was away joins the fleet's figure.
            deltas = []
            for key, base in self._base.items():
                state = self.memory.budget(key)
                if state is not None and state[0] - base > 0:
                    deltas.append((key, state[0] - base, self._seen.get(key, (0.0, 86400))[1]))
            for key, ttl_s in self._local_only_keys():
                state = self.memory.budget(key)
                if state is not None and state[0] > 0:
                    deltas.append((key, state[0], ttl_s))
            await self.redis.add_spend(deltas)
            await self._flush()
        except Exception as exc:  # noqa: BLE001 - still away; try again later
            if self._errors is not None:
                self._errors.labels("reconnect").inc()
            log.debug("Redis still unreachable: %s", exc)
            return
        self.memory = MemoryLimitStore(clock=self.clock)
        self._base.clear()
        self.degraded = False
        if self._degraded_gauge is not None:
            self._degraded_gauge.set(0)
        log.warning(
            "shared state: Redis is back; re-synced %d budget(s) counted locally, limits and "
            "budgets are shared again",
            len(deltas),
        )

    def _local_only_keys(self) -> list[tuple[str, int]]:
        # Budgets first seen during the outage (no Redis figure to start from).
        return [(k, ttl) for k, ttl in self.memory.budget_ttls().items() if k not in self._base]

    def _degrade(self, operation: str, exc: BaseException) -> None:
        if self._errors is not None:
            self._errors.labels(operation).inc()
        if self.degraded:
            return
        self.degraded = True
        if self._degraded_gauge is not None:
            self._degraded_gauge.set(1)
        # Budgets continue from their last shared figure rather than from zero.
        for key, (spent, ttl_s) in self._seen.items():
            if self.memory.budget(key) is None:
                self.memory.add_spend(key, spent, ttl_s)
                self._base[key] = spent
        log.warning(
            "shared state: Redis unreachable (%s: %s); serving with per-process limits and "
            "budgets until it is back",
            operation,
            exc,
        )

    def _warn(self, warning: BudgetWarning) -> None:
        if self.on_warning is not None:
            self.on_warning(warning)

    # -- breakers --------------------------------------------------------------------------

    def _on_transition(self, transition: Transition) -> None:
        if transition.to_state == "open" and not transition.remote and self._breakers:
            breaker = self._breakers.get(transition.deployment)
            if breaker is not None:
                self._opened[transition.deployment] = breaker.policy.cooldown_s

    async def _breaker_sync(self) -> None:
        assert self._breakers is not None
        labels = self._breakers.labels()
        keys = [f"{self.prefix}breaker:{label}" for label in labels]
        while True:
            await asyncio.sleep(self.breaker_sync_s)
            if not labels or not self.shared:
                continue
            opened, self._opened = self._opened, {}
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for label, cooldown_s in opened.items():
                        pipe.set(f"{self.prefix}breaker:{label}", "open", px=int(cooldown_s * 1000))
                    for key in keys:
                        pipe.pttl(key)
                    replies = await pipe.execute()
            except Exception as exc:  # noqa: BLE001 - announced again on the next tick
                self._opened.update(opened)
                self._degrade("breakers", exc)
                continue
            for label, ttl_ms in zip(labels, replies[len(opened) :], strict=True):
                if isinstance(ttl_ms, int) and ttl_ms > 0 and label not in opened:
                    breaker = self._breakers.get(label)
                    if breaker is not None:
                        self._breakers.note(breaker.trip(ttl_ms / 1000.0))
