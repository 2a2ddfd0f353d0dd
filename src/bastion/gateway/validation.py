"""Request validation: a 400 naming the parameter, before anything reaches a provider."""

from __future__ import annotations

from typing import Any

from bastion.gateway.errors import GatewayError

__all__ = ["validate_anthropic_messages", "validate_embeddings", "validate_openai_chat"]

_OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_ANTHROPIC_ROLES = frozenset({"user", "assistant"})


def _invalid(message: str, param: str) -> GatewayError:
    return GatewayError(400, message, error_class="invalid_request", param=param)


def _require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise GatewayError(400, "request body must be a JSON object", error_class="invalid_request")
    return body


def _model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("you must provide a model parameter (a non-empty string)", "model")


def _number(body: dict[str, Any], name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _invalid(f"{name} must be a number between {low:g} and {high:g}", name)


def _integer(body: dict[str, Any], name: str, low: int, high: int | None = None) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _invalid(f"{name} must be an integer >= {low}", name)
    if high is not None and value > high:
        raise _invalid(f"{name} must be an integer <= {high}", name)


def _boolean(body: dict[str, Any], name: str) -> None:
    if name in body and body[name] is not None and not isinstance(body[name], bool):
        raise _invalid(f"{name} must be true or false", name)


def validate_openai_chat(raw: Any) -> dict[str, Any]:
    body = _require_object(raw)
    _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages must be a non-empty array", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages[{i}] must be an object", f"messages[{i}]")
        if message.get("role") not in _OPENAI_ROLES:
            roles = ", ".join(sorted(_OPENAI_ROLES))
            raise _invalid(f"messages[{i}].role must be one of {roles}", f"messages[{i}].role")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _invalid(
                f"messages[{i}].content must be a string or an array", f"messages[{i}].content"
            )
    _boolean(body, "stream")
    _integer(body, "n", 1, 128)
    _integer(body, "max_tokens", 1)
    _integer(body, "max_completion_tokens", 1)
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _invalid("tools must be an array", "tools")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _invalid(f"tools[{i}].function.name is required", f"tools[{i}]")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _invalid("stream_options must be an object", "stream_options")
    return body


def validate_anthropic_messages(raw: Any) -> dict[str, Any]:
    body = _require_object(raw)
    _model(body)
    if "max_tokens" not in body:
        raise _invalid("max_tokens: Field required", "max_tokens")
    _integer(body, "max_tokens", 1)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages: must be a non-empty list", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ANTHROPIC_ROLES:
            raise _invalid(f"messages.{i}.role: must be 'user' or 'assistant'", "messages")
        if not isinstance(message.get("content"), str | list):
            raise _invalid(f"messages.{i}.content: must be a string or a list", "messages")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _invalid("system: must be a string or a list of text blocks", "system")
    _boolean(body, "stream")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    return body


def validate_embeddings(raw: Any) -> dict[str, Any]:
    body = _require_object(raw)
    _model(body)
    value = body.get("input")
    ok = (isinstance(value, str) and value != "") or (
        isinstance(value, list) and value and all(_embeddable(v) for v in value)
    )
    if not ok:
        raise _invalid(
            "input must be a non-empty string or a non-empty array of strings or tokens", "input"
        )
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise _invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
    _integer(body, "dimensions", 1)
    return body


def _embeddable(value: Any) -> bool:
    if isinstance(value, str):
        return value != ""
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) for t in value)
