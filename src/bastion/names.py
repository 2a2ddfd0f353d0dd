"""Names of what users create — prompts, labels, datasets, routes, releases, projects, scorer
metrics — checked against one grammar, always as a full match of the whole value:

    name  = first *rest
    first = letter / digit
    rest  = letter / digit / "." / "_" / "-"        (ASCII letters and digits)

So a name is never empty, never holds a space, ``/``, ``\\``, a newline, NUL or any other
control character, never starts with ``.`` or ``-`` (no ``..``, no hidden file, no CLI
option), and is safe as a file name, a URL path segment and a cache key. Each kind sets only
its maximum length and whether it is lower-case; labels also start with a letter, so
``NAME@3`` always means a version.

Python's ``re.match(r"^...$")`` accepts ``"abc\\n"`` (``$`` matches before a final newline):
names are checked with :func:`re.fullmatch` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "DATASET",
    "ENVIRONMENT",
    "ENVIRONMENTS",
    "LABEL",
    "PROJECT",
    "PROMPT",
    "RELEASE",
    "ROUTE",
    "SCORER",
    "InvalidName",
    "NameRule",
]


class InvalidName(ValueError):
    """A value that is not a valid name of its kind; the message says the rule."""


@dataclass(frozen=True, slots=True)
class NameRule:
    """The grammar above for one kind of name.

    Attributes:
        kind: what the name names, for messages ("dataset name").
        max_length: the longest name (the database column's width).
        lowercase: only lower-case letters.
        letter_first: the first character is a letter.
    """

    kind: str
    max_length: int
    lowercase: bool = False
    letter_first: bool = False
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        letters = "a-z" if self.lowercase else "A-Za-z"
        first = letters if self.letter_first else letters + "0-9"
        pattern = f"[{first}][{letters}0-9._-]{{0,{self.max_length - 1}}}"
        object.__setattr__(self, "_regex", re.compile(pattern))

    @property
    def pattern(self) -> str:
        """The regular expression of a whole name (use it with :func:`re.fullmatch`)."""
        return self._regex.pattern

    @property
    def rule(self) -> str:
        """The rule in words, for error messages and help."""
        case = "lower-case " if self.lowercase else ""
        first = "a letter" if self.letter_first else "a letter or digit"
        return f"1-{self.max_length} {case}letters, digits, '.', '_' or '-', starting with {first}"

    def is_valid(self, value: object) -> bool:
        """Whether ``value`` is a string that is a whole valid name."""
        return isinstance(value, str) and self._regex.fullmatch(value) is not None

    def check(self, value: object) -> str:
        """``value`` if it is a valid name, else :class:`InvalidName` naming the rule."""
        if isinstance(value, str) and self._regex.fullmatch(value) is not None:
            return value
        raise InvalidName(f"invalid {self.kind} {value!r}: use {self.rule}")


PROMPT = NameRule("prompt name", 128, lowercase=True)
LABEL = NameRule("label", 64, lowercase=True, letter_first=True)
PROJECT = NameRule("project name", 64, lowercase=True)
DATASET = NameRule("dataset name", 200)
ROUTE = NameRule("route", 200)
RELEASE = NameRule("release name", 200)
ENVIRONMENT = NameRule("environment", 200)
# The environments a route has: a release is deployed to a route in one of them.
ENVIRONMENTS = ("staging", "production")
SCORER = NameRule("scorer metric name", 200)
