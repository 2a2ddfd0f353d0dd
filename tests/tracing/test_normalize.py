"""Attribute conventions (GenAI new and old, OpenInference, Langfuse, bastion.*) → one model."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from bastion.tracing import normalize as normalize_module
from bastion.tracing.model import Span, StatusCode
from bastion.tracing.normalize import normalize, truncate

START = 1_700_000_000_000_000_000


def span(
    attributes: dict[str, Any] | None = None,
    *,
    resource: dict[str, Any] | None = None,
    events: list[dict[str, Any]] | None = None,
    status: int = StatusCode.UNSET,
    max_chars: int = 10_000,
) -> Span:
    s = Span(
        trace_id="1" * 32,
        span_id="2" * 16,
        name="x",
        start_ns=START,
        end_ns=START + 2_000_000_000,
        status_code=status,
        attributes=dict(attributes or {}),
        resource=dict(resource or {}),
        events=list(events or []),
    )
    return normalize(s, max_message_chars=max_chars)


def llm_fields(s: Span) -> tuple[Any, ...]:
    return (
        s.operation,
        s.provider,
        s.request_model,
        s.response_model,
        s.input_tokens,
        s.output_tokens,
        s.cached_tokens,
        s.cache_write_tokens,
    )


def test_genai_current_names() -> None:
    s = span(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "OpenAI",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 50,
            "gen_ai.usage.cache_read.input_tokens": 400,
            "gen_ai.usage.cache_creation.input_tokens": 100,
            "gen_ai.conversation.id": "conv-1",
            "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"hi"}]}]',
            "gen_ai.output.messages": [{"role": "assistant", "parts": []}],
            "error.type": "RateLimitError",
        }
    )
    assert llm_fields(s) == ("chat", "openai", "gpt-4o", "gpt-4o-2024-08-06", 1000, 50, 400, 100)
    assert s.session_id == "conv-1"
    assert s.error_class == "RateLimitError"
    assert orjson.loads(s.input or "")[0]["role"] == "user"
    assert orjson.loads(s.output or "") == [{"role": "assistant", "parts": []}]
    # Stored once: the message attributes moved into input/output.
    assert "gen_ai.input.messages" not in s.attributes
    assert "gen_ai.output.messages" not in s.attributes
    assert s.is_llm


def test_genai_older_names_and_indexed_messages() -> None:
    s = span(
        {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-3-5-sonnet",
            "gen_ai.usage.prompt_tokens": "300",
            "gen_ai.usage.completion_tokens": 20,
            "gen_ai.usage.cache_read_input_tokens": 5,
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "be brief",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "hello",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.content": "hi",
        }
    )
    assert llm_fields(s) == (None, "anthropic", "claude-3-5-sonnet", None, 300, 20, 5, None)
    assert orjson.loads(s.input or "") == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    assert orjson.loads(s.output or "") == [{"role": "assistant", "content": "hi"}]
    assert not any(k.startswith("gen_ai.prompt.") for k in s.attributes)
    assert s.is_llm  # a model was asked for, even without an operation name


def test_genai_message_events_of_the_older_conventions() -> None:
    s = span(
        {"gen_ai.request.model": "m"},
        events=[
            {"name": "gen_ai.user.message", "time_ns": START, "attributes": {"content": "q"}},
            {
                "name": "gen_ai.choice",
                "time_ns": START,
                "attributes": {"message": {"content": "a"}},
            },
        ],
    )
    assert orjson.loads(s.input or "") == [{"role": "user", "content": "q"}]
    assert orjson.loads(s.output or "") == [{"role": "assistant", "content": "a"}]


def test_openinference() -> None:
    s = span(
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "openai",
            "llm.model_name": "gpt-4o-mini",
            "llm.token_count.prompt": 10,
            "llm.token_count.completion": 4,
            "llm.token_count.prompt_details.cache_read": 2,
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.content": "hey",
            "output.value": "hello there",
            "session.id": "s-9",
            "user.id": "u-9",
        }
    )
    assert llm_fields(s) == ("chat", "openai", "gpt-4o-mini", None, 10, 4, 2, None)
    assert orjson.loads(s.input or "") == [{"role": "user", "content": "hey"}]
    assert s.output == "hello there"
    assert (s.session_id, s.user_id) == ("s-9", "u-9")
    tool = span({"openinference.span.kind": "TOOL"})
    assert tool.operation == "execute_tool"
    assert not tool.is_llm  # tool calls are not model calls


def test_langfuse() -> None:
    s = span(
        {
            "langfuse.observation.type": "generation",
            "langfuse.observation.model.name": "gpt-4o",
            "langfuse.observation.usage_details": '{"input": 70, "output": 7}',
            "langfuse.observation.cost_details": '{"total": 0.0123}',
            "langfuse.observation.input": '{"q": 1}',
            "langfuse.observation.output": "ok",
            "langfuse.observation.completion_start_time": '"2023-11-14T22:13:20.350Z"',
            "langfuse.observation.prompt.name": "summarize",
            "langfuse.observation.prompt.version": 3,
            "langfuse.observation.level": "ERROR",
            "langfuse.user.id": "lf-user",
            "langfuse.session.id": "lf-session",
        }
    )
    assert llm_fields(s) == ("chat", None, "gpt-4o", None, 70, 7, None, None)
    assert s.cost_usd == pytest.approx(0.0123)
    assert (s.input, s.output) == ('{"q": 1}', "ok")
    assert s.ttft_ms == pytest.approx(350.0)
    assert (s.prompt_name, s.prompt_version) == ("summarize", 3)
    assert (s.user_id, s.session_id, s.error_class) == ("lf-user", "lf-session", "error")


def test_bastion_attributes_win_and_span_beats_resource() -> None:
    s = span(
        {
            "bastion.user": "explicit",
            "user.id": "convention",
            "bastion.feature": "checkout",
            "bastion.release.id": "rel-1",
            "bastion.ttft_ms": 120,
            "bastion.prompt.name": "p",
            "bastion.prompt.version": "2",
        },
        resource={"bastion.feature": "from-resource", "bastion.tenant": "acme"},
    )
    assert (s.user_id, s.feature, s.tenant) == ("explicit", "checkout", "acme")
    assert (s.release_id, s.ttft_ms, s.prompt_name, s.prompt_version) == ("rel-1", 120.0, "p", 2)


def test_ttft_from_seconds_attribute_and_first_token_event() -> None:
    assert span({"gen_ai.response.time_to_first_chunk": 0.25}).ttft_ms == pytest.approx(250.0)
    event = {"name": "gen_ai.content.first_chunk", "time_ns": START + 80_000_000}
    assert span(events=[event]).ttft_ms == pytest.approx(80.0)


def test_error_class_from_exception_event_then_status() -> None:
    event = {"name": "exception", "time_ns": START, "attributes": {"exception.type": "Timeout"}}
    assert span(events=[event]).error_class == "Timeout"
    assert span(status=StatusCode.ERROR).error_class == "error"
    assert span(status=StatusCode.OK).error_class is None


def test_messages_are_capped_with_a_visible_marker() -> None:
    s = span({"input.value": "a" * 5000, "other": "b" * 5000}, max_chars=1000)
    assert s.input == "a" * 1000 + "…[truncated 4000 chars]"
    assert s.attributes["other"] == "b" * 1000 + "…[truncated 4000 chars]"
    assert truncate("short", 10) == "short"


@pytest.mark.parametrize(
    "junk",
    [
        {"gen_ai.usage.input_tokens": "lots"},
        {"gen_ai.usage.input_tokens": -5},
        {"gen_ai.usage.input_tokens": True},
        {"gen_ai.usage.input_tokens": [1, 2]},
        {"gen_ai.request.model": {"nested": 1}},
        {"langfuse.observation.usage_details": "{broken"},
        {"langfuse.observation.completion_start_time": "yesterday"},
        {"bastion.ttft_ms": "NaN"},
        {"bastion.prompt.version": "v2"},
    ],
)
def test_wrong_types_are_ignored_never_fatal(junk: dict[str, Any]) -> None:
    s = span(junk)
    assert s.input_tokens is None
    assert s.request_model is None
    assert s.ttft_ms is None
    assert s.prompt_version is None


# --- the precedence plan cache ------------------------------------------------------------


def _reference_scan(attrs: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """The attribute-by-attribute scan that the cached plans replaced: the oracle for them."""
    found: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    for source, offset, text_only in ((attrs, 0, False), (resource, 1 << 20, True)):
        for key, value in source.items():
            hit = normalize_module._LOOKUP.get(key)
            if hit is None:
                continue
            field, convert, rank = hit
            if text_only and (convert is not normalize_module._as_text or field == "error_class"):
                continue
            if ranks.get(field, 1 << 30) <= rank + offset:
                continue
            converted = convert(value)
            if converted is not None:
                found[field] = converted
                ranks[field] = rank + offset
    return found


def _typed(found: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    return {field: (type(value), value) for field, value in found.items()}


def test_same_keys_with_other_values_fall_through_to_the_next_convention() -> None:
    keys = ("bastion.usage.input_tokens", "gen_ai.usage.input_tokens", "llm.token_count.prompt")
    cases = [
        ((3, 7, 9), 3),
        (("lots", 7, 9), 7),  # the bastion value does not convert: the GenAI one wins
        ((-1, None, "12"), 12),
        ((True, [1], {"n": 1}), None),
        ((" 5 ", 7, 9), 5),
    ]
    for values, expected in cases:  # one key set, so one cached plan serves every case
        attrs = dict(zip(keys, values, strict=True))
        assert span(attrs).input_tokens == expected
        reversed_attrs = dict(reversed(list(attrs.items())))  # order never matters
        assert span(reversed_attrs).input_tokens == expected
    texts = ("bastion.user", "user.id", "enduser.id")
    assert span(dict(zip(texts, ({"a": 1}, "", "e"), strict=True))).user_id == "e"
    assert span(dict(zip(texts, ("b", "u", "e"), strict=True))).user_id == "b"
    # A span attribute that does not convert lets the resource's value through...
    assert span({"bastion.feature": ""}, resource={"bastion.feature": "r"}).feature == "r"
    assert span({"bastion.feature": "s"}, resource={"bastion.feature": "r"}).feature == "s"
    # ...but only text fields, error_class excepted, fall back to the resource.
    assert span(resource={"bastion.usage.input_tokens": 5, "error.type": "E"}).input_tokens is None
    assert span(resource={"error.type": "E"}).error_class is None


class _Text(str):
    __slots__ = ()


_SCAN_VALUES: list[Any] = [
    None,
    "",
    "x",
    "Bob",
    "12",
    " 7 ",
    "-3",
    "1.5",
    "inf",
    "nan",
    "lots",
    "a" * 512,
    "b" * 513,
    _Text("sub"),
    _Text("c" * 600),
    0,
    5,
    -5,
    True,
    False,
    0.0,
    2.0,
    2.5,
    -1.5,
    float("nan"),
    [1, 2],
    {"k": "v"},
]


def test_cached_plans_match_the_reference_scan_for_every_value() -> None:
    rnd = random.Random(7)
    known = sorted(normalize_module._LOOKUP)
    key_sets = [rnd.sample([*known, "other", "gen_ai.request.top_p"], rnd.randrange(1, 12))]
    key_sets += [rnd.sample(known, rnd.randrange(1, 8)) for _ in range(30)]
    for _ in range(3000):
        keys = rnd.choice(key_sets)
        rnd.shuffle(keys)
        attrs = {key: rnd.choice(_SCAN_VALUES) for key in keys}
        resource = {key: rnd.choice(_SCAN_VALUES) for key in rnd.sample(known, rnd.randrange(3))}
        got = normalize_module._scan(attrs, resource)
        assert _typed(got) == _typed(_reference_scan(attrs, resource)), (attrs, resource)


def test_plan_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(normalize_module, "_PLANS", {})
    monkeypatch.setattr(normalize_module, "_PLANS_MAX", 3)
    tokens = list(normalize_module._INPUT_TOKENS)
    for i in range(1, len(tokens) + 1):
        attrs = dict.fromkeys(tokens[:i], "oops") | {tokens[i - 1]: i}
        assert span(attrs).input_tokens == i  # every higher-precedence value fails to convert
        assert len(normalize_module._PLANS) <= 3


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("42", 42),
        (" 7 ", 7),
        ("²", None),  # a digit to str.isdigit(), not to int()
        ("1" * 5000, None),  # more digits than int() takes from a string
        (2**63 - 1, 2**63 - 1),
        (2**63, None),  # would not fit the BIGINT column: the batch would be refused
        (1e30, None),
        (-3, None),
        (3.0, 3),
        (True, None),
    ],
)
def test_token_counts_that_no_column_holds_are_dropped_not_fatal(
    value: object, expected: int | None
) -> None:
    span = normalize(
        Span(
            trace_id="a" * 32,
            span_id="b" * 16,
            name="chat",
            start_ns=1,
            end_ns=2,
            attributes={"gen_ai.usage.input_tokens": value, "gen_ai.usage.output_tokens": "5"},
        ),
        max_message_chars=1000,
    )
    assert span.input_tokens == expected
    assert span.output_tokens == 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [(3, 3), (2**31 - 1, 2**31 - 1), (2**31, None), ("12", 12), ("x", None)],
)
def test_prompt_versions_fit_their_integer_column(value: object, expected: int | None) -> None:
    attrs = {"bastion.prompt.name": "greet", "bastion.prompt.version": value}
    span = normalize(
        Span(trace_id="a" * 32, span_id="b" * 16, name="x", start_ns=1, end_ns=2, attributes=attrs),
        max_message_chars=1000,
    )
    assert span.prompt_version == expected


@pytest.mark.parametrize(
    "value", [float("inf"), "inf", "1e400", float("nan"), "nan", -1.0, 10**400]
)
def test_costs_that_are_not_finite_are_dropped(value: object) -> None:
    attrs = {"gen_ai.request.model": "m", "gen_ai.usage.cost": value}
    span = normalize(
        Span(trace_id="a" * 32, span_id="b" * 16, name="x", start_ns=1, end_ns=2, attributes=attrs),
        max_message_chars=1000,
    )
    assert span.cost_usd is None
