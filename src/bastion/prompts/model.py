"""The prompt data model: `PromptSpec`, its variables, validation and the canonical form.

A `PromptSpec` is the *content* of one prompt version, exactly what a `<name>.prompt.yaml` file
declares. It is plain data: validating it (`PromptSpec.from_dict`) and hashing it
(`PromptSpec.content_hash`) need no database and no template engine, so the CLI, the registry and
the gateway all agree on what "the same prompt" means.

The canonical form is `orjson` with sorted keys over `to_dict()`. `to_dict()` normalises what a
human may write in several ways (a variable's `type: string` is always spelt out, `required`
appears only when it says something a default does not), so two files that differ only in key
order, quoting or whitespace hash the same, and any change to the content changes the hash.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from bastion import names
from bastion.store.storable import storable_json_bytes

__all__ = [
    "NAME_PATTERN",
    "ROLES",
    "VARIABLE_TYPES",
    "PromptSpec",
    "PromptSpecError",
    "Variable",
    "VariableType",
]

VariableType = Literal["string", "number", "integer", "boolean", "list", "object"]
VARIABLE_TYPES: tuple[str, ...] = get_args(VariableType)

#: Prompt names (`bastion.names.PROMPT`, matched whole): lowercase, also valid file stems and
#: URL path segments (no `/`).
NAME_PATTERN = names.PROMPT.pattern
_VARIABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")  # a Jinja identifier, never `_x`

ROLES: tuple[str, ...] = ("system", "developer", "user", "assistant", "tool")
_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
_TOP_KEYS = (
    "name",
    "description",
    "model",
    "params",
    "variables",
    "messages",
    "text",
    "tools",
    "response_format",
    "metadata",
)
_VARIABLE_KEYS = ("type", "required", "default", "description")
_INT64 = 2**63  # orjson refuses wider ints; refusing them here keeps the error at load time

Path = tuple[str | int, ...]


def format_path(path: Path) -> str:
    """`("messages", 1, "content")` -> `"messages[1].content"`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class PromptSpecError(ValueError):
    """A prompt's content is invalid. `path` locates the offending key (`()` for the whole)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        where = format_path(path)
        super().__init__(f"{where}: {reason}" if where else reason)


@dataclass(frozen=True, slots=True)
class Variable:
    """One declared template variable. A default implies the variable is optional."""

    name: str
    type: VariableType = "string"
    required: bool = True
    default: Any = None
    description: str | None = None

    def __post_init__(self) -> None:
        # "required with a default" is meaningless; normalise so equality and hashing agree.
        if self.default is not None and self.required:
            object.__setattr__(self, "required", False)

    def accepts(self, value: Any) -> bool:
        """Whether `value` has this variable's type (bool is not a number here)."""
        return _type_matches(self.type, value)

    def to_dict(self) -> dict[str, Any]:
        """The file shape: `{type, required?, default?, description?}`."""
        out: dict[str, Any] = {"type": self.type}
        if not self.required and self.default is None:
            out["required"] = False
        if self.default is not None:
            out["default"] = self.default
        if self.description is not None:
            out["description"] = self.description
        return out


def _type_matches(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "list":
        return isinstance(value, list | tuple)
    return isinstance(value, Mapping)  # "object"


@dataclass(frozen=True, slots=True)
class PromptSpec:
    """The content of one prompt version: what a `<name>.prompt.yaml` file declares."""

    name: str
    messages: tuple[dict[str, Any], ...] | None = None
    text: str | None = None
    variables: Mapping[str, Variable] = field(default_factory=dict)
    description: str | None = None
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    tools: tuple[dict[str, Any], ...] | None = None
    response_format: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, in the file's shape and key order; empty and None fields are omitted."""
        out: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            out["description"] = self.description
        if self.model is not None:
            out["model"] = self.model
        if self.params:
            out["params"] = dict(self.params)
        if self.variables:
            out["variables"] = {name: v.to_dict() for name, v in self.variables.items()}
        if self.messages is not None:
            out["messages"] = [dict(m) for m in self.messages]
        if self.text is not None:
            out["text"] = self.text
        if self.tools is not None:
            out["tools"] = [dict(t) for t in self.tools]
        if self.response_format is not None:
            out["response_format"] = dict(self.response_format)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptSpec:
        """Validate `data` (the file shape) and build a spec; `PromptSpecError` names the key."""
        return _parse_spec(data)

    def canonical_json(self) -> bytes:
        """The canonical bytes: orjson with sorted keys over `to_dict()`, storable
        (`bastion.store.storable`: what is stored is what the content hash covers)."""
        return storable_json_bytes(self.to_dict(), sort_keys=True)

    def content_hash(self) -> str:
        """`"sha256:" + hex digest` of `canonical_json()`: the version's content address."""
        return "sha256:" + hashlib.sha256(self.canonical_json()).hexdigest()

    def template_sources(self) -> Iterator[tuple[Path, str]]:
        """Every template string with its location: `text`, each message content, text parts."""
        if self.text is not None:
            yield ("text",), self.text
        for i, message in enumerate(self.messages or ()):
            content = message.get("content")
            if isinstance(content, str):
                yield ("messages", i, "content"), content
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, Mapping) and part.get("type") == "text":
                        yield ("messages", i, "content", j, "text"), part["text"]


# -- validation ---------------------------------------------------------------------------------


def _fail(path: Path, reason: str) -> PromptSpecError:
    return PromptSpecError(path, reason)


def _mapping(value: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"must be a mapping, got {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, f"keys must be strings, got {_kind(key)} {key!r}")
    return cast(Mapping[str, Any], value)


def _string(value: Any, path: Path, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise _fail(path, f"must be a string, got {_kind(value)}")
    if not empty and not value.strip():
        raise _fail(path, "must not be empty")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "mapping", list: "list", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), type(value).__name__
    )


def _json(value: Any, path: Path) -> Any:
    """A deep copy of `value` restricted to JSON types, so the hash survives a JSON round trip
    (YAML would otherwise let dates, sets or binary in, which a database read-back changes)."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise _fail(path, "integer out of range (64-bit)")
        return value
    if isinstance(value, list | tuple):
        return [_json(item, (*path, i)) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {k: _json(v, (*path, k)) for k, v in _mapping(value, path).items()}
    kinds = "string, number, boolean, null, list or mapping"
    raise _fail(path, f"must be JSON data ({kinds}), got {_kind(value)}")


def _unknown(data: Mapping[str, Any], allowed: tuple[str, ...], path: Path) -> None:
    for key in data:
        if key not in allowed:
            raise _fail((*path, key), f"unknown key (allowed: {', '.join(allowed)})")


def _parse_spec(raw: Any) -> PromptSpec:
    data = _mapping(raw, ())
    _unknown(data, _TOP_KEYS, ())
    if "name" not in data:
        raise _fail((), "missing required key 'name'")
    name = _string(data["name"], ("name",))
    if not names.PROMPT.is_valid(name):
        raise _fail(("name",), f"must match {NAME_PATTERN} ({names.PROMPT.rule})")
    has_messages, has_text = data.get("messages") is not None, data.get("text") is not None
    if has_messages == has_text:
        which = "both" if has_messages else "neither"
        raise _fail((), f"exactly one of 'messages' or 'text' is required, got {which}")
    description = _optional_string(data, "description")
    model = _optional_string(data, "model")
    params = _json(_mapping(data.get("params") or {}, ("params",)), ("params",))
    variables = _parse_variables(data.get("variables"))
    messages = _parse_messages(data["messages"]) if has_messages else None
    text = _string(data["text"], ("text",)) if has_text else None
    tools = None
    if data.get("tools") is not None:
        if not isinstance(data["tools"], list):
            raise _fail(("tools",), f"must be a list, got {_kind(data['tools'])}")
        tools = tuple(
            _json(_mapping(t, ("tools", i)), ("tools", i)) for i, t in enumerate(data["tools"])
        )
    response_format = None
    if data.get("response_format") is not None:
        path: Path = ("response_format",)
        response_format = _json(_mapping(data["response_format"], path), path)
    metadata = _json(_mapping(data.get("metadata") or {}, ("metadata",)), ("metadata",))
    return PromptSpec(
        name=name,
        messages=messages,
        text=text,
        variables=variables,
        description=description,
        model=model,
        params=params,
        tools=tools,
        response_format=response_format,
        metadata=metadata,
    )


def _optional_string(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    return None if value is None else _string(value, (key,))


def _parse_variables(raw: Any) -> dict[str, Variable]:
    if raw is None:
        return {}
    out: dict[str, Variable] = {}
    for name, spec in _mapping(raw, ("variables",)).items():
        path: Path = ("variables", name)
        if not _VARIABLE_RE.fullmatch(name):
            raise _fail(path, "variable names must be identifiers starting with a letter")
        # `ticket:` alone, or `ticket: string`, are shorthands for a required variable.
        if spec is None:
            spec = {}
        elif isinstance(spec, str):
            spec = {"type": spec}
        spec = _mapping(spec, path)
        _unknown(spec, _VARIABLE_KEYS, path)
        kind = spec.get("type", "string")
        if kind not in VARIABLE_TYPES:
            raise _fail((*path, "type"), f"must be one of {', '.join(VARIABLE_TYPES)}")
        default = _json(spec.get("default"), (*path, "default"))
        if default is not None and not _type_matches(kind, default):
            raise _fail((*path, "default"), f"must be {kind}, got {_kind(default)}")
        required = spec.get("required", default is None)
        if not isinstance(required, bool):
            raise _fail((*path, "required"), f"must be true or false, got {_kind(required)}")
        if required and default is not None:
            raise _fail((*path, "required"), "a variable with a default cannot be required")
        description = spec.get("description")
        if description is not None:
            description = _string(description, (*path, "description"))
        out[name] = Variable(name, cast(VariableType, kind), required, default, description)
    return out


def _parse_messages(raw: Any) -> tuple[dict[str, Any], ...]:
    if not isinstance(raw, list):
        raise _fail(("messages",), f"must be a list, got {_kind(raw)}")
    if not raw:
        raise _fail(("messages",), "must not be empty")
    messages = []
    for i, item in enumerate(raw):
        path: Path = ("messages", i)
        data = _mapping(item, path)
        _unknown(data, _MESSAGE_KEYS, path)
        role = data.get("role")
        if role not in ROLES:
            got = "missing" if role is None else repr(role)
            raise _fail((*path, "role"), f"must be one of {', '.join(ROLES)}, got {got}")
        message: dict[str, Any] = {"role": role}
        content = data.get("content")
        if content is None and not (role == "assistant" and data.get("tool_calls")):
            raise _fail((*path, "content"), "missing content")
        if content is not None:
            message["content"] = _parse_content(content, (*path, "content"))
        for key in _MESSAGE_KEYS[2:]:
            if data.get(key) is not None:
                message[key] = _json(data[key], (*path, key))
        messages.append(message)
    return tuple(messages)


def _parse_content(content: Any, path: Path) -> str | list[Any]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _fail(path, f"must be a string or a list of parts, got {_kind(content)}")
    parts = []
    for j, part in enumerate(content):
        part_path: Path = (*path, j)
        data = _json(_mapping(part, part_path), part_path)
        if not isinstance(data.get("type"), str):
            raise _fail((*part_path, "type"), "each content part needs a string 'type'")
        if data["type"] == "text":
            _string(data.get("text"), (*part_path, "text"), empty=True)
        parts.append(data)
    return parts
