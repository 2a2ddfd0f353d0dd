"""Budgets and rate limits without HTTP: configuration errors, admission decisions, settlement,
period rollover, warnings, and the shared state's Redis fallback and breaker sharing."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bastion.auth import Principal
from bastion.auth.keys import Role
from bastion.catalog import Catalog
from bastion.gateway.admission import Admission, Ticket
from bastion.gateway.breaker import Breakers
from bastion.gateway.errors import GatewayError
from bastion.gateway.limit_store import BudgetCheck, BudgetCommit, RateCheck
from bastion.gateway.limits_config import LimitsConfig, load_limits_config, period_bounds
from bastion.gateway.recording import Call, TraceContext
from bastion.gateway.shared_state import SharedState
from bastion.providers.config import GatewayConfig, load_gateway_config
from bastion.providers.translate import Usage
from bastion.settings import ConfigError, PriceOverride, load_settings
from tests.gateway.conftest import free_port
from tests.gateway.test_limit_store import REDIS_URL, drop_prefix

MODELS = """
providers:
  sim: {type: openai, base_url: "http://127.0.0.1:9/v1"}
models:
  chat:
    deployments: [{provider: sim, model: pricey}]
    fallbacks: [chat-backup]
  chat-backup: {deployments: [{provider: sim, model: priciest}]}
  chat-cheap: {deployments: [{provider: sim, model: cheap}]}
  mystery: {deployments: [{provider: sim, model: unpriced-model}]}
"""
PRICES = {
    "pricey": PriceOverride(input_usd_per_mtok=1000, output_usd_per_mtok=1000),
    "priciest": PriceOverride(input_usd_per_mtok=2000, output_usd_per_mtok=4000),
    "cheap": PriceOverride(input_usd_per_mtok=1, output_usd_per_mtok=1),
}
PRINCIPAL = Principal(project_id=1, project_slug="acme", key_id=7, role=Role.WRITE)
MIDNIGHT = 1_799_971_200.0  # 2027-01-15T00:00:00Z
BODY: dict[str, Any] = {
    "model": "chat",
    "messages": [{"role": "user", "content": "x" * 396}],  # ~100 tokens of JSON
    "max_tokens": 100,
}


def settings_from(tmp_path: Path, limits: str) -> Any:
    path = tmp_path / "bastion.yaml"
    path.write_text(MODELS + limits)
    return load_settings(path)


def limits_from(tmp_path: Path, limits: str) -> tuple[LimitsConfig, GatewayConfig]:
    settings = settings_from(tmp_path, limits)
    config = load_gateway_config(settings)
    return load_limits_config(settings, config), config


def config_error(tmp_path: Path, limits: str) -> str:
    with pytest.raises(ConfigError) as caught:
        limits_from(tmp_path, limits)
    return str(caught.value)


# -- configuration --------------------------------------------------------------------------


def test_valid_configuration(tmp_path: Path) -> None:
    limits, _ = limits_from(
        tmp_path,
        """
budgets:
  - {scope: project, period: day, limit_usd: 1.00, on_exceed: block}
  - {scope: feature, match: summarise, period: month, limit_usd: 50,
     on_exceed: {degrade_to: chat-cheap}}
rate_limits:
  - {scope: key, rpm: 100}
  - {scope: model, match: chat, tpm: 50000}
""",
    )
    assert limits.budgets[0].degrade_to is None
    assert limits.budgets[1].degrade_to == "chat-cheap"
    assert limits.budgets[1].match == "summarise"
    assert limits.rate_limits[1].tpm == 50000
    assert limits.rate_limits[1].rpm is None


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ("budgets: {scope: project}\n", ":11: budgets: must be a list of rules"),
        ("budgets:\n  - {scope: galaxy, period: day, limit_usd: 1}\n", ":12: budgets[0].scope:"),
        ("budgets:\n  - {scope: user, period: year, limit_usd: 1}\n", ":12: budgets[0].period:"),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: -1}\n",
            "budgets[0].limit_usd: Input should be greater than 0",
        ),
        (
            "budgets:\n  - {scope: user, period: day}\n",
            "budgets[0]: Value error, set limit_usd or limit_tokens (one of them)",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: 1, limit_tokens: 5}\n",
            "budgets[0]: Value error, set limit_usd or limit_tokens (one of them)",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_tokens: 5, unpriced: allow}\n",
            "budgets[0]: Value error, unpriced applies to limit_usd budgets only",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: 1, unpriced: maybe}\n",
            "budgets[0].unpriced: Input should be 'block' or 'allow'",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: 1, colour: red}\n",
            "budgets[0].colour: Extra inputs are not permitted",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: 1, on_exceed: explode}\n",
            "budgets[0].on_exceed",
        ),
        (
            "budgets:\n  - {scope: user, period: day, limit_usd: 1,\n"
            "     on_exceed: {degrade_to: nowhere}}\n",
            ":13: budgets[0].on_exceed.degrade_to: unknown model alias 'nowhere' (known: chat,",
        ),
        ("budgets:\n  - 3\n", "budgets[0]: must be a mapping"),
        ("rate_limits:\n  - {scope: key}\n", "rate_limits[0]: Value error, set rpm, tpm or both"),
        ("rate_limits:\n  - {scope: key, rpm: 0}\n", "rate_limits[0].rpm: Input should be"),
        ("rate_limits:\n  - {scope: user, rpm: 5}\n", "rate_limits[0].scope: Input should be"),
        (
            "rate_limits:\n  - {scope: model, match: ghost, rpm: 5}\n",
            "rate_limits[0].match: unknown model alias 'ghost'",
        ),
    ],
)
def test_configuration_errors_name_key_and_line(tmp_path: Path, limits: str, expected: str) -> None:
    message = config_error(tmp_path, limits)
    assert "bastion.yaml" in message
    assert expected in message


# -- admission ------------------------------------------------------------------------------


class Harness:
    """An :class:`Admission` on in-memory shared state with a settable clock."""

    def __init__(self, tmp_path: Path, limits: str, *, now: float = MIDNIGHT + 3600) -> None:
        self.now = now
        self.registry = CollectorRegistry()
        config_limits, config = limits_from(tmp_path, limits)
        self.shared = SharedState(None, registry=self.registry, clock=lambda: self.now)
        self.admission = Admission(
            config_limits,
            config,
            Catalog.load(PRICES),
            self.shared,
            default_max_tokens=1000,
            registry=self.registry,
            clock=lambda: self.now,
        )
        self.config = config

    def call(self, **attribution: str) -> Call:
        call = Call(
            api="openai", operation="chat", request_id="r", context=TraceContext.from_headers({})
        )
        call.attribution.update(attribution)
        return call

    def admit(
        self, call: Call, body: dict[str, Any] | None = None, alias: str = "chat"
    ) -> Ticket | None:
        found = self.config.alias(alias)
        assert found is not None
        return asyncio.run(self.admission.admit(call, PRINCIPAL, found, body or BODY))

    def serve(self, ticket: Ticket | None, call: Call, model: str, tokens: tuple[int, int]) -> None:
        call.served_model = model
        call.usage = Usage(input_tokens=tokens[0], output_tokens=tokens[1])
        self.admission.settle(ticket, call)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return value or 0.0


def test_reservation_uses_the_most_expensive_deployment_of_the_chain(tmp_path: Path) -> None:
    h = Harness(tmp_path, "budgets:\n  - {scope: project, period: day, limit_usd: 5}\n")
    call = h.call()
    ticket = h.admit(call)
    assert ticket is not None
    # Input estimate x $2000/M + 100 output x $4000/M: the fallback's prices, not chat's.
    estimate = (len(orjson.dumps([BODY["messages"]])) + 3) // 4
    expected = (estimate * 2000 + 100 * 4000) / 1e6
    assert call.attributes["bastion.budget.reserved_usd"] == pytest.approx(expected)
    assert call.attributes["bastion.budget.decision"] == "admitted"
    assert call.attributes["bastion.admission.store"] == "memory"
    # Settled with the actual (cheaper) cost: the reservation is released.
    h.serve(ticket, call, "pricey", (100, 50))
    assert call.attributes["bastion.budget.cost_usd"] == pytest.approx(150 * 1000 / 1e6)
    key = ticket.budgets[0].key
    assert h.shared.memory.budget(key) == (pytest.approx(0.15), 0.0)
    h.admission.settle(ticket, call)  # settling twice changes nothing
    assert h.shared.memory.budget(key) == (pytest.approx(0.15), 0.0)


def test_block_at_the_limit_with_a_clear_429(tmp_path: Path) -> None:
    h = Harness(tmp_path, "budgets:\n  - {scope: project, period: day, limit_usd: 0.5}\n")
    served = 0
    for _ in range(10):
        call = h.call()
        try:
            ticket = h.admit(call)
        except GatewayError as exc:
            error = exc
            break
        h.serve(ticket, call, "pricey", (100, 100))  # $0.20 each
        served += 1
    assert served == 3  # 0, 0.2, 0.4 are below 0.5; at 0.6 the budget is exhausted
    assert error.status == 429
    assert error.error_class == "budget_exceeded"
    assert "project 'acme'" in error.message
    assert "$0.6000" in error.message
    assert "daily budget of $0.50" in error.message
    assert "budgets[0]" in error.message
    _, end = period_bounds("day", h.now)
    assert int(error.headers["Retry-After"]) == pytest.approx(end - h.now, abs=1)
    assert call.attributes["bastion.budget.decision"] == "blocked"
    assert h.metric("bastion_gateway_admission_total", outcome="budget_exceeded") == 1


def test_budget_period_rolls_over(tmp_path: Path) -> None:
    h = Harness(tmp_path, "budgets:\n  - {scope: key, period: day, limit_usd: 0.1}\n")
    call = h.call()
    h.serve(h.admit(call), call, "pricey", (100, 100))
    with pytest.raises(GatewayError):
        h.admit(h.call())
    _, end = period_bounds("day", h.now)
    h.now = end + 1  # the next day: a fresh budget
    assert h.admit(h.call()) is not None


def test_periods_are_calendar_day_week_and_month() -> None:
    moment = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a Friday
    day = period_bounds("day", moment)
    week = period_bounds("week", moment)
    month = period_bounds("month", moment)
    assert day == (1_799_971_200.0, 1_800_057_600.0)
    assert week[0] == day[0] - 4 * 86400  # Monday
    assert week[1] - week[0] == 7 * 86400
    assert month[1] - month[0] == 31 * 86400
    assert time.gmtime(month[0])[:3] == (2027, 1, 1)


def test_degrade_to_a_cheaper_alias(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        """
budgets:
  - {scope: feature, match: summarise, period: day, limit_usd: 0.3,
     on_exceed: {degrade_to: chat-cheap}}
""",
    )
    first = h.call(feature="summarise")
    h.serve(h.admit(first), first, "pricey", (200, 200))  # $0.40: over the limit
    call = h.call(feature="summarise")
    ticket = h.admit(call)
    assert ticket is not None
    assert ticket.alias.name == "chat-cheap"
    assert call.attributes["bastion.budget.decision"] == "degraded"
    assert call.attributes["bastion.budget.degraded_from"] == "chat"
    assert call.attributes["bastion.budget.degraded_to"] == "chat-cheap"
    assert "feature=summarise" in call.attributes["bastion.budget.rule"]
    h.serve(ticket, call, "cheap", (100, 100))
    spent, reserved = h.shared.memory.budget(ticket.budgets[0].key) or (0, 0)
    assert spent == pytest.approx(0.4 + 200 / 1e6)  # the degraded request still pays in
    assert reserved == 0
    # Other features are not affected by this rule.
    assert h.admit(h.call(feature="search")).alias.name == "chat"  # type: ignore[union-attr]
    assert h.metric("bastion_gateway_admission_total", outcome="degraded") == 1


def test_unknown_price_allowed_reserves_nothing_and_says_so(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        "budgets:\n  - {scope: project, period: day, limit_usd: 0.01, unpriced: allow}\n",
    )
    call = h.call()
    ticket = h.admit(call, {**BODY, "model": "mystery"}, alias="mystery")
    assert call.attributes["bastion.budget.reserved_usd"] == 0
    assert call.attributes["bastion.budget.price_unknown"] == ["unpriced-model"]
    assert call.attributes["bastion.budget.unpriced"] == ["budgets[0]=allow"]
    h.serve(ticket, call, "unpriced-model", (1000, 1000))
    assert "bastion.budget.cost_usd" not in call.attributes  # no price: no cost to record
    assert h.shared.memory.budget(ticket.budgets[0].key) == (0.0, 0.0)  # type: ignore[union-attr]
    assert h.admit(h.call(), {**BODY, "model": "mystery"}, alias="mystery") is not None


def test_rate_limit_by_team_and_token_correction(tmp_path: Path) -> None:
    h = Harness(tmp_path, "rate_limits:\n  - {scope: team, rpm: 2, tpm: 1000}\n")
    # No team: the rule does not apply.
    for _ in range(5):
        assert h.admit(h.call()) is not None
    a1, a2 = h.call(team="red"), h.call(team="red")
    t1, t2 = h.admit(a1), h.admit(a2)
    assert a1.attributes["bastion.ratelimit.decision"] == "admitted"
    blocked = h.call(team="red")
    with pytest.raises(GatewayError) as caught:
        h.admit(blocked)
    assert caught.value.status == 429
    assert caught.value.error_class == "rate_limited"
    assert "team 'red' may send 2 requests per minute" in caught.value.message
    assert 1 <= int(caught.value.headers["Retry-After"]) <= 60
    assert blocked.attributes["bastion.ratelimit.decision"] == "rejected"
    assert blocked.attributes["bastion.ratelimit.rule"] == "rate_limits[0] team=red"
    assert h.admit(h.call(team="blue")) is not None
    # Tokens: estimates (~201 each) are replaced by the actual use.
    assert t1 is not None
    assert t2 is not None
    h.serve(t1, a1, "pricey", (10, 5))
    window = t1.window
    assert h.shared.memory.rate(t1.rates[0].key, window) == (2, 15 + t2.rates[0].tokens)


def test_tokens_per_minute_refusal_names_the_need(tmp_path: Path) -> None:
    h = Harness(tmp_path, "rate_limits:\n  - {scope: model, match: chat, tpm: 150}\n")
    with pytest.raises(GatewayError) as caught:
        h.admit(h.call())
    assert "model 'chat' may send 150 tokens per minute" in caught.value.message
    needed = (len(orjson.dumps([BODY["messages"]])) + 3) // 4 + BODY["max_tokens"]
    assert f"this request needs about {needed})" in caught.value.message
    assert h.admit(h.call(), {**BODY, "model": "chat-cheap"}, alias="chat-cheap") is not None


def test_warnings_at_50_75_90_once_per_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = Harness(tmp_path, "budgets:\n  - {scope: user, period: week, limit_usd: 1}\n")
    caplog.set_level(logging.WARNING, "bastion.gateway")
    for _ in range(5):  # 5 x $0.19 = $0.95
        call = h.call(user_id="ann")
        h.serve(h.admit(call), call, "pricey", (95, 95))
    events = [r.getMessage() for r in caplog.records if "event=budget_threshold" in r.getMessage()]
    assert len(events) == 3
    assert "threshold=50%" in events[0]
    assert "threshold=75%" in events[1]
    assert "threshold=90%" in events[2]
    assert "scope=user value='ann' period=week" in events[0]
    for threshold in ("0.5", "0.75", "0.9"):
        labels = {"scope": "user", "period": "week", "threshold": threshold}
        assert h.metric("bastion_gateway_budget_warnings_total", **labels) == 1
    # The next week starts from zero and warns again.
    _, end = period_bounds("week", h.now)
    h.now = end + 10
    for _ in range(3):
        call = h.call(user_id="ann")
        h.serve(h.admit(call), call, "pricey", (95, 95))
    labels = {"scope": "user", "period": "week", "threshold": "0.5"}
    assert h.metric("bastion_gateway_budget_warnings_total", **labels) == 2


def test_no_rules_no_admission(tmp_path: Path) -> None:
    h = Harness(tmp_path, "")
    call = h.call()
    assert h.admit(call) is None
    assert not any(k.startswith(("bastion.budget", "bastion.ratelimit")) for k in call.attributes)


# -- shared state: Redis, fallback, breakers ------------------------------------------------


class RedisServer:
    """A private ``redis-server`` (never the shared one) that a test may kill and restart."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(
                ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
            )
            if probe.stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


async def wait_for(predicate: Any, within_s: float = 20.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_redis_outage_falls_back_to_memory_and_resyncs() -> None:
    server = RedisServer(free_port())
    server.start()
    budget = BudgetCheck("0:1:acme", 10.0, 1.0, ttl_s=3600)
    rate = RateCheck("0:7", rpm=1000, tpm=None, tokens=0)

    async def main() -> None:
        registry = CollectorRegistry()
        shared = SharedState(
            f"redis://127.0.0.1:{server.port}/0",
            prefix="t:",
            registry=registry,
            retry_s=0.2,
            timeout_s=0.3,
        )
        await shared.start()
        try:
            verdict, on_redis = await shared.admit([rate], [budget], time.time())
            assert verdict.ok
            assert on_redis
            shared.settle([BudgetCommit(budget.key, 10.0, 1.0, 2.0, 3600)], [], True)
            await wait_for(lambda: not shared._pending_budgets)
            server.stop()
            # Redis is gone: admission goes on from memory, starting at the last shared figure.
            verdict, on_redis = await shared.admit([rate], [budget], time.time())
            assert verdict.ok
            assert not on_redis
            assert shared.degraded
            assert registry.get_sample_value("bastion_gateway_shared_state_degraded") == 1
            assert shared.memory.budget(budget.key) == (2.0, 1.0)
            shared.settle([BudgetCommit(budget.key, 10.0, 1.0, 3.0, 3600)], [], False)
            server.start()
            await wait_for(lambda: not shared.degraded)
            assert registry.get_sample_value("bastion_gateway_shared_state_degraded") == 0
            # The $3 spent during the outage joined Redis (a fresh server: it had none).
            client = aioredis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
            try:
                assert float(await client.hget("t:b:0:1:acme", "s") or 0) == 3.0
            finally:
                await client.aclose()
            verdict, on_redis = await shared.admit([rate], [budget], time.time())
            assert on_redis
        finally:
            await shared.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_breaker_opened_on_one_replica_opens_on_the_other(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        "",
    )
    config = load_gateway_config(settings)
    aliases = [
        a.__class__(**{**{f: getattr(a, f) for f in a.__slots__}, "breaker": _policy()})
        for a in config.aliases.values()
    ]
    prefix = f"bastion-test:{uuid.uuid4().hex}:"

    async def main() -> None:
        one, two = Breakers(aliases), Breakers(aliases)
        a = SharedState(REDIS_URL, prefix=prefix, breaker_sync_s=0.1)
        b = SharedState(REDIS_URL, prefix=prefix, breaker_sync_s=0.1)
        await a.start(one)
        await b.start(two)
        try:
            breaker = one.get("sim/pricey")
            assert breaker is not None
            for _ in range(3):
                one.note(breaker.record(False))
            assert breaker.state == "open"
            other = two.get("sim/pricey")
            assert other is not None
            await wait_for(lambda: other.state == "open")
            assert not other.available()
            assert 0 < other.retry_after_s() <= 30
            assert two.get("sim/cheap").state == "closed"  # type: ignore[union-attr]
        finally:
            await drop_prefix(a.client, prefix)
            await a.close()
            await b.close()

    asyncio.run(main())


def _policy() -> Any:
    from bastion.providers.config import BreakerPolicy

    return BreakerPolicy(error_rate=0.5, window_s=30, min_requests=2, cooldown_s=30)


def test_degrade_to_a_tiered_alias_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bastion.yaml"
    path.write_text(
        MODELS
        + "  routed: {tiers: {simple: chat-cheap, complex: chat}}\n"
        + "budgets:\n"
        + "  - {scope: user, period: day, limit_usd: 1, on_exceed: {degrade_to: routed}}\n"
    )
    settings = load_settings(path)
    with pytest.raises(ConfigError) as caught:
        load_limits_config(settings, load_gateway_config(settings))
    assert ":13: budgets[0].on_exceed.degrade_to: 'routed' is a tiered alias" in str(caught.value)
