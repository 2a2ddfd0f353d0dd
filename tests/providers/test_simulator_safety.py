"""The simulator's safety modes: a model that refuses everything and one that repeats its
whole prompt back (the two red-team targets)."""

from __future__ import annotations

import pytest

from bastion.providers.simulator import SimulatorConfig, SimulatorConfigError, parse_model
from bastion.providers.simulator.content import REFUSAL, reply_text

MESSAGES = [
    {"role": "system", "content": "Secret code: alpha-7.\nBe nice."},
    {"role": "user", "content": "Reply with: hello"},
]


def answer(safety: str, messages: list[dict[str, str]] = MESSAGES) -> str:
    return reply_text(
        key="k", messages=messages, system=None, quality="good", length=None,
        min_tokens=5, max_tokens=10, safety=safety,
    )  # fmt: skip


def test_modes() -> None:
    assert answer("none") == "hello"  # directives still rule by default
    assert answer("refuse") == REFUSAL
    leaked = answer("leak")
    assert "Secret code: alpha-7. Be nice. Reply with: hello" in leaked
    anthropic_system = reply_text(
        key="k", messages=[{"role": "user", "content": "hi"}], system="Keep token zz-9",
        quality="good", length=None, min_tokens=5, max_tokens=10, safety="leak",
    )  # fmt: skip
    assert "Keep token zz-9 hi" in anthropic_system


def test_config_and_model_options() -> None:
    base = SimulatorConfig()
    assert base.safety == "none"
    name, config = parse_model("sim-small~safety=refuse~latency_ms=5", base)
    assert (name, config.safety, config.latency_ms) == ("sim-small", "refuse", 5.0)
    with pytest.raises(SimulatorConfigError, match="safety: must be one of leak, none, refuse"):
        parse_model("sim-small~safety=maybe", base)
    with pytest.raises(SimulatorConfigError, match="safety"):
        SimulatorConfig(safety="off")
