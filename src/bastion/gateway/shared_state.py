"""Rate limits, budgets and breaker state shared by gateway replicas through Redis.

Without ``BASTION_REDIS_URL`` everything lives in this process's memory, or, for the workers
of ``serve --workers N``, in the host's ledger held by the supervising process
(:mod:`bastion.gateway.limit_broker`; admission and batched settlement as with Redis). With it:

- **Admission** is one Lua script per request (every rate limit and budget of the request,
  checked and reserved in a single round trip).
- **Settlement** never waits on the response path: finished requests are queued and a
  background task commits them in batches (one Lua call per batch).
- **Breakers**: an open transition on one replica is written as a key whose TTL is the
  cooldown; every replica reads those keys about once a second and opens its own breaker for
  the time left, so a dead deployment is learnt once for the whole fleet.
- **Redis going away**: the first failure switches admission to the in-memory counters, seeded
  with the last budget figures seen in Redis (a budget does not restart from zero), sets the
  ``bastion_gateway_shared_state_degraded`` gauge and logs once. Each replica then enforces
  its share of every limit: replicas announce themselves in Redis every second, and with N of
  them alive each holds 1/N of each budget's and rate limit's last figure and 1/N of its limit,
  admitting only reservations that fit whole, so together they stay within the limit. A task
  pings Redis every second; on recovery it adds the spend counted locally during the outage to
  Redis, flushes the settlements that were waiting, and goes back to shared counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.gateway.breaker import Breakers, Transition
from bastion.gateway.limit_store import (
    BudgetCheck,
    BudgetCommit,
    BudgetWarning,
    MemoryLimitStore,
    RateCheck,
    RedisLimitStore,
    RemoteLimitStore,
    TokenCommit,
    Verdict,
    window_of,
)

if TYPE_CHECKING:
    from bastion.gateway.limit_rebuild import LedgerSeed

__all__ = ["SharedState"]

log = logging.getLogger("bastion.gateway")

_MAX_PENDING = 100_000  # settlements held while Redis is away; older ones are dropped beyond
_MAX_SEEN = 100_000
_FLUSH_INTERVAL_S = 0.02
_FLUSH_BATCH = 500
_HEARTBEAT_S = 1.0
_ALIVE_S = 5.0  # a replica not heard from for this long no longer takes a share


class SharedState:
    """Where admission counters live: memory, or Redis with memory as the fallback.

    ``redis_url`` None: memory only, unless ``broker_path`` names the host's ledger socket.
    ``on_warning`` receives every budget threshold crossed for the first time in its period (in
    the whole fleet, when shared).
    """

    def __init__(
        self,
        redis_url: str | None,
        *,
        broker_path: str | None = None,
        prefix: str = "bastion:",
        registry: CollectorRegistry | None = None,
        on_warning: Callable[[BudgetWarning], None] | None = None,
        clock: Callable[[], float] = time.time,
        breaker_sync_s: float = 1.0,
        retry_s: float = 1.0,
        timeout_s: float = 0.5,
    ) -> None:
        self.redis_url = redis_url
        self.broker_path = None if redis_url else broker_path
        self.prefix = prefix
        self.clock = clock
        self.memory = MemoryLimitStore(clock=clock)
        self.on_warning = on_warning
        self.breaker_sync_s = breaker_sync_s
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.client: Any = None  # the Redis client, when Redis is configured
        self.remote: RemoteLimitStore | None = None
        self.degraded = False
        self.replicas = 1  # replicas alive in the fleet, as last read from Redis
        self._replica_id = uuid.uuid4().hex
        self._seen_rates: dict[str, tuple[int, float, float]] = {}  # key -> window, load
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
        """Whether counters are currently read from and written to Redis or the host ledger."""
        return self.remote is not None and not self.degraded

    def start_from(self, seed: LedgerSeed) -> None:
        """Start the in-memory counters from ``seed`` (rebuilt from the stored spans). When
        they stand in for an unreachable Redis, only spend added after the seed goes to Redis
        on recovery (Redis may hold the rest already)."""
        seed.apply(self.memory)
        for key, (spent, _, _) in seed.budgets.items():
            self._base.setdefault(key, spent)

    def store_name(self, shared: bool) -> str:
        """What a verdict taken ``shared`` (or not) was taken on, for the span."""
        if not shared:
            return "memory"
        return "redis" if self.redis_url else "host"

    @property
    def _remote_label(self) -> str:
        return "Redis" if self.redis_url else "the host's limits ledger"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, breakers: Breakers | None = None) -> None:
        """Connect (without failing when Redis is down) and start the background tasks."""
        if self.redis_url is None:
            if self.broker_path is not None:
                from bastion.gateway.limit_broker import BrokerLimitStore

                self.remote = BrokerLimitStore(self.broker_path, timeout_s=self.timeout_s)
                try:
                    await self.remote.ping()
                except Exception as exc:  # noqa: BLE001 - any failure means: serve locally
                    self._degrade("connect", exc)
                self._tasks.append(asyncio.create_task(self._flusher()))
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
        self.remote = RedisLimitStore(self.client, self.prefix)
        try:
            await self.client.ping()
        except Exception as exc:  # noqa: BLE001 - any failure means: serve locally
            self._degrade("connect", exc)
        self._tasks.append(asyncio.create_task(self._flusher()))
        self._tasks.append(asyncio.create_task(self._heartbeat()))
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
        if self.remote is not None:
            if self.shared:
                with contextlib.suppress(Exception):
                    await self._flush()
                    if self.client is not None:  # this replica no longer takes a share
                        await self.client.zrem(f"{self.prefix}replicas", self._replica_id)
            await self.remote.aclose()

    # -- admission and settlement ----------------------------------------------------------

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> tuple[Verdict, bool]:
        """The verdict, and whether it was taken on the shared counters (to settle there)."""
        if not rates and not budgets:  # no rule applies to this request: nothing to ask Redis
            return Verdict(True, window_of(now)[0]), self.shared
        if self.remote is not None and not self.degraded:
            try:
                verdict = await self.remote.admit(rates, budgets, now)
            except Exception as exc:  # noqa: BLE001 - connection, timeout, script: go local
                self._degrade("admit", exc)
            else:
                self._note_seen(rates, budgets, verdict)
                return verdict, True
        share = self.replicas if self.degraded and self.redis_url else 1
        return self.memory.admit_now(rates, budgets, now, share=share), False

    def _note_seen(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], verdict: Verdict
    ) -> None:
        """Keep the fleet's last figures, which an outage starts from."""
        if len(self._seen) > _MAX_SEEN:
            self._seen.clear()
        if len(self._seen_rates) > _MAX_SEEN:
            self._seen_rates.clear()
        if verdict.ok:
            for check, spent in zip(budgets, verdict.spent, strict=False):
                self._seen[check.key] = (spent + check.reserve, check.ttl_s)
        for rate, (requests, tokens) in zip(rates, verdict.rate_loads, strict=False):
            self._seen_rates[rate.key] = (verdict.window, requests, tokens)

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
        assert self.remote is not None
        while self._pending_budgets or self._pending_tokens:
            budgets = self._pending_budgets[:_FLUSH_BATCH]
            tokens = self._pending_tokens[:_FLUSH_BATCH]
            warnings = await self.remote.commit(budgets, tokens)
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
        assert self.remote is not None
        try:
            # Connections pooled before the outage are dead; each would fail once more.
            await self.remote.reset()
            await self.remote.ping()
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
            await self.remote.add_spend(deltas)
            await self._flush()
        except Exception as exc:  # noqa: BLE001 - still away; try again later
            if self._errors is not None:
                self._errors.labels("reconnect").inc()
            log.debug("%s still unreachable: %s", self._remote_label, exc)
            return
        self.memory = MemoryLimitStore(clock=self.clock)
        self._base.clear()
        self.degraded = False
        if self._degraded_gauge is not None:
            self._degraded_gauge.set(0)
        log.warning(
            "shared state: %s is back; re-synced %d budget(s) counted locally, limits and "
            "budgets are shared again",
            self._remote_label,
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
        # Budgets and rate windows continue from their last shared figure rather than from
        # zero; with N replicas, each holds 1/N of it (and of the limit: see admit).
        share = self.replicas if self.redis_url else 1
        for key, (spent, ttl_s) in self._seen.items():
            if self.memory.budget(key) is None:
                self.memory.add_spend(key, spent / share, ttl_s)
                self._base[key] = spent / share
        for key, (window, requests, tokens) in self._seen_rates.items():
            if self.memory.rate(key, window) is None:
                self.memory.seed_rate(key, window, requests / share, tokens / share)
        log.warning(
            "shared state: %s unreachable (%s: %s); serving with per-process limits and "
            "budgets until it is back (this process's share: 1/%d)",
            self._remote_label,
            operation,
            exc,
            share,
        )

    def _warn(self, warning: BudgetWarning) -> None:
        if self.on_warning is not None:
            self.on_warning(warning)

    async def _heartbeat(self) -> None:
        """Announce this replica and count the live ones (the share each takes in an outage)."""
        key = f"{self.prefix}replicas"
        while True:
            if self.shared:
                now = self.clock()
                try:
                    async with self.client.pipeline(transaction=False) as pipe:
                        pipe.zadd(key, {self._replica_id: now})
                        pipe.zremrangebyscore(key, 0, now - 60)
                        pipe.zcount(key, now - _ALIVE_S, "+inf")
                        pipe.expire(key, 120)
                        replies = await pipe.execute()
                    self.replicas = max(1, int(replies[2]))
                except Exception as exc:  # noqa: BLE001 - the outage path takes over
                    self._degrade("heartbeat", exc)
            await asyncio.sleep(_HEARTBEAT_S)

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
