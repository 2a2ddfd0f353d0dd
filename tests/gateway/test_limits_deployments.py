"""Budgets and rate limits hold in every deployment without Redis, with real processes: one
``bastion serve`` restarted (counters rebuilt from the stored spans), and ``serve --workers 2``
(one ledger for the host, also rebuilt on restart). 200 concurrent requests against a $0.50
budget never commit more than the budget plus one request's maximum."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.gateway.conftest import Process, create_key, free_port
from tests.gateway.test_limits_shared import MESSAGES, _burst, _cost, _inside_one_minute

PRICE = 1000 / 1e6  # USD per token of sim-small here: a request costs about two cents
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
  - {{scope: project, period: day, limit_usd: 0.50, on_exceed: block}}
rate_limits:
  - {{scope: model, match: chat-lite, rpm: 100}}
"""
MAX_TOKENS = 24


class Server:
    """``bastion serve`` (``workers`` processes) on a home that outlives restarts."""

    def __init__(self, home: Path, sim_url: str, workers: int) -> None:
        self.home = home
        self.workers = workers
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        self.env["BASTION_HOME"] = str(home)
        self.config = home / "bastion.yaml"
        self.config.write_text(CONFIG.format(sim=sim_url))
        self.key = create_key(self.env, self.config)
        self.process: Process | None = None
        self.url = ""
        self.starts = 0

    def start(self) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.starts += 1
        log = self.home / f"serve-{self.starts}.log"
        args = ["serve", "--port", str(port), "-c", str(self.config)]
        if self.workers > 1:
            args += ["--workers", str(self.workers)]
        self.process = Process(args, self.env, log, self.url + "/readyz")
        # Ready means one worker answers; the test needs every worker listening.
        deadline = time.monotonic() + 60
        while log.read_text().count("bastion ready in") < self.workers:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()  # SIGTERM: in-flight requests finish, spans are written
            self.process = None

    def ask(self, n: int, model: str = "chat") -> list[tuple[int, dict[str, Any]]]:
        return asyncio.run(_burst([(self.url, self.key)] * n, model, MAX_TOKENS))

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.home.glob("serve-*.log")))


@pytest.fixture(scope="module")
def simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("sim")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    process = Process(["simulate", "--port", str(port), "--seed", "3"], env,
                      root / "simulator.log", url + "/healthz")  # fmt: skip
    try:
        yield url
    finally:
        process.stop()


def _one_max() -> float:
    """A request's maximum cost: its input estimate plus max_tokens at sim-small's price."""
    return ((len(orjson.dumps([MESSAGES])) + 3) // 4 + MAX_TOKENS) * PRICE


def _spent_in(body: dict[str, Any]) -> float:
    match = re.search(r"has spent \$([0-9.]+)", body["error"]["message"])
    assert match is not None, body
    return float(match.group(1))


def _until_refused(server: Server) -> list[dict[str, Any]]:
    """One request at a time until the budget refuses twice running; the answers served.

    Workers settle with the host's ledger in batches (every few milliseconds), so a request
    sent the moment the previous one answered may still meet that one's reservation: a
    refusal counts once a second try, after the settlements are in, is refused too.
    """
    served = []
    refusals = 0
    for _ in range(100):
        [(status, body)] = server.ask(1)
        if status != 200:
            assert status == 429, body
            assert body["error"]["code"] == "budget_exceeded"
            refusals += 1
            if refusals == 2:
                return served
            time.sleep(0.2)
            continue
        refusals = 0
        served.append(body)
    raise AssertionError("the budget never refused a request")


@pytest.mark.parametrize("workers", [1, 2])
def test_rate_window_is_shared_by_workers_and_survives_a_restart(
    simulator: str, tmp_path: Path, workers: int
) -> None:
    server = Server(tmp_path, simulator, workers)
    server.start()
    try:
        _inside_one_minute(40)
        wave = server.ask(200, "chat-lite")
        ok = [body for status, body in wave if status == 200]
        assert len(ok) == 100, [s for s, _ in wave if s != 200][:3]  # 100/min, all workers
        assert all(b["error"]["code"] == "rate_limit_exceeded" for s, b in wave if s != 200)
        # Restarted within the minute: the window is rebuilt, there is still no room.
        server.stop()
        server.start()
        [(status, body)] = server.ask(1, "chat-lite")
        assert status == 429, body
        assert body["error"]["code"] == "rate_limit_exceeded"
    finally:
        server.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_budget_holds_across_workers_and_a_restart(
    simulator: str, tmp_path: Path, workers: int
) -> None:
    server = Server(tmp_path, simulator, workers)
    server.start()
    try:
        # 200 at once against $0.50, then one at a time until refused.
        burst = server.ask(200)
        served = [b for s, b in burst if s == 200]
        refused = [b for s, b in burst if s != 200]
        assert refused
        assert all(b["error"]["code"] == "budget_exceeded" for b in refused)
        served += _until_refused(server)
        committed = sum(_cost(b, PRICE) for b in served)
        assert committed <= 0.50 + _one_max()  # at most one in-flight request past the budget
        assert committed >= 0.50 - _one_max()  # and refusals only once it was used up

        # Restarted: the budget is still spent (it was "200 200 200" when counters were lost).
        server.stop()
        server.start()
        after = server.ask(3)
        assert [status for status, _ in after] == [429, 429, 429], after
        assert _spent_in(after[0][1]) == pytest.approx(committed, abs=1e-4)  # exactly rebuilt
        assert "limits: rebuilt from stored spans" in server.log()
    finally:
        server.stop()
