"""Typed JSON routes and the OpenAPI document generated from them.

A route declares its query model and response model (pydantic); the same declaration parses
and validates the request (a 400 naming the bad parameter) and documents the route.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, get_args

import orjson
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from bastion.server.route_access import Access
from bastion.store.time_range import TIME_RANGE, TimeRangeError, check_time

__all__ = [
    "MAX_VERSION",
    "ApiError",
    "ApiRoute",
    "ErrorOut",
    "json_response",
    "openapi_document",
    "parse_body",
    "parse_query",
    "refuse_nul",
]


class ApiError(Exception):
    """An error to return as ``{"error": {"type", "message"}}`` with ``status``."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def json_response(payload: Any, status: int = 200) -> web.Response:
    if isinstance(payload, BaseModel):
        body = payload.model_dump_json().encode()
    else:
        body = orjson.dumps(payload, default=_default)
    return web.Response(body=body, status=status, content_type="application/json")


def _default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__}")


_M = TypeVar("_M", bound=BaseModel)
# Versions (and row counts to skip) are 32-bit integer columns on PostgreSQL.
MAX_VERSION = 2**31 - 1
# The JSON escape of NUL, unless its backslash is itself escaped (JSON "\\u0000" is text).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def refuse_nul(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 400 for an API request whose path or query holds a NUL character.

    PostgreSQL cannot store or even compare NUL in text (SQLite can), so a NUL that reached a
    query would be a server error on one backend and data the other cannot hold; refusing it
    at the edge answers the same on both.
    """
    if request.path.startswith("/api/"):
        if "\x00" in request.path:
            raise ApiError(400, "invalid path: it holds a NUL character (%00)")
        for key, value in request.query.items():
            if "\x00" in key or "\x00" in value:
                raise ApiError(400, f"invalid query parameter {key!r}: it holds a NUL character")
    return await handler(request)


def parse_query(request: web.Request, model: type[_M]) -> _M:
    """Validate the query string against ``model``; a 400 naming the first bad parameter.

    Times must also lie in the range the store can hold (:mod:`bastion.store.time_range`).
    """
    raw: dict[str, Any] = {}
    for key in request.query:
        values = request.query.getall(key)
        field = model.model_fields.get(key)
        is_list = field is not None and "list" in str(field.annotation)
        raw[key] = values if is_list else values[-1]
    unknown = set(raw) - set(model.model_fields)
    if unknown:
        raise ApiError(400, f"unknown query parameter {sorted(unknown)[0]!r}")
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "query"
        raise ApiError(400, f"invalid query parameter {name!r}: {first['msg']}") from exc
    for name in model.model_fields:
        value = getattr(parsed, name)
        if isinstance(value, datetime):
            try:
                check_time(value, name)
            except TimeRangeError as exc:
                raise ApiError(400, f"invalid query parameter {name!r}: {exc}") from exc
    return parsed


def parse_body(raw: bytes, model: type[_M]) -> _M:
    """Validate a JSON request body against ``model``; a 400 naming the first bad field.

    A NUL character in a string is refused like in a URL (see :func:`refuse_nul`).
    """
    if b"\\u0000" in raw and _JSON_NUL.search(raw):
        raise ApiError(400, "invalid body: a string holds a NUL character (\\u0000)")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid body: {where}: {first['msg']}") from exc


class ErrorDetail(BaseModel):
    type: str = Field(description="a machine-readable kind, e.g. invalid_request, not_found")
    message: str = Field(description="what is wrong, naming the parameter or field")


class ErrorOut(BaseModel):
    """The body of every error response of the API."""

    error: ErrorDetail


@dataclass(frozen=True)
class ApiRoute:
    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    # What the caller needs (see bastion.server.route_access); declared by every route.
    access: Access = dataclasses.field(kw_only=True)
    # Further error statuses the route answers, documented beside 400/401/403.
    errors: tuple[tuple[int, str], ...] = ()
    # The statuses a success answers with ``response``: 201 when something was created.
    success: tuple[int, ...] = (200,)

    def aiohttp(self) -> web.RouteDef:
        return web.route(self.method, self.path, self.handler)


_SUCCESS = {200: "OK", 201: "created"}


def openapi_document(routes: list[ApiRoute], *, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``routes``: parameters, bodies and every response's schema."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "tags": [route.tag]}
        if not route.access.public:
            op["security"] = [{"bearer": []}]
            if route.access.permission is not None:
                op["x-bastion-permission"] = route.access.permission.value
        params = _parameters(route)
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.body)}},
            }
        op["responses"] = _responses(route, ref)
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bastion API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _parameters(route: ApiRoute) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _path_params(route.path)
    ]
    if route.query is None:
        return params
    properties = route.query.model_json_schema()["properties"]
    for name, field in route.query.model_fields.items():
        schema = properties.get(name, {})
        description = field.description or ""
        if _is_time(field.annotation):
            description = f"{description} ({TIME_RANGE})".lstrip()
        params.append(
            {
                "name": name,
                "in": "query",
                "required": field.is_required(),
                "description": description,
                "schema": schema,
            }
        )
    return params


def _responses(route: ApiRoute, ref: Callable[[type[BaseModel]], dict[str, str]]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in route.success:
        ok: dict[str, Any] = {"description": _SUCCESS.get(status, "OK")}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": ref(route.response)}}
        responses[str(status)] = ok
    errors: dict[int, str] = {400: "invalid request (the message names the problem)"}
    if route.body is not None:
        errors[413] = "the request body is too large"
    if not route.access.public:
        errors[401] = "missing or invalid API key (or no session)"
        errors[403] = "the caller's role does not grant the permission"
        errors[503] = "a new API key cannot be checked while the database is down"
    if _path_params(route.path):
        # Also a path the router cannot match, e.g. a parameter holding a slash.
        errors[404] = "not found"
    errors.update(route.errors)
    error_body = {"application/json": {"schema": ref(ErrorOut)}}
    for status, description in sorted(errors.items()):
        responses[str(status)] = {"description": description, "content": error_body}
    return responses


def _is_time(annotation: Any) -> bool:
    return annotation is datetime or any(_is_time(arg) for arg in get_args(annotation))


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
