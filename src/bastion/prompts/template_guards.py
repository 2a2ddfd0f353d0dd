"""The sandbox's guards: every template operation that can allocate or repeat, checked first.

Each guard charges the budget of the render in progress (``template_budget``) and refuses an
operation whose result would be too large *before* Python builds it: the size of a repetition,
concatenation, padding, replacement or join is known from its operands. Operations whose result
is at most a few times their input (case mapping, slicing) are checked after they run.

Where the guards sit:

- operators: ``*``, ``+``, ``**`` and ``%`` go through ``call_binop`` (the sandbox's
  intercepted operators), ``~`` through :meth:`GuardedCodeGenerator.visit_Concat`;
- loops: :func:`guard_loops` wraps every ``{% for %}`` iterable in the environment's
  ``guard_iter``, so each iteration counts, printed or not; a recursive ``loop(...)`` call
  is bounded in depth;
- filters: ``template_filters.guard_filters`` wraps the allowlisted ones, with the helpers
  here (:func:`text_size`, :func:`as_text`, :func:`check_result`);
- method calls (``"x".center(n)``, ``", ".join(xs)``, ``s.replace(a, b)``): :func:`check_call`;
- printing: ``finalize`` measures containers before ``str()``; ``{% set %}`` and
  ``{% filter %}`` blocks join their parts through :func:`guarded_concat`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jinja2.exceptions as jex
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import LoopContext, Undefined

from bastion.prompts.template_budget import (
    LimitExceeded,
    RenderBudget,
    current_budget,
    printed_size,
)

__all__ = [
    "MAX_EXPONENT",
    "MAX_INDENT",
    "MAX_INT_BITS",
    "GuardedCodeGenerator",
    "as_text",
    "check_binop",
    "check_call",
    "check_result",
    "finalize",
    "guard_iter",
    "guard_loops",
    "guarded_concat",
    "guarded_join",
    "is_int",
    "text_size",
]

MAX_EXPONENT = 1024  # `9 ** 9 ** 9` would hang the worker computing a 370-million-digit int
MAX_INT_BITS = 14_284  # 4,300 decimal digits: the longest integer Python will print
MAX_INDENT = 64
_SPLIT_NS = 40  # split, splitlines: a new string per word (see template_filters)
_SEQUENCES = (str, bytes, bytearray, list, tuple)
# A loop over this few items is charged up front instead of item by item.
_FEW_ITEMS = 64
_SMALL = (list, tuple, dict, str)
_TEXT = (str, bytes, bytearray)
_SIZED = (*_SEQUENCES, dict)
_PRINTABLE = (str, int, float, list, tuple, dict, Mapping, Undefined)


def is_int(value: Any) -> bool:
    """Whether `value` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _int_too_big(operator: str) -> LimitExceeded:
    return LimitExceeded("memory", f"'{operator}' would build an integer of more than 4,300 digits")


# -- operators, printing, blocks ------------------------------------------------------------------


def guard_iter(iterable: Any) -> Any:
    """A loop's iterable, each item counted as one unit of work (see `guard_loops`).

    A short list is charged up front and walked as it is: the common case stays as fast as
    an unguarded loop, and nested short loops still count every iteration.
    """
    budget = current_budget()
    if iterable.__class__ in _SMALL and len(iterable) <= _FEW_ITEMS:
        budget.tick(1 + len(iterable))
        return iterable
    return budget.iterate(iterable)


def check_binop(budget: RenderBudget, operator: str, left: Any, right: Any) -> None:
    """Refuse an intercepted operator whose result would be too large (or is forbidden)."""
    budget.tick()
    if operator == "*":
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, _SEQUENCES) and is_int(count):
                budget.check_size(len(seq) * count, f"'*' on a {type(seq).__name__}")
        bits = left.bit_length() + right.bit_length() if is_int(left) and is_int(right) else 0
        if bits > MAX_INT_BITS:
            raise _int_too_big("*")
    elif operator == "+":
        if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
            budget.check_size(len(left) + len(right), f"'+' on a {type(left).__name__}")
    elif operator == "%":
        if isinstance(left, _TEXT):
            # "%*d" % (10**9, 1) pads to a gigabyte; prompts concatenate with `~` instead.
            raise jex.SecurityError("string formatting with '%' is not allowed")
    elif operator == "**" and isinstance(right, int | float):
        if abs(right) > MAX_EXPONENT:
            raise jex.SecurityError(f"exponent larger than {MAX_EXPONENT}")
        if is_int(left) and is_int(right) and left.bit_length() * right > MAX_INT_BITS:
            raise _int_too_big("**")


def text_size(budget: RenderBudget, value: Any, what: str) -> int:
    """``len(str(value))`` at least, refusing a value that would convert past the limit."""
    if isinstance(value, str):
        return len(value)
    limit = budget.limits.max_output_bytes
    size = printed_size(value, limit, budget)
    if size > limit:
        raise LimitExceeded(
            "memory",
            f"{what} would convert a value of more than {limit:,} characters to text "
            "(templates.max_output_bytes)",
        )
    return size


def as_text(budget: RenderBudget, value: Any, what: str) -> str:
    """``str(value)``, measured first."""
    if isinstance(value, str):
        return value
    text_size(budget, value, what)
    return str(value)


def check_result(budget: RenderBudget, result: Any, what: str) -> Any:
    """``result``, unless it is a sequence longer than the limit (for bounded-growth work)."""
    if isinstance(result, _SIZED):
        budget.check_size(len(result), what)
    return result


def finalize(value: Any) -> Any:
    """Jinja's ``finalize``: what a ``{{ ... }}`` may print, measured before ``str()``."""
    if isinstance(value, str):
        return value
    # Only data is printed: a method's or a Jinja internal's repr (`{{ self }}`, `{{ x.upper }}`)
    # shows memory addresses and internals, nothing a prompt needs.
    if not (isinstance(value, _PRINTABLE) or value is None):
        raise jex.SecurityError(f"only data can be printed, not {type(value).__name__}")
    if isinstance(value, list | tuple | Mapping):
        text_size(current_budget(), value, "printing")
    return value  # an Undefined fails on its own, with the variable's name


def guarded_concat(parts: Iterable[str]) -> str:
    """The environment's ``concat``: joins a block's output, counting it as it goes."""
    budget = current_budget()
    limit = budget.limits.max_output_bytes
    out: list[str] = []
    size = 0
    for part in parts:
        size += len(part)
        if size > limit:
            budget.check_size(size, "a {% set %} or {% filter %} block")
        out.append(part)
    budget.tick(1 + size // 16_384)
    return "".join(out)


def guarded_join(values: tuple[Any, ...]) -> str:
    """The `~` operator: Jinja's ``str_join``, measured first."""
    budget = current_budget()
    size = sum(text_size(budget, value, "'~'") for value in values)
    budget.check_size(size, "'~'")
    return "".join(map(str, values))


# -- calls ----------------------------------------------------------------------------------------

_PADDING = frozenset({"center", "ljust", "rjust", "zfill"})
_SPLITTING = frozenset({"split", "rsplit", "splitlines"})


def check_call(
    budget: RenderBudget, func: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[Any, ...]:
    """Refuse a call whose result would be too large; returns the arguments to call with.

    Text methods that can grow without bound are measured from their arguments; a recursive
    ``loop(...)`` is bounded by ``max_nesting`` and its items walk through the budget.
    """
    budget.tick()
    owner = getattr(func, "__self__", None)
    if isinstance(owner, _TEXT):
        return _check_text_method(budget, owner, func.__name__, args, kwargs)
    if isinstance(func, LoopContext):
        if func.depth + 1 > budget.limits.max_nesting:
            raise LimitExceeded(
                "nesting",
                f"recursive loop deeper than {budget.limits.max_nesting} levels "
                "(templates.max_nesting)",
            )
        if args:
            return (budget.iterate(args[0]), *args[1:])
    return args


def _check_text_method(
    budget: RenderBudget,
    text: str | bytes | bytearray,
    name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
) -> tuple[Any, ...]:
    what = f"'.{name}()'"
    first: Any = args[0] if args else None
    if name in _PADDING:
        width: Any = first if args else kwargs.get("width")
        if is_int(width):
            budget.check_size(width, what)
    elif name == "expandtabs":
        size = first if args else kwargs.get("tabsize", 8)
        if is_int(size):
            tabs = text.count("\t" if isinstance(text, str) else b"\t")  # type: ignore[arg-type]
            budget.check_size(len(text) + tabs * max(size, 0), what)
    elif name == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if isinstance(old, _TEXT) and isinstance(new, _TEXT):
            hits = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
            if len(args) > 2 and is_int(args[2]) and args[2] >= 0:
                hits = min(hits, args[2])
            budget.check_size(len(text) + hits * (len(new) - len(old)), what)
    elif name == "join" and args:
        items = list(budget.iterate(first))
        pieces = sum(len(item) for item in items if isinstance(item, _TEXT))
        budget.check_size(pieces + len(text) * max(len(items) - 1, 0), what)
        return (items, *args[1:])
    elif name == "translate" and isinstance(first, Mapping):
        longest = max((len(v) for v in first.values() if isinstance(v, _TEXT)), default=1)
        budget.check_size(len(text) * max(longest, 1), what)
    elif name == "encode":
        budget.check_size(len(text) * 4, what)
    elif name in _SPLITTING:
        budget.predict(len(text) * _SPLIT_NS * 1e-9, f"{what} of {len(text):,} characters")
    return args


# -- compiling ------------------------------------------------------------------------------------


_GUARD_ITER = "guard_iter"  # the environment method a loop's iterable is wrapped in


class GuardedCodeGenerator(CodeGenerator):
    """Jinja's compiler, with `~` and loop iterables routed through the guards."""

    def visit_Call(  # noqa: N802
        self, node: nodes.Call, frame: Frame, forward_caller: bool = False
    ) -> None:
        # A call `guard_loops` made: a plain method call, not one through the sandbox's `call`.
        guard = node.node
        if isinstance(guard, nodes.EnvironmentAttribute) and guard.name == _GUARD_ITER:
            self.write(f"environment.{_GUARD_ITER}(")
            self.visit(node.args[0], frame)
            self.write(")")
            return
        super().visit_Call(node, frame, forward_caller=forward_caller)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:  # noqa: N802
        # Not constant-folded here: a `~` of literals in output is folded before this runs.
        self.write("environment.guard_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def guard_loops(ast: nodes.Template) -> nodes.Template:
    """Wrap every loop's iterable in a call to the environment's ``guard_iter`` (in place).

    Jinja allows no custom node types; a call of an environment attribute is a node a
    template cannot write itself (its names are looked up in the context, never the
    environment), so only this function makes one.
    """
    for loop in list(ast.find_all(nodes.For)):
        guard = nodes.EnvironmentAttribute(_GUARD_ITER, lineno=loop.iter.lineno)
        loop.iter = nodes.Call(guard, [loop.iter], [], None, None, lineno=loop.iter.lineno)
    return ast
