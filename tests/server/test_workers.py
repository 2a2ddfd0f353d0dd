"""`bastion serve --workers N`: processes sharing a port, each with its own spool."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import psutil
import pytest

from bastion.ingest.spool import Spool
from bastion.server.workers import rebalance_spool
from bastion.tracing.model import Span
from tests.gateway.conftest import free_port


def spans(n: int, name: str) -> list[tuple[int, Span]]:
    now = time.time_ns()
    return [
        (1, Span(os.urandom(16).hex(), os.urandom(8).hex(), name=name, start_ns=now, end_ns=now))
        for _ in range(n)
    ]


def names_in(directory: Path) -> list[str]:
    spool = Spool(directory)
    return [
        span.name
        for path in spool.segments()
        for batch in spool.read_segment(path)
        for _, span in batch
    ]


def test_rebalance_gives_every_segment_a_worker_and_keeps_order(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    Spool(root).append(spans(1, "single-process"))
    for index in (0, 1, 2, 3):
        spool = Spool(root / f"worker-{index}")
        spool.append(spans(1, f"w{index}-first"))
        spool.seal()
        spool.append(spans(1, f"w{index}-second"))

    moved = rebalance_spool(root, 2)

    assert moved == 5  # root's segment and the two of worker-2 and worker-3 each
    assert names_in(root) == []
    assert names_in(root / "worker-0") == [
        "w0-first", "w0-second", "single-process", "w2-first", "w2-second",
    ]  # fmt: skip
    assert names_in(root / "worker-1") == ["w1-first", "w1-second", "w3-first", "w3-second"]
    assert names_in(root / "worker-2") == []

    assert rebalance_spool(root, 1) == 9  # back to one process: all of it in the root
    assert sorted(names_in(root)) == sorted(
        ["single-process"] + [f"w{i}-{k}" for i in range(4) for k in ("first", "second")]
    )
    assert rebalance_spool(root, 1) == 0


def test_rebalance_rejects_zero_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        rebalance_spool(tmp_path, 0)


def otlp_body(trace_id: str) -> bytes:
    span = {
        "traceId": trace_id,
        "spanId": os.urandom(8).hex(),
        "name": "chat sim-small",
        "startTimeUnixNano": str(time.time_ns()),
        "endTimeUnixNano": str(time.time_ns() + 1_000_000),
        "attributes": [{"key": "gen_ai.request.model", "value": {"stringValue": "sim-small"}}],
    }
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


def test_two_workers_share_the_port_and_stop_cleanly(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(tmp_path)
    bastion = [sys.executable, "-m", "bastion.cli.main"]
    key = subprocess.run(
        [*bastion, "keys", "create", "--quiet"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    # A segment a single-process run left behind must be replayed by one of the workers.
    Spool(tmp_path / "spool").append(spans(3, "left in the spool"))
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [*bastion, "serve", "--workers", "2", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        # Both must listen before traffic: the kernel only spreads over bound sockets.
        while len(_listening(_workers(server.pid), port)) < 2 or not _ready(port):
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.2)
        workers = _workers(server.pid)
        assert len(workers) == 2

        sent = [os.urandom(16).hex() for _ in range(40)]
        for trace_id in sent:  # a new connection each: the kernel spreads them over workers
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/traces",
                data=otlp_body(trace_id),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(90)
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()
    assert not any(psutil.pid_exists(pid) for pid in workers)

    text = (tmp_path / "serve.log").read_text()
    assert "worker-0" in text
    assert "worker-1" in text
    with sqlite3.connect(tmp_path / "bastion.db") as db:
        stored = {row[0] for row in db.execute("SELECT trace_id FROM spans")}
        replayed = db.execute("SELECT COUNT(*) FROM spans WHERE name = 'left in the spool'")
        assert replayed.fetchone()[0] == 3
    assert set(sent) <= stored  # every acknowledged span, whichever worker took it


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _listening(pids: set[int], port: int) -> set[int]:
    """Those of ``pids`` that have a socket listening on ``port``."""
    found = set()
    for pid in pids:
        try:
            sockets = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            found.add(pid)
    return found


def _workers(pid: int) -> set[int]:
    """The worker processes (multiprocessing's resource tracker is a child too)."""
    found = set()
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.add(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found
