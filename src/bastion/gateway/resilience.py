"""The attempt loop: retries, timeouts, fallbacks, context-window fallback, circuit breakers.

A request for alias ``chat`` walks its *chain*: ``chat`` itself, then its ``fallbacks`` (and
theirs, depth first, each alias once). Within an alias the router picks a usable deployment
(breaker not open, context window large enough, preferring one that has not failed yet in this
request); each alias gets ``1 + retries`` attempts. What happens after an attempt depends on
how it ended:

- success, or an answer already streaming to the client → done (nothing is retried after the
  first byte went out; a stream that breaks later ends with an error event);
- retryable failure (429, 5xx, timeout, connection error, unreadable answer) → next attempt,
  after full-jitter exponential backoff when the same deployment is tried again, at least the
  provider's ``Retry-After`` — or, when that is longer than ``gateway.retry_after_max_s``,
  the deployment is given up for this request and the loop moves on at once;
- provider refused the gateway's credentials (401/403) → that deployment is given up, no retry;
- anything else (400, 404, 413, 422: the request itself is wrong) → answered at once, no
  retry and no fallback, since another model would refuse it the same way.

Everything here is in memory; the only waits are the upstream call and the backoff sleep.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

import orjson
from aiohttp import web

from bastion.catalog import Catalog
from bastion.gateway.breaker import Breaker, Breakers, Transition
from bastion.gateway.errors import Api, GatewayError
from bastion.gateway.recording import Call
from bastion.gateway.relay import relay_body, relay_stream
from bastion.gateway.router import DeploymentStats, Router
from bastion.providers.config import Deployment, GatewayConfig, ModelAlias, fallback_chains
from bastion.providers.translate import (
    TranslationError,
    anthropic_to_openai_request,
    openai_to_anthropic_request,
)
from bastion.providers.upstream import Upstream, UpstreamUnavailable
from bastion.settings import GatewaySettings
from bastion.tracing.attributes import (
    GATEWAY_ATTEMPTS,
    GATEWAY_BREAKER_TRANSITIONS,
    GATEWAY_ESTIMATED_INPUT_TOKENS,
    GATEWAY_FALLBACK_ALIAS,
    RELEASE_UNKNOWN_FALLBACKS,
)

__all__ = ["RETRYABLE", "Resilience", "backoff_delay"]

RETRYABLE = frozenset(
    {
        "upstream_timeout",
        "upstream_unreachable",
        "upstream_interrupted",
        "upstream_rate_limited",
        "upstream_error",
        "upstream_invalid_response",
    }
)
"""Error classes worth another attempt: the provider, not the request, was at fault."""

_GIVE_UP_DEPLOYMENT = frozenset({"upstream_auth"})
_NO_VERDICT = frozenset({"invalid_request"})  # refused before any upstream call
_STREAM_FAILURES = frozenset({"upstream_stream_interrupted", "upstream_stream_error"})


def backoff_delay(
    failures: int,
    *,
    base_s: float,
    max_s: float,
    retry_after_s: float | None,
    rng: random.Random,
) -> float:
    """Full-jitter exponential backoff before retry number ``failures`` (1-based) of the same
    deployment, never shorter than the provider's ``Retry-After`` (already known to be within
    the cap)."""
    ceiling = min(max_s, base_s * (2 ** (failures - 1)))
    delay = rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0
    return max(delay, retry_after_s or 0.0)


class Resilience:
    """Serves one request across the alias's chain; holds no per-request state itself."""

    def __init__(
        self,
        settings: GatewaySettings,
        config: GatewayConfig,
        router: Router,
        breakers: Breakers,
        upstream: Upstream,
        catalog: Catalog | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.breakers = breakers
        self.upstream = upstream
        self.catalog = catalog
        self.rng = rng or random.Random()  # jitter, not security
        self._chains = fallback_chains(config)

    def _chain_of(self, alias: ModelAlias, call: Call) -> tuple[ModelAlias, ...]:
        """``alias`` followed by the chains of a release's own fallbacks (each alias once);
        a fallback this gateway does not serve is skipped and named on the span."""
        chain: list[ModelAlias] = [alias]
        unknown: list[str] = []
        for name in call.fallbacks or ():
            if name not in self._chains:
                unknown.append(name)
                continue
            chain.extend(a for a in self._chains[name] if all(a is not c for c in chain))
        if unknown:
            call.attributes[RELEASE_UNKNOWN_FALLBACKS] = unknown
        return tuple(chain)

    async def serve(
        self,
        request: web.Request,
        call: Call,
        api: Api,
        alias: ModelAlias,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        """The client's answer from the first deployment of the chain that gives one.

        Raises the last attempt's :class:`GatewayError` when every attempt failed (or a
        503/400 when no deployment could be tried at all).
        """
        run = _Run(self, request, call, api, body, headers)
        chain = self._chains[alias.name] if call.fallbacks is None else self._chain_of(alias, call)
        try:
            for current in chain:
                response = await run.try_alias(current)
                if response is not None:
                    if current is not alias:
                        call.attributes[GATEWAY_FALLBACK_ALIAS] = current.name
                    return response
            raise run.final_error(alias)
        finally:
            call.attributes[GATEWAY_ATTEMPTS] = run.attempts
            if run.transitions:
                call.attributes[GATEWAY_BREAKER_TRANSITIONS] = run.transitions


class _Run:
    """One request's walk through its chain."""

    def __init__(
        self,
        owner: Resilience,
        request: web.Request,
        call: Call,
        api: Api,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        self.owner = owner
        self.request = request
        self.call = call
        self.api = api
        self.body = body
        self.headers = headers
        self.attempts: list[dict[str, Any]] = []
        self.transitions: list[dict[str, Any]] = []
        self.failures: dict[str, int] = {}  # deployment label → failed attempts so far
        self.retry_after: dict[str, float] = {}  # deployment label → provider's Retry-After
        self.given_up: set[str] = set()
        self.skipped: set[str] = set()  # "label:reason", so each skip is recorded once
        self.last_error: GatewayError | None = None
        self.open_wait_s: float | None = None
        self.too_long = False
        self._tokens: int | None = None

    # -- choosing -------------------------------------------------------------------------

    def _usable(self, alias: ModelAlias) -> list[Deployment]:
        owner = self.owner
        usable: list[Deployment] = []
        for deployment in alias.deployments:
            label = deployment.label
            if label in self.given_up:
                continue
            breaker = owner.breakers.get(label)
            if breaker is not None and not breaker.available():
                wait = breaker.retry_after_s()
                self.open_wait_s = wait if self.open_wait_s is None else min(wait, self.open_wait_s)
                self._skip(alias, deployment, "skipped_breaker_open")
                continue
            window = self._window(deployment)
            if window is not None and self._input_tokens() > window:
                self.too_long = True
                self._skip(alias, deployment, "skipped_context_window")
                continue
            usable.append(deployment)
        # Retry elsewhere first: a deployment that just failed is the likeliest to fail again.
        fresh = [d for d in usable if d.label not in self.failures]
        return fresh or usable

    def _window(self, deployment: Deployment) -> int | None:
        catalog = self.owner.catalog
        if catalog is None:
            return None
        info = catalog.lookup(deployment.model, project_id=self.call.project_id)
        return info.max_input_tokens if info is not None else None

    def _input_tokens(self) -> int:
        if self._tokens is None:
            self._tokens = self.call.estimated_input_tokens(self.body)
            self.call.attributes[GATEWAY_ESTIMATED_INPUT_TOKENS] = self._tokens
        return self._tokens

    def _skip(self, alias: ModelAlias, deployment: Deployment, outcome: str) -> None:
        key = f"{deployment.label}:{outcome}"
        if key not in self.skipped:
            self.skipped.add(key)
            self._record(alias, deployment, outcome, None, None, 0.0)

    def _record(
        self,
        alias: ModelAlias,
        deployment: Deployment,
        outcome: str,
        error_class: str | None,
        status: int | None,
        latency_ms: float,
    ) -> None:
        self.attempts.append(
            {
                "alias": alias.name,
                "deployment": deployment.label,
                "provider": deployment.provider.name,
                "model": deployment.model,
                "outcome": outcome,
                "error_class": error_class,
                "status": status,
                "latency_ms": round(latency_ms, 3),
            }
        )

    def _note(self, transition: Transition | None) -> None:
        if self.owner.breakers.note(transition) is not None and transition is not None:
            self.transitions.append(
                {
                    "deployment": transition.deployment,
                    "from": transition.from_state,
                    "to": transition.to_state,
                    "reason": transition.reason,
                }
            )

    # -- attempting -----------------------------------------------------------------------

    async def try_alias(self, alias: ModelAlias) -> web.StreamResponse | None:
        """Up to ``1 + alias.retries`` attempts; None when the alias could not answer."""
        owner = self.owner
        settings = owner.settings
        for _ in range(alias.retries + 1):
            usable = self._usable(alias)
            if not usable:
                return None
            deployment = owner.router.choose(alias, usable)
            label = deployment.label
            failed_before = self.failures.get(label, 0)
            if failed_before:
                retry_after = self.retry_after.get(label)
                await asyncio.sleep(
                    backoff_delay(
                        failed_before,
                        base_s=settings.retry_base_delay_s,
                        max_s=settings.retry_max_delay_s,
                        retry_after_s=retry_after,
                        rng=owner.rng,
                    )
                )
            breaker = owner.breakers.get(label)
            probe = False
            if breaker is not None:
                if not breaker.available():  # another request took the probe while we slept
                    continue
                self._note(breaker.acquire())
                probe = breaker.state == "half_open"
            response = await self._attempt(alias, deployment, breaker, probe)
            if response is not None:
                return response
        return None

    async def _attempt(
        self, alias: ModelAlias, deployment: Deployment, breaker: Breaker | None, probe: bool
    ) -> web.StreamResponse | None:
        owner = self.owner
        call = self.call
        label = deployment.label
        call.deployment = label
        call.provider = deployment.provider.name
        stats = owner.router.stats(deployment)
        stats.in_flight += 1
        start = time.perf_counter()
        settled = False
        try:
            try:
                response = await self._exchange(alias, deployment, stats, start)
            except GatewayError as exc:
                latency_ms = (time.perf_counter() - start) * 1000.0
                retryable = exc.error_class in RETRYABLE
                if breaker is not None and exc.error_class not in _NO_VERDICT:
                    broken = retryable or exc.error_class in _GIVE_UP_DEPLOYMENT
                    self._note(breaker.record(not broken, probe=probe))
                    settled = True
                if not retryable and exc.error_class not in _GIVE_UP_DEPLOYMENT:
                    self._record(alias, deployment, "rejected", exc.error_class, exc.status,
                                 latency_ms)  # fmt: skip
                    raise
                self._record(alias, deployment, "error", exc.error_class, exc.status, latency_ms)
                self.last_error = exc
                self.failures[label] = self.failures.get(label, 0) + 1
                too_long_wait = (
                    exc.retry_after_s is not None
                    and exc.retry_after_s > owner.settings.retry_after_max_s
                )
                if exc.error_class in _GIVE_UP_DEPLOYMENT or too_long_wait:
                    self.given_up.add(label)
                elif exc.retry_after_s is not None:
                    self.retry_after[label] = exc.retry_after_s
                return None
            latency_ms = (time.perf_counter() - start) * 1000.0
            error_class = call.error_class
            if error_class == "client_disconnected":  # no verdict on the deployment
                self._record(alias, deployment, error_class, error_class, call.status, latency_ms)
                return response
            failed = error_class in _STREAM_FAILURES
            if breaker is not None:
                self._note(breaker.record(not failed, probe=probe))
            settled = True
            self._record(
                alias, deployment, "error_after_first_byte" if failed else "ok", error_class,
                call.status, latency_ms,
            )  # fmt: skip
            return response
        finally:
            stats.in_flight -= 1
            if breaker is not None and probe and not settled:
                breaker.release()  # cancelled or client gone: let another request probe

    async def _exchange(
        self, alias: ModelAlias, deployment: Deployment, stats: DeploymentStats, start: float
    ) -> web.StreamResponse:
        call = self.call
        body = self.body
        if call.operation == "embeddings":
            if deployment.provider.kind != "openai":
                raise GatewayError(
                    400,
                    f"the model {body['model']!r} does not support embeddings",
                    error_class="invalid_request",
                    param="model",
                )
            endpoint, upstream_body = "embeddings", {**body, "model": deployment.model}
        else:
            endpoint, upstream_body = _upstream_chat_body(self.api, body, deployment)
        try:
            response = await self.owner.upstream.send(
                deployment,
                endpoint,
                orjson.dumps(upstream_body),
                {"traceparent": call.context.traceparent(), "x-request-id": call.request_id},
                alias.timeout,
            )
        except UpstreamUnavailable as exc:
            raise GatewayError(
                504 if exc.timeout else 502,
                str(exc),
                error_class="upstream_timeout" if exc.timeout else "upstream_unreachable",
            ) from exc
        stats.observe_latency((time.perf_counter() - start) * 1000.0)
        if call.stream:
            wants_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await relay_stream(
                self.request, call, self.api, deployment, response, self.headers,
                client_wants_usage=wants_usage,
            )  # fmt: skip
        return await relay_body(call, self.api, deployment, response, self.headers)

    # -- giving up ------------------------------------------------------------------------

    def final_error(self, alias: ModelAlias) -> GatewayError:
        """What the client gets when no attempt succeeded."""
        if self.last_error is not None:
            return self.last_error
        if self.open_wait_s is not None:
            wait = max(1, math.ceil(self.open_wait_s))
            return GatewayError(
                503,
                f"no healthy deployment for model {alias.name!r}: every circuit breaker in its "
                f"chain is open; retry in about {wait}s",
                error_class="breaker_open",
                headers={"Retry-After": str(wait)},
            )
        if self.too_long:
            return GatewayError(
                400,
                f"the request's estimated {self._input_tokens()} input tokens exceed the "
                f"context window of every deployment of model {alias.name!r} and its fallbacks",
                error_class="context_length_exceeded",
                code="context_length_exceeded",
            )
        return GatewayError(
            502, f"no deployment could serve model {alias.name!r}", error_class="no_deployment"
        )


def _upstream_chat_body(
    api: Api, body: dict[str, Any], deployment: Deployment
) -> tuple[str, dict[str, Any]]:
    kind = deployment.provider.kind
    try:
        if kind == "openai":
            if api == "anthropic":
                return "chat", anthropic_to_openai_request(body, deployment.model)
            out = {**body, "model": deployment.model}
            if body.get("stream"):
                options = dict(body.get("stream_options") or {})
                options["include_usage"] = True  # for the span; dropped if not asked for
                out["stream_options"] = options
            return "chat", out
        if api == "openai":
            return "messages", openai_to_anthropic_request(body, deployment.model)
        return "messages", {**body, "model": deployment.model}
    except TranslationError as exc:
        raise GatewayError(
            400,
            f"{exc} (model {body.get('model')!r} is served by a {kind} deployment)",
            error_class="invalid_request",
            param=exc.param,
        ) from exc
