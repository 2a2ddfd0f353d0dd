"""Gateway overhead: the simulator called directly vs through `bastion serve`, same run.

Starts a simulator process and a gateway process (SQLite, tracing on: every call becomes a
span), then drives both with the same aiohttp client at concurrency 1 and 50, non-streaming and
streaming. Prints req/s, p50/p99 latency and the gateway's added p50/p99, streaming time to
first token, the gateway process's CPU per request and RSS; then a soak phase samples RSS to
show memory stays flat. With LiteLLM's proxy installed (`pip install 'litellm[proxy]'`) the same
load runs through it too, for the ratio.

    python benchmarks/gateway_overhead.py                    # ~2 minutes
    python benchmarks/gateway_overhead.py --soak-seconds 600 # the 10-minute memory check
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
from rich.console import Console
from rich.table import Table

from harness import create_key, free_port, pct_ms, start

console = Console(width=140)
BODY = {
    "model": "sim-small",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Summarise the ticket: the app crashes when I upload a file."},
    ],
    "max_tokens": 64,
}


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, values: list[float], q: float) -> float:
        return pct_ms(values, q)


async def drive(
    url: str, headers: dict[str, str], *, stream: bool, concurrency: int, seconds: float
) -> Result:
    body = orjson.dumps({**BODY, "stream": stream})
    result = Result()
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        if stream:
                            first = None
                            async for _ in response.content.iter_any():
                                if first is None:
                                    first = time.perf_counter() - started
                            if first is not None:
                                result.ttfts.append(first)
                        else:
                            await response.read()
                        if response.status != 200:
                            result.errors += 1
                            continue
                except aiohttp.ClientError:
                    result.errors += 1
                    continue
                result.latencies.append(time.perf_counter() - started)

        begun = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - begun
    return result


def measure(
    name: str,
    url: str,
    headers: dict[str, str],
    process: psutil.Process | None,
    *,
    stream: bool,
    concurrency: int,
    seconds: float,
) -> tuple[Result, float | None]:
    asyncio.run(drive(url, headers, stream=stream, concurrency=concurrency, seconds=1.0))  # warm
    cpu_before = process.cpu_times() if process else None
    result = asyncio.run(
        drive(url, headers, stream=stream, concurrency=concurrency, seconds=seconds)
    )
    cpu_ms = None
    if process and cpu_before and result.latencies:
        after = process.cpu_times()
        used = (after.user - cpu_before.user) + (after.system - cpu_before.system)
        cpu_ms = used * 1000 / len(result.latencies)
    console.print(f"  {name}: {result.rate:,.0f} req/s, {result.errors} errors")
    return result, cpu_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement")
    parser.add_argument("--soak-seconds", type=float, default=60.0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bastion-gw-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    sim_port, gw_port = free_port(), free_port()
    sim_url, gw_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    (home / "bastion.yaml").write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
        "models:\n  sim-small: {deployments: [{provider: sim, model: sim-small}]}\n"
        "log_level: WARNING\n"
    )
    simulator = start([*bastion, "simulate", "--port", str(sim_port)], env, home / "sim.log",
                      sim_url + "/healthz")  # fmt: skip
    key = create_key(env)
    gateway = start([*bastion, "serve", "--port", str(gw_port)], env, home / "gw.log",
                    gw_url + "/readyz")  # fmt: skip
    gw_process = psutil.Process(gateway.pid)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    targets = [("direct", sim_url, plain, None), ("gateway", gw_url, auth, gw_process)]
    litellm = None
    if importlib.util.find_spec("litellm") and shutil.which("litellm"):
        litellm = start_litellm(home, env, sim_url)
        if litellm is not None:
            targets.append(("litellm", litellm[1], plain, psutil.Process(litellm[0].pid)))

    rows = []
    try:
        for stream in (False, True):
            for concurrency in (1, 50):
                label = f"{'stream' if stream else 'chat'} c={concurrency}"
                console.print(f"[bold]{label}[/bold]")
                results = {}
                for name, base, headers, process in targets:
                    results[name] = measure(
                        name, base + "/v1/chat/completions", headers, process,
                        stream=stream, concurrency=concurrency, seconds=args.seconds,
                    )  # fmt: skip
                rows.append((label, stream, concurrency, results))
        soak = soak_rss(gw_url, auth, gw_process, args.soak_seconds)
    finally:
        for process in (gateway, simulator, *([litellm[0]] if litellm else [])):
            process.terminate()
            process.wait(30)
    report(rows, soak, gw_process_rss_mb=soak[-1] if soak else None)


def soak_rss(
    url: str, headers: dict[str, str], process: psutil.Process, seconds: float
) -> list[float]:
    console.print(f"[bold]soak {seconds:.0f} s at c=50 (RSS sampled)[/bold]")
    samples: list[float] = []

    async def run() -> None:
        task = asyncio.create_task(
            drive(
                url + "/v1/chat/completions", headers, stream=False, concurrency=50, seconds=seconds
            )
        )
        while not task.done():
            samples.append(process.memory_info().rss / 2**20)
            await asyncio.sleep(max(1.0, seconds / 20))
        await task

    asyncio.run(run())
    return samples


def start_litellm(
    home: Path, env: dict[str, str], sim_url: str
) -> tuple[subprocess.Popen[bytes], str] | None:
    port = free_port()
    config = home / "litellm.yaml"
    config.write_text(
        "model_list:\n  - model_name: sim-small\n    litellm_params:\n"
        f"      model: openai/sim-small\n      api_base: {sim_url}/v1\n      api_key: x\n"
    )
    litellm_env = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    try:
        process = start(
            ["litellm", "--config", str(config), "--port", str(port)],
            litellm_env,
            home / "litellm.log",
            f"http://127.0.0.1:{port}/health/liveliness",
        )
    except RuntimeError as exc:
        console.print(f"[yellow]LiteLLM did not start, skipped: {exc}[/yellow]")
        return None
    return process, f"http://127.0.0.1:{port}"


def report(rows: list, soak: list[float], gw_process_rss_mb: float | None) -> None:
    table = Table(title="gateway overhead (simulator direct vs through Bastion, tracing on)")
    for column in ("load", "path", "req/s", "p50 ms", "p99 ms", "added p50", "added p99",
                   "TTFT p50", "CPU ms/req", "bar"):  # fmt: skip
        table.add_column(column, justify="right" if column not in ("load", "path") else "left")
    for label, stream, concurrency, results in rows:
        direct, _ = results["direct"]
        for name, (result, cpu_ms) in results.items():
            added50 = result.pct(result.latencies, 0.5) - direct.pct(direct.latencies, 0.5)
            added99 = result.pct(result.latencies, 0.99) - direct.pct(direct.latencies, 0.99)
            ttft = result.pct(result.ttfts, 0.5) if stream else float("nan")
            bar = ""
            if name == "gateway":
                checks = []
                if concurrency == 50 and not stream:
                    checks.append(result.rate >= 1500)
                if concurrency == 1 and not stream:
                    checks.append(added50 <= 0.7)
                if concurrency == 1 and stream:
                    checks.append(ttft - direct.pct(direct.ttfts, 0.5) <= 1.0)
                bar = ("PASS" if all(checks) else "FAIL") if checks else ""
            p50 = result.pct(result.latencies, 0.5)
            p99 = result.pct(result.latencies, 0.99)
            table.add_row(
                label,
                name,
                f"{result.rate:,.0f}",
                f"{p50:.2f}",
                f"{p99:.2f}",
                "" if name == "direct" else f"{added50:+.2f}",
                "" if name == "direct" else f"{added99:+.2f}",
                "" if not stream else f"{ttft:.2f}",
                "" if cpu_ms is None else f"{cpu_ms:.2f}",
                bar,
            )
        for name, (result, _) in results.items():
            if name == "litellm":
                ratio = results["gateway"][0].rate / max(result.rate, 1e-9)
                console.print(f"{label}: Bastion/LiteLLM throughput ratio {ratio:.1f}x")
    console.print(table)
    if soak:
        growth = soak[-1] - soak[len(soak) // 4]
        flat = growth <= max(20.0, soak[len(soak) // 4] * 0.1)
        console.print(
            f"soak RSS: start {soak[0]:.0f} MiB, after warm-up {soak[len(soak) // 4]:.0f} MiB, "
            f"end {soak[-1]:.0f} MiB, growth {growth:+.0f} MiB: {'flat' if flat else 'GROWING'}"
        )


if __name__ == "__main__":
    main()
