"""Release routing on the request path: a named prompt called directly vs through a route.

Starts a simulator and `bastion serve` (SQLite), pushes a prompt, deploys a release on a route,
then drives the same aiohttp client at concurrency 1 and 32 through four set-ups: the prompt
named directly (no release), the route with no rollout, the route during a 50% canary, and the
route during a shadow rollout whose candidate answers after 200 ms (the user is served by
stable; the copy goes to the slow candidate). Prints req/s and the users' p50/p99 latency, so
the cost of route resolution and of shadow copies on the stable path is visible.

    python benchmarks/release_routing.py              # ~1 minute
    python benchmarks/release_routing.py --requests 3000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from harness import api, create_key, free_port, start

console = Console(width=120)
PROMPT = {
    "name": "assist",
    "text": "Help the customer with order {{ order }}.",
    "variables": {"order": {"type": "string"}},
}
CONFIG = """
providers:
  sim: {{type: openai, base_url: "http://127.0.0.1:{sim}/v1"}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
  chat-b: {{deployments: [{{provider: sim, model: sim-small}}]}}
  slow: {{deployments: [{{provider: sim, model: "sim-small~latency_ms=200"}}]}}
releases: {{refresh_s: 0.2, analysis_interval_s: 3600}}
"""


async def drive(
    url: str, key: str, body: dict[str, Any], n: int, concurrency: int
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        for i in counter:
            started = time.perf_counter()
            async with session.post(
                url + "/v1/chat/completions",
                data=orjson.dumps(body),
                headers={**headers, "x-bastion-user": f"user-{i}"},
            ) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "rate": len(latencies) / seconds,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
        env["BASTION_HOME"] = str(home)
        sim_port, port = free_port(), free_port()
        cli = [sys.executable, "-m", "bastion.cli.main"]
        sim = start(
            [*cli, "simulate", "--port", str(sim_port)],
            env,
            home / "sim.log",
            f"http://127.0.0.1:{sim_port}/healthz",
        )
        (home / "bastion.yaml").write_text(CONFIG.format(sim=sim_port))
        key = create_key(env)
        url = f"http://127.0.0.1:{port}"
        server = start(
            [*cli, "serve", "--port", str(port)], env, home / "serve.log", url + "/readyz"
        )
        try:
            api(url, key, "POST", "/api/v1/prompts", {"prompts": [PROMPT]})
            ids = {}
            for model in ("chat", "chat-b", "slow"):
                spec = {"name": f"r-{model}", "prompts": {"assist": 1}, "model": model}
                ids[model] = api(url, key, "POST", "/api/v1/releases", {"spec": spec})["release_id"]
            api(url, key, "POST", "/api/v1/routes/bench/deploy", {"release": ids["chat"]})
            direct = {
                "model": "chat",
                "prompt": {"name": "assist", "version": 1, "variables": {"order": "1"}},
            }
            routed = {"model": "route:bench", "prompt": {"variables": {"order": "1"}}}

            def rollout(candidate: str, strategy: str) -> None:
                if active():
                    api(url, key, "POST", "/api/v1/routes/bench/abort", {})
                api(
                    url,
                    key,
                    "POST",
                    "/api/v1/routes/bench/rollout",
                    {
                        "candidate": ids[candidate],
                        "strategy": strategy,
                        "steps": [50, 100],
                        "min_requests": 10**6,
                    },
                )
                time.sleep(0.5)

            def active() -> bool:
                return api(url, key, "GET", "/api/v1/routes/bench")["rollout"] is not None

            table = Table("set-up", "concurrency", "req/s", "p50 ms", "p99 ms", "errors")
            setups = [
                ("prompt named directly", direct, None),
                ("route, no rollout", routed, None),
                ("route, 50% canary", routed, ("chat-b", "canary")),
                ("route, shadow to a 200 ms candidate", routed, ("slow", "shadow")),
            ]
            for name, body, change in setups:
                if change is not None:
                    rollout(*change)
                for concurrency in (1, 32):
                    asyncio.run(drive(url, key, body, 50, concurrency))  # warm
                    r = asyncio.run(drive(url, key, body, args.requests, concurrency))
                    table.add_row(
                        name,
                        str(concurrency),
                        f"{r['rate']:.0f}",
                        f"{r['p50']:.2f}",
                        f"{r['p99']:.2f}",
                        str(int(r["errors"])),
                    )
            console.print(table)
        finally:
            server.terminate()
            server.wait(30)
            sim.terminate()
            sim.wait(30)


if __name__ == "__main__":
    main()
