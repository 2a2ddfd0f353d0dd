"""The storable rule: what every writer does to a value before the database sees it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bastion.store.storable import (
    JSON_MAX_DEPTH,
    TOKENS_MAX,
    make_span_storable,
    storable_float,
    storable_int,
    storable_json,
    storable_key,
    storable_text,
)
from bastion.tracing.model import Span

# Any code point, with NUL, lone surrogates and multi-byte characters drawn often (hypothesis
# alone seldom draws a surrogate).
ANY_TEXT = st.text(
    st.one_of(
        st.characters(codec=None, categories=None),
        st.sampled_from(["\x00", "\ud800", "\udfff", "é", "日", "\U0001f600"]),
    ),
    max_size=300,
)


def _is_storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("plain", "plain"),
        ("a\x00b", "a\ufffdb"),
        ("\x00", "\ufffd"),
        ("é\ud800x", "é\ufffdx"),
        ("\udfff\x00", "\ufffd\ufffd"),
        ("日本\x00語", "日本\ufffd語"),
        (b"ok \xff\xfe", "ok \ufffd\ufffd"),
    ],
)
def test_text_loses_nul_and_lone_surrogates(raw: str | bytes, expected: str) -> None:
    assert storable_text(raw) == expected


def test_text_is_cut_to_its_column_in_characters() -> None:
    assert storable_text("é" * 300, 200) == "é" * 200
    assert storable_text("ab\x00cd", 3) == "ab\ufffd"


def test_text_that_needs_nothing_is_returned_as_is() -> None:
    text = "already fine, ünïcödé too"
    assert storable_text(text) is text


@hypothesis_settings(max_examples=200, deadline=None)
@given(ANY_TEXT, st.one_of(st.none(), st.integers(0, 400)))
def test_any_text_becomes_storable_and_keeps_its_length(text: str, limit: int | None) -> None:
    out = storable_text(text, limit)
    assert _is_storable(out)
    assert len(out) == min(len(text), limit if limit is not None else len(text))


def test_long_keys_stay_distinct_and_fit() -> None:
    one, two = "k" * 250 + "1", "k" * 250 + "2"
    assert len(storable_key(one, 200)) == len(storable_key(two, 200)) == 200
    assert storable_key(one, 200) != storable_key(two, 200)
    assert storable_key(one, 200) == storable_key(one, 200)
    assert storable_key("short\x00", 200) == "short\ufffd"


def test_numbers_out_of_range_become_unknown() -> None:
    assert storable_int(5, 0, 10) == 5
    assert storable_int(11, 0, 10) is None
    assert storable_int(-1) is None
    assert storable_int(2**64) is None
    assert storable_float(1.5) == 1.5
    assert storable_float(float("nan")) is None
    assert storable_float(float("-inf")) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"k\x00": "v\x00"}, {"k\ufffd": "v\ufffd"}),
        ({"s": "\ud800"}, {"s": "\ufffd"}),
        ({"n": 2**70, "m": -(2**70)}, {"n": str(2**70), "m": str(-(2**70))}),
        ({1: "a", None: "b"}, {"1": "a", "None": "b"}),
        ({"b": b"\xff"}, {"b": "\ufffd"}),
        ({"ok": [1, 2.5, True, None]}, {"ok": [1, 2.5, True, None]}),
    ],
)
def test_json_documents_are_made_storable(value: Any, expected: Any) -> None:
    document = storable_json(value)
    assert "\\u0000" not in document
    assert orjson.loads(document) == expected


def test_json_nested_beyond_what_orjson_encodes_is_cut() -> None:
    deep: Any = "leaf\x00"
    for _ in range(300):
        deep = [deep]
    out = orjson.loads(storable_json(deep))
    depth = 0
    while isinstance(out, list):
        out, depth = out[0], depth + 1
    assert depth == JSON_MAX_DEPTH
    assert isinstance(out, str)


def test_a_span_is_made_storable_in_place() -> None:
    span = Span(
        trace_id="a" * 32,
        span_id="b" * 16,
        name="n\x00" * 400,
        start_ns=-5,
        end_ns=2**70,
        kind=99,
        status_code=-1,
        user_id="u\x00x",
        feature="\ud83d",
        input="in\x00put",
        input_tokens=TOKENS_MAX + 1,
        output_tokens=12,
        prompt_version=2**40,
        cost_usd=float("inf"),
        ttft_ms=float("nan"),
    )
    make_span_storable(span)
    assert span.name == ("n\ufffd" * 250)
    assert (span.user_id, span.feature, span.input) == ("u\ufffdx", "\ufffd", "in\ufffdput")
    assert (span.start_ns, span.end_ns) == (0, 2**63 - 1)
    assert (span.kind, span.status_code) == (0, 0)
    assert (span.input_tokens, span.output_tokens, span.prompt_version) == (None, 12, None)
    assert span.cost_usd is None
    assert span.ttft_ms is None


@hypothesis_settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.none(), ANY_TEXT), min_size=9, max_size=9), ANY_TEXT)
def test_a_span_gets_the_same_rule_as_each_of_its_texts(texts: list[str | None], name: str) -> None:
    fields = ("service_name", "operation", "provider", "request_model", "user_id", "session_id",
              "tenant", "release_id", "input")  # fmt: skip
    limits = (200, 64, 64, 200, 200, 200, 200, 64, None)
    span = Span("a" * 32, "b" * 16, name, 0, 1, **dict(zip(fields, texts, strict=True)))
    make_span_storable(span)
    assert span.name == storable_text(name, 500)
    for field, text, limit in zip(fields, texts, limits, strict=True):
        expected = None if text is None else storable_text(text, limit)
        assert getattr(span, field) == expected, field


@hypothesis_settings(max_examples=40, deadline=None)
@given(ANY_TEXT, st.dictionaries(ANY_TEXT, st.one_of(ANY_TEXT, st.integers()), max_size=5))
def test_stored_text_reads_back_the_same_from_both_databases(
    text: str, attributes: dict[str, Any]
) -> None:
    # The driver encodes every text to UTF-8 (as psycopg does): a surrogate left would raise.
    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (a TEXT, b TEXT)")
        conn.execute(
            sa.text("INSERT INTO t VALUES (:a, :b)"),
            {"a": storable_text(text), "b": storable_json(attributes)},
        )
        a, b = conn.exec_driver_sql("SELECT a, b FROM t").one()
    assert a == storable_text(text)
    assert _is_storable(a)
    assert all(_is_storable(k) for k in orjson.loads(b))
