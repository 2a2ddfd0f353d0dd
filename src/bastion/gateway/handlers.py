"""The gateway's routes: OpenAI chat completions, embeddings and models; Anthropic messages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from bastion.auth import AuthError, Permission, Principal
from bastion.auth.credentials import presented_key
from bastion.gateway.errors import Api, GatewayError, error_response
from bastion.gateway.prompt_requests import apply_prompt
from bastion.gateway.recording import Call, TraceContext
from bastion.gateway.release_requests import apply_release, send_shadow
from bastion.gateway.state import GATEWAY, GatewayState
from bastion.gateway.validation import (
    validate_anthropic_messages,
    validate_embeddings,
    validate_openai_chat,
)
from bastion.providers.config import ModelAlias
from bastion.services.state import STATE

__all__ = ["routes"]


def _new_call(request: web.Request, api: Api, operation: str) -> Call:
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return Call(
        api=api,
        operation=operation,
        request_id=request_id[:128],
        context=TraceContext.from_headers(request.headers),
    )


async def _principal(request: web.Request) -> Principal:
    """The caller's project key, resolved from memory (reloaded off-loop only on a miss)."""
    keys = request.app[STATE].keys
    try:
        secret = presented_key(request)
    except AuthError as exc:
        raise GatewayError(401, str(exc), error_class="authentication_error") from exc
    if not secret:
        raise GatewayError(
            401,
            "missing API key: send your Bastion key as 'Authorization: Bearer <key>' "
            "or 'x-api-key'",
            error_class="authentication_error",
            code="invalid_api_key",
        )
    principal = await keys.lookup_or_reload(secret)
    if principal is None:
        raise GatewayError(
            401, "invalid or revoked API key", error_class="authentication_error",
            code="invalid_api_key",
        )  # fmt: skip
    if not principal.can(Permission.GATEWAY_CALL):
        raise GatewayError(
            403,
            f"this key's role {principal.role.value!r} does not grant "
            f"{Permission.GATEWAY_CALL.value!r} (calling models)",
            error_class="permission_error",
        )
    return principal


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(
            413,
            f"request body of {request.content_length} bytes exceeds the limit of {limit}",
            error_class="request_too_large",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise GatewayError(
                413, f"request body exceeds the limit of {limit} bytes",
                error_class="request_too_large",
            )  # fmt: skip
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as exc:
        raise GatewayError(
            400,
            f"request body is not valid JSON: {exc}",
            error_class="invalid_request",
        ) from exc


def _alias(gateway: GatewayState, name: str) -> ModelAlias:
    alias = gateway.config.alias(name)
    if alias is None:
        raise GatewayError(
            404,
            f"the model {name!r} does not exist or you do not have access to it",
            error_class="model_not_found",
            param="model",
            code="model_not_found",
        )
    return alias


def _headers(call: Call) -> dict[str, str]:
    return {"x-request-id": call.request_id, "x-bastion-trace-id": call.context.trace_id}


async def _serve(
    request: web.Request,
    api: Api,
    operation: str,
    validate: Callable[[Any], dict[str, Any]],
) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    call = _new_call(request, api, operation)
    headers = _headers(call)
    ticket = None
    try:
        principal = await _principal(request)
        call.project_id = principal.project_id
        raw = await _read_json(request, gateway.settings.max_request_bytes)
        call.request_body = raw
        call.attribute_from(request, raw)
        if operation == "chat":
            # A named route → its release (stable or rollout arm) decides model, params, prompt.
            raw = await apply_release(request, call, api, raw)
            raw = await apply_prompt(
                gateway.prompts,
                principal.project_id,
                api,
                raw,
                request.headers,
                call,
                limits=gateway.template_limits.of(principal.project_slug),
            )
        body = validate(raw)
        call.requested_model = body["model"]
        call.stream = bool(body.get("stream")) and operation == "chat"
        alias = _alias(gateway, body["model"])
        # Tiered alias → the alias of the tier its classifier chooses (gateway.tiers).
        alias = gateway.tiers.route(alias, call, api, body)
        # Rate limits and budgets (may degrade the alias); settled in `finally`.
        ticket = await gateway.admission.admit(call, principal, alias, body)
        send_shadow(request, call)  # a shadow rollout's copy, now that the request is admitted
        if ticket is not None:
            alias = ticket.alias
        # Exact and semantic response cache (gateway.cache): a hit is the answer.
        cached = await gateway.cache.lookup(request, call, api, alias, body, headers)
        if cached is not None:
            return cached
        # Deployment choice, retries, fallbacks, breakers and relaying: gateway.resilience.
        response = await gateway.resilience.serve(request, call, api, alias, body, headers)
        gateway.cache.store(call)  # keeps the answer if it completed (see lookup)
        return response
    except GatewayError as exc:
        call.fail(exc.status, exc.error_class, exc.message)
        return error_response(api, exc, headers)
    finally:
        gateway.admission.settle(ticket, call)
        gateway.recorder.record(call)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` (OpenAI), streaming or not."""
    return await _serve(request, "openai", "chat", validate_openai_chat)


async def messages(request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages`` (Anthropic), streaming or not."""
    return await _serve(request, "anthropic", "chat", validate_anthropic_messages)


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings`` (OpenAI), float or base64 vectors relayed as the provider sent."""
    return await _serve(request, "openai", "embeddings", validate_embeddings)


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models`` in the OpenAI shape, or the Anthropic one for Anthropic clients."""
    api: Api = "anthropic" if "anthropic-version" in request.headers else "openai"
    call = _new_call(request, api, "models")
    headers = _headers(call)
    try:
        await _principal(request)
    except GatewayError as exc:
        return error_response(api, exc, headers)
    aliases = sorted(request.app[GATEWAY].config.aliases.values(), key=lambda a: a.name)
    created = int(request.app[GATEWAY].started_at)
    if api == "anthropic":
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
        data = [
            {"type": "model", "id": a.name, "display_name": a.name, "created_at": stamp}
            for a in aliases
        ]
        body: dict[str, Any] = {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    else:
        body = {
            "object": "list",
            "data": [
                {"id": a.name, "object": "model", "created": created, "owned_by": "bastion"}
                for a in aliases
            ],
        }
    return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)


routes = [
    web.post("/v1/chat/completions", chat_completions),
    web.post("/v1/embeddings", embeddings),
    web.post("/v1/messages", messages),
    web.get("/v1/models", list_models),
]
