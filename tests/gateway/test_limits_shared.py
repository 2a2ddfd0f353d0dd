"""Budgets and rate limits shared by two gateway processes through a real Redis, and a gateway
that keeps serving when its Redis is killed mid-run, then re-syncs."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from tests.gateway.conftest import Gateway, Process, create_key, free_port
from tests.gateway.test_admission_units import RedisServer
from tests.gateway.test_limit_store import REDIS_URL
from tests.gateway.test_limits_gateway import metric, start_gateway

PRICE = 1000 / 1e6  # USD per token of sim-small here: every request is expensive
LITE_PRICE = 10 / 1e6
CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
prices:
  sim-small: {{input_usd_per_mtok: 1000, output_usd_per_mtok: 1000}}
  sim-large: {{input_usd_per_mtok: 10, output_usd_per_mtok: 10}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
  chat-lite: {{deployments: [{{provider: sim, model: sim-large}}]}}
budgets:
  - {{scope: project, period: day, limit_usd: {limit}, on_exceed: block}}
rate_limits:
  - {{scope: key, rpm: {rpm}}}
"""
MESSAGES = [{"role": "user", "content": "Summarise the ticket: the upload crashes."}]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    return env


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[Gateway], str]]:
    """A simulator and two gateway replicas on one database and one Redis key prefix."""
    root = tmp_path_factory.mktemp("fleet")
    prefix = f"bastion-test:{uuid.uuid4().hex}:"
    shared_db = f"sqlite:///{root / 'shared.db'}"
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = Process(
        ["simulate", "--port", str(sim_port), "--seed", "9"],
        _env(root),
        root / "simulator.log",
        sim_url + "/healthz",
    )
    extra = {
        "BASTION_REDIS_URL": REDIS_URL,
        "BASTION_GATEWAY__REDIS_PREFIX": prefix,
        "BASTION_DATABASE_URL": shared_db,
    }
    config = CONFIG.replace("{limit}", "1.00").replace("{rpm}", "100")
    processes: list[Process] = [simulator]
    gateways: list[Gateway] = []
    client = redis.Redis.from_url(REDIS_URL)
    try:
        for name in ("one", "two"):
            home = root / name
            home.mkdir()
            gateway, started = start_gateway(home, config, env_extra=extra, sim_url=sim_url)
            processes += started
            gateways.append(gateway)
        yield gateways, prefix
    finally:
        for process in reversed(processes):
            process.stop()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


async def _burst(
    targets: list[tuple[str, str]], model: str, max_tokens: int
) -> list[tuple[int, dict[str, Any]]]:
    """One request per (gateway url, key), all at once; (status, body) each."""
    body = orjson.dumps({"model": model, "messages": MESSAGES, "max_tokens": max_tokens})
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def one(url: str, key: str) -> tuple[int, dict[str, Any]]:
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            async with session.post(
                f"{url}/v1/chat/completions", data=body, headers=headers
            ) as response:
                return response.status, orjson.loads(await response.read())

        return await asyncio.gather(*(one(url, key) for url, key in targets))


def _inside_one_minute(seconds: float) -> None:
    """Start a burst only if it can finish in the current minute (rate windows are minutes)."""
    if time.time() % 60 > 60 - seconds:
        time.sleep(61 - time.time() % 60)


def _cost(body: dict[str, Any], price: float) -> float:
    usage = body["usage"]
    return float(usage["prompt_tokens"] + usage["completion_tokens"]) * price


def _budget_state(prefix: str) -> tuple[float, float]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}b:*"))
        assert len(keys) == 1, keys
        spent, reserved = client.hmget(keys[0], "s", "r")
        return float(spent or 0), float(reserved or 0)
    finally:
        client.close()


def test_two_replicas_share_the_budget_and_the_rate_limit(
    fleet: tuple[list[Gateway], str],
) -> None:
    gateways, prefix = fleet
    key_a = gateways[0].key  # wave 1: the rate limit binds (cheap model)
    key_b = gateways[1].key  # wave 2: the budget binds (expensive model)
    env = _env(gateways[0].home)
    env["BASTION_DATABASE_URL"] = f"sqlite:///{gateways[0].home.parent / 'shared.db'}"
    assert create_key(env, gateways[0].home / "bastion.yaml")  # the database really is shared

    _inside_one_minute(25)
    wave1 = asyncio.run(
        _burst([(gateways[i % 2].url, key_a) for i in range(200)], "chat-lite", max_tokens=4)
    )
    ok1 = [body for status, body in wave1 if status == 200]
    refused1 = [body for status, body in wave1 if status == 429]
    assert len(ok1) + len(refused1) == 200, [s for s, _ in wave1 if s not in (200, 429)]
    assert len(ok1) == 100  # 100 requests per minute per key, across both replicas
    assert all(b["error"]["code"] == "rate_limit_exceeded" for b in refused1)
    wave1_cost = sum(_cost(b, LITE_PRICE) for b in ok1)

    _inside_one_minute(25)
    max_tokens = 24
    wave2 = asyncio.run(
        _burst([(gateways[i % 2].url, key_b) for i in range(200)], "chat", max_tokens)
    )
    ok2 = [body for status, body in wave2 if status == 200]
    refused2 = [body for status, body in wave2 if status == 429]
    assert len(ok2) + len(refused2) == 200, [s for s, _ in wave2 if s not in (200, 429)]
    assert 0 < len(ok2) <= 100
    assert refused2
    assert all(b["error"]["code"] == "budget_exceeded" for b in refused2)

    # Then one request at a time until refused: with nothing in flight the budget must be
    # used up (at most one reservation not yet released) before it refuses.
    _settled(prefix, wave1_cost + sum(_cost(b, PRICE) for b in ok2))
    sequential: list[dict[str, Any]] = []
    for i in range(100):
        [(status, body)] = asyncio.run(_burst([(gateways[i % 2].url, key_b)], "chat", max_tokens))
        if status != 200:
            assert status == 429
            assert body["error"]["code"] == "budget_exceeded"
            break
        sequential.append(body)
    else:
        raise AssertionError("the budget never refused a request")
    served = ok2 + sequential

    # One request's maximum: its input estimate plus max_tokens, at sim-small's price (and
    # never less than the dearest request actually served).
    input_estimate = (len(orjson.dumps([MESSAGES])) + 3) // 4
    one_max = max((input_estimate + max_tokens) * PRICE, *(_cost(b, PRICE) for b in served))
    committed = wave1_cost + sum(_cost(b, PRICE) for b in served)
    spent, reserved = _settled(prefix, committed)
    assert reserved < 1e-9  # every reservation released
    assert spent == pytest.approx(committed, rel=1e-9)  # Redis holds exactly what was served
    assert spent <= 1.00 + one_max  # never more than one in-flight request past the budget
    assert spent >= 1.00 - one_max  # and refusals came only once it was really used up


def _settled(prefix: str, committed: float) -> tuple[float, float]:
    """The budget once every settlement reached Redis (they are batched off the response)."""
    deadline = time.monotonic() + 20
    while True:
        spent, reserved = _budget_state(prefix)
        if (reserved < 1e-9 and spent == pytest.approx(committed)) or time.monotonic() > deadline:
            return spent, reserved
        time.sleep(0.05)


class _Driver:
    """Sends requests from a thread, two at a time, until stopped; keeps every outcome."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.results: list[tuple[float, int, float]] = []  # (started, status, cost)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()))

    def __enter__(self) -> _Driver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    async def _run(self) -> None:
        body = orjson.dumps({"model": "chat", "messages": MESSAGES, "max_tokens": 4})
        headers = {"Authorization": f"Bearer {self.gateway.key}"}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def worker() -> None:
                while not self._stop.is_set():
                    started = time.time()
                    async with session.post(
                        f"{self.gateway.url}/v1/chat/completions", data=body, headers=headers
                    ) as response:
                        answer = orjson.loads(await response.read())
                        cost = _cost(answer, PRICE) if response.status == 200 else 0.0
                        self.results.append((started, response.status, cost))
                    await asyncio.sleep(0.01)

            await asyncio.gather(worker(), worker())


def test_redis_killed_mid_run_keeps_serving_then_resyncs(tmp_path: Path) -> None:
    server = RedisServer(free_port())
    server.start()
    prefix = "kill-test:"
    extra = {
        "BASTION_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "BASTION_GATEWAY__REDIS_PREFIX": prefix,
    }
    config = CONFIG.replace("{limit}", "1000").replace("{rpm}", "100000")
    gateway, processes = start_gateway(tmp_path, config, env_extra=extra)
    degraded = "bastion_gateway_shared_state_degraded "
    try:
        with _Driver(gateway) as driver:
            time.sleep(1.0)
            assert metric(gateway, degraded) == 0.0
            server.stop()
            killed_at = time.time()
            deadline = time.monotonic() + 20
            while metric(gateway, degraded) != 1.0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert metric(gateway, degraded) == 1.0
            time.sleep(1.5)  # keep serving from memory for a while
            server.start()
            restarted_at = time.time()
            deadline = time.monotonic() + 30
            while metric(gateway, degraded) != 0.0 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert metric(gateway, degraded) == 0.0
            time.sleep(0.5)
        statuses = [status for _, status, _ in driver.results]
        assert statuses.count(200) == len(statuses)  # not one request failed
        during = [r for r in driver.results if killed_at + 0.2 < r[0] < restarted_at]
        assert len(during) >= 5
        # Re-synced: the fresh Redis holds the spend counted locally during the outage.
        outage_spend = sum(cost for _, _, cost in during)
        total_spend = sum(cost for _, _, cost in driver.results)
        client = redis.Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
        try:
            deadline = time.monotonic() + 10
            while True:
                keys = list(client.scan_iter(match=f"{prefix}b:*"))
                spent = float(client.hget(keys[0], "s") or 0) if keys else 0.0
                if spent >= outage_spend or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            client.close()
        assert outage_spend <= spent + 1e-9
        assert spent <= total_spend + 1e-9
        log = (tmp_path / "serve.log").read_text()
        assert log.count("shared state: Redis unreachable") == 1
        assert "shared state: Redis is back; re-synced" in log
    finally:
        for process in reversed(processes):
            process.stop()
        server.stop()


def test_two_replicas_split_what_is_left_when_redis_is_lost(tmp_path: Path) -> None:
    """Redis killed under two replicas: each holds half of what was left of the budget (and
    refuses a request that does not fit its half whole), so the fleet stays within it."""
    server = RedisServer(free_port())
    server.start()
    extra = {
        "BASTION_REDIS_URL": f"redis://127.0.0.1:{server.port}/0",
        "BASTION_GATEWAY__REDIS_PREFIX": "split-test:",
        "BASTION_DATABASE_URL": f"sqlite:///{tmp_path / 'shared.db'}",
    }
    config = CONFIG.replace("{limit}", "0.50").replace("{rpm}", "100000")
    processes: list[Process] = []
    gateways: list[Gateway] = []
    try:
        sim_url = None
        for name in ("one", "two"):
            home = tmp_path / name
            home.mkdir()
            gateway, started = start_gateway(home, config, env_extra=extra, sim_url=sim_url)
            sim_url = gateway.simulator_url
            processes += started
            gateways.append(gateway)
        time.sleep(2.5)  # both replicas have announced themselves
        max_tokens = 24
        before: list[dict[str, Any]] = []
        for i in range(6):  # some spend through both, so each knows the fleet's figure
            gw = gateways[i % 2]
            [(status, body)] = asyncio.run(_burst([(gw.url, gw.key)], "chat", max_tokens))
            assert status == 200, body
            before.append(body)
        time.sleep(0.3)  # settled in Redis, and the figures seen again by the last admissions
        server.stop()
        burst = asyncio.run(
            _burst([(gateways[i % 2].url, gateways[i % 2].key) for i in range(200)], "chat",
                   max_tokens)
        )  # fmt: skip
        during = [body for status, body in burst if status == 200]
        refused = [body for status, body in burst if status != 200]
        assert during  # the outage did not stop traffic
        assert refused
        assert all(b["error"]["code"] == "budget_exceeded" for b in refused)
        input_estimate = (len(orjson.dumps([MESSAGES])) + 3) // 4
        one_max = (input_estimate + max_tokens) * PRICE
        committed = sum(_cost(b, PRICE) for b in before + during)
        assert committed <= 0.50 + one_max  # not 2x: each replica kept to its half
        for gateway in gateways:
            assert "this process's share: 1/2" in (gateway.home / "serve.log").read_text()
    finally:
        for process in reversed(processes):
            process.stop()
        server.stop()
