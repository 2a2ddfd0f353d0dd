"""The arena cap is applied on glibc and leaves an operator's own choice alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bastion.server.malloc import limit_malloc_arenas

PROBE = "from bastion.server.malloc import limit_malloc_arenas as f; print(f())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_cap_is_applied_unless_the_environment_sets_one() -> None:
    env_free = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, env={}
    )
    assert env_free.stdout.strip() == "True"
    chosen = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        env={"MALLOC_ARENA_MAX": "4"},
    )
    assert chosen.stdout.strip() == "False"


def test_calling_twice_is_harmless() -> None:
    assert limit_malloc_arenas() == limit_malloc_arenas()
