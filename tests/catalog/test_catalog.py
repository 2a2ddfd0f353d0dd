"""The shipped model catalog: lookups, costs, overrides and unknown models."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from bastion.catalog import Catalog, ModelInfo
from bastion.settings import PriceOverride
from bastion.tracing.model import Span


def llm_span(
    model: str | None, inp: int | None = 1000, out: int | None = 100, **kw: object
) -> Span:
    span = Span(trace_id="1" * 32, span_id="2" * 16, name="chat", start_ns=1, end_ns=2)
    span.request_model = model
    span.input_tokens, span.output_tokens = inp, out
    for key, value in kw.items():
        setattr(span, key, value)
    return span


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load()


def test_shipped_prices_and_limits(catalog: Catalog) -> None:
    info = catalog.lookup("gpt-4o-mini")
    assert info is not None
    assert (info.input_usd_per_mtok, info.output_usd_per_mtok) == (0.15, 0.6)
    assert info.cache_read_usd_per_mtok == 0.075
    assert info.max_input_tokens == 128_000
    assert info.cost(1000, 100) == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)
    assert len(catalog) > 300


def test_cached_reads_and_cache_writes_are_billed_at_their_rates(catalog: Catalog) -> None:
    gpt = catalog.lookup("gpt-4o-mini")
    assert gpt is not None
    # 1000 input tokens of which 600 were read from the cache.
    assert gpt.cost(1000, 0, cached_tokens=600) == pytest.approx((400 * 0.15 + 600 * 0.075) / 1e6)
    claude = catalog.lookup("claude-haiku-4-5")
    assert claude is not None
    expected = (200 * 1.0 + 500 * 0.1 + 300 * 1.25 + 50 * 5.0) / 1e6
    assert claude.cost(1000, 50, cached_tokens=500, cache_write_tokens=300) == pytest.approx(
        expected
    )


def test_a_missing_price_gives_none_never_zero() -> None:
    info = ModelInfo(name="half-known", input_usd_per_mtok=1.0)
    assert info.cost(100, 0) == pytest.approx(1e-4)
    assert info.cost(100, 10) is None
    assert info.cost(None, None) is None
    assert info.cost(0, 0) == 0.0


@pytest.mark.parametrize(
    ("spelled", "listed"),
    [
        ("GPT-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("openrouter/openai/gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),  # the exact snapshot row wins
        ("gpt-4o-mini-2099-01-01", "gpt-4o-mini"),  # an unknown snapshot of a known model
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),
        ("claude-haiku-4-5-20991231", "claude-haiku-4-5"),
        ("claude-haiku-4-5@20251001", "claude-haiku-4-5"),
        ("claude-haiku-4-5-latest", "claude-haiku-4-5"),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5-20251001"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5-20251001"),
        ("global.anthropic.claude-sonnet-4-6", "claude-sonnet-4-6"),
        ("bedrock/eu.anthropic.claude-sonnet-4-6-v1:0", "claude-sonnet-4-6"),
    ],
)
def test_lookup_normalises_provider_spellings(catalog: Catalog, spelled: str, listed: str) -> None:
    info = catalog.lookup(spelled)
    assert info is not None, spelled
    assert info.name == listed


@pytest.mark.parametrize(
    "name", ["gpt-4o-mini-foo", "gpt-4o-min", "gpt-4", "claude-haiku", "mystery-model", ""]
)
def test_lookup_never_crosses_model_families(catalog: Catalog, name: str) -> None:
    info = catalog.lookup(name)
    assert info is None or info.name == name


def test_gpt4o_and_gpt4o_mini_stay_apart(catalog: Catalog) -> None:
    big, small = catalog.lookup("gpt-4o"), catalog.lookup("gpt-4o-mini")
    assert big is not None
    assert small is not None
    assert big.input_usd_per_mtok == 2.5
    assert small.input_usd_per_mtok == 0.15


def test_global_and_project_overrides() -> None:
    catalog = Catalog.load(
        {"gpt-4o-mini": PriceOverride(input_usd_per_mtok=1.0), "my-ft": PriceOverride(
            input_usd_per_mtok=2.0, output_usd_per_mtok=4.0)},
        project_overrides={7: {"gpt-4o-mini": PriceOverride(output_usd_per_mtok=9.0)}},
    )  # fmt: skip
    shared = catalog.lookup("openai/gpt-4o-mini")
    assert shared is not None
    assert (shared.input_usd_per_mtok, shared.output_usd_per_mtok) == (1.0, 0.6)
    assert shared.cache_read_usd_per_mtok == 0.075  # untouched fields keep the shipped value
    project = catalog.lookup("gpt-4o-mini", project_id=7)
    assert project is not None
    assert (project.input_usd_per_mtok, project.output_usd_per_mtok) == (1.0, 9.0)
    other = catalog.lookup("gpt-4o-mini", project_id=8)
    assert other is not None
    assert other.output_usd_per_mtok == 0.6
    span = llm_span("my-ft", 1_000_000, 1_000_000)
    catalog.price_span(1, span)
    assert span.cost_usd == pytest.approx(6.0)


def test_price_span_uses_served_model_then_requested(catalog: Catalog) -> None:
    span = llm_span("chat-alias", response_model="gpt-4o-mini-2024-07-18")
    catalog.price_span(1, span)
    assert span.cost_usd == pytest.approx(1000 * 0.15e-6 + 100 * 0.6e-6)


def test_producer_reported_cost_is_kept_and_tokenless_spans_are_left_alone(
    catalog: Catalog,
) -> None:
    reported = llm_span("gpt-4o-mini", cost_usd=0.5)
    catalog.price_span(1, reported)
    assert reported.cost_usd == 0.5
    plain = llm_span(None, None, None)
    catalog.price_span(1, plain)
    assert plain.cost_usd is None


def test_unknown_model_is_null_counted_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    catalog = Catalog.load(registry=registry)
    with caplog.at_level(logging.WARNING, logger="bastion.catalog"):
        for _ in range(3):
            span = llm_span("internal-ft-v3")
            catalog.price_span(1, span)
            assert span.cost_usd is None
    assert catalog.unknown_models == {"internal-ft-v3": 3}
    warnings = [r for r in caplog.records if "internal-ft-v3" in r.getMessage()]
    assert len(warnings) == 1
    assert "prices:" in warnings[0].getMessage()
    sample = registry.get_sample_value(
        "bastion_catalog_unpriced_spans_total", {"model": "internal-ft-v3"}
    )
    assert sample == 3


def test_deprecated_models(catalog: Catalog) -> None:
    old = {m.name for m in catalog.deprecated(date(2026, 11, 1))}
    assert "gpt-4o-2024-05-13" in old  # deprecated 2026-10-23
    assert "gpt-4o-2024-08-06" not in old  # deprecated 2027-01-14
    assert "gpt-4o-mini" not in old


def test_malformed_csv_names_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "prices.csv"
    bad.write_text(
        "model,input_usd_per_mtok,output_usd_per_mtok,cache_read_usd_per_mtok,"
        "cache_write_usd_per_mtok\nok,1,2,,\nbroken,cheap,2,,\n"
    )
    with pytest.raises(ValueError, match=r"prices\.csv:3: column 'input_usd_per_mtok'"):
        Catalog.load(path=bad)
    bad.write_text("name,price\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        Catalog.load(path=bad)
