"""Request bodies between the OpenAI Chat Completions and Anthropic Messages formats."""

from __future__ import annotations

from typing import Any

import orjson

__all__ = [
    "TranslationError",
    "anthropic_to_openai_request",
    "openai_to_anthropic_request",
    "openai_tool_call",
]

DEFAULT_ANTHROPIC_MAX_TOKENS = 4096


class TranslationError(ValueError):
    """The request uses a feature the target format cannot express; ``param`` names it."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# --- OpenAI → Anthropic -------------------------------------------------------------------


def openai_to_anthropic_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An Anthropic Messages request equivalent to an OpenAI chat completion request."""
    if int(body.get("n") or 1) != 1:
        raise TranslationError("n > 1 is not supported by Anthropic models", "n")
    system_parts: list[str] = []
    messages: list[dict[str, Any]] = []
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role in ("system", "developer"):
            system_parts.append(_text_of(message.get("content")))
        elif role == "user":
            _append(messages, "user", _openai_parts_to_blocks(message.get("content"), i))
        elif role == "assistant":
            blocks = _openai_parts_to_blocks(message.get("content"), i)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.get("id") or f"toolu_{i}",
                        "name": function.get("name", ""),
                        "input": _json_arguments(function.get("arguments")),
                    }
                )
            _append(messages, "assistant", blocks)
        elif role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text_of(message.get("content")),
            }
            _append(messages, "user", [block])
        else:
            raise TranslationError(f"messages[{i}].role {role!r} is not supported", "messages")
    out: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or DEFAULT_ANTHROPIC_MAX_TOKENS,
    }
    response_format = body.get("response_format") or {}
    if response_format.get("type") in ("json_object", "json_schema"):
        instruction = "Respond with one valid JSON object and nothing else."
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema:
            instruction += " It must match this JSON schema: " + orjson.dumps(schema).decode()
        system_parts.append(instruction)
    if system_parts:
        out["system"] = "\n\n".join(p for p in system_parts if p)
    if body.get("temperature") is not None:
        out["temperature"] = min(1.0, float(body["temperature"]))
    if body.get("top_p") is not None:
        out["top_p"] = body["top_p"]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [_openai_tool_to_anthropic(t) for t in body["tools"]]
        choice = _openai_tool_choice(body.get("tool_choice"))
        if body.get("parallel_tool_calls") is False:
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
        if choice is not None:
            out["tool_choice"] = choice
    if body.get("user"):
        out["metadata"] = {"user_id": str(body["user"])}
    if body.get("stream"):
        out["stream"] = True
    return out


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    # Anthropic wants roles to alternate: consecutive turns of one role become one message.
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return str(content)


def _openai_parts_to_blocks(content: Any, index: int) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise TranslationError(f"messages[{index}].content must be a string or a list", "messages")
    blocks: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            blocks.append({"type": "image", "source": _image_source(url)})
        else:
            raise TranslationError(
                f"messages[{index}].content part type {kind!r} is not supported by Anthropic",
                "messages",
            )
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    if url.startswith("data:") and ";base64," in url:
        header, data = url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": header, "data": data}
    return {"type": "url", "url": url}


def _json_arguments(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError as exc:
        raise TranslationError("tool call arguments are not valid JSON", "messages") from exc


def _openai_tool_to_anthropic(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    out: dict[str, Any] = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _openai_tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None or choice == "auto":
        return None
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return {"type": "tool", "name": name}
    raise TranslationError(f"tool_choice {choice!r} is not supported", "tool_choice")


# --- Anthropic → OpenAI -------------------------------------------------------------------


def openai_tool_call(block: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI ``tool_calls`` entry from an Anthropic ``tool_use`` content block."""
    return {
        "id": block.get("id", ""),
        "type": "function",
        "function": {
            "name": block.get("name", ""),
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def anthropic_to_openai_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """An OpenAI chat completion request equivalent to an Anthropic Messages request."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for i, message in enumerate(body.get("messages") or []):
        messages.extend(_openai_messages(i, message))
    out: dict[str, Any] = {"model": model, "messages": messages}
    for source, target in (
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
    ):
        if body.get(source) is not None:
            out[target] = body[source]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        _add_openai_tools(body, out)
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = str(user)
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _openai_messages(i: int, message: dict[str, Any]) -> list[dict[str, Any]]:
    """The OpenAI messages of Anthropic message ``i``: its tool results (each its own ``tool``
    message) first, then the message itself."""
    role = message.get("role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for block in content or []:
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif kind == "tool_use":
            tool_calls.append(openai_tool_call(block))
        elif kind == "tool_result":
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": block.get("tool_use_id", ""),
                    "content": _text_of(block.get("content")),
                }
            )
        elif kind in ("thinking", "redacted_thinking"):
            continue  # no OpenAI equivalent; the model thinks again
        else:
            raise TranslationError(
                f"messages[{i}] content block type {kind!r} is not supported", "messages"
            )
    if role == "assistant":
        out_message: dict[str, Any] = {"role": "assistant", "content": _joined(parts)}
        if tool_calls:
            out_message["tool_calls"] = tool_calls
        messages.append(out_message)
    elif parts:
        messages.append({"role": role, "content": _simplified(parts)})
    return messages


def _add_openai_tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    out["tools"] = [
        {
            "type": "function",
            "function": {
                "name": t.get("name", ""),
                "description": t.get("description", ""),
                "parameters": t.get("input_schema") or {"type": "object"},
            },
        }
        for t in body["tools"]
    ]
    choice = body.get("tool_choice") or {}
    kind = choice.get("type")
    if kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def _image_url(block: dict[str, Any]) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    return str(source.get("url", ""))


def _joined(parts: list[dict[str, Any]]) -> str | None:
    text = "".join(p.get("text", "") for p in parts if p["type"] == "text")
    return text or None


def _simplified(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts
