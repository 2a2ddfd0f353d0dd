"""JSON, JSONL rows and CSV cells from user input, held to :class:`InputLimits`.

orjson stops at a depth of 1024 by itself and the API's JSON reader at 200, both far deeper than
any dataset needs, so depth, value count and string length are measured on the decoded value by
one iterative walk (no recursion, whatever the input) against the configured caps. A
:class:`ValueBudget` spans one document, so the rows of a JSONL file or of an API upload share
one ``max_values``.
"""

from __future__ import annotations

import csv
from typing import Any

import orjson

from bastion.parsing.limits import InputError, InputLimits

__all__ = ["ValueBudget", "allow_csv_fields"]


class ValueBudget:
    """The values one document may still hold, and the checks of each part of it."""

    def __init__(self, limits: InputLimits) -> None:
        self.limits = limits
        self.values = 0

    def loads(self, raw: str | bytes, *, line: int | None = None) -> Any:
        """One JSON value, decoded and checked.

        Raises:
            InputError: invalid JSON, or a value over a cap (naming the ``limits.*`` setting).
        """
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc) or "recursion" in str(exc):
                raise self._too_deep(line) from None
            raise InputError(f"invalid JSON: {exc}", line=line) from None
        self.check(value, line=line)
        return value

    def check(self, value: Any, *, line: int | None = None) -> None:
        """Count ``value``'s values and check its depth and strings (an iterative walk).

        Raises:
            InputError: naming the ``limits.*`` setting ``value`` is over.
        """
        limits = self.limits
        max_depth, max_chars = limits.max_depth, limits.max_field_chars
        stack: list[tuple[Any, int]] = [(value, 0)]
        count = 0
        while stack:
            node, depth = stack.pop()
            count += 1
            if isinstance(node, str):
                if len(node) > max_chars:
                    raise self._too_long(len(node), line)
            elif isinstance(node, dict):
                if depth >= max_depth:
                    raise self._too_deep(line)
                for key, child in node.items():
                    if isinstance(key, str) and len(key) > max_chars:
                        raise self._too_long(len(key), line)
                    stack.append((child, depth + 1))
                count += len(node)  # the keys
            elif isinstance(node, list | tuple):
                if depth >= max_depth:
                    raise self._too_deep(line)
                stack.extend((child, depth + 1) for child in node)
            if self.values + count > limits.max_values:
                raise self.too_many(line)
        self.values += count

    def add(self, count: int, *, line: int | None = None) -> None:
        """Count ``count`` scalar values checked elsewhere (CSV cells)."""
        self.values += count
        if self.values > self.limits.max_values:
            raise self.too_many(line)

    def field(self, text: str, *, line: int | None = None) -> None:
        """Check one string read elsewhere (a CSV cell) against ``max_field_chars``."""
        if len(text) > self.limits.max_field_chars:
            raise self._too_long(len(text), line)

    def too_many(self, line: int | None) -> InputError:
        return InputError(
            f"more than {self.limits.max_values} values (limits.max_values)",
            limit="limits.max_values",
            line=line,
        )

    def _too_deep(self, line: int | None) -> InputError:
        return InputError(
            f"nested deeper than {self.limits.max_depth} levels (limits.max_depth)",
            limit="limits.max_depth",
            line=line,
        )

    def _too_long(self, length: int, line: int | None) -> InputError:
        return InputError(
            f"a value of {length} characters is over the limit of "
            f"{self.limits.max_field_chars} (limits.max_field_chars)",
            limit="limits.max_field_chars",
            line=line,
        )


def allow_csv_fields(limits: InputLimits) -> None:
    """Let the csv module read cells up to ``limits.max_field_chars`` (checked per cell by the
    caller): its own cap is process-wide, so it is only ever raised, to the largest configured."""
    if csv.field_size_limit() < limits.max_field_chars + 1:
        csv.field_size_limit(limits.max_field_chars + 1)
