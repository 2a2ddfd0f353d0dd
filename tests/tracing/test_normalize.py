"""Attribute conventions (GenAI new and old, OpenInference, Langfuse, bastion.*) → one model."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

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
