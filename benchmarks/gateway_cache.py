"""Response cache latency: a hit vs a miss vs the simulator called directly, same run.

Starts a simulator and two gateways (SQLite, tracing on): one with the in-memory exact cache,
one with the Redis backend (``BASTION_REDIS_URL``, default redis://127.0.0.1:6379/0, under a
prefix of its own that is deleted at the end). One client at a time (concurrency 1) sends, for
each of non-streaming and streaming requests:

- ``direct``: the request to the simulator;
- ``miss``: a new prompt every time through the gateway (lookup, provider call, store);
- ``hit``: the same prompt every time (answered from the cache; streams replayed).

Prints p50/p99 served latency (client-side, until the last byte) side by side. The issue's bar:
a hit is served in under 1 ms p50.

    python benchmarks/gateway_cache.py               # ~1 minute
    python benchmarks/gateway_cache.py --seconds 2   # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from harness import create_key, free_port, pct_ms, start

console = Console(width=140)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Summarise the ticket: the app crashes when I upload a file."},
]


async def drive(
    url: str, headers: dict[str, str], *, stream: bool, vary: bool, seconds: float
) -> tuple[list[float], int]:
    """Sequential requests for ``seconds``; the latencies (s) and the error count."""
    counter = itertools.count()
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            messages = MESSAGES
            if vary:
                messages = [MESSAGES[0], {"role": "user", "content": f"ticket {next(counter)}"}]
            body = orjson.dumps(
                {"model": "sim-small", "messages": messages, "max_tokens": 32, "stream": stream}
            )
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    continue
            latencies.append(time.perf_counter() - started)
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--redis-url", default=os.environ.get("BASTION_REDIS_URL") or
                        "redis://127.0.0.1:6379/0")  # fmt: skip
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bastion-cache-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    prefix = f"bastion-bench:{uuid.uuid4().hex}:"
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    (home / "bastion.yaml").write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
        "models:\n  sim-small: {deployments: [{provider: sim, model: sim-small}]}\n"
        f"cache:\n  exact: {{ttl_s: 3600, redis_prefix: '{prefix}cache:'}}\n"
        f"gateway: {{redis_prefix: '{prefix}state:'}}\n"
        "log_level: WARNING\n"
    )
    processes = [start([*bastion, "simulate", "--port", str(sim_port)], env, home / "sim.log",
                       sim_url + "/healthz")]  # fmt: skip
    key = create_key(env)
    gateways = {}
    for backend, extra in (("memory", {}), ("redis", {"BASTION_REDIS_URL": args.redis_url})):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        processes.append(start([*bastion, "serve", "--port", str(port)], {**env, **extra},
                               home / f"gw-{backend}.log", url + "/readyz"))  # fmt: skip
        gateways[backend] = url
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    rows: list[tuple[str, str, list[float], int]] = []
    try:
        for stream in (False, True):
            mode = "stream" if stream else "chat"
            targets = [("direct", sim_url, plain, False)]
            for backend, url in gateways.items():
                targets += [
                    (f"{backend} miss", url, auth, True),
                    (f"{backend} hit", url, auth, False),
                ]
            for name, base, headers, vary in targets:
                run = drive(base + "/v1/chat/completions", headers, stream=stream, vary=vary,
                            seconds=min(1.0, args.seconds))  # fmt: skip
                asyncio.run(run)  # warm (and, for hits, fill the entry)
                latencies, errors = asyncio.run(
                    drive(
                        base + "/v1/chat/completions",
                        headers,
                        stream=stream,
                        vary=vary,
                        seconds=args.seconds,
                    )
                )
                console.print(f"  {mode} {name}: {len(latencies)} requests, {errors} errors")
                rows.append((mode, name, latencies, errors))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(30)
        _clean_redis(args.redis_url, prefix)
    report(rows)


def _clean_redis(url: str, prefix: str) -> None:
    try:
        import redis
    except ImportError:
        return
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def report(rows: list[tuple[str, str, list[float], int]]) -> None:
    table = Table(title="response cache, concurrency 1 (served latency at the client)")
    for column in ("mode", "path", "requests", "p50 ms", "p99 ms", "vs direct p50", "bar"):
        table.add_column(column, justify="left" if column in ("mode", "path") else "right")
    direct = {mode: pct_ms(lat, 0.5) for mode, name, lat, _ in rows if name == "direct"}
    for mode, name, latencies, _ in rows:
        p50 = pct_ms(latencies, 0.5)
        bar = ("PASS" if p50 < 1.0 else "FAIL") if name.endswith("hit") else ""
        table.add_row(
            mode, name, str(len(latencies)), f"{p50:.3f}", f"{pct_ms(latencies, 0.99):.3f}",
            "" if name == "direct" else f"{p50 - direct[mode]:+.3f}", bar,
        )  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
