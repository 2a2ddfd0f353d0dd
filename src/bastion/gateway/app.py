"""Wiring the gateway into an aiohttp application (the main server, or ``bastion gateway``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack
from functools import partial

from aiohttp import web

from bastion.audit import SystemAuditWriter
from bastion.catalog import Catalog
from bastion.gateway import handlers
from bastion.gateway.admission import Admission
from bastion.gateway.audit_events import GatewayAudit
from bastion.gateway.breaker import Breakers, Transition
from bastion.gateway.cache import make_response_cache
from bastion.gateway.cache_config import load_cache_config
from bastion.gateway.limit_costs import check_estimate_models
from bastion.gateway.limit_rebuild import rebuild_ledger
from bastion.gateway.limits_config import load_limits_config
from bastion.gateway.prompts import PromptCache
from bastion.gateway.recording import Recorder
from bastion.gateway.release_requests import install_route_table
from bastion.gateway.resilience import Resilience
from bastion.gateway.router import Router
from bastion.gateway.shared_state import SharedState
from bastion.gateway.state import GATEWAY, GatewayState
from bastion.gateway.tiers import TierRouter
from bastion.prompts.template_budget import ProjectLimits
from bastion.providers.config import (
    Deployment,
    GatewayConfig,
    ModelAlias,
    ProviderConfig,
    load_gateway_config,
)
from bastion.providers.upstream import Upstream
from bastion.services.state import SIMULATOR_PRICES, STATE, AppState
from bastion.settings import Settings
from bastion.tracing.attributes import (
    BREAKER_DEPLOYMENT,
    BREAKER_FROM,
    BREAKER_REASON,
    BREAKER_REMOTE,
    BREAKER_TO,
    BREAKER_TRANSITION,
)

__all__ = ["install_gateway", "simulator_models"]

log = logging.getLogger("bastion.gateway")


def simulator_models(url: str) -> tuple[dict[str, ProviderConfig], dict[str, ModelAlias]]:
    """Providers and aliases for a simulator at ``url``: ``sim-small`` is served through the
    OpenAI format and ``sim-large`` through the Anthropic one, so both paths run with no keys."""
    openai = ProviderConfig(name="simulator", kind="openai", base_url=f"{url}/v1")
    anthropic = ProviderConfig(name="simulator-anthropic", kind="anthropic", base_url=url)
    aliases = {
        "sim-small": ModelAlias("sim-small", (Deployment(openai, "sim-small"),)),
        "sim-large": ModelAlias("sim-large", (Deployment(anthropic, "sim-large"),)),
    }
    return {"simulator": openai, "simulator-anthropic": anthropic}, aliases


def _warn_missing_keys(config: GatewayConfig) -> None:
    for provider in config.providers.values():
        if provider.api_key_env and not provider.api_key:
            log.warning(
                "provider %r: environment variable %s is not set; its calls will be refused "
                "by the provider",
                provider.name,
                provider.api_key_env,
            )


def _record_transition(recorder: Recorder, transition: Transition) -> None:
    recorder.event(
        BREAKER_TRANSITION,
        {
            BREAKER_DEPLOYMENT: transition.deployment,
            BREAKER_FROM: transition.from_state,
            BREAKER_TO: transition.to_state,
            BREAKER_REASON: transition.reason,
            BREAKER_REMOTE: transition.remote,
        },
    )


async def _rebuild_limits(settings: Settings, state: AppState, admission: Admission) -> None:
    """In-memory counters start from what the stored spans say this period has spent (a
    blocking read on a worker thread, before the gateway admits traffic). A reachable Redis
    keeps its own counters, and the host's ledger of ``serve --workers N`` is rebuilt by the
    supervisor."""
    if admission.limits.empty or settings.limits_socket:
        return
    if settings.redis_url and not admission.shared.degraded:
        return
    loop = asyncio.get_running_loop()
    seed = await loop.run_in_executor(
        None, rebuild_ledger, state.engine, admission.limits, state.catalog
    )
    admission.shared.start_from(seed)


def _start_simulator(
    settings: Settings, stack: ExitStack
) -> tuple[dict[str, ProviderConfig], dict[str, ModelAlias]]:
    """The simulator's providers and aliases when ``gateway.simulator`` is on (it stops with
    ``stack``), else none."""
    if not settings.gateway.simulator:
        return {}, {}
    from bastion.providers.simulator import SimulatorConfig, SimulatorServer

    simulator = stack.enter_context(SimulatorServer(SimulatorConfig(), port=0))
    log.info("provider simulator on %s (models sim-small, sim-large)", simulator.url)
    return simulator_models(simulator.url)


async def _load_prompts(settings: Settings, state: AppState) -> PromptCache:
    prompts = PromptCache(state.engine, refresh_s=settings.gateway.prompt_refresh_s)
    try:
        await prompts.refresh()  # before the first request: served from memory after
        log.info("prompt cache loaded: %s", prompts.stats())
    except Exception as exc:  # noqa: BLE001 - the poller keeps trying; requests get 503
        log.warning("could not load prompts at startup (retrying): %s", exc)
    return prompts


async def _start_admission(
    settings: Settings, state: AppState, config: GatewayConfig, breakers: Breakers
) -> Admission:
    """Rate limits, budgets and breaker state: in memory, in the host's ledger (workers
    without Redis), or shared through Redis; counters rebuilt before traffic is admitted."""
    shared_state = SharedState(
        settings.redis_url,
        broker_path=settings.limits_socket,
        prefix=settings.gateway.redis_prefix,
        registry=state.registry,
    )
    await shared_state.start(breakers)
    admission = Admission(
        load_limits_config(settings, config),
        config,
        state.catalog,
        shared_state,
        default_max_tokens=settings.gateway.budget_default_max_tokens,
        registry=state.registry,
    )
    if settings.worker_index in (None, 0):
        admission.log_unpriced()
    await _rebuild_limits(settings, state, admission)
    return admission


def _start_audit(
    settings: Settings, state: AppState, breakers: Breakers, admission: Admission
) -> SystemAuditWriter:
    """Audit breaker transitions and budget decisions through a writer thread (started)."""
    writer = SystemAuditWriter(
        state.engine,
        state.audit,
        max_pending=settings.audit.system_queue_max,
        registry=state.registry,
    )
    writer.start()
    gateway_audit = GatewayAudit(writer)
    breakers.listeners.append(gateway_audit.breaker_transition)
    admission.on_decision = gateway_audit.budget_decision
    return writer


def install_gateway(app: web.Application, settings: Settings) -> None:
    """Add the gateway routes; providers, pool and simulator start with the application.

    The configuration is validated here, before the server starts, so a bad ``bastion.yaml``
    stops ``serve`` with a message naming the key.
    """
    checked = load_gateway_config(settings)  # fail fast; reloaded below with the simulator's
    limits = load_limits_config(settings, None if settings.gateway.simulator else checked)
    if any(rule.estimate_from for rule in limits.budgets):
        priced = Catalog.load({**SIMULATOR_PRICES, **settings.prices})
        check_estimate_models(settings, limits, priced)
    load_cache_config(settings)
    TierRouter.from_config(checked, settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        with ExitStack() as stack:
            providers, aliases = _start_simulator(settings, stack)
            config = load_gateway_config(settings, extra_providers=providers, extra_aliases=aliases)
            _warn_missing_keys(config)
            upstream = Upstream(
                connect_timeout_s=settings.gateway.connect_timeout_s,
                read_timeout_s=settings.gateway.read_timeout_s,
                max_connections=settings.gateway.max_connections,
            )
            await upstream.start()
            prompts = await _load_prompts(settings, state)
            poller = asyncio.create_task(prompts.run())
            router = Router(config)
            breakers = Breakers(config.aliases.values(), state.registry)
            admission = await _start_admission(settings, state, config, breakers)
            shared_state = admission.shared
            response_cache = make_response_cache(
                settings, config, router, upstream, registry=state.registry, catalog=state.catalog
            )
            recorder = Recorder(
                state.pipeline,
                max_message_chars=settings.ingest.max_message_chars,
                default_project_id=state.default_project_id,
                registry=state.registry,
            )
            # Breaker transitions and budget thresholds are kept as event spans, and as audit
            # records appended off the request path.
            breakers.listeners.append(partial(_record_transition, recorder))
            admission.on_event = recorder.event
            audit_writer = _start_audit(settings, state, breakers, admission)
            app[GATEWAY] = GatewayState(
                settings=settings.gateway,
                config=config,
                router=router,
                upstream=upstream,
                recorder=recorder,
                prompts=prompts,
                breakers=breakers,
                resilience=Resilience(
                    settings.gateway, config, router, breakers, upstream, state.catalog
                ),
                admission=admission,
                shared_state=shared_state,
                cache=response_cache,
                tiers=TierRouter.from_config(config, settings),
                template_limits=ProjectLimits.from_settings(settings),
            )
            try:
                yield
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                await prompts.work.drain()  # its threads hold connections of the engine
                await shared_state.close()
                await response_cache.close()
                await upstream.close()
                # Its thread writes through the engine, which the server closes after this.
                await asyncio.get_running_loop().run_in_executor(None, audit_writer.close)

    app.cleanup_ctx.append(lifecycle)
    install_route_table(app, settings)  # release routes, from memory (bastion.releases)
    app.router.add_routes(handlers.routes)
