"""What the gateway holds while it runs, stored on the aiohttp application."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from bastion.gateway.admission import Admission
from bastion.gateway.breaker import Breakers
from bastion.gateway.cache import ResponseCache
from bastion.gateway.prompts import PromptCache
from bastion.gateway.recording import Recorder
from bastion.gateway.resilience import Resilience
from bastion.gateway.router import Router
from bastion.gateway.shared_state import SharedState
from bastion.gateway.tiers import TierRouter
from bastion.prompts.template_budget import ProjectLimits
from bastion.providers.config import GatewayConfig
from bastion.providers.upstream import Upstream
from bastion.settings import GatewaySettings

__all__ = ["GATEWAY", "GatewayState"]


@dataclass
class GatewayState:
    """The gateway's configuration and in-memory machinery (router, breakers, pool, caches)."""

    settings: GatewaySettings
    config: GatewayConfig
    router: Router
    upstream: Upstream
    recorder: Recorder
    prompts: PromptCache
    breakers: Breakers
    resilience: Resilience
    admission: Admission
    shared_state: SharedState
    cache: ResponseCache
    tiers: TierRouter
    template_limits: ProjectLimits = field(default_factory=ProjectLimits)  # named prompts' renders
    started_at: float = field(default_factory=time.time)


GATEWAY = web.AppKey("bastion_gateway", GatewayState)
