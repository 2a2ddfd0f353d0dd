"""What the benchmarks share: free ports, processes started until ready, per-call timing."""

from __future__ import annotations

import socket
import statistics
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
    wait_ready(ready, process, log)
    return process


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
