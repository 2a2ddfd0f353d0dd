"""Running promptfoo's ``python`` and ``javascript`` assertions out of process, time-limited.

Assertion code is untrusted (it comes with a config file, often from a pull request), so it
never runs inside Bastion: a small pool of worker processes (``python -I`` with
``_py_worker.py``, ``node`` with ``_js_worker.js``) takes one JSON request per line. Each
assertion has a deadline; a worker that misses it is killed with its whole process group and a
fresh one starts for the next request. Workers get a minimal environment (``PATH``, ``LANG``,
a temporary ``HOME``: none of Bastion's keys or settings) and, where the kernel allows
unprivileged namespaces, run under ``unshare`` in new user, PID and network namespaces: they
see no other process (so not the parent's ``/proc/PID/environ``) and have no network. They can
still read files the user can; this is isolation from secrets in memory and the environment,
not a filesystem jail.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

__all__ = ["Language", "ScriptPool", "ScriptResult", "isolation_prefix", "node_path"]

Language = Literal["python", "javascript"]
_HERE = Path(__file__).resolve().parent
_LINE_LIMIT = 64 * 1024 * 1024  # one reply line (an output echoed back can be large)
_ISOLATE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--net"]


@dataclass(frozen=True, slots=True)
class ScriptResult:
    """What one assertion script returned (``value``), or why it has no result."""

    ok: bool
    value: Any = None
    error: str | None = None
    timed_out: bool = False


def node_path() -> str | None:
    """The ``node`` executable on PATH, or None (``javascript`` assertions then are refused)."""
    return shutil.which("node")


@functools.cache
def isolation_prefix() -> tuple[str, ...]:
    """``unshare`` arguments when new user/PID/network namespaces work here, else ``()``."""
    if shutil.which("unshare") is None:
        return ()
    try:
        probe = subprocess.run(
            [*_ISOLATE, "true"], capture_output=True, timeout=10, env=_minimal_env("/"), check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(_ISOLATE) if probe.returncode == 0 else ()


def _minimal_env(home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "NODE_OPTIONS": "",
    }


class _Worker:
    def __init__(self, argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
        self.argv = argv
        self.env = dict(env)
        self.cwd = cwd
        self.process: asyncio.subprocess.Process | None = None

    async def _start(self) -> asyncio.subprocess.Process:
        if self.process is None or self.process.returncode is not None:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: a kill takes its children too
                limit=_LINE_LIMIT,
            )
        return self.process

    async def call(self, request: Mapping[str, Any], timeout_s: float) -> ScriptResult:
        process = await self._start()
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(orjson.dumps(request) + b"\n")
            await process.stdin.drain()
            line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
        except asyncio.CancelledError:
            self._kill_now()  # a reply may still come: this worker must not hand it out later
            raise
        except TimeoutError:
            await self.kill()
            return ScriptResult(False, error=f"timed out after {timeout_s:g} s", timed_out=True)
        except (ConnectionError, ValueError, asyncio.LimitOverrunError) as exc:
            await self.kill()
            return ScriptResult(False, error=f"the assertion worker failed: {exc}")
        if not line:
            await self.kill()
            return ScriptResult(False, error="the assertion worker exited")
        try:
            reply = orjson.loads(line)
        except orjson.JSONDecodeError:
            await self.kill()
            return ScriptResult(False, error="the assertion worker sent an unreadable reply")
        if not isinstance(reply, dict):
            return ScriptResult(False, error="the assertion worker sent an unreadable reply")
        if reply.get("ok"):
            return ScriptResult(True, value=reply.get("result"))
        return ScriptResult(False, error=str(reply.get("error") or "unknown error"))

    def _kill_now(self) -> asyncio.subprocess.Process | None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        return process

    async def kill(self) -> None:
        process = self._kill_now()
        if process is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)


class ScriptPool:
    """Up to ``size`` workers for one language, started on first use.

    Use as an async context manager (or call :meth:`aclose`) so every worker is ended.
    """

    def __init__(
        self, language: Language, *, cwd: Path, size: int = 2, timeout_s: float = 10.0
    ) -> None:
        if language == "python":
            argv = [sys.executable, "-I", str(_HERE / "_py_worker.py")]
        else:
            node = node_path()
            if node is None:
                raise RuntimeError("javascript assertions need `node` on PATH")
            argv = [node, "--max-old-space-size=1024", str(_HERE / "_js_worker.js")]
        self.language = language
        self.timeout_s = timeout_s
        self._home = tempfile.TemporaryDirectory(prefix="bastion-assert-")
        env = _minimal_env(self._home.name)
        self._workers = [_Worker([*isolation_prefix(), *argv], env, cwd) for _ in range(size)]
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        for worker in self._workers:
            self._idle.put_nowait(worker)

    async def __aenter__(self) -> ScriptPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def run(
        self,
        *,
        output: str,
        context: Mapping[str, Any],
        code: str | None = None,
        path: str | None = None,
        function: str | None = None,
    ) -> ScriptResult:
        """Run inline ``code`` or ``function`` (default per language) from the file at
        ``path`` with ``(output, context)``; never raises for the script's own failures."""
        request = {"code": code, "path": path, "function": function, "output": output,
                   "context": dict(context)}  # fmt: skip
        worker = await self._idle.get()
        try:
            return await worker.call(request, self.timeout_s)
        except OSError as exc:
            return ScriptResult(False, error=f"cannot start the {self.language} worker: {exc}")
        finally:
            self._idle.put_nowait(worker)

    async def aclose(self) -> None:
        for worker in self._workers:
            await worker.kill()
        self._home.cleanup()
