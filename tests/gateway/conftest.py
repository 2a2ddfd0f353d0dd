"""A real simulator process and a real gateway process on loopback, shared by the module."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_key(env: dict[str, str], config: Path, project: str | None = None) -> str:
    """A new API key (of ``project``, else the default one) made by ``bastion keys create``."""
    where = ["--project", project] if project is not None else []
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "keys", "create", "--quiet", *where,
         "-c", str(config)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


class Process:
    """A ``bastion`` subcommand running until stopped; its output is kept for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ready_url: str) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bastion.cli.main", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{args[0]} did not start:\n{log.read_text()}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@dataclass
class Gateway:
    url: str
    key: str
    simulator_url: str
    home: Path

    def events(
        self,
        name: str,
        *,
        count: int = 1,
        where: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> list[dict[str, Any]]:
        """The gateway's event spans called ``name`` whose attributes include ``where``
        (written asynchronously; polled until ``count`` are stored or ``timeout`` passes)."""
        deadline = time.monotonic() + timeout
        while True:
            request = urllib.request.Request(
                f"{self.url}/api/v1/spans?operation=event&limit=1000",
                headers={"Authorization": f"Bearer {self.key}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                items = orjson.loads(response.read())["items"]
            found = [
                span
                for span in items
                if span["name"] == name
                and all(span["attributes"].get(k) == v for k, v in (where or {}).items())
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def span(self, trace_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The gateway's span for ``trace_id`` (written asynchronously; polled)."""
        deadline = time.monotonic() + timeout
        while True:
            request = urllib.request.Request(
                f"{self.url}/api/v1/traces/{trace_id}",
                headers={"Authorization": f"Bearer {self.key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    tree = orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            spans = _flatten(tree["roots"])
            gateway_spans = [s for s in spans if s["service_name"] == "bastion-gateway"]
            if gateway_spans:
                return gateway_spans[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no gateway span in trace {trace_id}: {tree}")
            time.sleep(0.1)

    def tree(self, trace_id: str) -> list[dict[str, Any]]:
        """Every stored span of ``trace_id``, flattened."""
        request = urllib.request.Request(
            f"{self.url}/api/v1/traces/{trace_id}",
            headers={"Authorization": f"Bearer {self.key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return _flatten(orjson.loads(response.read())["roots"])

    def simulator_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.simulator_url + "/_sim/stats", timeout=10) as response:
            stats: dict[str, Any] = orjson.loads(response.read())
            return stats


def _flatten(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for node in nodes:
        out.append(node)
        out.extend(_flatten(node.get("children") or []))
    return out


CONFIG = """
providers:
  sim: {{type: openai, base_url: "{sim}/v1"}}
  sim-anthropic: {{type: anthropic, base_url: "{sim}"}}
  nowhere: {{type: openai, base_url: "http://127.0.0.1:{dead}/v1"}}
models:
  chat: {{deployments: [{{provider: sim, model: sim-small}}]}}
  claude: {{deployments: [{{provider: sim-anthropic, model: sim-large}}]}}
  embed: {{deployments: [{{provider: sim, model: sim-embed}}]}}
  garbage: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=garbage"}}]}}
  limited: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=429"}}]}}
  failing: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=500"}}]}}
  dropping: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=drop"}}]}}
  dropping-claude:
    deployments: [{{provider: sim-anthropic, model: "sim-large~error_rate=1~faults=drop"}}]
  hanging: {{deployments: [{{provider: sim, model: "sim-small~error_rate=1~faults=timeout"}}]}}
  slow: {{deployments: [{{provider: sim, model: "sim-small~tps=20"}}]}}
  unreachable: {{deployments: [{{provider: nowhere, model: x}}]}}
  split:
    deployments:
      - {{provider: sim, model: sim-small, weight: 3}}
      - {{provider: sim-anthropic, model: sim-large, weight: 1}}
gateway: {{read_timeout_s: 2, max_request_bytes: 65536}}
"""


@contextlib.contextmanager
def running_gateway(
    home: Path,
    config_for: Callable[[str], str],
    *,
    seed: int = 7,
    projects: tuple[str, ...] = (),
) -> Iterator[Gateway]:
    """A simulator and a gateway process under ``home``; ``config_for(simulator_url)`` is the
    gateway's bastion.yaml. The key of each of ``projects`` is written to ``home/PROJECT.key``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = str(home)
    sim_port, gw_port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = Process(
        ["simulate", "--port", str(sim_port), "--seed", str(seed)],
        env,
        home / "simulator.log",
        sim_url + "/healthz",
    )
    config = home / "bastion.yaml"
    config.write_text(config_for(sim_url))
    key = create_key(env, config)
    for project in projects:
        (home / f"{project}.key").write_text(create_key(env, config, project=project))
    url = f"http://127.0.0.1:{gw_port}"
    server = Process(
        ["serve", "--port", str(gw_port), "-c", str(config)],
        env,
        home / "serve.log",
        url + "/readyz",
    )
    try:
        yield Gateway(url=url, key=key, simulator_url=sim_url, home=home)
    finally:
        server.stop()
        simulator.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("gateway-home")
    with running_gateway(home, lambda sim: CONFIG.format(sim=sim, dead=free_port())) as gw:
        yield gw
