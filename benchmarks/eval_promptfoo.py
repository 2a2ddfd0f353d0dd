"""`bastion eval run -c promptfooconfig.yaml`: 1,000 tests with a Python assertion.

The promptfoo-config variant of `eval_runner.py`: a simulator and a gateway process (SQLite,
tracing on), a promptfoo config whose 1,000 tests come from a CSV file, each checked by an
inline `python` assertion (run in the sandboxed worker pool) and a `contains`, against
`sim-small~latency_ms=50` at concurrency 32. The whole command is timed as a user runs it
(process start, config loading, planning, calls, assertions, storage), cold (`--no-cache`),
then warm (outputs from the eval cache). The reference: promptfoo 0.123 took 54 s for 1,000
tests with Python assertions on this machine.

    python benchmarks/eval_promptfoo.py
    python benchmarks/eval_promptfoo.py --tests 200 --workers 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import create_key, free_port, sim_requests, start

console = Console(width=140)
LATENCY_MS = 50
SIM_MODEL = f"sim-small~latency_ms={LATENCY_MS}"
PROMPTFOO_REFERENCE_S = 54.0
CONFIG = """\
description: promptfoo-config benchmark
prompts:
  - "{{{{ question }}}}\\nReply with: {{{{ answer }}}}"
providers:
  - openai:chat:sim50
defaultTest:
  assert:
    - type: python
      value: "output.strip() == context['vars']['answer']"
    - type: contains
      value: answer
tests: file://tests.csv
bastion:
  workers: {workers}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="python assertion workers")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bastion-promptfoo-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASTION_", "PROMPTFOO_"))}
    env["BASTION_HOME"] = str(home)
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    sim_port, gw_port = free_port(), free_port()
    sim_url, gw_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{gw_port}"
    (home / "bastion.yaml").write_text(
        f"providers:\n  sim: {{type: openai, base_url: '{sim_url}/v1'}}\n"
        f"models:\n  sim50: {{deployments: [{{provider: sim, model: '{SIM_MODEL}'}}]}}\n"
        "log_level: WARNING\n"
    )  # fmt: skip
    suite = home / "suite"
    suite.mkdir()
    (suite / "promptfooconfig.yaml").write_text(CONFIG.format(workers=args.workers))
    rows = ["question,answer"] + [f"What is item {k}?,answer {k}" for k in range(args.tests)]
    (suite / "tests.csv").write_text("\n".join(rows) + "\n")
    simulator = start([*bastion, "simulate", "--port", str(sim_port)], env, home / "sim.log",
                      sim_url + "/healthz")  # fmt: skip
    key = create_key(env)
    gateway = start([*bastion, "serve", "--port", str(gw_port)], env, home / "gw.log",
                    gw_url + "/readyz")  # fmt: skip
    config = str(suite / "promptfooconfig.yaml")
    command = [*bastion, "eval", "run", "-c", config, "--gateway", gw_url, "--key", key,
               "--concurrency", str(args.concurrency)]  # fmt: skip
    results = []
    try:
        for name, extra in (("cold", ["--no-cache"]), ("warm", [])):
            before = sim_requests(sim_url)
            begun = time.perf_counter()
            done = subprocess.run([*command, *extra], env=env, capture_output=True, text=True,
                                  check=False)  # fmt: skip
            wall = time.perf_counter() - begun
            summary = [line for line in done.stdout.splitlines() if "tests passed" in line]
            results.append(
                (name, wall, done.returncode, sim_requests(sim_url) - before,
                 summary[-1] if summary else done.stderr[-500:])
            )  # fmt: skip
    finally:
        for process in (gateway, simulator):
            process.terminate()
            process.wait(30)
        shutil.rmtree(home, ignore_errors=True)

    ideal = args.tests * LATENCY_MS / 1000 / args.concurrency
    table = Table(
        title=f"eval run -c: {args.tests} promptfoo tests (python + contains), {SIM_MODEL}, "
        f"concurrency {args.concurrency}, {args.workers} python workers"
    )
    for column in ("run", "wall s", "ideal calls s", "of promptfoo time", "exit", "calls",
                   "summary"):  # fmt: skip
        table.add_column(column, justify="left" if column in {"run", "summary"} else "right")
    for name, wall, code, calls, summary in results:
        share = wall / (PROMPTFOO_REFERENCE_S * args.tests / 1000)  # the reference, scaled
        table.add_row(name, f"{wall:.2f}", f"{ideal:.2f}", f"{share:.1%}", str(code),
                      str(calls), summary)  # fmt: skip
    console.print(table)


if __name__ == "__main__":
    main()
