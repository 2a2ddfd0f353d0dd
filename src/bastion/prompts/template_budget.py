"""What one template render may spend: output size, CPU time, memory and nesting.

A render gets a :class:`RenderBudget` from its :class:`TemplateLimits` and every guard in the
sandbox (``template_guards``) charges it:

- **output**: the rendered text, counted as the template streams it, never past
  ``max_output_bytes`` (the gateway's largest request by default: a longer prompt could not
  be sent anyway);
- **memory**: no operation builds a string or list longer than that same limit, checked
  *before* it is built (sizes of operands are known, the result's is computed);
- **CPU time**: the thread's CPU clock (``time.thread_time``) against ``cpu_ms``, read every
  ``_CHECK_EVERY`` units of work. Loops, filters, calls and operators each count, big
  operations count more, so a tight loop that prints nothing is stopped as surely as one that
  does. The clock starts at the first reading, so an ordinary render (fewer units than that)
  never reads it; the work before it is a few dozen small steps. An operation Python runs in
  one piece (a sort with a key per element) is refused up front when its predicted cost does
  not fit in the time left;
- **nesting**: ``max_nesting`` bounds expressions, blocks and recursive loop calls, so neither
  the parser nor a recursive loop can exhaust Python's stack.

The budget of the render in progress travels in a ContextVar, like the partials: the guards
are called from compiled template code that cannot pass it along.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bastion.settings import Settings

__all__ = [
    "ACTIVE_BUDGET",
    "DEFAULT_LIMITS",
    "LimitExceeded",
    "ProjectLimits",
    "RenderBudget",
    "TemplateLimits",
    "current_budget",
    "printed_size",
    "uncharged",
]

_CHECK_EVERY = 64  # work units between two readings of the CPU clock (~0.4 µs each)
_BIG_UNIT = 16_384  # characters or items that count as one more unit of work


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    """The limits one render runs under (see the module docstring)."""

    max_output_bytes: int = 8 * 1024 * 1024
    cpu_ms: float = 50.0
    max_nesting: int = 32


DEFAULT_LIMITS = TemplateLimits()


@dataclass(frozen=True, slots=True)
class ProjectLimits:
    """Template limits per project slug: the global ones, with a project's own CPU time."""

    default: TemplateLimits = DEFAULT_LIMITS
    projects: Mapping[str, TemplateLimits] = field(default_factory=dict)

    def of(self, project: str) -> TemplateLimits:
        """The limits of project ``project`` (its slug)."""
        return self.projects.get(project, self.default)

    @classmethod
    def from_settings(cls, settings: Settings) -> ProjectLimits:
        """``settings.templates``, output defaulting to ``gateway.max_request_bytes``."""
        own = settings.templates
        default = TemplateLimits(
            max_output_bytes=own.max_output_bytes or settings.gateway.max_request_bytes,
            cpu_ms=own.cpu_ms,
            max_nesting=own.max_nesting,
        )
        projects = {
            slug: TemplateLimits(default.max_output_bytes, project.template_cpu_ms, own.max_nesting)
            for slug, project in settings.projects.items()
            if project.template_cpu_ms is not None
        }
        return cls(default, projects)


class LimitExceeded(Exception):
    """A render hit one of its limits; ``limit`` names it (``output``, ``cpu_ms``, ...).

    Deliberately not a ValueError or TypeError: filters catch those (``int`` turns a
    ValueError into its default), and a limit must never be swallowed on its way out.
    """

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message


class RenderBudget:
    """The spending of one render against its :class:`TemplateLimits`."""

    __slots__ = ("_countdown", "deadline", "limits", "output_chars")

    def __init__(self, limits: TemplateLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.deadline: float | None = None  # set at the first reading of the clock
        self.output_chars = 0
        self._countdown = _CHECK_EVERY

    # -- CPU time -------------------------------------------------------------------------------

    def tick(self, units: int = 1) -> None:
        """Count ``units`` of work; every ``_CHECK_EVERY`` of them, look at the clock."""
        self._countdown -= units
        if self._countdown <= 0:
            self._countdown = _CHECK_EVERY
            self.check_clock()

    def _now(self) -> float:
        now = time.thread_time()
        if self.deadline is None:
            self.deadline = now + self.limits.cpu_ms / 1000
        return now

    def check_clock(self) -> None:
        now = self._now()
        assert self.deadline is not None
        if now > self.deadline:
            raise LimitExceeded(
                "cpu_ms",
                f"the render used more than its {self.limits.cpu_ms:g} ms of CPU time "
                "(templates.cpu_ms)",
            )

    def predict(self, seconds: float, what: str) -> None:
        """Refuse ``what`` up front if its estimated ``seconds`` do not fit in the time left.

        For work Python does in one uninterruptible call (a sort, a text wrap): the clock
        cannot be read in the middle of it.
        """
        if seconds < 0.0005:
            return
        self._countdown = 1  # and look at the clock again right after it
        now = self._now()
        assert self.deadline is not None
        if seconds > self.deadline - now:
            raise LimitExceeded(
                "cpu_ms",
                f"{what} would take longer than the CPU time left of the render's "
                f"{self.limits.cpu_ms:g} ms (templates.cpu_ms)",
            )

    def iterate(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """``iterable``, one unit of work per item: what every loop and filter walks through."""
        for item in iterable:
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = _CHECK_EVERY
                self.check_clock()
            yield item

    # -- memory and output ----------------------------------------------------------------------

    def check_size(self, size: int, what: str) -> None:
        """Refuse to build ``what`` if it would be ``size`` long, past the limit."""
        if size > self.limits.max_output_bytes:
            raise LimitExceeded(
                "memory",
                f"{what} would build {size:,} characters or items, more than the "
                f"{self.limits.max_output_bytes:,} a template may (templates.max_output_bytes)",
            )
        self.tick(1 + size // _BIG_UNIT)

    def emit(self, chars: int) -> None:
        """Count ``chars`` of rendered output."""
        self.output_chars += chars
        if self.output_chars > self.limits.max_output_bytes:
            raise self.output_error(self.output_chars)
        self.tick(1 + chars // _BIG_UNIT)

    def check_encoded(self, texts: Iterable[str]) -> None:
        """The exact UTF-8 size of the finished output (characters were counted as it ran)."""
        size = sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)
        if size > self.limits.max_output_bytes:
            raise self.output_error(size)

    def output_error(self, size: int) -> LimitExceeded:
        return LimitExceeded(
            "output",
            f"the rendered prompt is larger than {self.limits.max_output_bytes:,} bytes "
            f"({size:,} so far; templates.max_output_bytes)",
        )


#: The budget of the render in progress (set by ``render``).
ACTIVE_BUDGET: ContextVar[RenderBudget | None] = ContextVar("bastion_template_budget", default=None)


def current_budget() -> RenderBudget:
    """The budget of the render in progress; a fresh default one outside a render.

    Outside ``render`` (a template compiled and rendered directly, constant folding while
    compiling) each guard still enforces the size limits; only the clock starts afresh.
    """
    budget = ACTIVE_BUDGET.get()
    return budget if budget is not None else RenderBudget()


@contextmanager
def uncharged() -> Iterator[None]:
    """Work that is not the render's own (compiling or analysing a new source, once): the
    render's clock stops for it, so the first render after a deploy has the same time."""
    budget = ACTIVE_BUDGET.get()
    started = time.thread_time()
    try:
        yield
    finally:
        if budget is not None and budget.deadline is not None:
            budget.deadline += time.thread_time() - started


def printed_size(value: Any, cap: int, budget: RenderBudget) -> int:
    """A lower bound on ``len(str(value))``, returned as soon as it passes ``cap``.

    Walks containers breadth first without recursion (so nesting cannot exhaust the stack)
    and counts each list, tuple and dict by its length before its items, so
    ``[[0] * 10**6] * 10**6`` is measured in three steps instead of being converted to a
    terabyte string.
    """
    if isinstance(value, str):
        return len(value)
    total = 0
    queue = deque([value])
    while queue:
        item = queue.popleft()
        budget.tick()
        if isinstance(item, str):
            total += len(item) + 1  # quotes; the one character is already counted
        elif isinstance(item, list | tuple):
            # "[a, b]": brackets and separators, and one character per element (an element
            # adds only what it prints beyond that one when its turn comes).
            total += 3 * len(item) - 1 if item else 1
            if total > cap:
                return total
            queue.extend(item)
        elif isinstance(item, Mapping):
            total += 6 * len(item) - 1 if item else 1  # "{k: v, ...}"
            if total > cap:
                return total
            queue.extend(item.keys())
            queue.extend(item.values())
        elif isinstance(item, int) and not isinstance(item, bool):
            total += max(0, item.bit_length() * 3 // 10 - 1)  # digits beyond the first
        elif isinstance(item, float | bool) or item is None:
            total += 2
        if total > cap:
            return total
    return total
