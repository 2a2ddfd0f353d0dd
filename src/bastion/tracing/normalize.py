"""Fill a span's LLM fields from whichever attribute convention its producer used.

Understood conventions, in order of precedence for each field:

1. ``bastion.*`` — set by Bastion's own gateway and SDK, and by users who want the last word;
2. OpenTelemetry GenAI, current names (``gen_ai.provider.name``, ``gen_ai.usage.input_tokens``,
   ``gen_ai.input.messages`` …, semantic conventions v1.41) and the older ones
   (``gen_ai.system``, ``gen_ai.usage.prompt_tokens``, ``gen_ai.prompt.0.content`` …);
3. OpenInference (``openinference.span.kind``, ``llm.model_name``, ``llm.token_count.*`` …);
4. Langfuse (``langfuse.observation.*``, ``langfuse.user.id`` …).

Span attributes win over resource attributes. Normalisation never raises: a value of the wrong
type is ignored, not fatal, because one odd producer must not cost a whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson

from bastion.tracing.attributes import (
    COST_USD,
    ERROR_CLASS,
    FEATURE,
    INPUT,
    MODEL_REQUESTED,
    MODEL_SERVED,
    OPERATION,
    OUTPUT,
    PROMPT_NAME,
    PROMPT_VERSION,
    PROVIDER,
    RELEASE_ID,
    SESSION,
    TENANT,
    TTFT_MS,
    USAGE_CACHE_WRITE_TOKENS,
    USAGE_CACHED_TOKENS,
    USAGE_INPUT_TOKENS,
    USAGE_OUTPUT_TOKENS,
    USER,
)
from bastion.tracing.model import Span, StatusCode

__all__ = ["TRUNCATION_MARK", "normalize", "truncate"]

TRUNCATION_MARK = "…[truncated {n} chars]"

_OPERATION = (OPERATION, "gen_ai.operation.name", "llm.request.type")
_PROVIDER = (
    PROVIDER,
    "gen_ai.provider.name",
    "gen_ai.system",
    "llm.provider",
    "llm.system",
)
_REQUEST_MODEL = (
    MODEL_REQUESTED,
    "gen_ai.request.model",
    "llm.model_name",
    "langfuse.observation.model.name",
)
_RESPONSE_MODEL = (MODEL_SERVED, "gen_ai.response.model")
_INPUT_TOKENS = (
    USAGE_INPUT_TOKENS,
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt",
    "llm.usage.prompt_tokens",
)
_OUTPUT_TOKENS = (
    USAGE_OUTPUT_TOKENS,
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.token_count.completion",
    "llm.usage.completion_tokens",
)
_CACHED_TOKENS = (
    USAGE_CACHED_TOKENS,
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.input_tokens.cached",
    "llm.token_count.prompt_details.cache_read",
)
_CACHE_WRITE_TOKENS = (
    USAGE_CACHE_WRITE_TOKENS,
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.input_tokens.cache_write",
    "llm.token_count.prompt_details.cache_write",
)
_COST = (COST_USD, "gen_ai.usage.cost", "llm.cost.total")
_USER = (USER, "user.id", "enduser.id", "langfuse.user.id")
_SESSION = (SESSION, "session.id", "gen_ai.conversation.id", "langfuse.session.id")
_FEATURE = (FEATURE,)
_TENANT = (TENANT, "tenant.id")
_PROMPT_NAME = (PROMPT_NAME, "langfuse.observation.prompt.name")
_PROMPT_VERSION = (
    PROMPT_VERSION,
    "langfuse.observation.prompt.version",
    "llm.prompt_template.version",
)
_RELEASE = (RELEASE_ID,)
_ERROR_CLASS = (ERROR_CLASS, "error.type")
_TTFT_MS = (TTFT_MS,)
_TTFT_S = ("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")

_INPUT_TEXT = (
    INPUT,
    "gen_ai.input.messages",
    "gen_ai.prompt",
    "input.value",
    "langfuse.observation.input",
)
_OUTPUT_TEXT = (
    OUTPUT,
    "gen_ai.output.messages",
    "gen_ai.completion",
    "output.value",
    "langfuse.observation.output",
)
# Indexed message attributes: (prefix, role key, content key).
_INDEXED_INPUT = (
    ("gen_ai.prompt.", "role", "content"),
    ("llm.input_messages.", "message.role", "message.content"),
)
_INDEXED_OUTPUT = (
    ("gen_ai.completion.", "role", "content"),
    ("llm.output_messages.", "message.role", "message.content"),
)

_OPENINFERENCE_KINDS = {
    "LLM": "chat",
    "EMBEDDING": "embeddings",
    "TOOL": "execute_tool",
    "AGENT": "invoke_agent",
    "RETRIEVER": "retrieval",
    "RERANKER": "rerank",
}
_LANGFUSE_TYPES = {
    "generation": "chat",
    "embedding": "embeddings",
    "tool": "execute_tool",
    "agent": "invoke_agent",
    "retriever": "retrieval",
}
_OLD_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
_FIRST_TOKEN_EVENTS = frozenset(
    {"first_token", "gen_ai.first_token", "gen_ai.content.first_chunk", "llm.first_token"}
)


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` with a marker saying how much was dropped."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars] + TRUNCATION_MARK.format(n=len(text) - max_chars)


def normalize(span: Span, *, max_message_chars: int) -> Span:
    """Set ``span``'s LLM and attribution fields from its attributes, in place; returns it."""
    attrs, resource = span.attributes, span.resource
    found = _scan(attrs, resource)
    get = found.get
    span.operation = get("operation") or _kind_operation(attrs)
    provider = get("provider")
    span.provider = provider.lower() if provider is not None else None
    span.request_model = get("request_model")
    span.response_model = get("response_model")
    span.input_tokens = get("input_tokens")
    span.output_tokens = get("output_tokens")
    span.cached_tokens = get("cached_tokens")
    span.cache_write_tokens = get("cache_write_tokens")
    if "langfuse.observation.usage_details" in attrs:
        _langfuse_usage(span, attrs)
    span.cost_usd = get("cost_usd")
    if span.cost_usd is None and "langfuse.observation.cost_details" in attrs:
        span.cost_usd = _json_number(attrs["langfuse.observation.cost_details"], "total")
    span.user_id = get("user_id")
    span.session_id = get("session_id")
    span.feature = get("feature")
    span.tenant = get("tenant")
    span.prompt_name = get("prompt_name")
    span.prompt_version = get("prompt_version") or None
    span.release_id = get("release_id")
    span.ttft_ms = _ttft_ms(span, found)
    span.error_class = _error_class(span, get("error_class"))
    span.input = _messages(span, _INPUT_TEXT, _INDEXED_INPUT, max_message_chars, output=False)
    span.output = _messages(span, _OUTPUT_TEXT, _INDEXED_OUTPUT, max_message_chars, output=True)
    _cap_attributes(span, max_message_chars)
    return span


def _scan(attrs: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """Each field's value from the key of highest precedence whose value converts (is not None).

    Any span attribute outranks any resource attribute, and only text fields other than
    ``error_class`` fall back to the resource.
    """
    found: dict[str, Any] = {}
    for field, key, convert, in_resource in _plan(attrs, resource):
        if field in found:
            continue  # filled by a key of higher precedence
        value = (resource if in_resource else attrs)[key]
        # A short non-empty string is its own text: the common case, worth skipping a call for.
        if convert is not _as_text or value.__class__ is not str or not 0 < len(value) <= 512:
            value = convert(value)
        if value is not None:
            found[field] = value
    return found


# What ``_scan`` tries for the keys present, in order: (field, key, converter, whether the key is
# a resource attribute), grouped by field, each group in precedence order.
_Plan = tuple[tuple[str, str, Callable[[Any], Any], bool], ...]

# Producers send the same keys span after span, so a plan serves many spans. Keyed by the known
# keys present (never arbitrary, possibly huge, attribute keys) and cleared when full, so its
# memory stays bounded whatever clients send. Dict reads and writes are atomic under the GIL
# and plans are immutable, so decoding threads can share it.
_PLANS: dict[tuple[frozenset[str], frozenset[str]], _Plan] = {}
_PLANS_MAX = 256


def _plan(attrs: dict[str, Any], resource: dict[str, Any]) -> _Plan:
    cache_key = (_SPAN_KEYS.intersection(attrs), _RESOURCE_KEYS.intersection(resource))
    plan = _PLANS.get(cache_key)
    if plan is None:
        plan = _build_plan(*cache_key)
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[cache_key] = plan
    return plan


def _build_plan(span_keys: frozenset[str], resource_keys: frozenset[str]) -> _Plan:
    ranked: list[tuple[str, int, str, Callable[[Any], Any], bool]] = []
    for key in span_keys:
        field, convert, rank = _LOOKUP[key]
        ranked.append((field, rank, key, convert, False))
    for key in resource_keys:
        field, convert, rank = _LOOKUP[key]
        ranked.append((field, rank + _RESOURCE_RANK, key, convert, True))
    ranked.sort()  # (field, rank) pairs are unique, so this never compares converters
    return tuple(
        (field, key, convert, in_resource) for field, _, key, convert, in_resource in ranked
    )


# --- lookups ------------------------------------------------------------------------------


def _as_text(value: Any) -> str | None:
    if isinstance(value, str):  # first: it is the common case
        return value[:512] if value else None
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value)
    return text[:512] if text else None


# Counts are stored as BIGINT and prompt versions as INTEGER: a larger value would make the
# database refuse the whole batch, again on every retry.
_BIGINT_MAX = 2**63 - 1
_INTEGER_MAX = 2**31 - 1


def _as_int(value: Any, limit: int = _BIGINT_MAX) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        text = value.strip()
        # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
        if text.isascii() and text.isdigit() and len(text) <= 19:
            number = int(text)
    return number if number is not None and 0 <= number <= limit else None


def _as_version(value: Any) -> int | None:
    return _as_int(value, _INTEGER_MAX)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    # NaN fails both comparisons; infinity would turn every sum it joins into infinity.
    return number if 0 <= number < math.inf else None


def _as_seconds_in_ms(value: Any) -> float | None:
    seconds = _as_float(value)
    return None if seconds is None else seconds * 1000.0


_RESOURCE_RANK = 1 << 20  # any span attribute outranks any resource attribute


def _build_lookup() -> dict[str, tuple[str, Callable[[Any], Any], int]]:
    """Attribute key → (span field, converter, precedence rank: lower wins)."""
    table: dict[str, tuple[str, Callable[[Any], Any], int]] = {}
    ranks: dict[str, int] = {}
    for field, convert, keys in (
        ("operation", _as_text, _OPERATION),
        ("provider", _as_text, _PROVIDER),
        ("request_model", _as_text, _REQUEST_MODEL),
        ("response_model", _as_text, _RESPONSE_MODEL),
        ("input_tokens", _as_int, _INPUT_TOKENS),
        ("output_tokens", _as_int, _OUTPUT_TOKENS),
        ("cached_tokens", _as_int, _CACHED_TOKENS),
        ("cache_write_tokens", _as_int, _CACHE_WRITE_TOKENS),
        ("cost_usd", _as_float, _COST),
        ("user_id", _as_text, _USER),
        ("session_id", _as_text, _SESSION),
        ("feature", _as_text, _FEATURE),
        ("tenant", _as_text, _TENANT),
        ("prompt_name", _as_text, _PROMPT_NAME),
        ("prompt_version", _as_version, _PROMPT_VERSION),
        ("release_id", _as_text, _RELEASE),
        ("error_class", _as_text, _ERROR_CLASS),
        ("ttft_ms", _as_float, _TTFT_MS),
        ("ttft_ms", _as_seconds_in_ms, _TTFT_S),
    ):
        for key in keys:
            rank = ranks.get(field, 0)
            ranks[field] = rank + 1
            table[key] = (field, convert, rank)
    return table


_LOOKUP = _build_lookup()
_SPAN_KEYS = frozenset(_LOOKUP)
_RESOURCE_KEYS = frozenset(
    key
    for key, (field, convert, _) in _LOOKUP.items()
    if convert is _as_text and field != "error_class"
)


def _json_object(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value.startswith("{"):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None
    return None


def _json_number(value: Any, key: str) -> float | None:
    obj = _json_object(value)
    return _as_float(obj.get(key)) if obj is not None else None


# --- derived fields -----------------------------------------------------------------------


def _kind_operation(attrs: dict[str, Any]) -> str | None:
    kind = attrs.get("openinference.span.kind")
    if isinstance(kind, str) and kind.upper() in _OPENINFERENCE_KINDS:
        return _OPENINFERENCE_KINDS[kind.upper()]
    observation = attrs.get("langfuse.observation.type")
    if isinstance(observation, str):
        return _LANGFUSE_TYPES.get(observation.lower())
    return None


def _langfuse_usage(span: Span, attrs: dict[str, Any]) -> None:
    usage = _json_object(attrs.get("langfuse.observation.usage_details"))
    if usage is None:
        return
    if span.input_tokens is None:
        span.input_tokens = _as_int(usage.get("input", usage.get("prompt_tokens")))
    if span.output_tokens is None:
        span.output_tokens = _as_int(usage.get("output", usage.get("completion_tokens")))
    if span.cached_tokens is None:
        span.cached_tokens = _as_int(usage.get("cache_read_input_tokens"))
    if span.cache_write_tokens is None:
        span.cache_write_tokens = _as_int(usage.get("cache_creation_input_tokens"))


def _ttft_ms(span: Span, found: dict[str, Any]) -> float | None:
    attrs = span.attributes
    declared: float | None = found.get("ttft_ms")
    if declared is not None:
        return declared
    for event in span.events:
        if event.get("name") in _FIRST_TOKEN_EVENTS:
            at = _as_int(event.get("time_ns"))
            if at is not None and at >= span.start_ns:
                return (at - span.start_ns) / 1e6
    started = attrs.get("langfuse.observation.completion_start_time")
    if isinstance(started, str):
        try:
            first = datetime.fromisoformat(started.strip('"').replace("Z", "+00:00"))
        except ValueError:
            return None
        delta_ms = first.timestamp() * 1000.0 - span.start_ns / 1e6
        return delta_ms if delta_ms >= 0 else None
    return None


def _error_class(span: Span, declared: str | None) -> str | None:
    if declared is not None:
        return declared
    for event in span.events:
        if event.get("name") == "exception":
            kind = event.get("attributes", {}).get("exception.type")
            if kind:
                return str(kind)[:512]
    if span.status_code == StatusCode.ERROR:
        return "error"
    level = span.attributes.get("langfuse.observation.level")
    if isinstance(level, str) and level.upper() == "ERROR":
        return "error"
    return None


# --- messages -----------------------------------------------------------------------------


def _messages(
    span: Span,
    keys: tuple[str, ...],
    indexed: tuple[tuple[str, str, str], ...],
    max_chars: int,
    *,
    output: bool,
) -> str | None:
    """The span's input or output as text (JSON for structured messages), capped.

    The attributes it came from are removed from ``span.attributes`` so the text is stored once.
    """
    attrs = span.attributes
    text: str | None = None
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
            del attrs[key]
            break
    if text is None:
        for prefix, role_key, content_key in indexed:
            messages, consumed = _indexed_messages(attrs, prefix, role_key, content_key)
            if messages:
                text = orjson.dumps(messages, default=str).decode()
                for key in consumed:
                    del attrs[key]
                break
    if text is None:
        messages = _event_messages(span, output=output)
        if messages:
            text = orjson.dumps(messages, default=str).decode()
    if text is None and not output:
        system = attrs.get("gen_ai.system_instructions")
        if isinstance(system, str) and system:
            text = system
            del attrs["gen_ai.system_instructions"]
    return truncate(text, max_chars) if text is not None else None


def _indexed_messages(
    attrs: dict[str, Any], prefix: str, role_key: str, content_key: str
) -> tuple[list[dict[str, Any]], list[str]]:
    messages: list[dict[str, Any]] = []
    consumed: list[str] = []
    index = 0
    while True:
        keys = (f"{prefix}{index}.{role_key}", f"{prefix}{index}.{content_key}")
        role, content = attrs.get(keys[0]), attrs.get(keys[1])
        if role is None and content is None:
            return messages, consumed
        messages.append({"role": role, "content": content})
        consumed.extend(key for key in keys if key in attrs)
        index += 1


def _event_messages(span: Span, *, output: bool) -> list[dict[str, Any]]:
    """Messages from the older per-message events (``gen_ai.user.message``, ``gen_ai.choice``)."""
    messages: list[dict[str, Any]] = []
    for event in span.events:
        name = event.get("name")
        attributes = event.get("attributes") or {}
        if output and name == "gen_ai.choice":
            messages.append({"role": "assistant", **_event_body(attributes)})
        elif not output and name in _OLD_EVENT_ROLES:
            messages.append({"role": _OLD_EVENT_ROLES[name], **_event_body(attributes)})
    return messages


def _event_body(attributes: dict[str, Any]) -> dict[str, Any]:
    body = {
        k.removeprefix("gen_ai.event."): v for k, v in attributes.items() if k != "gen_ai.system"
    }
    message = body.pop("message", None)
    if isinstance(message, dict):
        body.update(message)
    return body


def _cap_attributes(span: Span, max_chars: int) -> None:
    """Cap long string attributes the way input and output are capped."""
    attrs = span.attributes
    for key, value in attrs.items():
        if isinstance(value, str) and len(value) > max_chars:
            attrs[key] = truncate(value, max_chars)
