"""What a chat request gets back, independent of the wire format: the text or tool calls of
each choice, why it stopped, and the token counts."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bastion.providers.simulator.config import SimulatorConfig
from bastion.providers.simulator.content import (
    last_user_text,
    prompt_tokens,
    reply_text,
    schema_instance,
    split_tokens,
    trigger_text,
)
from bastion.providers.simulator.errors import Api

__all__ = ["Choice", "Plan", "ToolCall", "make_plan", "served_model"]

# The simulator's own models answer with a dated snapshot name, like OpenAI does.
_SNAPSHOTS = MappingProxyType(
    {"sim-small": "sim-small-2026-01-01", "sim-large": "sim-large-2026-01-01"}
)


def served_model(name: str, requested: str) -> str:
    """The ``model`` a response reports: a snapshot for sim-small and sim-large."""
    return _SNAPSHOTS.get(name, requested)


@dataclass(slots=True)
class ToolCall:
    """One call of a declared tool; ``arguments`` is JSON text of ``input``."""

    id: str
    name: str
    input: dict[str, Any]
    arguments: str
    pieces: list[str]


@dataclass(slots=True)
class Choice:
    """One answer: text, or tool calls; ``finish`` is ``stop``, ``length``, ``tool_calls`` or
    ``stop_sequence``."""

    text: str
    pieces: list[str]
    tool_calls: list[ToolCall]
    finish: str
    stop_sequence: str | None
    output_tokens: int


@dataclass(slots=True)
class Plan:
    """The whole answer to a chat request."""

    model: str
    choices: list[Choice]
    input_tokens: int

    @property
    def output_tokens(self) -> int:
        """Output tokens over all choices."""
        return sum(c.output_tokens for c in self.choices)


def _tool_specs(tools: Any, api: Api) -> dict[str, Any]:
    specs: dict[str, Any] = {}
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        if api == "openai":
            function = tool.get("function")
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                specs[function["name"]] = function.get("parameters")
        elif isinstance(tool.get("name"), str):
            specs[tool["name"]] = tool.get("input_schema")
    return specs


def _mentioned(specs: dict[str, Any], text: str) -> list[str]:
    """Declared tools the text asks for with ``call <name>``, in order of mention."""
    lowered = text.lower()
    if "call " not in lowered:
        return []
    found: list[tuple[int, str]] = []
    for name in specs:
        needle = "call " + name.lower()
        start = lowered.find(needle)
        while start >= 0:
            end = start + len(needle)
            if end == len(lowered) or not (lowered[end].isalnum() or lowered[end] in "_-"):
                found.append((start, name))
                break
            start = lowered.find(needle, end)
    return [name for _, name in sorted(found)]


def _tool_names(body: dict[str, Any], specs: dict[str, Any], api: Api, text: str) -> list[str]:
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else choice
    if kind == "none":
        return []
    if isinstance(choice, dict):
        function = choice.get("function")
        forced = function.get("name") if isinstance(function, dict) else choice.get("name")
        if isinstance(forced, str) and forced in specs:
            return [forced]
    names = _mentioned(specs, text)
    if not names and kind in ("required", "any", "tool", "function"):
        names = [next(iter(specs))]
    single = (
        body.get("parallel_tool_calls") is False
        if api == "openai"
        else isinstance(choice, dict) and choice.get("disable_parallel_tool_use") is True
    )
    return names[:1] if single else names


def _hint(text: str) -> str:
    """A string argument: the last word of the request (``weather in Paris`` → ``Paris``)."""
    words = text.split()
    word = words[-1].strip(".,;:!?\"'()[]") if words else ""
    return word or "value"


def _tool_calls(body: dict[str, Any], api: Api, seed: int) -> list[ToolCall]:
    specs = _tool_specs(body.get("tools"), api)
    if not specs:
        return []
    messages = body["messages"]
    text = trigger_text(messages)
    names = _tool_names(body, specs, api, text)
    if not names:
        return []
    hint = _hint(text or last_user_text(messages))
    calls = []
    prefix = "call_" if api == "openai" else "toolu_"
    for name in names:
        value = schema_instance(specs[name], hint, seed % 10 + 1)
        arguments = value if isinstance(value, dict) else {}
        text_arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append(
            ToolCall(
                id=prefix + uuid.uuid4().hex[:24],
                name=name,
                input=arguments,
                arguments=text_arguments,
                pieces=split_tokens(text_arguments),
            )
        )
    return calls


def _json_text(response_format: Any, text: str) -> str | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return json.dumps({"answer": text}, ensure_ascii=False)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        value = schema_instance(schema, text) if schema else {"answer": text}
        return json.dumps(value, ensure_ascii=False)
    return None


def _stops(body: dict[str, Any], api: Api) -> list[str]:
    raw = body.get("stop") if api == "openai" else body.get("stop_sequences")
    if isinstance(raw, str):
        return [raw] if raw else []
    return [s for s in raw if isinstance(s, str) and s] if isinstance(raw, list) else []


def make_plan(
    body: dict[str, Any],
    name: str,
    config: SimulatorConfig,
    api: Api,
    *,
    forced_length: int | None,
) -> Plan:
    """The answer to a validated chat request for model ``name`` under ``config``."""
    messages = body["messages"]
    system = body.get("system") if api == "anthropic" else None
    n = (body.get("n") or 1) if api == "openai" else 1
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    body_seed = body.get("seed") if api == "openai" else None
    seed_key = f"{config.seed}\0{body_seed if isinstance(body_seed, int) else ''}\0{name}"
    stops = _stops(body, api)
    tool_calls = _tool_calls(body, api, config.seed)
    choices = []
    for index in range(n):
        if tool_calls:
            tokens = sum(len(c.pieces) for c in tool_calls) + len(tool_calls)
            choices.append(Choice("", [], tool_calls, "tool_calls", None, tokens))
            continue
        text = reply_text(
            key=seed_key if index == 0 else f"{seed_key}\0{index}",
            messages=messages,
            system=system,
            quality=config.quality,
            safety=config.safety,
            length=forced_length,
            min_tokens=config.min_tokens,
            max_tokens=config.max_tokens,
        )
        structured = _json_text(body.get("response_format"), text)
        if structured is not None:
            text = structured
        finish, stop_sequence = "stop", None
        if stops:
            cut = min(((text.find(s), s) for s in stops if s in text), default=None)
            if cut is not None:
                text = text[: cut[0]]
                if api == "anthropic":
                    finish, stop_sequence = "stop_sequence", cut[1]
        pieces = split_tokens(text)
        if isinstance(limit, int) and len(pieces) > limit:
            pieces = pieces[:limit]
            text = "".join(pieces)
            finish = "length"
        choices.append(Choice(text, pieces, [], finish, stop_sequence, len(pieces)))
    tools = body.get("tools")
    return Plan(
        model=served_model(name, body["model"]),
        choices=choices,
        input_tokens=prompt_tokens(messages, system, tools),
    )
