"""``bastion demo --exit``: the whole release loop, run as a user runs it (a real process)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.releases import store as release_store
from bastion.store.engine import create_engine
from tests.gateway.conftest import free_port


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env.update({"BASTION_HOME": str(home), "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", "demo", "--exit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_demo_pushes_gates_and_rolls_a_bad_canary_back(tmp_path: Path) -> None:
    port = free_port()
    result = _demo(tmp_path, "--port", str(port))
    out = result.stdout
    assert result.returncode == 0, result.stderr + out
    assert f"serving on http://127.0.0.1:{port}" in out
    # prompts: the file was written and both versions pushed, v1 labelled production
    prompt_file = tmp_path / "demo" / "prompts" / "confirm.prompt.yaml"
    assert "Reply with: order {{ order }} confirmed" in prompt_file.read_text()
    assert "confirm v1 (created), labelled production" in out
    assert "confirm v2 (updated)" in out
    # evals: both versions scored on the golden set, the paired comparison gated
    assert re.search(r"baseline: confirm v1 on demo-chat, run \w+: 20 results, 0 errors", out)
    assert re.search(r"candidate: confirm v2 on demo-chat, run \w+: 20 results, 0 errors", out)
    assert "gate verdict: PASSED" in out
    # the bad canary was rolled back by the server itself, during its first steps, with a reason
    rollback = re.search(r"rolled back automatically: (automatic rollback at (\d+)%: .*)", out)
    assert rollback is not None, out
    assert "error rate" in rollback.group(1)
    assert int(rollback.group(2)) < 100
    # the good one went through every step
    assert "promoted: passed analysis at 50%: promoted" in out
    assert "(during the bad canary) checkout served" in out

    # the stored history agrees: deploy, gated start, rollback by the analysis, then promotion
    engine = create_engine(f"sqlite:///{tmp_path / 'bastion.db'}")
    try:
        with engine.connect() as conn:
            events = release_store.history(conn, 1, "checkout")
    finally:
        engine.dispose()
    actions = [(e.action, e.actor) for e in events]
    assert actions[0] == ("deploy", "demo (key 1)")
    assert actions[1][0] == "start"
    assert "eval gate passed" in (events[1].reason or "")
    assert actions[2] == ("rollback", "analysis")
    assert events[2].reason == rollback.group(1)
    assert actions[-1] == ("promote", "analysis")
    assert events[-1].stable_release_id == events[3].candidate_release_id


def test_demo_refuses_a_port_it_cannot_listen_on(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        result = _demo(tmp_path, "--port", str(port))
    assert result.returncode == 1
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "bastion.db").exists()  # refused before anything started


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_demo_rejects_a_bad_port_value(tmp_path: Path, port: str) -> None:
    result = _demo(tmp_path, "--port", port)
    assert result.returncode == 2
    assert "--port" in result.stderr
