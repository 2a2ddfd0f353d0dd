"""What the benchmarks share: free ports, processes started until ready, API calls, timing."""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BASTION = [sys.executable, "-m", "bastion.cli.main"]  # the CLI of this checkout


def create_key(env: dict[str, str]) -> str:
    """A new API key in the project of ``env``'s ``BASTION_HOME`` (the CLI's ``keys create``)."""
    created = subprocess.run([*BASTION, "keys", "create", "--quiet"], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
    return created.stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``url`` until it answers; fail with the process's log if it exits or stalls."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up:\n{log.read_text()}")


def start(args: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    """Start ``args`` with its output in ``log`` and wait until ``ready`` answers."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(ready, process, log)
    except RuntimeError:
        process.kill()  # the caller never gets it to stop
        process.wait()
        raise
    return process


def api(url: str, key: str, method: str, path: str, body: Any = None) -> Any:
    """One JSON call to Bastion's API with ``key``; the decoded answer."""
    request = urllib.request.Request(
        url + path,
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return orjson.loads(response.read())


def sim_requests(url: str) -> int:
    """How many requests the simulator at ``url`` has answered so far."""
    with urllib.request.urlopen(url + "/_sim/stats", timeout=10) as response:
        return int(orjson.loads(response.read())["requests"])


def pct_ms(seconds: list[float], q: float) -> float:
    """The ``q`` quantile of durations in seconds, in ms (NaN when there are none)."""
    if not seconds:
        return float("nan")
    ordered = sorted(seconds)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def per_call_us(fn: Callable[[], Any], repeats: int, number: int) -> float:
    """Median over ``repeats`` batches of the per-call time of ``number`` calls, in µs."""
    fn()  # warm: fill caches, as a long-running process has them
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        samples.append((time.perf_counter() - started) / number * 1e6)
    return statistics.median(samples)
