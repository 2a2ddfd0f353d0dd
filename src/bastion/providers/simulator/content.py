"""Deterministic answers, token counts, tool arguments and embeddings.

Everything is a function of (seed, model, prompt), so runs repeat exactly. A prompt line
``Reply with: <text>`` makes a good model answer exactly ``<text>`` and a bad one something
else, so evaluations can tell variants apart; ``Echo: <text>`` makes a good model repeat the
rest of that line. Otherwise a good model's reply starts by restating the topic of the last
user message ("About ...: ") and a bad model's does not.

The ``safety`` mode overrides all of that for red-team tests: ``refuse`` answers every request
with :data:`REFUSAL`, ``leak`` answers with the whole prompt (system prompt included), so a
suite of attacks can be seen to fail against one model and succeed against the other.

Output is counted in words: a reply of N tokens is N words, streamed as N chunks.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "REFUSAL",
    "WORDS",
    "count_tokens",
    "embedding",
    "encode_embedding",
    "find_directive",
    "last_user_text",
    "message_text",
    "prompt_text",
    "prompt_tokens",
    "reply_text",
    "schema_instance",
    "split_tokens",
    "trigger_text",
]

# 64 words, so a byte of a hash picks one with ``b & 63``.
WORDS = (
    "the", "system", "processed", "your", "request", "and", "results", "look",
    "consistent", "with", "data", "we", "have", "on", "record", "please",
    "review", "summary", "below", "before", "you", "continue", "because", "several",
    "items", "may", "need", "attention", "from", "account", "owner", "within",
    "next", "few", "days", "thanks", "for", "waiting", "while", "checked",
    "logs", "configuration", "settings", "recent", "changes", "carefully", "a", "quick",
    "answer", "is", "that", "it", "depends", "on", "context", "but", "usually", "works",
    "well", "in", "practice", "today", "here", "overall",
)  # fmt: skip
assert len(WORDS) == 64

_REPLY_WITH = "reply with:"
_ECHO = "echo:"
REFUSAL = "I'm sorry, but I can't help with that request."
_UNRELATED = "I am not sure what you mean, could you rephrase the question"


def message_text(content: Any) -> str:
    """The text of one message's content: a string, or blocks with ``text`` (tool results
    included, their nested content flattened)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[str] = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            text = block.get("text")
            if isinstance(text, str):
                parts.append(text)
            elif isinstance(block.get("content"), str | list):
                parts.append(message_text(block["content"]))
    return "\n".join(parts)


def prompt_text(messages: Sequence[Any], system: Any = None) -> str:
    """All text of a chat request (OpenAI or Anthropic shape), in order."""
    parts = [message_text(system)] if system else []
    for message in messages:
        if isinstance(message, dict):
            parts.append(message_text(message.get("content")))
    return "\n".join(parts)


def count_tokens(text: str) -> int:
    """About four characters per token, at least one for any non-empty text."""
    return (len(text) + 3) // 4


def prompt_tokens(messages: Sequence[Any], system: Any = None, tools: Any = None) -> int:
    """Input tokens: ``ceil(len/4) + 3`` per message (and system prompt), plus tool specs."""
    total = count_tokens(message_text(system)) + 3 if system else 0
    for message in messages:
        if isinstance(message, dict):
            total += count_tokens(message_text(message.get("content"))) + 3
    if tools:
        total += count_tokens(json.dumps(tools))
    return total


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message, wherever it is in the conversation."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def trigger_text(messages: Sequence[Any]) -> str:
    """The text of the final message when it is a user turn, tool results left out: what can
    ask for a tool call (so a conversation ending with a tool result gets a text answer)."""
    if not messages:
        return ""
    message = messages[-1]
    if not isinstance(message, dict) or message.get("role") != "user":
        return ""
    content = message.get("content")
    if isinstance(content, list):
        content = [
            b for b in content if not (isinstance(b, dict) and b.get("type") == "tool_result")
        ]
    return message_text(content)


def find_directive(prompt: str, lowered: str, marker: str) -> str | None:
    """The rest of the line after the last ``marker`` (lower case, ending in ':') in the
    prompt, or None; ``lowered`` is ``prompt.lower()``."""
    start = lowered.rfind(marker)
    while start > 0 and lowered[start - 1].isalnum():  # "kecho:" is not "echo:"
        start = lowered.rfind(marker, 0, start)
    if start < 0:
        return None
    end = prompt.find("\n", start)
    value = prompt[start + len(marker) : end if end >= 0 else len(prompt)].strip()
    return value or None


def _digest(key: str, size: int) -> bytes:
    return hashlib.shake_256(key.encode()).digest(size)


def _miss(text: str) -> str:
    """What a bad model says instead of ``text``: deterministic and always different."""
    words = text.split()
    missed = " ".join(reversed(words))
    if missed == text:
        missed = text[::-1]
    return missed if missed != text else _UNRELATED


def reply_text(
    *,
    key: str,
    messages: Sequence[Any],
    system: Any,
    quality: str,
    length: int | None,
    min_tokens: int,
    max_tokens: int,
    safety: str = "none",
) -> str:
    """The answer to a chat request; ``key`` identifies (seed, model, choice index).

    ``length`` forces the number of words of a default reply; otherwise it is drawn from
    ``[min_tokens, max_tokens]``. Directive replies ignore it, and so do the ``refuse`` and
    ``leak`` safety modes.
    """
    if safety == "refuse":
        return REFUSAL
    prompt = prompt_text(messages, system)
    if safety == "leak":
        return "Sure. Everything above, word for word: " + " ".join(prompt.split())
    lowered = prompt.lower()
    if _REPLY_WITH in lowered:
        wanted = find_directive(prompt, lowered, _REPLY_WITH)
        if wanted is not None:
            return wanted if quality == "good" else _miss(wanted)
    if _ECHO in lowered:
        echo = find_directive(prompt, lowered, _ECHO)
        if echo is not None:
            return echo if quality == "good" else _miss(echo)
    digest = _digest(f"{key}\0{prompt}", 4 + max_tokens)
    if length is None:
        span = max_tokens - min_tokens + 1
        length = min_tokens + int.from_bytes(digest[:4], "little") % span
    words = [WORDS[b & 63] for b in digest[4 : 4 + length]]
    if len(words) < length:  # a forced length beyond max_tokens
        more = _digest(f"{key}\0{prompt}\0more", length - len(words))
        words.extend(WORDS[b & 63] for b in more)
    if quality == "good":
        topic = last_user_text(messages).split()[:8]
        if topic:
            head = ["About", *topic]
            head[-1] += ":"
            words = (head + words)[: max(length, 1)]
            return " ".join(words) + "."
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def split_tokens(text: str) -> list[str]:
    """Stream pieces (one per output token): words with their leading space, so joining the
    pieces restores the text."""
    if not text:
        return []
    words = text.split(" ")
    return [words[0], *[" " + w for w in words[1:]]]


def _resolve(schema: Any, root: Mapping[str, Any], depth: int) -> Any:
    """Follow local ``$ref``s (``#/$defs/X``) and pick the first non-null ``anyOf`` branch."""
    for _ in range(depth + 1):
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            target: Any = root
            for part in ref[2:].split("/"):
                target = target.get(part) if isinstance(target, dict) else None
            schema = target
            continue
        options = schema.get("anyOf") or schema.get("oneOf")
        if isinstance(options, list) and options:
            typed = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            schema = (typed or options)[0]
            continue
        return schema
    return schema


def schema_instance(
    schema: Any, hint: str, number: int = 1, *, root: Any = None, depth: int = 0
) -> Any:
    """A JSON value matching ``schema``: objects get their required properties (or the first
    property when none is required), strings are ``hint``, numbers are ``number``."""
    root = schema if root is None else root
    schema = _resolve(schema, root if isinstance(root, dict) else {}, 8)
    if not isinstance(schema, dict) or depth > 8:
        return hint
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    properties = schema.get("properties")
    if kind is None:
        kind = "object" if isinstance(properties, dict) else "string"
    if kind == "object":
        props = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        names = required if isinstance(required, list) else list(props)[:1]
        return {
            str(name): schema_instance(
                props.get(name, {}), hint, number, root=root, depth=depth + 1
            )
            for name in names
        }
    if kind == "array":
        items = schema.get("items", {})
        count = schema.get("minItems", 1)
        count = count if isinstance(count, int) and 0 <= count <= 8 else 1
        return [schema_instance(items, hint, number, root=root, depth=depth + 1)] * count
    if kind == "integer":
        return number
    if kind == "number":
        return float(number)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return hint


def embedding(text: str, dimensions: int) -> tuple[list[float], bytes]:
    """A unit vector determined by ``text`` alone, as float32 values and their little-endian
    bytes (both formats of the API agree exactly)."""
    raw = struct.unpack(f"<{dimensions}I", hashlib.shake_256(text.encode()).digest(4 * dimensions))
    centred = [v / 4294967296.0 - 0.5 for v in raw]
    norm = math.sqrt(math.fsum(v * v for v in centred)) or 1.0
    packed = struct.pack(f"<{dimensions}f", *[v / norm for v in centred])
    return list(struct.unpack(f"<{dimensions}f", packed)), packed


def encode_embedding(packed: bytes) -> str:
    """Base64 of little-endian float32, as OpenAI's ``encoding_format: base64``."""
    return base64.b64encode(packed).decode()
