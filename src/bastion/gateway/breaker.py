"""Circuit breakers per deployment, in memory (no I/O on the request path).

closed ──error rate ≥ threshold over the window (with min_requests)──▶ open
open ──cooldown elapsed, one request lets through as a probe──▶ half-open
half-open ──probe succeeds──▶ closed;  half-open ──probe fails──▶ open (cooldown again)

While open (or half-open with its probe in flight) a deployment is skipped at once, so a dead
provider costs no timeout. A breaker is shared by every alias that routes to the deployment
(it is one upstream); its policy is the first declaring alias's.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from bastion.providers.config import BreakerPolicy, ModelAlias

__all__ = ["Breaker", "BreakerState", "Breakers", "Transition"]

log = logging.getLogger("bastion.gateway")

BreakerState = Literal["closed", "open", "half_open"]
_GAUGE = {"closed": 0, "half_open": 1, "open": 2}
_BUCKETS = 10  # the sliding window is kept as this many time buckets: O(1) memory


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, for logs, metrics and the span of the request that caused it."""

    deployment: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    remote: bool = False  # learnt from another replica (shared state), not caused here


class Breaker:
    """One deployment's breaker. ``clock`` is injectable for tests (monotonic seconds)."""

    def __init__(
        self,
        deployment: str,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = deployment
        self.policy = policy
        self.state: BreakerState = "closed"
        self._clock = clock
        self._width = policy.window_s / _BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, requests, failures]
        self._opened_at = 0.0
        self._probing = False

    def available(self) -> bool:
        """Whether a request may be sent now (no side effect; see :meth:`acquire`)."""
        if self.state == "closed":
            return True
        if self.state == "open":
            return self._clock() - self._opened_at >= self.policy.cooldown_s
        return not self._probing

    def retry_after_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when available)."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.policy.cooldown_s - (self._clock() - self._opened_at))

    def acquire(self) -> Transition | None:
        """Take the request slot: after the cooldown this request becomes the one probe."""
        if self.state == "open":
            self._probing = True
            return self._move("half_open", "cooldown elapsed; probing")
        if self.state == "half_open":
            self._probing = True
        return None

    def release(self) -> None:
        """A probe that ended without an outcome (client gone): let another request probe."""
        if self.state == "half_open":
            self._probing = False

    def record(self, ok: bool, *, probe: bool = False) -> Transition | None:
        """Count one outcome; returns the transition it caused, if any.

        ``probe`` says the request was the half-open probe (it found the breaker half-open
        right after :meth:`acquire`): only its outcome decides; a slower request sent before
        the breaker opened does not.
        """
        if self.state == "half_open":
            if not probe:
                return None
            self._probing = False
            if ok:
                self._buckets.clear()
                return self._move("closed", "probe succeeded")
            self._opened_at = self._clock()
            return self._move("open", "probe failed")
        if self.state == "open":
            return None  # a request sent before the breaker opened: already counted
        now = self._clock()
        index = int(now / self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= index - _BUCKETS:
            buckets.popleft()
        if buckets and buckets[-1][0] == index:
            bucket = buckets[-1]
        else:
            bucket = [index, 0, 0]
            buckets.append(bucket)
        bucket[1] += 1
        if ok:
            return None
        bucket[2] += 1
        requests = sum(b[1] for b in buckets)
        failures = sum(b[2] for b in buckets)
        policy = self.policy
        if requests >= policy.min_requests and failures / requests >= policy.error_rate:
            self._opened_at = now
            return self._move(
                "open",
                f"{failures}/{requests} failed in {policy.window_s:g}s "
                f"(threshold {policy.error_rate:g})",
            )
        return None

    def trip(self, remaining_s: float) -> Transition | None:
        """Open a closed breaker because another replica opened it ``remaining_s`` of its
        cooldown ago; a breaker already open or probing keeps its own state."""
        if self.state != "closed":
            return None
        self._buckets.clear()
        self._opened_at = self._clock() - max(0.0, self.policy.cooldown_s - remaining_s)
        return self._move("open", "opened on another replica", remote=True)

    def _move(self, to: BreakerState, reason: str, *, remote: bool = False) -> Transition:
        transition = Transition(self.deployment, self.state, to, reason, remote)
        self.state = to
        return transition


class Breakers:
    """The breakers of every deployment whose alias declares ``breaker:``, with metrics."""

    def __init__(
        self,
        aliases: Iterable[ModelAlias],
        registry: CollectorRegistry | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breakers: dict[str, Breaker] = {}
        for alias in aliases:
            if alias.breaker is None:
                continue
            for deployment in alias.deployments:
                label = deployment.label
                if label not in self._breakers:
                    self._breakers[label] = Breaker(label, alias.breaker, clock=clock)
        self._transitions: Counter | None = None
        self._state: Gauge | None = None
        self.listeners: list[Callable[[Transition], None]] = []
        """Told of every transition after it is counted (shared state announces opens, the
        recorder keeps each as an event span)."""
        if registry is not None:
            self._transitions = Counter(
                "bastion_gateway_breaker_transitions",
                "Circuit breaker state changes by deployment and new state",
                ["deployment", "to"],
                registry=registry,
            )
            self._state = Gauge(
                "bastion_gateway_breaker_state",
                "Circuit breaker state by deployment (0 closed, 1 half-open, 2 open)",
                ["deployment"],
                registry=registry,
            )
            for label in self._breakers:
                self._state.labels(label).set(0)

    def labels(self) -> list[str]:
        """The deployments that have a breaker."""
        return list(self._breakers)

    def get(self, deployment: str) -> Breaker | None:
        """The deployment's breaker, or None when its alias declares none."""
        return self._breakers.get(deployment)

    def note(self, transition: Transition | None) -> Transition | None:
        """Log and count a transition (passes it through for the caller's span)."""
        if transition is None:
            return None
        log.warning(
            "circuit breaker %s: %s -> %s (%s)",
            transition.deployment,
            transition.from_state,
            transition.to_state,
            transition.reason,
        )
        if self._transitions is not None and self._state is not None:
            self._transitions.labels(transition.deployment, transition.to_state).inc()
            self._state.labels(transition.deployment).set(_GAUGE[transition.to_state])
        for listener in self.listeners:
            listener(transition)
        return transition
