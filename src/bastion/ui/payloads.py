"""A span's input or output made readable: a conversation when it holds chat messages, else a
JSON tree, else text.

Producers store payloads in many shapes: the gateway keeps the request and response bodies
(OpenAI ``messages`` and ``choices``, Anthropic ``system``/``messages`` and ``content``
blocks), OpenTelemetry's GenAI conventions send ``role``/``parts`` lists, older ones
``role``/``content`` lists. Each becomes :class:`Message` objects of text, tool-call and
tool-result parts. Nothing here produces HTML: the templates escape every value they write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["JsonNode", "Message", "Part", "Payload", "json_node", "read_payload"]

MAX_DEPTH = 12  # deeper JSON is shown as indented text, so rendering depth stays bounded
MAX_ITEMS = 500  # members of one object or array shown; the rest are counted
FOLD_CHARS = 1200  # texts longer than this (or of more lines) start folded
FOLD_LINES = 20
_ROLES = {"system": "system", "developer": "system", "user": "user", "human": "user"}
_ROLES |= {"assistant": "assistant", "ai": "assistant", "model": "assistant", "tool": "tool"}
_ROLES |= {"function": "tool", "ipython": "tool"}


@dataclass(slots=True)
class JsonNode:
    """One JSON value for the collapsible viewer; containers hold their members."""

    kind: Literal["object", "array", "string", "number", "bool", "null", "raw"]
    key: str | None = None
    text: str = ""  # scalars: their JSON text (strings without quotes); raw: indented JSON
    children: list[JsonNode] = field(default_factory=list)
    size: int = 0  # members of a container
    hidden: int = 0  # members not shown (past MAX_ITEMS)
    depth: int = 0
    source: str = ""  # the whole value as indented JSON (top-level nodes only), to copy

    @property
    def folds(self) -> bool:
        """A long string or raw block, shown folded at first."""
        return len(self.text) > FOLD_CHARS or self.text.count("\n") > FOLD_LINES


@dataclass(slots=True)
class Part:
    """A piece of a message."""

    kind: Literal["text", "tool_call", "tool_result", "json"]
    text: str = ""
    name: str = ""  # a tool call's function
    call_id: str = ""
    value: JsonNode | None = None  # arguments, a structured result, or another block

    @property
    def folds(self) -> bool:
        return len(self.text) > FOLD_CHARS or self.text.count("\n") > FOLD_LINES


@dataclass(slots=True)
class Message:
    """One message: its role as said (``role``) and as shown (``style``)."""

    role: str
    style: str  # system, user, assistant, tool or other
    parts: list[Part]
    name: str = ""


@dataclass(slots=True)
class Payload:
    """What a span's input or output holds, ready for the template."""

    kind: Literal["conversation", "json", "text", "empty"]
    messages: list[Message] = field(default_factory=list)
    extras: JsonNode | None = None  # the rest of a request or response around the messages
    json: JsonNode | None = None
    text: str = ""

    @property
    def folds(self) -> bool:
        return len(self.text) > FOLD_CHARS or self.text.count("\n") > FOLD_LINES


def json_node(value: Any, key: str | None = None, depth: int = 0) -> JsonNode:
    """The viewer's tree of a decoded JSON value (containers deeper than :data:`MAX_DEPTH`
    as indented text)."""
    node = _node(value, key, depth)
    if depth == 0:
        node.source = orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()
    return node


def _node(value: Any, key: str | None, depth: int) -> JsonNode:
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        raw = orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode()
        return JsonNode("raw", key, raw, depth=depth)
    if isinstance(value, dict):
        items = list(value.items())
        node = JsonNode("object", key, size=len(items), depth=depth)
        node.children = [_node(v, str(k), depth + 1) for k, v in items[:MAX_ITEMS]]
        node.hidden = max(0, len(items) - MAX_ITEMS)
        return node
    if isinstance(value, list):
        node = JsonNode("array", key, size=len(value), depth=depth)
        node.children = [_node(v, str(i), depth + 1) for i, v in enumerate(value[:MAX_ITEMS])]
        node.hidden = max(0, len(value) - MAX_ITEMS)
        return node
    if isinstance(value, str):
        return JsonNode("string", key, value, depth=depth)
    if isinstance(value, bool):
        return JsonNode("bool", key, "true" if value else "false", depth=depth)
    if value is None:
        return JsonNode("null", key, "null", depth=depth)
    return JsonNode("number", key, orjson.dumps(value, default=str).decode(), depth=depth)


def _structured(value: Any) -> Any:
    """``value`` decoded when it is a JSON object or array in a string, else as it is."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _content_parts(value: Any) -> list[Part]:
    """Text parts of a tool result's content (a string, or blocks of text)."""
    if isinstance(value, str):
        return [Part("text", value)]
    if isinstance(value, list):
        return [part for block in value for part in _block(block)]
    return [Part("json", value=json_node(value))]


def _tool_call(call_id: Any, name: Any, arguments: Any) -> Part:
    args = _structured(arguments)
    value = json_node(args) if isinstance(args, dict | list) else None
    text = "" if value is not None else ("" if args is None else str(args))
    return Part("tool_call", text, name=str(name or ""), call_id=str(call_id or ""), value=value)


def _tool_result(call_id: Any, content: Any) -> Part:
    content = _structured(content)
    if isinstance(content, dict):
        return Part("tool_result", call_id=str(call_id or ""), value=json_node(content))
    parts = _content_parts(content)
    text = "\n".join(p.text for p in parts if p.kind == "text")
    value = None if text or not parts else parts[0].value
    return Part("tool_result", text, call_id=str(call_id or ""), value=value)


def _block(block: Any) -> list[Part]:
    """One content block of any of the known shapes."""
    if isinstance(block, str):
        return [Part("text", block)]
    if not isinstance(block, dict):
        return [Part("json", value=json_node(block))]
    kind = block.get("type")
    if kind in ("text", "input_text", "output_text") or (kind is None and "text" in block):
        text = block.get("text", block.get("content"))
        if isinstance(text, str):
            return [Part("text", text)]
    if kind in ("tool_use", "tool_call", "function_call"):
        arguments = block.get("input", block.get("arguments"))
        return [_tool_call(block.get("id") or block.get("call_id"), block.get("name"), arguments)]
    if kind in ("tool_result", "tool_call_response", "function_call_output"):
        call_id = block.get("tool_use_id") or block.get("id") or block.get("call_id")
        return [_tool_result(call_id, block.get("content", block.get("response")))]
    return [Part("json", value=json_node(block))]


def _message(raw: dict[str, Any]) -> Message:
    role = str(raw.get("role") or "unknown")
    style = _ROLES.get(role.lower(), "other")
    parts: list[Part] = []
    content = raw.get("content", raw.get("parts"))
    if style == "tool" and "tool_call_id" in raw:
        parts.append(_tool_result(raw["tool_call_id"], content))
    elif isinstance(content, str):
        parts.append(Part("text", content))
    elif isinstance(content, list):
        parts.extend(part for block in content for part in _block(block))
    elif content is not None:
        parts.append(Part("json", value=json_node(content)))
    for call in raw.get("tool_calls") or []:
        if isinstance(call, dict):
            function = call.get("function") or {}
            if not isinstance(function, dict):
                function = {}
            parts.append(
                _tool_call(call.get("id"), function.get("name"), function.get("arguments"))
            )
    legacy = raw.get("function_call")
    if isinstance(legacy, dict):
        parts.append(_tool_call(None, legacy.get("name"), legacy.get("arguments")))
    name = raw.get("name")
    return Message(role, style, parts, name=name if isinstance(name, str) else "")


def _is_messages(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(m, dict) and "role" in m for m in value)
    )


def _conversation(messages: list[Message], rest: dict[str, Any]) -> Payload:
    extras = json_node(rest) if rest else None
    return Payload("conversation", messages=messages, extras=extras)


def _from_object(data: dict[str, Any]) -> Payload | None:
    """A request or response body around messages, or None when it holds none."""
    if _is_messages(data.get("messages")):
        messages = [_message(m) for m in data["messages"]]
        system = data.get("system")
        if isinstance(system, str | list) and system:
            messages.insert(0, _message({"role": "system", "content": system}))
        rest = {k: v for k, v in data.items() if k not in ("messages", "system")}
        return _conversation(messages, rest)
    choices = data.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, dict) for c in choices):
        found = [c.get("message") or c.get("delta") for c in choices]
        if all(isinstance(m, dict) for m in found):
            rest = {k: v for k, v in data.items() if k != "choices"}
            return _conversation([_message(m) for m in found if isinstance(m, dict)], rest)
    if "role" in data and isinstance(data.get("content"), str | list):
        rest = {k: v for k, v in data.items() if k not in ("role", "content")}
        return _conversation([_message(data)], rest)
    return None


def read_payload(text: str | None) -> Payload:
    """How to show ``text`` (a span's stored input or output)."""
    if text is None or text == "":
        return Payload("empty")
    if text[:1] not in ("{", "["):
        return Payload("text", text=text)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return Payload("text", text=text)  # not JSON, or JSON cut at the stored length
    if _is_messages(data):
        return _conversation([_message(m) for m in data], {})
    if isinstance(data, dict):
        found = _from_object(data)
        if found is not None:
            return found
    return Payload("json", json=json_node(data))
