"""Requests that name a route: the route's release (stable or candidate) shapes the request.

A chat request names a route with the header ``x-bastion-route: checkout-assistant`` (and
optionally ``x-bastion-environment: staging``; production by default) or with the model
``route:checkout-assistant``. The route table (memory, see ``releases.table``) gives the stable
release and any rollout; :func:`~bastion.releases.assign.choose_arm` picks the arm from the
user id, else the session id, else the request id. The release then decides the request's model,
its parameters and tools, and which prompt version renders it: a body ``"prompt": {"variables":
{...}}`` (``name`` may be left out when the release pins one prompt) becomes a reference to the
pinned version, which the gateway's prompt step renders as usual. The span records the release
id and the attributes ``bastion.release.{route,environment,arm,rollout,step,weight}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from bastion.gateway.errors import Api, GatewayError
from bastion.gateway.recording import Call
from bastion.releases.assign import choose_arm, subject_of
from bastion.releases.config import load_releases_config
from bastion.releases.model import ENVIRONMENTS, ReleaseSpec
from bastion.releases.shadow import SHADOW_HEADER, ShadowSender
from bastion.releases.table import RouteEntry, RouteTable
from bastion.services.state import STATE
from bastion.settings import Settings
from bastion.tracing.attributes import (
    RELEASE_ARM,
    RELEASE_ENVIRONMENT,
    RELEASE_FALLBACKS,
    RELEASE_NAME,
    RELEASE_ROLLOUT,
    RELEASE_ROUTE,
    RELEASE_SHADOW_OF,
    RELEASE_STEP,
    RELEASE_STRATEGY,
    RELEASE_WEIGHT,
)

__all__ = [
    "ENVIRONMENT_HEADER",
    "ROUTE_HEADER",
    "ROUTE_TABLE",
    "apply_release",
    "install_route_table",
    "send_shadow",
]

log = logging.getLogger("bastion.releases")

ROUTE_HEADER = "x-bastion-route"
ENVIRONMENT_HEADER = "x-bastion-environment"
ROUTE_MODEL_PREFIX = "route:"
ROUTE_TABLE = web.AppKey("bastion_route_table", RouteTable)
SHADOW = web.AppKey("bastion_release_shadow", ShadowSender)
_PENDING_SHADOW = "bastion_release_pending_shadow"  # request key: (original body, rollout id)


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, error_class="invalid_request", param=param)


def _route_of(headers: Any, raw: dict[str, Any]) -> str | None:
    header = headers.get(ROUTE_HEADER)
    model = raw.get("model")
    from_model = (
        model[len(ROUTE_MODEL_PREFIX) :]
        if isinstance(model, str) and model.startswith(ROUTE_MODEL_PREFIX)
        else None
    )
    if header is not None and from_model is not None and header.strip() != from_model:
        raise _invalid(
            f"the {ROUTE_HEADER} header ({header!r}) and the model ({model!r}) name different "
            "routes",
            ROUTE_HEADER,
        )
    route = header.strip() if header is not None else from_model
    if route is not None and not route:
        raise _invalid(f"the route name is empty ({ROUTE_HEADER} or model 'route:NAME')", "model")
    return route


def _prompt(spec: ReleaseSpec, route: str, raw: dict[str, Any], headers: Any) -> None:
    """Point the request at the release's pinned prompt version (in the body form)."""
    if headers.get("x-bastion-prompt") is not None:
        raise _invalid(
            f"route {route!r}: its release decides the prompt; give variables in the body as "
            '"prompt": {"variables": {...}} instead of the x-bastion-prompt header',
            "x-bastion-prompt",
        )
    given = raw.get("prompt")
    if given is None and raw.get("messages"):
        return  # the app sends its own messages; the release sets model and parameters
    if given is not None and not isinstance(given, dict):
        raise _invalid('prompt must be an object: {"name"?, "variables"?}', "prompt")
    ref: dict[str, Any] = dict(given or {})
    for pinned in ("label", "version"):
        if pinned in ref:
            raise _invalid(
                f"route {route!r}: the release pins prompt versions; prompt.{pinned} is not "
                "allowed on a route",
                f"prompt.{pinned}",
            )
    name = ref.get("name")
    if name is None:
        if len(spec.prompts) != 1:
            names = ", ".join(sorted(spec.prompts)) or "none"
            raise _invalid(
                f"route {route!r}: name the prompt (prompt.name); its release pins: {names}",
                "prompt.name",
            )
        name = next(iter(spec.prompts))
    if name not in spec.prompts:
        raise _invalid(
            f"route {route!r}: its release {spec.name!r} pins no prompt {name!r} "
            f"(pins: {', '.join(sorted(spec.prompts)) or 'none'})",
            "prompt.name",
        )
    raw["prompt"] = {**ref, "name": name, "version": spec.prompts[name]}


def _choose(entry: RouteEntry, call: Call, shadow_of: str | None) -> tuple[str, ReleaseSpec, str]:
    rollout = entry.rollout
    if rollout is None:
        return "stable", entry.stable.spec, entry.stable.release_id
    call.attributes[RELEASE_ROLLOUT] = rollout.rollout_id
    call.attributes[RELEASE_STEP] = rollout.step
    call.attributes[RELEASE_WEIGHT] = rollout.weight
    call.attributes[RELEASE_STRATEGY] = rollout.strategy
    if shadow_of is not None:
        call.attributes[RELEASE_SHADOW_OF] = shadow_of
        return "shadow", rollout.candidate.spec, rollout.candidate.release_id
    _kind, subject = subject_of(call.attribution, call.request_id)
    arm = choose_arm(rollout.strategy, rollout.weight, entry.route, rollout.rollout_id, subject)
    if arm in ("canary", "b"):
        return arm, rollout.candidate.spec, rollout.candidate.release_id
    return arm, entry.stable.spec, entry.stable.release_id


def _shadow_of(request: web.Request, entry: RouteEntry) -> str | None:
    """The primary trace id of a genuine shadow copy for the route's running shadow rollout."""
    value = request.headers.get(SHADOW_HEADER)
    if value is None:
        return None
    sender = request.app.get(SHADOW)
    found = sender.verify(value) if sender is not None else None
    if found is None:
        raise _invalid(
            f"{SHADOW_HEADER} is set by the gateway itself, not by clients", SHADOW_HEADER
        )
    rollout_id, trace_id = found
    rollout = entry.rollout
    if rollout is None or rollout.rollout_id != rollout_id or rollout.strategy != "shadow":
        raise GatewayError(
            409, "the shadow rollout this copy was made for has ended", error_class="shadow_ended"
        )
    return trace_id


def _local_url(request: web.Request) -> str | None:
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sock, tuple) or len(sock) < 2:
        return None
    host = str(sock[0])
    return f"http://[{host}]:{sock[1]}" if ":" in host else f"http://{host}:{sock[1]}"


def send_shadow(request: web.Request, call: Call) -> None:
    """Send the copy of an admitted request that :func:`apply_release` marked for a shadow
    rollout (nothing for other requests); never waits for it."""
    pending = request.get(_PENDING_SHADOW)
    if pending is None:
        return
    del request[_PENDING_SHADOW]
    raw, rollout_id = pending
    sender, base = request.app.get(SHADOW), _local_url(request)
    if sender is not None and base is not None:
        sender.schedule(base, request.path, raw, request.headers, rollout_id, call.context.trace_id)


async def apply_release(request: web.Request, call: Call, api: Api, raw: Any) -> Any:
    """``raw`` shaped by its route's release; unchanged when the request names no route.

    Runs before the prompt step (which renders the pinned version) and reads only memory.
    """
    if not isinstance(raw, dict):
        return raw
    route = _route_of(request.headers, raw)
    if route is None:
        return raw
    environment = (request.headers.get(ENVIRONMENT_HEADER) or "production").strip()
    if environment not in ENVIRONMENTS:
        raise _invalid(
            f"{ENVIRONMENT_HEADER} must be one of {', '.join(ENVIRONMENTS)}, not {environment!r}",
            ENVIRONMENT_HEADER,
        )
    call.attributes[RELEASE_ROUTE] = route[:200]
    call.attributes[RELEASE_ENVIRONMENT] = environment
    table = request.app.get(ROUTE_TABLE)
    if table is None or call.project_id is None:
        raise GatewayError(503, "release routes are not available", error_class="unavailable")
    entry = await table.get(call.project_id, route, environment)
    if entry is None:
        if not table.loaded:
            raise GatewayError(
                503,
                "the release routes are not loaded yet; retry shortly",
                error_class="unavailable",
            )
        raise GatewayError(
            404,
            f"no release is deployed on route {route!r} in {environment}",
            error_class="route_not_found",
            param=ROUTE_HEADER,
        )
    shadow_of = _shadow_of(request, entry)
    if shadow_of is not None:
        call.shadow_route = route  # admission counts it under `shadow` rules, not the caller's
    arm, spec, release_id = _choose(entry, call, shadow_of)
    rollout = entry.rollout
    if rollout is not None and rollout.strategy == "shadow" and shadow_of is None:
        # Sent by send_shadow once the request is admitted: a refused request is not copied.
        request[_PENDING_SHADOW] = (raw, rollout.rollout_id)
    call.release_id = release_id
    call.attributes[RELEASE_ARM] = arm
    call.attributes[RELEASE_NAME] = spec.name
    shaped = {k: v for k, v in raw.items() if k != "model"}
    _prompt(spec, route, shaped, request.headers)
    shaped.update(spec.params)  # the deployed release decides its parameters
    if spec.tools and "tools" not in shaped:
        shaped["tools"] = [dict(t) for t in spec.tools]
    shaped["model"] = spec.model
    if spec.fallbacks:
        call.attributes[RELEASE_FALLBACKS] = list(spec.fallbacks)
        call.fallbacks = tuple(spec.fallbacks)  # replace the alias's own (gateway.resilience)
    return shaped


def install_route_table(app: web.Application, settings: Settings) -> None:
    """Load the route table when the application starts and poll it while it runs."""
    config = load_releases_config(settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        table = RouteTable(app[STATE].engine, refresh_s=config.refresh_s)
        try:
            await table.refresh()
            log.info("release routes loaded: %d", len(table))
        except Exception as exc:  # noqa: BLE001 - the poller keeps trying; routed requests get 503
            log.warning("could not load release routes at startup (retrying): %s", exc)
        app[ROUTE_TABLE] = table
        app[SHADOW] = sender = ShadowSender(registry=app[STATE].registry)
        poller = asyncio.create_task(table.run())
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await sender.close()
            await table.work.drain()

    app.cleanup_ctx.append(lifecycle)
