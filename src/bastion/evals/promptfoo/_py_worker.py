"""Runs promptfoo ``python`` assertions for Bastion, one JSON request per stdin line.

Started with ``python -I`` in a minimal environment (and, where the system allows, in fresh
user, PID and network namespaces) by :mod:`bastion.evals.promptfoo.sandbox`, which kills it
when an assertion runs past its time limit. Not imported by Bastion itself.
"""

import builtins
import importlib.util
import json
import math
import os
import resource
import sys
import textwrap
from collections.abc import Callable
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


_modules: dict[tuple[str, float], Any] = {}


def _from_file(path: str, function: str) -> Callable[..., Any]:
    key = (path, os.path.getmtime(path))
    module = _modules.get(key)
    if module is None:
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # the file's own helper modules, as promptfoo allows
        spec = importlib.util.spec_from_file_location("promptfoo_assertion", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _modules[key] = module
    found = getattr(module, function, None)
    if not callable(found):
        raise AttributeError(f"{path} has no function {function!r}")
    return found  # type: ignore[no-any-return]


def _inline(code: str) -> Callable[..., Any]:
    stripped = code.strip()
    if "\n" in stripped or stripped.startswith("return "):
        body = textwrap.indent(textwrap.dedent(code.strip("\n")), "    ")
    else:
        body = "    return " + stripped
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "promptfoo_assertion"}
    source = "def _assertion(output, context):\n" + body + "\n"
    exec(  # noqa: S102 - running the assertion is this worker's job
        compile(source, "<assertion>", "exec"),
        namespace,
    )
    return namespace["_assertion"]  # type: ignore[no-any-return]


_MEMORY_LIMIT = 2 * 1024**3  # address space: a runaway allocation fails instead of swapping


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (_MEMORY_LIMIT, _MEMORY_LIMIT))
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    # Whatever the assertion prints must not corrupt the protocol stream.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = os.fdopen(os.dup(devnull), "w")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request.get("path"):
                function = _from_file(request["path"], request.get("function") or "get_assert")
            else:
                function = _inline(request["code"])
            result = function(request["output"], request["context"])
            reply = {"ok": True, "result": _jsonable(result)}
        except BaseException as exc:  # noqa: BLE001 - the assertion's failure is its result
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
