"""The exact cache shared through a real Redis by two gateway processes, and a gateway whose
Redis is unreachable (it still serves, caching in its own memory, and says so in /metrics)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.gateway.conftest import Gateway, Process, create_key, free_port
from tests.gateway.test_cache import calls, metrics, post, unique

REDIS_URL = "redis://127.0.0.1:6379/0"

CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
models:
  chat: {{deployments: [{{provider: sim, model: "sim-small~seed=41"}}]}}
cache:
  exact: {{ttl_s: 60, backend: {backend}, redis_prefix: "{prefix}cache:", redis_retry_s: 1}}
gateway: {{redis_prefix: "{prefix}state:"}}
"""


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Gateway]]:
    """Two gateways on one Redis (same database, so one key works on both), and one whose
    Redis is a closed port; a prefix of the module's own, deleted afterwards."""
    home = tmp_path_factory.mktemp("cache-redis-home")
    prefix = f"bastion-test:{uuid.uuid4().hex}:"
    base = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    base["BASTION_HOME"] = str(home)
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    processes: list[Process] = []
    try:
        processes.append(
            Process(
                ["simulate", "--port", str(sim_port)], base, home / "sim.log", sim_url + "/healthz"
            )
        )
        shared = home / "shared.yaml"
        shared.write_text(CONFIG.format(sim=sim_url, backend="redis", prefix=prefix))
        dead = home / "dead.yaml"
        dead.write_text(CONFIG.format(sim=sim_url, backend="auto", prefix=prefix))
        key = create_key(base, shared)
        out = []
        for name, config, redis_url in (
            ("a", shared, REDIS_URL),
            ("b", shared, REDIS_URL),
            ("dead", dead, f"redis://127.0.0.1:{free_port()}/0"),
        ):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            env = {**base, "BASTION_REDIS_URL": redis_url}
            processes.append(
                Process(
                    ["serve", "--port", str(port), "-c", str(config)],
                    env,
                    home / f"serve-{name}.log",
                    url + "/readyz",
                )
            )
            out.append(Gateway(url=url, key=key, simulator_url=sim_url, home=home))
        yield out
    finally:
        for process in reversed(processes):
            process.stop()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def _status_eventually(gateway: Gateway, body: dict[str, Any], wanted: str) -> str:
    """The cache status, polled briefly (the writer stores into Redis just after its
    response); ``no-store``, so whatever ``gateway`` finds was written by another process."""
    deadline = time.monotonic() + 10
    while True:
        opt_out = {"x-bastion-cache": "no-store"}
        status = post(gateway, "/v1/chat/completions", body, opt_out)[1]["x-bastion-cache"]
        if status == wanted or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def test_one_gateway_writes_the_other_hits(gateways: list[Gateway]) -> None:
    a, b, _ = gateways
    body = {"model": "chat", "messages": unique("shared"), "max_tokens": 10}
    status, headers, first = post(a, "/v1/chat/completions", body)
    assert status == 200
    assert headers["x-bastion-cache"] == "miss"
    assert _status_eventually(b, body, "hit") == "hit"
    before = calls(a, "sim-small~seed=41")
    hit = post(b, "/v1/chat/completions", body)
    assert hit[1]["x-bastion-cache"] == "hit"
    assert hit[2] == first
    assert calls(a, "sim-small~seed=41") == before


def test_streams_hit_across_gateways(gateways: list[Gateway]) -> None:
    a, b, _ = gateways
    body = {"model": "chat", "messages": unique("streamed"), "max_tokens": 10, "stream": True}
    assert post(a, "/v1/chat/completions", body)[1]["x-bastion-cache"] == "miss"
    assert _status_eventually(b, body, "hit") == "hit"
    replay = post(b, "/v1/chat/completions", body)[2]
    assert replay.endswith(b"data: [DONE]\n\n")
    assert b"chat.completion.chunk" in replay


def test_redis_down_still_serves_and_caches_locally(gateways: list[Gateway]) -> None:
    _, _, dead = gateways
    body = {"model": "chat", "messages": unique("no redis"), "max_tokens": 10}
    status, headers, _ = post(dead, "/v1/chat/completions", body)
    assert status == 200
    assert headers["x-bastion-cache"] == "miss"
    status, headers, _ = post(dead, "/v1/chat/completions", body)
    assert status == 200
    assert headers["x-bastion-cache"] == "hit"  # from the process's own memory
    text = metrics(dead)
    errors = [
        line for line in text.splitlines()
        if line.startswith("bastion_gateway_cache_backend_errors_total")
    ]  # fmt: skip
    assert errors
    assert any(float(line.rsplit(" ", 1)[1]) >= 1 for line in errors)
