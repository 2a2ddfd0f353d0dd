"""What the end-to-end eval tests share: a simulator and ``bastion serve`` on loopback with one
home (``bastion.yaml``, the SQLite store), an API key, and the CLI pointed at them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from bastion.auth import ensure_project
from bastion.cli.main import app
from bastion.store.engine import create_engine
from tests.gateway.conftest import Process, free_port


@dataclass
class Stack:
    """A running simulator and gateway, with an engine on the gateway's store."""

    url: str
    key: str
    sim_url: str
    home: Path
    engine: sa.Engine
    project_id: int

    def sim_requests(self) -> int:
        """How many requests the simulator has answered so far."""
        with urllib.request.urlopen(self.sim_url + "/_sim/stats", timeout=10) as response:
            return int(json.loads(response.read())["requests"])


@contextmanager
def gateway_stack(home: Path, config: str, *, seed: int | None = None) -> Iterator[Stack]:
    """Start a simulator (``seed`` when given) and a gateway in ``home``; ``config`` is the
    ``bastion.yaml`` text with ``{sim}`` for the simulator's URL. Both stop on exit."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    environ["BASTION_HOME"] = str(home)
    sim_port, gw_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    seeded = ["--seed", str(seed)] if seed is not None else []
    simulator = Process(
        ["simulate", "--port", str(sim_port), *seeded], environ, home / "sim.log",
        sim_url + "/healthz",
    )  # fmt: skip
    (home / "bastion.yaml").write_text(config.format(sim=sim_url))
    key = subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "keys", "create", "--quiet"],
        env=environ, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    url = f"http://127.0.0.1:{gw_port}"
    server = Process(
        ["serve", "--port", str(gw_port)], environ, home / "serve.log", url + "/readyz"
    )
    engine = create_engine(f"sqlite:///{home / 'bastion.db'}")
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    try:
        yield Stack(url, key, sim_url, home, engine, project_id)
    finally:
        engine.dispose()
        server.stop()
        simulator.stop()


def point_cli_at(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """Make ``bastion`` commands run in-process use ``stack``'s home, key and gateway."""
    for name in ("BASTION_URL", "BASTION_CONFIG", "BASTION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(stack.home))
    monkeypatch.setenv("BASTION_API_KEY", stack.key)
    monkeypatch.setenv("BASTION_GATEWAY_URL", stack.url)
    monkeypatch.setenv("COLUMNS", "200")
    return stack


def cli(*args: str) -> Result:
    """Run ``bastion eval ARGS`` in-process."""
    return CliRunner().invoke(app, ["eval", *args])
