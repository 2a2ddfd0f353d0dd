"""Whatever an OTLP span or a gateway request holds, every acknowledged record ends up stored
(made storable) or dead-lettered with a reason, and records of another project sent after it
are stored within the normal delay, on SQLite and on PostgreSQL, over real HTTP."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bastion.settings import Settings
from bastion.store.storable import storable_text
from bastion.store.write_errors import REJECT_REASONS
from tests.conftest import LiveServer
from tests.server.ingest_support import (
    attribute,
    chat,
    gateway_server,
    otlp_body,
    plain_span,
    post_otlp,
    project_key,
    rejected,
    stored_spans,
)

# Text as JSON can carry it (no lone surrogates), NUL and multi-byte characters drawn often.
TEXT = st.text(
    st.one_of(
        st.characters(exclude_categories=["Cs"]),
        st.sampled_from(["\x00", "é", "日", "\U0001f600", "\\", '"']),
    ),
    max_size=600,
)
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
VALUE = st.one_of(TEXT, INT64, st.booleans(), st.floats(allow_nan=False, allow_infinity=False))
PROPERTY = hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_ids = itertools.count(1)


def _unique_ids() -> tuple[str, str]:
    n = next(_ids)
    return f"{os.getpid():08x}{n:024x}", f"{n:016x}"


@st.composite
def otlp_spans(draw: st.DrawFn) -> dict[str, Any]:
    """Every string and number field of an OTLP span, the conventions' attributes included."""
    named = {
        "bastion.user": draw(TEXT),
        "session.id": draw(TEXT),
        "bastion.feature": draw(TEXT),
        "bastion.tenant": draw(TEXT),
        "gen_ai.operation.name": draw(st.sampled_from(["chat", "embeddings", "x\x00y"])),
        "gen_ai.provider.name": draw(TEXT),
        "gen_ai.request.model": draw(TEXT),
        "gen_ai.response.model": draw(TEXT),
        "gen_ai.usage.input_tokens": draw(INT64),
        "gen_ai.usage.output_tokens": draw(INT64),
        "gen_ai.prompt.name": draw(TEXT),
        "gen_ai.prompt.version": draw(INT64),
        "gen_ai.input.messages": draw(TEXT),
        "error.type": draw(TEXT),
    }
    extra = draw(st.dictionaries(TEXT, VALUE, max_size=4))
    return {
        "name": draw(TEXT),
        "kind": draw(st.integers(0, 9)),
        "startTimeUnixNano": str(draw(UINT64)),
        "endTimeUnixNano": str(draw(UINT64)),
        "status": {"code": draw(st.integers(0, 5)), "message": draw(TEXT)},
        "attributes": [attribute(k, v) for k, v in {**named, **extra}.items()],
        "events": [
            {
                "name": draw(TEXT),
                "timeUnixNano": str(draw(UINT64)),
                "attributes": [attribute(draw(TEXT), draw(VALUE))],
            }
        ],
        "service": draw(TEXT),
    }


@PROPERTY
@given(span=otlp_spans())
def test_every_acknowledged_otlp_span_is_stored_or_dead_lettered(
    live_server: LiveServer, span: dict[str, Any]
) -> None:
    trace_id, span_id = _unique_ids()
    service = span.pop("service")
    status, answer = post_otlp(
        live_server, otlp_body([{**span, "traceId": trace_id, "spanId": span_id}], service)
    )
    assert status == 200, answer
    acknowledged = not answer.get("partialSuccess", {}).get("rejectedSpans")
    other = str(live_server.state.extras.get("other_key") or "")
    if not other:
        other = live_server.state.extras["other_key"] = project_key(live_server, "other")
    after = os.urandom(16).hex()
    assert post_otlp(live_server, otlp_body([plain_span(after, "ab" * 8)]), other)[0] == 200

    stored = stored_spans(live_server, trace_id)
    dead = [r for r in rejected(live_server) if r["span_id"] == span_id]
    if acknowledged:
        assert len(stored) + len(dead) == 1
    if stored:
        assert stored[0]["name"] == storable_text(span["name"], 500)
    for reject in dead:
        assert reject["reason"] in REJECT_REASONS
    # Acknowledged means committed: the other project's span is readable right away.
    assert len(stored_spans(live_server, after, other)) == 1
    assert live_server.state.pipeline.spool.empty


@pytest.fixture
def gateway(settings: Settings, tmp_path: Path) -> Iterator[LiveServer]:
    with gateway_server(settings, tmp_path) as server:
        server.state.extras["other_key"] = project_key(server, "other")
        yield server


@PROPERTY
@given(
    user=TEXT,
    metadata=st.fixed_dictionaries(
        {"session_id": TEXT, "feature": TEXT, "tenant": TEXT, "team": TEXT}
    ),
    content=TEXT,
    max_tokens=st.integers(1, 64),
    temperature=st.floats(0, 2),
)
def test_every_gateway_call_is_stored_or_dead_lettered(
    gateway: LiveServer,
    user: str,
    metadata: dict[str, str],
    content: str,
    max_tokens: int,
    temperature: float,
) -> None:
    other_key = str(gateway.state.extras["other_key"])
    with (
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.admin_key, max_retries=0) as c,
        openai.OpenAI(base_url=gateway.url + "/v1", api_key=other_key, max_retries=0) as other,
    ):
        trace_id = chat(
            c,
            model="chat",
            messages=[{"role": "user", "content": content}],
            user=user,
            metadata=metadata,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        after = chat(other, model="chat", messages=[{"role": "user", "content": "after"}])
    assert trace_id is not None, "every call the gateway answers is recorded"
    # Gateway spans are written in the background: the normal delay is the batch linger.
    stored = stored_spans(gateway, trace_id, timeout=10)
    dead = [r for r in rejected(gateway) if r["trace_id"] == trace_id]
    assert len(stored) + len(dead) == 1
    if stored:
        assert stored[0]["user_id"] == (storable_text(user[:256], 200) or None)
        assert stored[0]["session_id"] == (storable_text(metadata["session_id"][:256], 200) or None)
    for reject in dead:
        assert reject["reason"] in REJECT_REASONS
    assert after is not None
    assert len(stored_spans(gateway, after, other_key, timeout=10)) == 1
