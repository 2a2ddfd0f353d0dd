"""Counters behind rate limits and budgets: in process memory, or in Redis (one Lua call each).

Both stores implement the same two atomic operations:

- :meth:`admit` checks every rate limit and budget of one request and, only if all pass,
  counts the request and reserves its maximum cost, all at once;
- :meth:`commit` settles a batch of finished requests: actual cost in, reservation out, token
  estimates corrected; it returns the budget warnings (50/75/90/100%) that batch crossed for the
  first time in the budget's period.

**Rate limits** use a sliding-window counter: per rule and value, one counter pair (requests,
tokens) per calendar minute; the load of the last 60 s is estimated as ``previous minute *
(1 - elapsed fraction) + current minute``. A request passes while that estimate plus the request
stays within the limit, so no calendar minute ever admits more than the limit and a burst
straddling a minute boundary is smoothed (a fixed window would allow twice the limit there).

**Budgets** are reserve-then-commit: a request is admitted while ``spent + reserved`` is below
the limit, and reserves its maximum cost; the finished request commits its actual cost and
releases the reservation. Concurrent requests therefore overshoot the limit by at most one
request's maximum cost (the last one admitted while there was room).

The memory store is atomic because it never awaits between read and write on the event loop
(or, as the host-wide ledger of ``serve --workers N``, on the broker's loop: see
:mod:`bastion.gateway.limit_broker`); the Redis store because each operation is one Lua script.
A memory store can hold a *share* of fleet-wide limits (see :meth:`MemoryLimitStore.admit_now`)
while Redis is away.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "THRESHOLDS",
    "BudgetCheck",
    "BudgetCommit",
    "BudgetWarning",
    "LimitStore",
    "MemoryLimitStore",
    "RateCheck",
    "RedisLimitStore",
    "RemoteLimitStore",
    "TokenCommit",
    "Verdict",
]

THRESHOLDS = (0.5, 0.75, 0.9, 1.0)
"""Fractions of a budget whose first crossing in a period is an event (1.0: exhausted)."""

WINDOW_S = 60
_RATE_TTL_MS = 2 * WINDOW_S * 1000 + 5000  # a minute's counters are read during the next one


@dataclass(frozen=True, slots=True)
class RateCheck:
    """One rate-limit rule applied to one value; ``tokens`` is the request's token estimate."""

    key: str
    rpm: float | None
    tpm: float | None
    tokens: int


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """One budget applied to one value for the current period.

    ``force`` counts the reservation without refusing: a request already degraded to a
    cheaper model because this budget is exhausted still pays into it.
    """

    key: str
    limit: float
    reserve: float
    ttl_s: int
    force: bool = False


@dataclass(slots=True)
class Verdict:
    """The outcome of one admission.

    ``spent`` is, per budget check, committed spend plus reservations before this request;
    on a refusal ``rate_denied`` (index of the rate check, with its estimated requests and
    tokens over the last minute) or ``exceeded`` (indices of exhausted budgets) says why.
    ``rate_loads`` is, when admitted by Redis, each rate check's load including this request
    (what a replica starts from if Redis goes away).
    """

    ok: bool
    window: int
    rate_denied: int | None = None
    rate_load: tuple[float, float] = (0.0, 0.0)
    exceeded: tuple[int, ...] = ()
    spent: tuple[float, ...] = ()
    rate_loads: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class BudgetCommit:
    """A finished request's effect on one budget."""

    key: str
    limit: float
    reserved: float
    actual: float
    ttl_s: int


@dataclass(frozen=True, slots=True)
class TokenCommit:
    """Correction of a token estimate: ``delta`` (actual - estimate) on one minute's counter."""

    key: str
    window: int
    delta: int


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A budget crossed ``threshold`` (0.5, 0.75, 0.9 or 1.0) for the first time this period."""

    key: str
    threshold: float
    spent: float
    limit: float


class LimitStore(Protocol):
    """Atomic admission and batched settlement of rate limits and budgets."""

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> Verdict: ...

    async def commit(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit]
    ) -> list[BudgetWarning]: ...


class RemoteLimitStore(LimitStore, Protocol):
    """A store outside this process (Redis, or the host's ledger broker); its failures make
    :class:`bastion.gateway.shared_state.SharedState` fall back to memory."""

    async def add_spend(self, amounts: Sequence[tuple[str, float, int]]) -> None: ...

    async def ping(self) -> None: ...

    async def reset(self) -> None: ...

    async def aclose(self) -> None: ...


def window_of(now: float) -> tuple[int, float]:
    """The minute index of ``now`` and how far into it ``now`` is (0 ≤ fraction < 1)."""
    window = int(now // WINDOW_S)
    return window, (now - window * WINDOW_S) / WINDOW_S


@dataclass(slots=True)
class _Budget:
    spent: float = 0.0
    reserved: float = 0.0
    warned: int = 0  # bit i set: THRESHOLDS[i] already announced
    expires_at: float = 0.0


@dataclass
class MemoryLimitStore:
    """Counters in this process. ``clock`` (wall seconds) only drives expiry of old entries."""

    clock: Any = time.time
    _rates: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    _budgets: dict[str, _Budget] = field(default_factory=dict)
    _swept_window: int = -1

    def admit_now(
        self,
        rates: Sequence[RateCheck],
        budgets: Sequence[BudgetCheck],
        now: float,
        *,
        share: int = 1,
    ) -> Verdict:
        """:meth:`admit` without the coroutine (it never waits).

        ``share`` > 1: this store holds 1/``share`` of limits enforced by ``share`` processes
        that cannot see each other (replicas while Redis is away): every limit is divided by
        ``share`` and a budget admits only a reservation that fits whole, so together they
        never pass the limit.
        """
        window, fraction = window_of(now)
        if window != self._swept_window:
            self._sweep(window, now)
        if share > 1:
            rates = [_shared_rate(check, share) for check in rates]
        for i, check in enumerate(rates):
            current = self._rates.get((check.key, window))
            previous = self._rates.get((check.key, window - 1))
            weight = 1.0 - fraction
            requests = (previous[0] * weight if previous else 0.0) + (current[0] if current else 0)
            tokens = (previous[1] * weight if previous else 0.0) + (current[1] if current else 0)
            if (check.rpm is not None and requests + 1 > check.rpm) or (
                check.tpm is not None and tokens + check.tokens > check.tpm
            ):
                return Verdict(False, window, rate_denied=i, rate_load=(requests, tokens))
        spent: list[float] = []
        exceeded: list[int] = []
        for i, budget in enumerate(budgets):
            state = self._budgets.get(budget.key)
            used = state.spent + state.reserved if state is not None else 0.0
            spent.append(used * share)
            limit = budget.limit / share
            room = used + budget.reserve if share > 1 else used
            if not budget.force and (room > limit if share > 1 else room >= limit):
                exceeded.append(i)
        if exceeded:
            return Verdict(False, window, exceeded=tuple(exceeded), spent=tuple(spent))
        for check in rates:
            counter = self._rates.setdefault((check.key, window), [0.0, 0.0])
            counter[0] += 1
            counter[1] += check.tokens
        for budget in budgets:
            state = self._budget(budget.key, budget.ttl_s, now)
            state.reserved += budget.reserve
        return Verdict(True, window, spent=tuple(spent))

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> Verdict:
        """Check every limit; count and reserve only if all pass."""
        return self.admit_now(rates, budgets, now)

    def commit_now(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit]
    ) -> list[BudgetWarning]:
        """:meth:`commit` without the coroutine."""
        now = self.clock()
        warnings: list[BudgetWarning] = []
        for entry in budgets:
            state = self._budget(entry.key, entry.ttl_s, now)
            state.spent += entry.actual
            state.reserved = max(0.0, state.reserved - entry.reserved)
            warnings.extend(_crossed(entry.key, state, entry.limit))
        for correction in tokens:
            counter = self._rates.get((correction.key, correction.window))
            if counter is not None:
                counter[1] = max(0, counter[1] + correction.delta)
        return warnings

    async def commit(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit]
    ) -> list[BudgetWarning]:
        """Settle finished requests; return the warnings they crossed."""
        return self.commit_now(budgets, tokens)

    def add_spend(self, key: str, amount: float, ttl_s: int) -> None:
        """Count spend known from elsewhere (the shared store's last figure) as committed."""
        self._budget(key, ttl_s, self.clock()).spent += amount

    def seed_budget(self, key: str, spent: float, limit: float, ttl_s: int) -> None:
        """Start a budget from ``spent`` (rebuilt at start-up); thresholds it already passed
        count as announced, so a restart does not announce them again."""
        state = self._budget(key, ttl_s, self.clock())
        state.spent += spent
        for i, threshold in enumerate(THRESHOLDS):
            if state.spent >= threshold * limit:
                state.warned |= 1 << i

    def seed_rate(self, key: str, window: int, requests: float, tokens: float) -> None:
        """Add load to minute ``window`` of a rate counter (rebuilt, or a fleet's last figure)."""
        counter = self._rates.setdefault((key, window), [0.0, 0.0])
        counter[0] += requests
        counter[1] += tokens

    def budget(self, key: str) -> tuple[float, float] | None:
        """``(spent, reserved)`` of a budget key, for inspection and tests."""
        state = self._budgets.get(key)
        return (state.spent, state.reserved) if state is not None else None

    def budget_ttls(self) -> dict[str, int]:
        """Every budget key held, with the seconds its period has left (at least 1)."""
        now = self.clock()
        return {k: max(1, int(b.expires_at - now)) for k, b in self._budgets.items()}

    def rate(self, key: str, window: int) -> tuple[float, float] | None:
        """``(requests, tokens)`` counted for ``key`` in minute ``window``."""
        counter = self._rates.get((key, window))
        return (counter[0], counter[1]) if counter is not None else None

    def _budget(self, key: str, ttl_s: int, now: float) -> _Budget:
        state = self._budgets.get(key)
        if state is None:
            state = self._budgets[key] = _Budget(expires_at=now + ttl_s)
        return state

    def _sweep(self, window: int, now: float) -> None:
        # Once a minute: drop counters older than the previous minute and past budget periods.
        self._swept_window = window
        for key in [k for k in self._rates if k[1] < window - 1]:
            del self._rates[key]
        for name in [k for k, b in self._budgets.items() if b.expires_at < now]:
            del self._budgets[name]


def _shared_rate(check: RateCheck, share: int) -> RateCheck:
    rpm = check.rpm / share if check.rpm is not None else None
    tpm = check.tpm / share if check.tpm is not None else None
    return RateCheck(check.key, rpm, tpm, check.tokens)


def _crossed(key: str, state: _Budget, limit: float) -> list[BudgetWarning]:
    out: list[BudgetWarning] = []
    for i, threshold in enumerate(THRESHOLDS):
        if state.spent >= threshold * limit and not state.warned & (1 << i):
            state.warned |= 1 << i
            out.append(BudgetWarning(key, threshold, state.spent, limit))
    return out


# KEYS: per rate check (current minute, previous minute), then one per budget check.
# ARGV: n_rates, n_budgets, fraction, then per rate (rpm, tpm, tokens) with 0 = no limit,
# then per budget (limit, reserve, force, ttl_s).
# Returns {1, spent..., (requests, tokens) per rate...} | {0, "rate", index, requests, tokens}
# | {0, "budget", spent..., "|", i...}
_ADMIT = """
local n_rates = tonumber(ARGV[1])
local n_budgets = tonumber(ARGV[2])
local weight = 1 - tonumber(ARGV[3])
local loads = {}
for i = 0, n_rates - 1 do
  local cur = redis.call('HMGET', KEYS[2 * i + 1], 'r', 't')
  local prev = redis.call('HMGET', KEYS[2 * i + 2], 'r', 't')
  local requests = (tonumber(prev[1]) or 0) * weight + (tonumber(cur[1]) or 0)
  local tokens = (tonumber(prev[2]) or 0) * weight + (tonumber(cur[2]) or 0)
  local rpm = tonumber(ARGV[4 + 3 * i])
  local tpm = tonumber(ARGV[5 + 3 * i])
  local need = tonumber(ARGV[6 + 3 * i])
  if (rpm > 0 and requests + 1 > rpm) or (tpm > 0 and tokens + need > tpm) then
    return {0, 'rate', i, tostring(requests), tostring(tokens)}
  end
  loads[#loads + 1] = tostring(requests + 1)
  loads[#loads + 1] = tostring(tokens + need)
end
local base = 2 * n_rates
local args = 4 + 3 * n_rates
local out = {1}
local exceeded = {}
for j = 0, n_budgets - 1 do
  local state = redis.call('HMGET', KEYS[base + j + 1], 's', 'r')
  local used = (tonumber(state[1]) or 0) + (tonumber(state[2]) or 0)
  out[#out + 1] = tostring(used)
  if ARGV[args + 4 * j + 2] == '0' and used >= tonumber(ARGV[args + 4 * j]) then
    exceeded[#exceeded + 1] = j
  end
end
if #exceeded > 0 then
  out[1] = 0
  out[#out + 1] = '|'
  for _, j in ipairs(exceeded) do out[#out + 1] = j end
  return out
end
for i = 0, n_rates - 1 do
  local key = KEYS[2 * i + 1]
  redis.call('HINCRBY', key, 'r', 1)
  local need = tonumber(ARGV[6 + 3 * i])
  if need > 0 then redis.call('HINCRBY', key, 't', need) end
  redis.call('PEXPIRE', key, RATE_TTL_MS)
end
for j = 0, n_budgets - 1 do
  local key = KEYS[base + j + 1]
  local reserve = ARGV[args + 4 * j + 1]
  if tonumber(reserve) > 0 then redis.call('HINCRBYFLOAT', key, 'r', reserve) end
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[args + 4 * j + 3]) end
end
for _, load in ipairs(loads) do out[#out + 1] = load end
return out
""".replace("RATE_TTL_MS", str(_RATE_TTL_MS))

# KEYS: budget keys, then token-correction keys.
# ARGV: n_budgets, n_tokens, thresholds..., then per budget (limit, reserved, actual, ttl_s),
# then per token correction (delta).
# Returns flat {budget index, threshold index, spent, ...} for thresholds crossed first now.
_COMMIT = """
local n_budgets = tonumber(ARGV[1])
local n_tokens = tonumber(ARGV[2])
local n_thresholds = N_THRESHOLDS
local args = 3 + n_thresholds
local out = {}
for j = 0, n_budgets - 1 do
  local key = KEYS[j + 1]
  local limit = tonumber(ARGV[args + 4 * j])
  local reserved = tonumber(ARGV[args + 4 * j + 1])
  local spent = tonumber(redis.call('HINCRBYFLOAT', key, 's', ARGV[args + 4 * j + 2]))
  if reserved > 0 then
    local left = tonumber(redis.call('HINCRBYFLOAT', key, 'r', -reserved))
    if left < 0 then redis.call('HSET', key, 'r', 0) end
  end
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[args + 4 * j + 3]) end
  local warned = tonumber(redis.call('HGET', key, 'w')) or 0
  local now_warned = warned
  for t = 0, n_thresholds - 1 do
    local bit = 2 ^ t
    if spent >= tonumber(ARGV[3 + t]) * limit and math.floor(now_warned / bit) % 2 == 0 then
      now_warned = now_warned + bit
      out[#out + 1] = j
      out[#out + 1] = t
      out[#out + 1] = tostring(spent)
    end
  end
  if now_warned ~= warned then redis.call('HSET', key, 'w', now_warned) end
end
local base = n_budgets
local targs = args + 4 * n_budgets
for k = 0, n_tokens - 1 do
  local key = KEYS[base + k + 1]
  if redis.call('EXISTS', key) == 1 then
    local left = redis.call('HINCRBY', key, 't', ARGV[targs + k])
    if left < 0 then redis.call('HSET', key, 't', 0) end
  end
end
return out
""".replace("N_THRESHOLDS", str(len(THRESHOLDS)))


class RedisLimitStore:
    """Counters in Redis under ``prefix``, shared by every gateway replica.

    ``client`` is a ``redis.asyncio.Redis``; connection errors propagate to the caller, which
    decides to fall back to memory.
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script(_ADMIT)
        self._commit = client.register_script(_COMMIT)

    def rate_key(self, key: str, window: int) -> str:
        return f"{self.prefix}rl:{key}:{window}"

    def budget_key(self, key: str) -> str:
        return f"{self.prefix}b:{key}"

    async def admit(
        self, rates: Sequence[RateCheck], budgets: Sequence[BudgetCheck], now: float
    ) -> Verdict:
        """Check every limit; count and reserve only if all pass (one round trip)."""
        window, fraction = window_of(now)
        keys: list[str] = []
        args: list[Any] = [len(rates), len(budgets), repr(fraction)]
        for check in rates:
            keys += [self.rate_key(check.key, window), self.rate_key(check.key, window - 1)]
            args += [check.rpm or 0, check.tpm or 0, check.tokens]
        for budget in budgets:
            keys.append(self.budget_key(budget.key))
            args += [repr(budget.limit), repr(budget.reserve), int(budget.force), budget.ttl_s]
        reply = await self._admit(keys=keys, args=args)
        if int(reply[0]) == 1:
            n = len(budgets)
            loads = [float(v) for v in reply[1 + n :]]
            return Verdict(
                True,
                window,
                spent=tuple(float(v) for v in reply[1 : 1 + n]),
                rate_loads=tuple(zip(loads[::2], loads[1::2], strict=True)),
            )
        if _text(reply[1]) == "rate":
            return Verdict(
                False,
                window,
                rate_denied=int(reply[2]),
                rate_load=(float(reply[3]), float(reply[4])),
            )
        bar = [_text(v) for v in reply].index("|")
        return Verdict(
            False,
            window,
            exceeded=tuple(int(v) for v in reply[bar + 1 :]),
            spent=tuple(float(v) for v in reply[1:bar]),
        )

    async def commit(
        self, budgets: Sequence[BudgetCommit], tokens: Sequence[TokenCommit]
    ) -> list[BudgetWarning]:
        """Settle a batch of finished requests in one round trip."""
        if not budgets and not tokens:
            return []
        keys = [self.budget_key(b.key) for b in budgets]
        keys += [self.rate_key(t.key, t.window) for t in tokens]
        args: list[Any] = [len(budgets), len(tokens), *(repr(t) for t in THRESHOLDS)]
        for b in budgets:
            args += [repr(b.limit), repr(b.reserved), repr(b.actual), b.ttl_s]
        args += [t.delta for t in tokens]
        reply = await self._commit(keys=keys, args=args)
        warnings = []
        for n in range(0, len(reply), 3):
            entry = budgets[int(reply[n])]
            warnings.append(
                BudgetWarning(
                    entry.key, THRESHOLDS[int(reply[n + 1])], float(reply[n + 2]), entry.limit
                )
            )
        return warnings

    async def ping(self) -> None:
        await self.client.ping()

    async def reset(self) -> None:
        """Drop pooled connections (after an outage each would fail once more)."""
        await self.client.connection_pool.disconnect()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def add_spend(self, amounts: Sequence[tuple[str, float, int]]) -> None:
        """Add spend counted elsewhere (locally while Redis was away), pipelined."""
        if not amounts:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for key, amount, ttl_s in amounts:
                pipe.hincrbyfloat(self.budget_key(key), "s", amount)
                pipe.expire(self.budget_key(key), ttl_s, nx=True)
            await pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
