"""SDK prompt fetching: `bastion.Client().prompts.get` against baselines measured in the same run.

Starts `bastion serve` on a temporary home (SQLite), pushes the `summarize` chat prompt and labels
it production, then measures, in this process:

- **cached get**: the in-memory hit every call after the first makes (bar: < 50 µs);
- **uncached get** over loopback: the memory cache cleared before each call, so each is a full
  fetch (HTTP on a keep-alive connection, JSON parse, spec validation, last-known-good file
  write), p50/p99 (bar: p99 < 5 ms). Baselines: a raw `urllib.request` GET of the same route
  (a new connection per request, as urllib does) and a raw keep-alive `http.client` GET, both
  just reading the body;
- **disk get**: the server unreachable, served from the last-known-good file;
- **render**: `PromptVersion.render` against `bastion.prompts.render` on the same spec (the
  difference is the span check), and inside a recording OpenTelemetry span when the SDK is
  installed.

    python benchmarks/prompt_get.py
    python benchmarks/prompt_get.py --requests 5000
"""

from __future__ import annotations

import argparse
import http.client
import logging
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import bastion
from bastion.prompts import render
from harness import api, create_key, free_port, per_call_us, start

console = Console(width=140)
CACHED_BAR_US = 50.0
UNCACHED_P99_BAR_MS = 5.0
SUMMARIZE = {
    "name": "summarize",
    "description": "Summarize a support ticket",
    "model": "sim-small",
    "params": {"temperature": 0.2, "max_tokens": 200},
    "variables": {"ticket": {"type": "string"}, "tone": {"default": "neutral"}},
    "messages": [
        {"role": "system", "content": "You summarize support tickets in a {{ tone }} tone."},
        {"role": "user", "content": "{{ ticket }}"},
    ],
}
TICKET = "The app crashes when I upload a file larger than 10 MB."


def latencies_ms(fn: Callable[[], Any], requests: int) -> list[float]:
    for _ in range(min(100, requests)):
        fn()  # warm: connections, caches
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="uncached gets per path")
    parser.add_argument("--repeats", type=int, default=30, help="batches per in-memory figure")
    parser.add_argument("--number", type=int, default=2000, help="calls per batch")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="bastion-prompt-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    (home / "bastion.yaml").write_text("log_level: WARNING\n")
    bastion_cmd = [sys.executable, "-m", "bastion.cli.main"]
    key = create_key(env)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = [*bastion_cmd, "serve", "--port", str(port)]
    server = start(serve, env, home / "serve.log", url + "/readyz")
    try:
        api(url, key, "POST", "/api/v1/prompts", {"prompts": [SUMMARIZE]})
        api(url, key, "PUT", "/api/v1/prompts/summarize/labels/production", {"version": 1})
        rows = measure(url, key, home, args)
    finally:
        server.terminate()
        server.wait(30)
    rows["disk"] = measure_disk(url, key, home, args)
    report(rows)
    shutil.rmtree(home, ignore_errors=True)  # kept when a step failed: serve.log is there


def measure(url: str, key: str, home: Path, args: argparse.Namespace) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    route = f"{url}/api/v1/prompts/summarize?label=production"
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}

    def raw_urllib() -> bytes:
        request = urllib.request.Request(route, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()

    conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
    path = route.split(str(url), 1)[1]

    def raw_keepalive() -> bytes:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().read()

    with bastion.Client(url, key, cache_dir=home / "prompt-cache", cache_ttl_s=3600) as client:
        prompt = client.prompts.get("summarize")
        assert (prompt.source, prompt.version) == ("server", 1)
        assert prompt.render(ticket=TICKET) == render(prompt.spec, {"ticket": TICKET})

        def uncached() -> Any:
            client.prompts.clear()
            return client.prompts.get("summarize")

        console.print("[bold]uncached gets over loopback[/bold]")
        rows["uncached"] = {
            "bastion get (keep-alive, parse)": latencies_ms(uncached, args.requests),
            "raw urllib GET (new connection)": latencies_ms(raw_urllib, args.requests),
            "raw http.client GET (keep-alive)": latencies_ms(raw_keepalive, args.requests),
        }
        conn.close()

        console.print("[bold]in-memory gets and renders[/bold]")
        cached = per_call_us(lambda: client.prompts.get("summarize"), args.repeats, args.number)
        baseline_dict = {("summarize", "production", None): prompt}
        dict_get = per_call_us(
            lambda: baseline_dict.get(("summarize", "production", None)), args.repeats, args.number
        )
        rows["cached"] = {"bastion get (cache hit)": cached, "plain dict lookup": dict_get}
        render_rows = {
            "PromptVersion.render (no span)": per_call_us(
                lambda: prompt.render(ticket=TICKET), args.repeats, args.number
            ),
            "bastion.prompts.render": per_call_us(
                lambda: render(prompt.spec, {"ticket": TICKET}), args.repeats, args.number
            ),
        }
        try:
            from opentelemetry.sdk.trace import TracerProvider
        except ImportError:
            pass
        else:
            provider = TracerProvider()  # recording, no exporter: the attribute cost only
            with provider.get_tracer("bench").start_as_current_span("chat"):
                render_rows["PromptVersion.render (recording span)"] = per_call_us(
                    lambda: prompt.render(ticket=TICKET), args.repeats, args.number
                )
            provider.shutdown()
        rows["render"] = render_rows

    return rows


def measure_disk(url: str, key: str, home: Path, args: argparse.Namespace) -> list[float]:
    """The server is stopped now: a new client with the same cache directory, as after a
    restart during an outage, serves the last-known-good file."""
    console.print("[bold]server stopped: gets from the last-known-good file[/bold]")
    # Each cleared get logs "serving disk"; an application logs that once per retry interval.
    logging.getLogger("bastion.prompts.client").setLevel(logging.ERROR)
    with bastion.Client(url, key, cache_dir=home / "prompt-cache") as client:
        assert client.prompts.get("summarize").source == "disk"

        def from_disk() -> Any:
            client.prompts.clear()  # the refused connection is remembered: no network per call
            return client.prompts.get("summarize")

        return latencies_ms(from_disk, args.requests)


def report(rows: dict[str, Any]) -> None:
    table = Table(title="prompts.get over loopback, ms per call (uncached)")
    for column in ("how", "p50 ms", "p99 ms", "p50 vs urllib", "bar p99 < 5 ms"):
        table.add_column(column, justify="left" if column == "how" else "right")
    base = pct(rows["uncached"]["raw urllib GET (new connection)"], 0.5)
    for how, values in rows["uncached"].items():
        p50, p99 = pct(values, 0.5), pct(values, 0.99)
        verdict = ""
        if how.startswith("bastion"):
            verdict = "[green]pass[/green]" if p99 < UNCACHED_P99_BAR_MS else "[red]FAIL[/red]"
        table.add_row(how, f"{p50:.3f}", f"{p99:.3f}", f"{p50 / base:.2f}x", verdict)
    disk = rows["disk"]
    table.add_row(
        "bastion get, server down (disk copy)",
        f"{pct(disk, 0.5):.3f}",
        f"{pct(disk, 0.99):.3f}",
        f"{pct(disk, 0.5) / base:.2f}x",
        "",
    )
    console.print(table)

    table = Table(title="in-memory, µs per call (median of batches)")
    for column in ("how", "µs / call", "ratio", "bar"):
        table.add_column(column, justify="left" if column == "how" else "right")
    cached = rows["cached"]
    hit, lookup = cached["bastion get (cache hit)"], cached["plain dict lookup"]
    verdict = "[green]pass[/green]" if hit < CACHED_BAR_US else "[red]FAIL[/red]"
    table.add_row("bastion get (cache hit)", f"{hit:.2f}", f"{hit / lookup:.1f}x dict", verdict)
    table.add_row("plain dict lookup", f"{lookup:.2f}", "1.0x dict", "")
    plain = rows["render"]["bastion.prompts.render"]
    for how, us in rows["render"].items():
        table.add_row(how, f"{us:.2f}", f"{us / plain:.2f}x render", "")
    console.print(table)


if __name__ == "__main__":
    main()
