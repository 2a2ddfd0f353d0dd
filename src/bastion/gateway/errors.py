"""Errors in each API's own shape, so SDKs raise their usual exceptions."""

from __future__ import annotations

from typing import Literal

import orjson
from aiohttp import web

__all__ = ["Api", "GatewayError", "error_body", "error_response"]

Api = Literal["openai", "anthropic"]

# OpenAI error "type" → Anthropic error "type", by HTTP status where the names differ.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class GatewayError(Exception):
    """A request the gateway answers itself with ``status`` and a message naming the problem.

    ``error_class`` is what the span records (``invalid_request``, ``model_not_found``,
    ``upstream_timeout`` …). ``retry_after_s`` is the provider's own ``Retry-After``, which
    the retry loop honours (the client-facing header may carry a default).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_class: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_class = error_class
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.retry_after_s = retry_after_s  # what the provider asked for, if it did


def error_body(api: Api, error: GatewayError) -> bytes:
    if api == "anthropic":
        kind = _ANTHROPIC_TYPES.get(error.status, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": error.message}})
    kind = _OPENAI_TYPES.get(
        error.status, "api_error" if error.status >= 500 else "invalid_request_error"
    )
    return orjson.dumps(
        {
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": error.code or error.error_class,
            }
        }
    )


def error_response(api: Api, error: GatewayError, headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=error.status,
        body=error_body(api, error),
        content_type="application/json",
        headers={**headers, **error.headers},
    )
