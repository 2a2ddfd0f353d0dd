"""What may be written to the database: one rule for every text, number and JSON document.

SQLite and PostgreSQL refuse different values, and a value one of them stores the other may
refuse on every retry. Every writer applies this rule first, so both databases store, and
give back, the same thing:

- **Text** has no NUL (U+0000) and no lone surrogate (U+D800-U+DFFF, which no UTF-8 can
  carry): each becomes U+FFFD. Bytes are read as UTF-8, an invalid sequence becoming U+FFFD.
  Text longer than its column is cut to the column's length in characters.
- **Keys** (text that identifies a row, such as a dataset item id) longer than their column
  keep their first characters and end in ``~`` and 16 hex digits of the SHA-256 of the whole,
  so two long keys that differ stay two keys.
- **Integers** outside their column's range become unknown (None), never a wrong number;
  **floats** that are NaN or infinite become None.
- **JSON documents** hold only storable text (object keys included: non-text keys become
  text); an integer beyond 64 bits becomes its decimal string, and a document nested too
  deep to encode keeps ``JSON_MAX_DEPTH`` levels, the repr of what is below as text.

The rule is cheap where nothing needs fixing, as on nearly every span: ASCII text is checked
with ``'\\x00' in s`` (``str.isascii`` is constant time), other text is also encoded once to
find surrogates, and a JSON document is serialised once and only rebuilt when the encoder
refused it or its output holds an escaped NUL.
"""

from __future__ import annotations

import hashlib
import math
import operator
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from bastion.tracing.model import Span, SpanKind, StatusCode

__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "JSON_MAX_DEPTH",
    "TOKENS_MAX",
    "make_span_storable",
    "storable_float",
    "storable_int",
    "storable_json",
    "storable_json_bytes",
    "storable_key",
    "storable_text",
    "storable_value",
]

INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
# More tokens than any call has: the BIGINT sums of traces and roll-ups cannot overflow.
TOKENS_MAX = 10**12
# orjson encodes at most 254 levels; a document it refused is rebuilt cut at this depth.
JSON_MAX_DEPTH = 200
_REPLACEMENT = "\ufffd"
_ESCAPED_NUL = b"\\u0000"
_KEY_HASH_HEX = 16


def _clean(value: str) -> str:
    """``value`` with NUL and lone surrogates replaced (the slow path)."""
    value = value.replace("\x00", _REPLACEMENT)
    if value.isascii():
        return value
    return "".join(_REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in value)


def _needs_cleaning(value: str) -> bool:
    if value.isascii():
        return "\x00" in value
    if "\x00" in value:
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return True
    return False


def storable_text(value: str | bytes, limit: int | None = None) -> str:
    """``value`` as storable text of at most ``limit`` characters (see the module's rule)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return _clean(value) if _needs_cleaning(value) else value


def storable_key(value: str, limit: int) -> str:
    """``value`` as a storable key of at most ``limit`` characters, distinct keys kept apart."""
    value = storable_text(value)
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:_KEY_HASH_HEX]
    return f"{value[: limit - _KEY_HASH_HEX - 1]}~{digest}"


def storable_int(value: int | None, low: int = 0, high: int = INT64_MAX) -> int | None:
    """``value`` when it lies in ``[low, high]``, else None (unknown, never a wrong number)."""
    return value if value is None or low <= value <= high else None


def storable_float(value: float | None) -> float | None:
    """``value`` unless it is NaN or infinite (None then)."""
    return value if value is None or math.isfinite(value) else None


def storable_value(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` that orjson encodes and whose text follows the rule (slow path)."""
    if isinstance(value, str):
        return _clean(value) if _needs_cleaning(value) else value
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else str(value)
    if isinstance(value, bytes):
        return storable_text(value)
    if depth >= JSON_MAX_DEPTH and isinstance(value, Mapping | list | tuple | set):
        return storable_text(repr(value)[:10_000])
    if isinstance(value, Mapping):
        return {
            storable_value(k if isinstance(k, str) else str(k)): storable_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [storable_value(v, depth + 1) for v in value]
    return storable_value(_default(value), depth)


def _default(value: Any) -> Any:
    # What orjson cannot encode itself: bytes as text, anything else by its str().
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def storable_json_bytes(
    value: Any, *, sort_keys: bool = False, non_str_keys: bool = False
) -> bytes:
    """``value`` as storable JSON (see the module's rule); never raises for content.

    ``non_str_keys`` encodes object keys that are not text as orjson does
    (``OPT_NON_STR_KEYS``) when it can.
    """
    option = (orjson.OPT_SORT_KEYS if sort_keys else 0) | (
        orjson.OPT_NON_STR_KEYS if non_str_keys else 0
    )
    try:
        document = orjson.dumps(value, default=_default, option=option)
    except TypeError:  # orjson.JSONEncodeError: a surrogate, a huge integer, a non-text key...
        return orjson.dumps(storable_value(value), option=option)
    if _ESCAPED_NUL in document:
        # Escaped, a NUL would store, but a reader (or a jsonb cast) would get it back raw.
        return orjson.dumps(storable_value(value), option=option)
    return document


def storable_json(value: Any, *, sort_keys: bool = False, non_str_keys: bool = False) -> str:
    """:func:`storable_json_bytes` as text."""
    return storable_json_bytes(value, sort_keys=sort_keys, non_str_keys=non_str_keys).decode()


# The text fields of a span with the length of their ``spans`` column (unbounded for text).
_SPAN_TEXTS = (
    ("trace_id", 32), ("span_id", 16), ("parent_span_id", 16), ("name", 500),
    ("status_message", sys.maxsize), ("service_name", 200), ("operation", 64),
    ("provider", 64), ("request_model", 200), ("response_model", 200), ("error_class", 200),
    ("user_id", 200), ("session_id", 200), ("feature", 200), ("tenant", 200),
    ("prompt_name", 200), ("release_id", 64), ("input", sys.maxsize), ("output", sys.maxsize),
)  # fmt: skip
_span_texts = operator.attrgetter(*(name for name, _ in _SPAN_TEXTS))
_texts_of_64 = operator.attrgetter(*(name for name, size in _SPAN_TEXTS if size == 64))
_texts_of_200 = operator.attrgetter(*(name for name, size in _SPAN_TEXTS if size == 200))
_KIND_MAX = int(SpanKind.CONSUMER)
_STATUS_MAX = int(StatusCode.ERROR)


def make_span_storable(span: Span) -> None:
    """Make every field of ``span`` storable, in place (texts cut to their ``spans`` columns).

    Receivers range-check what they accept (``tracing.otlp``, ``tracing.normalize``); this
    keeps any other producer's value from failing a batch on every retry or, in PostgreSQL's
    binary COPY, from wrapping around. The JSON fields are made storable when they are
    serialised (:func:`storable_json`).
    """
    # This runs for every span ingested, so the common case is checked in a few C calls: the
    # columns of one size together fit when their lengths add up to no more than that size,
    # and all texts joined are ASCII without NUL. Anything else takes the field-by-field way.
    if (
        len(span.trace_id) <= 32
        and len(span.span_id) <= 16
        and len(span.parent_span_id or "") <= 16
        and len(span.name) <= 500
        and len("".join(filter(None, _texts_of_64(span)))) <= 64
        and len("".join(filter(None, _texts_of_200(span)))) <= 200
    ):
        joined = "".join(filter(None, _span_texts(span)))
        if not (joined.isascii() and "\x00" not in joined):
            _make_texts_storable(span)
    else:
        _make_texts_storable(span)
    _keep_numbers_in_range(span)


def _make_texts_storable(span: Span) -> None:
    for value, (name, limit) in zip(_span_texts(span), _SPAN_TEXTS, strict=True):
        if value is not None:
            fixed = storable_text(value, limit)
            if fixed is not value:
                setattr(span, name, fixed)


def _keep_numbers_in_range(span: Span) -> None:
    # Comparisons inline rather than calls: this too runs for every span.
    if not 0 <= span.kind <= _KIND_MAX:
        span.kind = SpanKind.UNSPECIFIED
    if not 0 <= span.status_code <= _STATUS_MAX:
        span.status_code = StatusCode.UNSET
    start = span.start_ns
    if not 0 <= start <= INT64_MAX:
        span.start_ns = start = min(max(start, 0), INT64_MAX)
    if not start <= span.end_ns <= INT64_MAX:
        span.end_ns = min(max(span.end_ns, start), INT64_MAX)
    if span.input_tokens is not None and not 0 <= span.input_tokens <= TOKENS_MAX:
        span.input_tokens = None
    if span.output_tokens is not None and not 0 <= span.output_tokens <= TOKENS_MAX:
        span.output_tokens = None
    if span.cached_tokens is not None and not 0 <= span.cached_tokens <= TOKENS_MAX:
        span.cached_tokens = None
    if span.cache_write_tokens is not None and not 0 <= span.cache_write_tokens <= TOKENS_MAX:
        span.cache_write_tokens = None
    if span.prompt_version is not None and not 0 <= span.prompt_version <= INT32_MAX:
        span.prompt_version = None
    if span.cost_usd is not None and not math.isfinite(span.cost_usd):
        span.cost_usd = None
    if span.ttft_ms is not None and not math.isfinite(span.ttft_ms):
        span.ttft_ms = None
