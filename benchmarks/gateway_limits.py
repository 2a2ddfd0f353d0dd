"""Cost of resilience, budgets and rate limits on the gateway, healthy case, same run.

Starts one simulator, then one gateway at a time with the same provider and (1) a bare alias,
(2) the alias with the whole resilience configuration (retries, a fallback alias, connect /
first-byte / idle / total timeouts, a circuit breaker, least-latency routing over two
deployments), (3) the bare alias with two budgets and three rate limits kept in memory, (4) the
same limits in Redis (``BASTION_REDIS_URL``, default redis://127.0.0.1:6379/0, under a
throwaway key prefix that is deleted afterwards), (5) resilience and Redis limits together.
The limits are far above the load, so every request is admitted and pays the full admission +
settlement path. Prints p50/p99 at concurrency 1, the p50 added over calling the simulator
directly and over the bare alias, and req/s at concurrency 50, side by side.

    python benchmarks/gateway_limits.py                 # ~1 minute
    python benchmarks/gateway_limits.py --seconds 3     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import uuid
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from gateway_overhead import Result, drive
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
        ("bare alias", BARE, {}),
        ("resilience configured", RESILIENT, {}),
        ("limits, memory", BARE + LIMITS, {}),
        ("limits, Redis", BARE + LIMITS, shared),
        ("resilience + limits, Redis", RESILIENT + LIMITS, shared),
    ]
    rows: list[tuple[str, Result, Result]] = []
    try:
        console.print("[bold]simulator directly[/bold]")
        plain = {"Content-Type": "application/json"}
        direct = run(sim_url + "/v1/chat/completions", plain, 1, args.seconds)
        for name, models, extra in variants:
            console.print(f"[bold]{name}[/bold]")
            home = root / name.replace(" ", "-").replace(",", "").replace("+", "and")
            home.mkdir()
            env = {**base_env, "BASTION_HOME": str(home), **extra}
            (home / "bastion.yaml").write_text(
                f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
                f"log_level: WARNING\n{models}"
            )
            key = create_key(env)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            gateway = start([*bastion, "serve", "--port", str(port)], env, home / "gw.log",
                            url + "/readyz")  # fmt: skip
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


def report(direct: Result, rows: list[tuple[str, Result, Result]]) -> None:
    table = Table(title="gateway resilience, budgets and rate limits (non-streaming chat)")
    for column in ("variant", "c=1 p50 ms", "c=1 p99 ms", "added p50 ms", "vs bare alias",
                   "c=50 req/s", "c=50 p50 ms", "errors"):  # fmt: skip
        table.add_column(column, justify="left" if column == "variant" else "right")
    base_p50 = direct.pct(direct.latencies, 0.5)
    bare_p50 = rows[0][1].pct(rows[0][1].latencies, 0.5) if rows else float("nan")
    direct_p99 = direct.pct(direct.latencies, 0.99)
    table.add_row("simulator directly", f"{base_p50:.3f}", f"{direct_p99:.3f}",
                  "-", "-", "-", "-", str(direct.errors))  # fmt: skip
    for name, serial, parallel in rows:
        p50 = serial.pct(serial.latencies, 0.5)
        table.add_row(
            name,
            f"{p50:.3f}",
            f"{serial.pct(serial.latencies, 0.99):.3f}",
            f"{p50 - base_p50:+.3f}",
            f"{p50 - bare_p50:+.3f}",
            f"{parallel.rate:,.0f}",
            f"{parallel.pct(parallel.latencies, 0.5):.3f}",
            str(serial.errors + parallel.errors),
        )
    console.print(table)


if __name__ == "__main__":
    main()
