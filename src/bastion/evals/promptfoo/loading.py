"""Reading the files a promptfoo config points at: ``file://`` references (relative to the
config's folder, globs allowed), CSV/JSONL/JSON/YAML test files, text and data files for vars.

Every problem is a :class:`PromptfooError` naming the file; a config that refers to a file
kind Bastion cannot load (``.py``/``.js`` generators, images, spreadsheets) names it too. Files
are held to the default ``limits:`` caps (:class:`~bastion.parsing.InputLimits`) and YAML is read
by the safe reader (no aliases or anchors, no custom tags).
"""

from __future__ import annotations

import csv
import datetime as dt
import glob
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bastion.parsing import (
    InputError,
    InputLimits,
    ValueBudget,
    allow_csv_fields,
    read_bounded,
)
from bastion.parsing import load_yaml as load_safe_yaml

__all__ = [
    "FILE_PREFIX",
    "Problems",
    "PromptfooError",
    "expand_paths",
    "is_file_ref",
    "jsonable",
    "load_yaml",
    "read_data_file",
    "read_rows",
    "read_text",
]

FILE_PREFIX = "file://"
_LIMITS = InputLimits()  # immutable defaults: the suite files are the user's own, read locally


class PromptfooError(ValueError):
    """A promptfoo config cannot be run as written: a missing file, a malformed value, or
    keys and types Bastion does not support (each named)."""


@dataclass
class Problems:
    """Errors and warnings gathered while reading a config, so one run reports them all.

    Errors stop the run before any model call; warnings are printed and the run goes on (they
    are kept for keys that do not change what is evaluated, e.g. ``sharing``).
    """

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def unknown_keys(
        self,
        where: str,
        data: Mapping[str, Any],
        supported: frozenset[str],
        harmless: frozenset[str] = frozenset(),
    ) -> None:
        """Report every key of ``data`` that is neither supported nor harmless (an error),
        and every harmless one that is set (a warning: it is ignored)."""
        unsupported = sorted(str(k) for k in data if k not in supported and k not in harmless)
        if unsupported:
            self.error(f"{where}: unsupported key(s) {', '.join(map(repr, unsupported))}")
        ignored = sorted(str(k) for k in data if k in harmless)
        if ignored:
            self.warn(f"{where}: ignoring {', '.join(map(repr, ignored))} (no effect in Bastion)")

    def raise_errors(self) -> None:
        if self.errors:
            count = len(self.errors)
            head = f"the promptfoo config has {count} problem{'s' if count > 1 else ''}:"
            raise PromptfooError("\n".join([head, *(f"  - {e}" for e in self.errors)]))


def is_file_ref(value: Any) -> bool:
    """Whether ``value`` is a ``file://`` reference."""
    return isinstance(value, str) and value.startswith(FILE_PREFIX)


def expand_paths(reference: str, base: Path) -> list[Path]:
    """The files ``reference`` (``file://`` optional, relative to ``base``, glob allowed) names,
    sorted. A plain path must exist; a glob must match at least one file."""
    raw = reference[len(FILE_PREFIX) :] if reference.startswith(FILE_PREFIX) else reference
    raw = raw.strip()
    if not raw:
        raise PromptfooError(f"{reference!r}: an empty file reference")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = base / path
    if glob.has_magic(str(path)):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise PromptfooError(f"{reference!r}: no file matches")
        return found
    if not path.is_file():
        raise PromptfooError(f"{reference!r}: file not found ({path})")
    return [path]


def read_text(path: Path) -> str:
    """A text file's content (UTF-8, BOM dropped)."""
    try:
        return read_bounded(path, _LIMITS)
    except InputError as exc:
        raise PromptfooError(f"{path}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise PromptfooError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise PromptfooError(f"{path}: {exc.strerror or exc}") from None


def jsonable(value: Any) -> Any:
    """YAML values made JSON-safe (dates as ISO strings, tuples as lists, keys as strings)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where ``yes``/``no``/``on``/``off`` are booleans; promptfoo's
    parser reads YAML 1.2, where they are strings (``vars: {answer: no}`` must stay "no")."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """YAML as promptfoo reads it (YAML 1.2 booleans), made JSON-safe, by the safe reader.

    Raises:
        InputError: invalid YAML, an alias or custom tag, or a document over a cap.
    """
    return jsonable(load_safe_yaml(text, _LIMITS, loader=_Yaml12Loader))


def _yaml(path: Path, text: str) -> Any:
    try:
        return load_yaml(text)
    except InputError as exc:
        line = f":{exc.line}" if exc.line is not None else ""
        raise PromptfooError(f"{path}{line}: {exc.problem}") from None


def _json(path: Path, text: str, budget: ValueBudget, line: int | None = None) -> Any:
    try:
        return budget.loads(text)
    except InputError as exc:
        where = f":{line}" if line is not None else ""
        raise PromptfooError(f"{path}{where}: {exc.problem}") from None


def read_data_file(path: Path) -> Any:
    """A ``.json``/``.yaml``/``.yml`` file parsed; any other file as text."""
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _json(path, text, ValueBudget(_LIMITS))
    if suffix in {".yaml", ".yml"}:
        return _yaml(path, text)
    return text


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    allow_csv_fields(_LIMITS)
    budget = ValueBudget(_LIMITS)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise PromptfooError(f"{path}:1: {exc}") from None
    header = [h.strip() for h in header]
    if not header or any(not h for h in header):
        raise PromptfooError(f"{path}:1: every column needs a name")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise PromptfooError(f"{path}:1: repeated column(s) {', '.join(map(repr, dupes))}")
    try:
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise PromptfooError(f"{path}:{line}: {len(row)} cells for {len(header)} columns")
            budget.add(len(row), line=line)
            for cell in row:
                budget.field(cell, line=line)
            yield line, dict(zip(header, row, strict=True))
    except InputError as exc:
        raise PromptfooError(f"{path}:{exc.line}: {exc.problem}") from None
    except csv.Error as exc:
        raise PromptfooError(f"{path}:{reader.line_num}: {exc}") from None


def read_rows(path: Path) -> list[tuple[str, Any]]:
    """The rows of a test file as ``(where, row)``: CSV rows are ``dict[str, str]`` (the caller
    applies promptfoo's column rules), JSONL/JSON/YAML rows are whatever each entry is."""
    suffix = path.suffix.lower()
    text = read_text(path)
    if suffix == ".csv":
        return [(f"{path}:{line}", row) for line, row in _csv_rows(path, text)]
    if suffix == ".jsonl":
        rows: list[tuple[str, Any]] = []
        budget = ValueBudget(_LIMITS)
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append((f"{path}:{number}", _json(path, line, budget, number)))
        return rows
    if suffix in {".json", ".yaml", ".yml"}:
        data = read_data_file(path)
        if isinstance(data, Mapping) and "tests" in data:
            data = data["tests"]
        if not isinstance(data, list):
            raise PromptfooError(f"{path}: expected a list of tests, got {type(data).__name__}")
        return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    raise PromptfooError(
        f"{path}: unsupported test file type {suffix or '(none)'!r} "
        "(supported: .csv, .jsonl, .json, .yaml, .yml)"
    )
