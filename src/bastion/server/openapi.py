"""Typed JSON routes and the OpenAPI document generated from them.

A route declares its query model and response model (pydantic); the same declaration parses
and validates the request (a 400 naming the bad parameter) and documents the route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

__all__ = [
    "ApiError",
    "ApiRoute",
    "json_response",
    "openapi_document",
    "parse_body",
    "parse_query",
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


def parse_query(request: web.Request, model: type[_M]) -> _M:
    """Validate the query string against ``model``; a 400 naming the first bad parameter."""
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
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "query"
        raise ApiError(400, f"invalid query parameter {name!r}: {first['msg']}") from exc


def parse_body(raw: bytes, model: type[_M]) -> _M:
    """Validate a JSON request body against ``model``; a 400 naming the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise ApiError(400, f"invalid body: {where}: {first['msg']}") from exc


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
    auth: str | None = "read"
    # Further error statuses the route answers, documented beside 400/401/403.
    errors: tuple[tuple[int, str], ...] = ()

    def aiohttp(self) -> web.RouteDef:
        return web.route(self.method, self.path, self.handler)


def openapi_document(routes: list[ApiRoute], *, version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``routes``."""
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, str]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    for route in routes:
        op: dict[str, Any] = {"summary": route.summary, "tags": [route.tag], "responses": {}}
        if route.auth:
            op["security"] = [{"bearer": []}]
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(route.path)
        ]
        if route.query is not None:
            for name, field in route.query.model_fields.items():
                schema = route.query.model_json_schema()["properties"].get(name, {})
                params.append(
                    {
                        "name": name,
                        "in": "query",
                        "required": field.is_required(),
                        "description": field.description or "",
                        "schema": schema,
                    }
                )
        if params:
            op["parameters"] = params
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(route.body)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": ref(route.response)}}
        op["responses"]["200"] = ok
        op["responses"]["400"] = {"description": "invalid request (the message names the problem)"}
        if route.auth:
            op["responses"]["401"] = {"description": "missing or invalid API key"}
            op["responses"]["403"] = {"description": "the key's role does not allow this"}
        for status, description in route.errors:
            op["responses"][str(status)] = {"description": description}
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


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]
