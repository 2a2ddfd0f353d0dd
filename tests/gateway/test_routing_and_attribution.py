"""Weighted deployments, parameters passed through to the provider, and span attribution."""

from __future__ import annotations

import collections
from collections.abc import Iterator

import openai
import pytest

from tests.gateway.conftest import Gateway


@pytest.fixture
def sdk(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0) as sdk:
        yield sdk


def test_attribution_from_headers_wins_over_body_fields(
    gateway: Gateway, sdk: openai.OpenAI
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "Reply with: attributed"}],
        user="body-user",
        extra_headers={
            "x-bastion-user": "header-user",
            "x-bastion-session": "session-5",
            "x-bastion-feature": "search",
            "x-bastion-tenant": "acme",
        },
    )
    span = gateway.span(raw.headers["x-bastion-trace-id"])
    assert (span["user_id"], span["session_id"], span["feature"], span["tenant"]) == (
        "header-user",
        "session-5",
        "search",
        "acme",
    )
    assert raw.headers["x-request-id"]  # generated when the client sent none


def test_attribution_from_openai_metadata(gateway: Gateway, sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "user", "content": "Reply with: from metadata"}],
        metadata={"user_id": "meta-user", "session_id": "meta-session", "tenant": "globex"},
        store=True,
    )
    span = gateway.span(raw.headers["x-bastion-trace-id"])
    assert (span["user_id"], span["session_id"], span["tenant"]) == (
        "meta-user",
        "meta-session",
        "globex",
    )


def test_n_and_provider_parameters_reach_the_provider(gateway: Gateway, sdk: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me something."}]
    two = sdk.chat.completions.create(model="chat", messages=messages, n=2, seed=11)  # type: ignore[arg-type]
    assert [c.index for c in two.choices] == [0, 1]

    # The simulator's content depends on the request's `seed`: equal seeds give equal answers
    # and different seeds different ones only if the parameter reached it.
    def answer(seed: int) -> str | None:
        completion = sdk.chat.completions.create(
            model="chat",
            messages=messages,  # type: ignore[arg-type]
            seed=seed,
            extra_body={"top_k": 5},  # a provider-specific parameter rides along
        )
        return completion.choices[0].message.content

    assert answer(1) == answer(1)
    assert answer(1) != answer(2)


def test_weighted_deployments_share_traffic_by_weight(gateway: Gateway, sdk: openai.OpenAI) -> None:
    served: collections.Counter[str] = collections.Counter()
    calls = 200
    for _ in range(calls):
        completion = sdk.chat.completions.create(
            model="split", messages=[{"role": "user", "content": "Reply with: ok"}], max_tokens=4
        )
        served[completion.model.split("-2026")[0]] += 1
    assert set(served) == {"sim-small", "sim-large"}
    # Weights 3:1 → 150 expected on sim-small; ±30 is about five standard deviations.
    assert 120 <= served["sim-small"] <= 180, served
