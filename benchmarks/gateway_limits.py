"""Cost of resilience, budgets and rate limits on the gateway, healthy case, same run.

Starts one simulator, then one gateway at a time with the same provider and (1) a bare alias,
(2) the alias with the whole resilience configuration (retries, a fallback alias, connect /
first-byte / idle / total timeouts, a circuit breaker, least-latency routing over two
deployments), (3) the bare alias with two budgets and three rate limits kept in memory, (4) the
same limits in Redis (``BASTION_REDIS_URL``, default redis://127.0.0.1:6379/0, under a
throwaway key prefix that is deleted afterwards), (5) resilience and Redis limits together,
and ``serve --workers 2`` (6) with the bare alias and (7) with the limits in the host's ledger
(no Redis: the supervisor holds them, workers ask it over a Unix socket). The limits are far
above the load, so every request is admitted and pays the full admission + settlement path.
Prints p50/p99 at concurrency 1, the p50 added over calling the simulator directly and over the
bare alias (the 2-worker bare alias for the worker rows), and req/s at concurrency 50.

Then (``--accuracy``, on by default) the budget's accuracy per deployment: 200 concurrent
expensive requests against a $0.50 daily budget, then one at a time until refused; prints the
spend admitted against the budget and one request's maximum cost.

    python benchmarks/gateway_limits.py                 # ~2 minutes
    python benchmarks/gateway_limits.py --seconds 3     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis
from rich.console import Console
from rich.table import Table

from gateway_overhead import Result, drive
from harness import BASTION as BASTION_CLI
from harness import create_key, free_port, start

console = Console(width=120)
LIMITS = """
budgets:
  - {scope: project, period: day, limit_usd: 1000000000}
  - {scope: key, period: month, limit_usd: 1000000000}
rate_limits:
  - {scope: key, rpm: 1000000000}
  - {scope: project, tpm: 1000000000000}
  - {scope: model, rpm: 1000000000}
"""


BARE = "models:\n  sim-small: {deployments: [{provider: sim, model: sim-small}]}\n"
RESILIENT = """models:
  sim-small:
    deployments: [{provider: sim, model: sim-small}, {provider: sim, model: sim-large}]
    routing: least-latency
    retries: 2
    fallbacks: [backup]
    timeout: {connect_s: 2, first_byte_s: 10, idle_s: 15, total_s: 60}
    breaker: {error_rate: 0.05, window_s: 60, min_requests: 20, cooldown_s: 30}
  backup:
    deployments: [{provider: sim, model: sim-small}]
"""


def run(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> Result:
    asyncio.run(drive(url, headers, stream=False, concurrency=concurrency, seconds=1.0))  # warm
    return asyncio.run(drive(url, headers, stream=False, concurrency=concurrency, seconds=seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--accuracy", action=argparse.BooleanOptionalAction, default=True,
        help="also measure the spend each deployment admits against a $0.50 budget",
    )  # fmt: skip
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bastion-limits-bench-"))
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = start([*bastion, "simulate", "--port", str(sim_port)], base_env,
                      root / "sim.log", sim_url + "/healthz")  # fmt: skip
    prefix = f"bastion-bench:{uuid.uuid4().hex}:"
    shared = {"BASTION_REDIS_URL": args.redis_url, "BASTION_GATEWAY__REDIS_PREFIX": prefix}
    variants = [
        ("bare alias", BARE, {}, 1),
        ("resilience configured", RESILIENT, {}, 1),
        ("limits, memory", BARE + LIMITS, {}, 1),
        ("limits, Redis", BARE + LIMITS, shared, 1),
        ("resilience + limits, Redis", RESILIENT + LIMITS, shared, 1),
        ("bare alias, 2 workers", BARE, {}, 2),
        ("limits, 2 workers, host ledger", BARE + LIMITS, {}, 2),
    ]
    rows: list[tuple[str, Result, Result]] = []
    accuracy: list[tuple[str, float, float]] = []
    try:
        console.print("[bold]simulator directly[/bold]")
        plain = {"Content-Type": "application/json"}
        direct = run(sim_url + "/v1/chat/completions", plain, 1, args.seconds)
        for name, models, extra, workers in variants:
            console.print(f"[bold]{name}[/bold]")
            url, key, gateway = _gateway(root, name, sim_url, models, {**base_env, **extra},
                                         workers)  # fmt: skip
            try:
                auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
                endpoint = url + "/v1/chat/completions"
                serial = run(endpoint, auth, 1, args.seconds)
                parallel = run(endpoint, auth, 50, args.seconds)
                errors = serial.errors + parallel.errors
                console.print(f"  {parallel.rate:,.0f} req/s at c=50, {errors} errors")
                rows.append((name, serial, parallel))
            finally:
                gateway.terminate()
                gateway.wait(30)
        fresh_redis = {**shared, "BASTION_GATEWAY__REDIS_PREFIX": prefix + "accuracy:"}
        deployments = [
            ("1 process", {}, 1),
            ("2 workers, host ledger", {}, 2),
            ("2 workers + Redis", fresh_redis, 2),
        ]
        if args.accuracy:
            for name, extra, workers in deployments:
                console.print(f"[bold]budget accuracy: {name}[/bold]")
                accuracy.append((name, *_accuracy(root, name, sim_url, {**base_env, **extra},
                                                  workers)))  # fmt: skip
    finally:
        simulator.terminate()
        simulator.wait(30)
        client = redis.Redis.from_url(args.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError as exc:
            console.print(f"could not clean up Redis keys {prefix}*: {exc}")
        finally:
            client.close()
    report(direct, rows)
    if accuracy:
        table = Table(title="budget accuracy: 200 concurrent, then serial, against $0.50/day")
        for column in (
            "deployment",
            "admitted $",
            "budget $",
            "over budget $",
            "one request max $",
        ):
            table.add_column(column, justify="left" if column == "deployment" else "right")
        for name, spent, one_max in accuracy:
            table.add_row(name, f"{spent:.4f}", "0.5000", f"{spent - 0.5:+.4f}", f"{one_max:.4f}")
        console.print(table)


def _gateway(
    root: Path, name: str, sim_url: str, models: str, env: dict[str, str], workers: int
) -> tuple[str, str, Any]:
    """A gateway (``workers`` processes) on its own home; its URL, a key and the process."""
    home = root / name.replace(" ", "-").replace(",", "").replace("+", "and")
    home.mkdir()
    env = {**env, "BASTION_HOME": str(home)}
    (home / "bastion.yaml").write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
        f"log_level: WARNING\n{models}"
    )
    key = create_key(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*BASTION_CLI, "serve", "--port", str(port), "--workers", str(workers)]
    gateway = start(command, env, home / "gw.log", url + "/readyz")
    if workers > 1:
        time.sleep(3)  # /readyz answers once one worker listens; let the others bind too
    return url, key, gateway


ACCURACY = """prices:
  sim-small: {input_usd_per_mtok: 1000, output_usd_per_mtok: 1000}
models:
  chat: {deployments: [{provider: sim, model: sim-small}]}
budgets:
  - {scope: project, period: day, limit_usd: 0.50}
"""
_MESSAGES = [{"role": "user", "content": "Summarise the ticket: the upload crashes."}]


def _accuracy(
    root: Path, name: str, sim_url: str, env: dict[str, str], workers: int
) -> tuple[float, float]:
    """Spend admitted against a $0.50 budget, and one request's maximum cost."""
    url, key, gateway = _gateway(root, f"accuracy {name}", sim_url, ACCURACY, env, workers)
    body = orjson.dumps({"model": "chat", "messages": _MESSAGES, "max_tokens": 24})

    async def burst(n: int) -> list[tuple[int, Any]]:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def one() -> tuple[int, Any]:
                async with session.post(f"{url}/v1/chat/completions", data=body,
                                        headers=headers) as response:  # fmt: skip
                    return response.status, orjson.loads(await response.read())

            return await asyncio.gather(*(one() for _ in range(n)))

    try:
        answers = [b for s, b in asyncio.run(burst(200)) if s == 200]
        for _ in range(100):
            [(status, answer)] = asyncio.run(burst(1))
            if status != 200:
                break
            answers.append(answer)
    finally:
        gateway.terminate()
        gateway.wait(30)
    spent = sum(
        (a["usage"]["prompt_tokens"] + a["usage"]["completion_tokens"]) * 1000 / 1e6
        for a in answers
    )
    one_max = ((len(orjson.dumps([_MESSAGES])) + 3) // 4 + 24) * 1000 / 1e6
    return spent, one_max


def report(direct: Result, rows: list[tuple[str, Result, Result]]) -> None:
    table = Table(title="gateway resilience, budgets and rate limits (non-streaming chat)")
    for column in ("variant", "c=1 p50 ms", "c=1 p99 ms", "added p50 ms", "vs bare alias",
                   "c=50 req/s", "vs bare", "c=50 p50 ms", "errors"):  # fmt: skip
        table.add_column(column, justify="left" if column == "variant" else "right")
    base_p50 = direct.pct(direct.latencies, 0.5)
    # Each row against the bare alias with as many processes (1, or the 2-worker one).
    bare = {("workers" in name): (s.pct(s.latencies, 0.5), p.rate) for name, s, p in rows
            if name.startswith("bare alias")}  # fmt: skip
    direct_p99 = direct.pct(direct.latencies, 0.99)
    table.add_row("simulator directly", f"{base_p50:.3f}", f"{direct_p99:.3f}",
                  "-", "-", "-", "-", "-", str(direct.errors))  # fmt: skip
    for name, serial, parallel in rows:
        p50 = serial.pct(serial.latencies, 0.5)
        bare_p50, bare_rate = bare.get("workers" in name, (float("nan"), float("nan")))
        table.add_row(
            name,
            f"{p50:.3f}",
            f"{serial.pct(serial.latencies, 0.99):.3f}",
            f"{p50 - base_p50:+.3f}",
            f"{p50 - bare_p50:+.3f}",
            f"{parallel.rate:,.0f}",
            f"{parallel.rate / bare_rate:.2f}x",
            f"{parallel.pct(parallel.latencies, 0.5):.3f}",
            str(serial.errors + parallel.errors),
        )
    console.print(table)


if __name__ == "__main__":
    main()
