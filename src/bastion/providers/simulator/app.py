"""The simulator's aiohttp application: OpenAI routes (chat, embeddings, models), Anthropic
routes (messages, models), the control routes ``/_sim/stats`` and ``/_sim/reset``, and
``/healthz``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bastion.providers.simulator.anthropic_api import count_message_tokens, messages
from bastion.providers.simulator.config import SimulatorConfig
from bastion.providers.simulator.errors import Api, api_error, json_response, unauthorized
from bastion.providers.simulator.openai_api import chat_completions, embeddings
from bastion.providers.simulator.state import SIMULATOR, SimulatorState, authorized

__all__ = ["SIMULATOR", "SimulatorState", "create_simulator_app"]

_BUILTIN_MODELS = ("sim-small", "sim-large")
_CREATED = 1_767_225_600  # 2026-01-01T00:00:00Z
_CREATED_AT = "2026-01-01T00:00:00Z"


def _api(request: web.Request) -> Api:
    """Anthropic's SDK always sends ``anthropic-version``; OpenAI's never does."""
    return "anthropic" if "anthropic-version" in request.headers else "openai"


def _listed_models(config: SimulatorConfig) -> list[str]:
    return list(dict.fromkeys((*_BUILTIN_MODELS, *config.models)))


def _model_entry(api: Api, model: str) -> dict[str, Any]:
    if api == "anthropic":
        return {"type": "model", "id": model, "display_name": model, "created_at": _CREATED_AT}
    return {"id": model, "object": "model", "created": _CREATED, "owned_by": "bastion-simulator"}


async def list_models(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models`` in the shape of the API that asks (by ``anthropic-version``)."""
    state = request.app[SIMULATOR]
    state.stats.requests += 1
    state.stats.routes["models"] += 1
    api = _api(request)
    if not authorized(request, state.config):
        return unauthorized(api)
    data = [_model_entry(api, m) for m in _listed_models(state.config)]
    if api == "anthropic":
        return json_response(
            {
                "data": data,
                "has_more": False,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            }
        )
    return json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.StreamResponse:
    """``GET /v1/models/{model}``: any name exists (the simulator serves whatever it is asked)."""
    state = request.app[SIMULATOR]
    state.stats.requests += 1
    state.stats.routes["models"] += 1
    api = _api(request)
    if not authorized(request, state.config):
        return unauthorized(api)
    return json_response(_model_entry(api, request.match_info["model"]))


async def stats(request: web.Request) -> web.StreamResponse:
    """``GET /_sim/stats``: request, model, fault and token counters."""
    return json_response(request.app[SIMULATOR].stats.as_json())


async def reset(request: web.Request) -> web.StreamResponse:
    """``POST /_sim/reset``: zero the counters."""
    state = request.app[SIMULATOR]
    state.stats.reset()
    return json_response(state.stats.as_json())


async def healthz(_request: web.Request) -> web.StreamResponse:
    """``GET /healthz``."""
    return json_response({"status": "ok"})


async def not_found(request: web.Request) -> web.StreamResponse:
    """Anything else: 404 in the caller's API shape."""
    message = f"Unknown route {request.method} {request.path} (simulator)."
    return api_error(_api(request), 404, message, "not_found_error")


async def _wake_sleepers(app: web.Application) -> None:
    app[SIMULATOR].closing.set()


def create_simulator_app(config: SimulatorConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application; its state lives in ``app[SIMULATOR]``.

    Run it with any aiohttp runner, or use :class:`SimulatorServer` / :func:`run_simulator`.
    Pass ``handler_cancellation=True`` to the runner so that handlers (hanging faults, paced
    streams) stop when their client goes away.
    """
    config = config or SimulatorConfig()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[SIMULATOR] = SimulatorState.create(config)
    app.on_shutdown.append(_wake_sleepers)
    router = app.router
    router.add_post("/v1/chat/completions", chat_completions)
    router.add_post("/v1/embeddings", embeddings)
    router.add_post("/v1/messages", messages)
    router.add_post("/v1/messages/count_tokens", count_message_tokens)
    router.add_get("/v1/models", list_models, allow_head=False)
    router.add_get("/v1/models/{model}", get_model, allow_head=False)
    router.add_get("/_sim/stats", stats, allow_head=False)
    router.add_post("/_sim/reset", reset)
    router.add_get("/healthz", healthz)
    router.add_route("*", "/{tail:.*}", not_found)
    return app
