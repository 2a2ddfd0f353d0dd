"""Datasets from production traces: a span filter snapshotted into a new dataset version.

The spans are selected with the read API's filters (:class:`~bastion.store.queries.SpanFilter`,
model calls only, newest first) plus an optional prompt version. Each span becomes one item:

- ``vars``: the prompt variables when the span recorded them (``bastion.prompt.variables``, set
  by the gateway for named-prompt requests), so the item can be run against another version of
  that prompt; otherwise the input messages (``{"messages": [...]}``, system prompt included)
  or, for a plain-text input, ``{"input": text}``;
- ``expected``: the recorded output text, only when asked (``expected_from_output``);
- ``metadata.source``: trace id, span id, time, model, prompt and attribution of the span;
- ``id``: ``<trace_id>:<span_id>``, so a re-snapshot pairs with the earlier one.

``sample`` keeps a deterministic fraction of the matching spans (by a hash of the span id), so
the same filter and rate give the same items and so the same content-addressed version.
Spans without a usable input (none recorded, or cut short by ``ingest.max_message_chars``) are
skipped and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.evals.datasets import DatasetError, Item
from bastion.store.queries_common import (
    SpanFilter,
    is_counted,
    ns_to_datetime,
    span_conditions,
    span_is_error,
)
from bastion.store.schema import spans
from bastion.tracing.attributes import PROMPT_VARIABLES

__all__ = ["TRUNCATION_MARK", "TraceSelection", "TraceSnapshot", "items_from_spans", "snapshot"]

TRUNCATION_MARK = "…[truncated"
VARIABLES_ATTRIBUTE = PROMPT_VARIABLES
MAX_SCAN = 100_000  # spans read at most for one snapshot (before sampling)
_PAGE = 1000


@dataclass(frozen=True, slots=True)
class TraceSelection:
    """Which spans to snapshot. Times are a half-open range on the span's start."""

    since: datetime | None = None
    until: datetime | None = None
    feature: str | None = None
    model: str | None = None
    user: str | None = None
    error_class: str | None = None
    prompt_name: str | None = None
    prompt_version: int | None = None
    limit: int = 1000
    sample: float = 1.0
    expected_from_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not 1 <= self.limit <= MAX_SCAN:
            raise DatasetError(f"limit must be from 1 to {MAX_SCAN}, got {self.limit!r}")
        if not 0.0 < self.sample <= 1.0:
            raise DatasetError(f"sample must be a fraction in (0, 1], got {self.sample!r}")
        if self.prompt_version is not None and self.prompt_name is None:
            raise DatasetError("a prompt version needs a prompt name")
        if self.since and self.until and self.since >= self.until:
            raise DatasetError("since must be before until")

    def span_filter(self) -> SpanFilter:
        return SpanFilter(
            start_ns=_ns(self.since),
            end_ns=_ns(self.until),
            feature=self.feature,
            model=self.model,
            user_id=self.user,
            error_class=self.error_class,
            prompt_name=self.prompt_name,
            llm_only=True,
        )

    def describe(self) -> dict[str, Any]:
        """The selection as JSON-ready data (kept with API answers and CLI output)."""
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "feature": self.feature,
            "model": self.model,
            "user": self.user,
            "error_class": self.error_class,
            "prompt": None
            if self.prompt_name is None
            else self.prompt_name
            + ("" if self.prompt_version is None else f"@{self.prompt_version}"),
            "limit": self.limit,
            "sample": self.sample,
            "expected_from_output": self.expected_from_output,
        }


@dataclass(frozen=True, slots=True)
class TraceSnapshot:
    """The items made from the selected spans, their sources, and what was left out."""

    items: tuple[Item, ...]
    sources: Mapping[str, tuple[str, str]]  # item id -> (trace_id, span_id)
    matched: int  # matching spans read (before sampling; reading stops at ``limit`` items)
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> spans


def _ns(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp() * 1_000_000_000)


def _sampled(span_id: str, rate: float) -> bool:
    if rate >= 1.0:
        return True
    digest = hashlib.sha256(span_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") < rate * 2**64


def _content_text(content: Any) -> str | None:
    """Text of a message content: a string, OpenAI/Anthropic blocks or OTel GenAI parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict):
                text = block.get("text", block.get("content"))
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return None


def _message(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("role"), str):
        return None
    content = raw.get("content")
    if content is None and isinstance(raw.get("parts"), list):  # OTel GenAI message shape
        content = _content_text(raw["parts"])
    message = {k: v for k, v in raw.items() if k != "parts"}
    message["content"] = content if isinstance(content, str | list) else _content_text(content)
    if message["content"] is None:
        message["content"] = ""
    return message


def parse_input(text: str | None) -> dict[str, Any] | None:
    """Item variables from a span's recorded input, or None when there is nothing usable.

    A gateway span holds the request body (``messages``, and ``system`` for the Anthropic
    API); an OTLP span a list of messages or plain text.
    """
    if text is None or not text.strip() or TRUNCATION_MARK in text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"input": text}
    raw_messages: Any = None
    system: Any = None
    if isinstance(data, dict):
        raw_messages = data.get("messages")
        system = data.get("system")
    elif isinstance(data, list):
        raw_messages = data
    elif isinstance(data, str):
        return {"input": data} if data.strip() else None
    if not isinstance(raw_messages, list):
        return None
    messages = [m for m in (_message(r) for r in raw_messages) if m is not None]
    if system:
        system_text = _content_text(system)
        if system_text:
            messages.insert(0, {"role": "system", "content": system_text})
    return {"messages": messages} if messages else None


def parse_output(text: str | None) -> str | None:
    """The answer text of a span's recorded output (assistant messages, content blocks or
    plain text); None when nothing was recorded or it was cut short."""
    if text is None or not text.strip() or TRUNCATION_MARK in text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(data, str):
        return data
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        return None
    parts: list[str] = []
    for entry in data:
        if isinstance(entry, str):
            parts.append(entry)
        elif isinstance(entry, dict):
            content = entry.get("content")
            if content is None and "parts" in entry:
                content = entry["parts"]
            if content is None and isinstance(entry.get("text"), str):
                content = entry["text"]
            found = _content_text(content)
            if found:
                parts.append(found)
    return "".join(parts) if parts else None


def _variables(attributes: Mapping[str, Any]) -> dict[str, Any] | None:
    value = attributes.get(VARIABLES_ATTRIBUTE)
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return dict(value)
    return None


def items_from_spans(
    rows: Sequence[Mapping[Any, Any]], *, expected_from_output: bool
) -> tuple[list[Item], dict[str, tuple[str, str]], dict[str, int]]:
    """Items (in row order) from span rows with the ``spans`` columns used here."""
    items: list[Item] = []
    sources: dict[str, tuple[str, str]] = {}
    skipped: dict[str, int] = {}
    for row in rows:
        try:
            attributes = orjson.loads(row["attributes"] or "{}")
        except orjson.JSONDecodeError:
            attributes = {}
        variables = _variables(attributes) if isinstance(attributes, dict) else None
        if variables is None:
            variables = parse_input(row["input"])
        if variables is None:
            reason = "truncated input" if TRUNCATION_MARK in (row["input"] or "") else "no input"
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        expected = parse_output(row["output"]) if expected_from_output else None
        if expected_from_output and expected is None:
            skipped["no output"] = skipped.get("no output", 0) + 1
            continue
        model = row["response_model"] or row["request_model"]
        source = {
            "trace_id": row["trace_id"],
            "span_id": row["span_id"],
            "time": ns_to_datetime(int(row["start_ns"])).isoformat(),
            "model": model,
            "prompt_name": row["prompt_name"],
            "prompt_version": row["prompt_version"],
            "feature": row["feature"],
            "user_id": row["user_id"],
            "error_class": row["error_class"],
        }
        tags = ["trace"]
        if row["feature"]:
            tags.append(f"feature:{row['feature']}")
        if row["is_error"]:
            tags.append("error")
        item_id = f"{row['trace_id']}:{row['span_id']}"
        items.append(
            Item(
                id=item_id,
                vars=variables,
                expected=expected,
                tags=tuple(tags),
                metadata={"source": {k: v for k, v in source.items() if v is not None}},
            )
        )
        sources[item_id] = (row["trace_id"], row["span_id"])
    return items, sources, skipped


def snapshot(conn: sa.Connection, project_id: int, selection: TraceSelection) -> TraceSnapshot:
    """The items for ``selection``: up to ``limit`` items from sampled spans, newest first.

    Raises:
        DatasetError: nothing matched (naming the filter), or no matching span was usable.
    """
    s = spans.c
    conds = [
        s.project_id == project_id,
        *span_conditions(selection.span_filter(), conn.dialect.name),
        # One item per call: the gateway's span of it, not also a client's span of the same call.
        is_counted(s),
    ]
    if selection.prompt_version is not None:
        conds.append(s.prompt_version == selection.prompt_version)
    columns = (
        s.trace_id, s.span_id, s.start_ns, s.input, s.output, s.attributes, s.request_model,
        s.response_model, s.prompt_name, s.prompt_version, s.feature, s.user_id, s.error_class,
        sa.case((span_is_error(s), True), else_=False).label("is_error"),
    )  # fmt: skip
    items: list[Item] = []
    sources: dict[str, tuple[str, str]] = {}
    skipped: dict[str, int] = {}
    matched = 0
    after: tuple[int, str, str] | None = None
    while len(items) < selection.limit and matched < MAX_SCAN:
        page_conds = list(conds)
        if after is not None:
            page_conds.append(
                sa.or_(
                    s.start_ns < after[0],
                    sa.and_(
                        s.start_ns == after[0],
                        sa.tuple_(s.trace_id, s.span_id) < sa.tuple_(after[1], after[2]),
                    ),
                )
            )
        rows = (
            conn.execute(
                sa.select(*columns)
                .where(*page_conds)
                .order_by(s.start_ns.desc(), s.trace_id.desc(), s.span_id.desc())
                .limit(_PAGE)
            )
            .mappings()
            .all()
        )
        for row in rows:
            matched += 1
            if not _sampled(row["span_id"], selection.sample):
                continue
            made, links, left_out = items_from_spans(
                [row], expected_from_output=selection.expected_from_output
            )
            items.extend(made)
            sources.update(links)
            for reason, count in left_out.items():
                skipped[reason] = skipped.get(reason, 0) + count
            if len(items) >= selection.limit:
                break
        if len(rows) < _PAGE:
            break
        last = rows[-1]
        after = (int(last["start_ns"]), last["trace_id"], last["span_id"])
    if matched == 0:
        shown = {k: v for k, v in selection.describe().items() if v not in (None, False)}
        raise DatasetError(f"no model-call spans match {orjson.dumps(shown).decode()}")
    if not items:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items())) or "sampling"
        raise DatasetError(f"{matched} spans matched but none could become an item ({why})")
    return TraceSnapshot(tuple(items), sources, matched, skipped)


def resolve_prompt(conn: sa.Connection, project_id: int, text: str) -> tuple[str, int | None]:
    """``NAME`` (any version), ``NAME@3`` / ``NAME:3`` / ``NAME@v3`` (that version) or
    ``NAME@LABEL`` (the version the label points at now).

    Raises:
        DatasetError: a malformed reference or an unknown label.
    """
    text = text.strip()
    name, sep, ref = text.replace(":", "@", 1).partition("@")
    if not name or (sep and not ref):
        raise DatasetError(f"prompt {text!r}: use NAME, NAME@VERSION or NAME@LABEL")
    if not sep:
        return name, None
    raw = ref.removeprefix("v")
    if raw.isdigit():
        if int(raw) < 1:
            raise DatasetError(f"prompt {text!r}: versions start at 1")
        return name, int(raw)
    from bastion.prompts import registry

    try:
        found = registry.get(conn, project_id, name, label=ref)
    except registry.RegistryError as exc:
        raise DatasetError(str(exc)) from None
    return name, found.version
