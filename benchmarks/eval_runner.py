"""Eval runner throughput: 1,000 items x 3 deterministic scorers through `bastion serve`.

Starts a simulator process and a gateway process (SQLite, tracing on: every call is a span),
pushes a `qa` prompt whose model alias serves `sim-small~latency_ms=50` and a dataset of
N items, then runs the eval in this process at concurrency C:

- **cold run**: every item is a gateway call; wall time against the ideal `N x 50 ms / C`
  (bar: <= 1.3x);
- **warm run**: the same prompt version, dataset and params again, so every output comes from
  the output cache (no call) and is only re-scored and stored (bar: < 10% of the cold run).

    python benchmarks/eval_runner.py
    python benchmarks/eval_runner.py --items 5000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil
import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from bastion.auth import ensure_project
from bastion.evals import runner, store
from bastion.evals.datasets import Item
from bastion.prompts import PromptSpec, registry
from bastion.store import migrate
from bastion.store.engine import create_engine
from harness import create_key, free_port, sim_requests, start

console = Console(width=140)
LATENCY_MS = 50
SIM_MODEL = f"sim-small~latency_ms={LATENCY_MS}"
SCORERS = [
    {"type": "equals", "value": "{{ expected }}"},
    {"type": "contains", "value": "answer"},
    {"type": "regex", "value": "^answer \\d+$"},
]
PROMPT = {
    "name": "qa",
    "model": "sim50",
    "variables": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "messages": [
        {"role": "system", "content": "You answer questions about items."},
        {"role": "user", "content": "{{ question }}\nReply with: {{ answer }}"},
    ],
}


def setup(engine: sa.Engine, items: int) -> int:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        project_id = ensure_project(conn)

    def push(conn: sa.Connection) -> None:
        pushed = registry.push(
            conn, project_id, [PromptSpec.from_dict(PROMPT)], message="bench", author="bench"
        )
        registry.set_label(
            conn, project_id, "qa", pushed[0].version, "production", actor="bench", role="admin"
        )

    registry.run_write(engine, push)
    rows = [
        Item(
            id=f"q{k:05d}",
            vars={"question": f"What is item {k}?", "answer": f"answer {k}"},
            expected=f"answer {k}",
        )
        for k in range(items)
    ]
    store.push_dataset(engine, project_id, "bench", rows)
    return project_id


def run_once(
    engine: sa.Engine, project_id: int, url: str, key: str, concurrency: int, *, direct: bool
) -> runner.RunSummary:
    plan = runner.plan_run(
        engine, project_id, dataset="bench", target=runner.parse_target("qa@production"),
        scorers=SCORERS, model=SIM_MODEL if direct else None,
    )  # fmt: skip
    return asyncio.run(
        runner.run_eval(engine, plan, gateway_url=url, api_key=key, concurrency=concurrency)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--direct", action="store_true", help="call the simulator directly (runner overhead only)"
    )
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bastion-eval-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    sim_port, gw_port = free_port(), free_port()
    sim_url, gw_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    (home / "bastion.yaml").write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
        f"models:\n  sim50: {{deployments: [{{provider: sim, model: '{SIM_MODEL}'}}]}}\n"
        "log_level: WARNING\n"
    )  # fmt: skip
    simulator = start([*bastion, "simulate", "--port", str(sim_port)], env, home / "sim.log",
                      sim_url + "/healthz")  # fmt: skip
    key = create_key(env)
    gateway = start([*bastion, "serve", "--port", str(gw_port)], env, home / "gw.log",
                    gw_url + "/readyz")  # fmt: skip
    engine = create_engine(f"sqlite:///{home / 'bastion.db'}")
    try:
        project_id = setup(engine, args.items)
        url = sim_url if args.direct else gw_url
        procs = {"gateway": psutil.Process(gateway.pid), "simulator": psutil.Process(simulator.pid)}
        cpu: dict[str, dict[str, float]] = {}
        total: dict[str, float] = {}  # plan + run + summary, as `bastion eval run` spends it
        calls: list[int] = []
        runs = []
        for name in ("cold", "warm"):
            before = sim_requests(sim_url)
            seen = {n: sum(p.cpu_times()[:2]) for n, p in procs.items()}
            own = time.process_time()
            begun = time.perf_counter()
            runs.append(
                run_once(engine, project_id, url, key, args.concurrency, direct=args.direct)
            )
            total[name] = time.perf_counter() - begun
            cpu[name] = {n: sum(p.cpu_times()[:2]) - seen[n] for n, p in procs.items()}
            cpu[name]["runner"] = time.process_time() - own
            calls.append(sim_requests(sim_url) - before)
        cold, warm = runs
        cold_calls, warm_calls = calls
    finally:
        engine.dispose()
        for process in (gateway, simulator):
            process.terminate()
            process.wait(30)
        shutil.rmtree(home, ignore_errors=True)

    ideal = args.items * LATENCY_MS / 1000 / args.concurrency
    ratio = cold.wall_s / ideal
    warm_share = warm.wall_s / cold.wall_s
    table = Table(
        title=f"eval runner: {args.items} items x {len(SCORERS)} scorers, "
        f"{SIM_MODEL}, concurrency {args.concurrency}"
        + (" (simulator direct, no gateway)" if args.direct else " (through the gateway)")
    )
    for column in ("run", "wall s", "ideal s", "ratio", "calls", "cached", "errors",
                   "p50 ms", "p95 ms", "bar"):  # fmt: skip
        table.add_column(column, justify="left" if column == "run" else "right")
    table.add_row(
        "cold", f"{cold.wall_s:.2f}", f"{ideal:.2f}", f"{ratio:.2f}x", str(cold_calls),
        str(cold.cached), str(cold.errors), f"{cold.latency_p50_ms}", f"{cold.latency_p95_ms}",
        "PASS" if ratio <= 1.3 else "FAIL",
    )  # fmt: skip
    table.add_row(
        "warm cache", f"{warm.wall_s:.2f}", "", f"{warm_share:.1%} of cold", str(warm_calls),
        str(warm.cached), str(warm.errors), "", "", "PASS" if warm_share < 0.10 else "FAIL",
    )  # fmt: skip
    console.print(table)
    for name, used in cpu.items():
        console.print(
            f"{name} CPU s: " + ", ".join(f"{n} {v:.2f}" for n, v in used.items())
            + f" (per item: runner {used['runner'] / args.items * 1000:.2f} ms, gateway "
            f"{used['gateway'] / args.items * 1000:.2f} ms)",
            highlight=False,
        )  # fmt: skip
    console.print(
        f"end to end (plan: load dataset, resolve prompt, render every item; run; summary): "
        f"cold {total['cold']:.2f} s = {total['cold'] / ideal:.2f}x ideal, "
        f"warm {total['warm']:.2f} s = {total['warm'] / total['cold']:.1%} of cold",
        highlight=False,
    )
    console.print(f"cold metrics: {cold.metrics}", highlight=False)


if __name__ == "__main__":
    main()
