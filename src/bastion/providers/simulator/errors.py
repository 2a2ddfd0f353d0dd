"""Error bodies in each provider's shape: OpenAI ``{"error": {...}}``, Anthropic
``{"type": "error", "error": {...}}``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

import orjson
from aiohttp import web

__all__ = ["Api", "api_error", "json_response", "unauthorized"]

Api = Literal["openai", "anthropic"]

# OpenAI error ``type`` for each Anthropic-style kind used by the simulator.
_OPENAI_TYPES = MappingProxyType(
    {
        "invalid_request_error": "invalid_request_error",
        "authentication_error": "invalid_request_error",
        "not_found_error": "invalid_request_error",
        "rate_limit_error": "rate_limit_exceeded",
        "api_error": "server_error",
        "overloaded_error": "server_error",
        "timeout_error": "server_error",
    }
)
_OPENAI_CODES = MappingProxyType(
    {
        "authentication_error": "invalid_api_key",
        "not_found_error": "not_found",
        "rate_limit_error": "rate_limit_exceeded",
    }
)


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``payload`` serialised with orjson as an ``application/json`` response."""
    return web.Response(
        status=status, body=orjson.dumps(payload), content_type="application/json", headers=headers
    )


def api_error(
    api: Api,
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    *,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An error response as ``api`` formats it; ``kind`` is an Anthropic error type."""
    if api == "anthropic":
        body: dict[str, object] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        body = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(kind, kind),
                "param": param,
                "code": _OPENAI_CODES.get(kind),
            }
        }
    return json_response(body, status, headers)


def unauthorized(api: Api) -> web.Response:
    """401 for a missing or wrong key, in ``api``'s shape."""
    return api_error(api, 401, "Incorrect API key provided (simulator).", "authentication_error")
