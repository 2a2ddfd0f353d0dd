"""Golden datasets: items loaded from JSONL, CSV or YAML files, with stable ids and hashes.

An item is a set of input variables (rendered into the prompt under test), an optional expected
output, tags and metadata. Its id comes from the file (``id``) or, failing that, from the hash
of its content, so re-running a dataset pairs the same items run after run. A dataset version's
hash covers its items' ids and hashes in order: any change to any item changes it.

File formats (reserved keys: ``id``, ``expected`` / ``__expected``, ``tags``, ``metadata``;
everything else is a variable):

- ``.jsonl``: one JSON object per line, either ``{"vars": {...}, "expected": ...}`` or flat
  (``{"question": ..., "expected": ...}``). Blank lines are skipped.
- ``.csv``: a header row; ``tags`` are split on ``;`` (or ``,`` when there is no ``;``),
  ``metadata`` is a JSON object, an empty ``expected`` cell means no expected output.
- ``.yaml`` / ``.yml``: a list of mappings, same rules as JSONL.

Every problem is a :class:`DatasetError` naming the file and the line. Files and uploads are
held to the ``limits:`` caps (:class:`~bastion.parsing.InputLimits`): size, rows, values,
nesting depth and string length; YAML is read by the safe reader (no aliases, no custom tags).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

from bastion.parsing import (
    InputError,
    InputLimits,
    ValueBudget,
    allow_csv_fields,
    check_size,
    parse_yaml,
    read_bounded,
)

__all__ = [
    "DatasetError",
    "DatasetVersion",
    "Item",
    "check_variables",
    "load_items",
    "parse_items",
    "parse_text",
]

RESERVED = frozenset({"id", "expected", "__expected", "tags", "metadata", "vars"})
_ID_HEX = 16  # a content-derived id is the first 16 hex digits of the item's hash
_MAX_LISTED = 20  # check_variables names at most this many items


class DatasetError(ValueError):
    """A dataset file or item is unusable; ``path`` and ``line`` say where when known."""

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        line: int | None = None,
        limit: str | None = None,
    ):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        elif line is not None:
            where = f"line {line}: "
        super().__init__(where + message)
        self.path = None if path is None else Path(path)
        self.line = line
        self.problem = message
        self.limit = limit  # the ``limits.*`` setting that refused the input, if one did

    @classmethod
    def from_input(cls, exc: InputError, path: Path | str | None, line: int | None = None) -> Self:
        """The dataset error for a parser's :class:`InputError`, at its line if it knows one."""
        return cls(exc.problem, path=path, line=exc.line or line, limit=exc.limit)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=repr) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    raise TypeError(f"values of type {type(value).__name__} cannot be hashed")


def _canonical(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    ).encode()


@dataclass(frozen=True, slots=True)
class Item:
    """One dataset row.

    Attributes:
        id: stable identity: the file's ``id``, or derived from :meth:`content_hash`.
        vars: input variables for the prompt template.
        expected: the expected output, if any.
        tags: labels for slicing results.
        metadata: anything else worth keeping with the item.
    """

    id: str
    vars: Mapping[str, Any]
    expected: Any = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def content_hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of vars, expected, tags and metadata (the
        id is left out: a content-derived id is made from this hash)."""
        body = {
            "vars": dict(self.vars),
            "expected": self.expected,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
        }
        return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


@dataclass(frozen=True, slots=True)
class DatasetVersion:
    """A named, ordered, immutable set of items; ids are unique."""

    name: str
    items: tuple[Item, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))
        seen: dict[str, int] = {}
        for index, item in enumerate(self.items):
            if item.id in seen:
                raise DatasetError(
                    f"dataset {self.name!r}: item {index + 1} repeats id {item.id!r} "
                    f"(first used by item {seen[item.id] + 1})"
                )
            seen[item.id] = index

    def content_hash(self) -> str:
        """``sha256:<hex>`` over every item's id and content hash, in order."""
        digest = hashlib.sha256()
        for item in self.items:
            digest.update(item.id.encode())
            digest.update(b"\0")
            digest.update(item.content_hash().encode())
            digest.update(b"\n")
        return "sha256:" + digest.hexdigest()


# -- parsing ------------------------------------------------------------------------------------


def _split_tags(text: str) -> tuple[str, ...]:
    sep = ";" if ";" in text else ","
    return tuple(t.strip() for t in text.split(sep) if t.strip())


def _tags(value: Any, where: tuple[Path, int]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return _split_tags(value)
    if isinstance(value, list | tuple) and all(isinstance(t, str | int) for t in value):
        return tuple(str(t).strip() for t in value if str(t).strip())
    raise DatasetError(
        f"'tags' must be a list of strings or a separated string, got {value!r}",
        path=where[0],
        line=where[1],
    )


def _make_item(row: Mapping[str, Any], where: tuple[Path, int], *, flat_ok: bool = True) -> Item:
    path, line = where
    bad = [k for k in row if not isinstance(k, str)]
    if bad:
        raise DatasetError(f"keys must be strings, got {bad[0]!r}", path=path, line=line)
    if "expected" in row and "__expected" in row:
        raise DatasetError("both 'expected' and '__expected' given", path=path, line=line)
    if "vars" in row:
        variables = row["vars"]
        if not isinstance(variables, Mapping):
            raise DatasetError(
                f"'vars' must be an object, got {type(variables).__name__}", path=path, line=line
            )
        unknown = sorted(k for k in row if k not in RESERVED)
        if unknown:
            raise DatasetError(
                f"unknown key(s) {', '.join(map(repr, unknown))} beside 'vars' "
                f"(allowed: {', '.join(sorted(RESERVED - {'vars'}))})",
                path=path,
                line=line,
            )
        bad = [k for k in variables if not isinstance(k, str)]
        if bad:
            raise DatasetError(
                f"variable names must be strings, got {bad[0]!r}", path=path, line=line
            )
        variables = dict(variables)
    elif flat_ok:
        variables = {k: v for k, v in row.items() if k not in RESERVED}
    else:  # pragma: no cover - every format allows the flat form today
        raise DatasetError("missing 'vars'", path=path, line=line)
    expected = row.get("expected", row.get("__expected"))
    metadata = row.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise DatasetError(
            f"'metadata' must be an object, got {type(metadata).__name__}", path=path, line=line
        )
    raw_id = row.get("id")
    if raw_id is not None and (isinstance(raw_id, bool) or not isinstance(raw_id, str | int)):
        raise DatasetError(
            f"'id' must be a string or an integer, got {raw_id!r}", path=path, line=line
        )
    item_id = "" if raw_id is None else str(raw_id).strip()
    if raw_id is not None and not item_id:
        raise DatasetError("'id' is empty", path=path, line=line)
    item = Item(
        id=item_id or "-",
        vars=variables,
        expected=expected,
        tags=_tags(row.get("tags"), where),
        metadata=dict(metadata),
    )
    try:
        digest = item.content_hash()
    except (TypeError, ValueError) as exc:
        raise DatasetError(str(exc), path=path, line=line) from None
    if not item_id:
        item = Item(
            id=digest.removeprefix("sha256:")[:_ID_HEX],
            vars=item.vars,
            expected=item.expected,
            tags=item.tags,
            metadata=item.metadata,
        )
    return item


Rows = Iterator[tuple[int, Mapping[str, Any]]]


def _jsonl_rows(path: Path, text: str, budget: ValueBudget) -> Rows:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = budget.loads(line)
        except InputError as exc:
            raise DatasetError.from_input(exc, path, number) from None
        if not isinstance(row, dict):
            raise DatasetError(
                f"expected a JSON object, got {type(row).__name__}", path=path, line=number
            )
        yield number, row


def _csv_rows(path: Path, text: str, budget: ValueBudget) -> Rows:
    allow_csv_fields(budget.limits)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DatasetError(f"malformed CSV: {exc}", path=path, line=reader.line_num) from None
    if header is None:
        return
    names = [h.strip() for h in header]
    if any(not n for n in names):
        raise DatasetError(
            f"empty column name in header (column {names.index('') + 1})", path=path, line=1
        )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DatasetError(f"duplicate column(s) {', '.join(map(repr, dupes))}", path=path, line=1)
    if "expected" in names and "__expected" in names:
        raise DatasetError("both 'expected' and '__expected' columns", path=path, line=1)
    if "vars" in names:
        raise DatasetError("'vars' is reserved: give variables as columns", path=path, line=1)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DatasetError(f"malformed CSV: {exc}", path=path, line=start) from None
        if not cells or all(not c.strip() for c in cells):
            continue
        try:
            budget.add(len(cells) + 1, line=start)
            for cell in cells:
                budget.field(cell, line=start)
        except InputError as exc:
            raise DatasetError.from_input(exc, path, start) from None
        if len(cells) != len(names):
            raise DatasetError(
                f"{len(cells)} cells but the header has {len(names)} columns", path=path, line=start
            )
        row: dict[str, Any] = dict(zip(names, cells, strict=True))
        for key in ("expected", "__expected"):
            if key in row and row[key] == "":
                row[key] = None
        if "id" in row and not row["id"].strip():
            del row["id"]
        metadata = row.get("metadata")
        if isinstance(metadata, str):
            if not metadata.strip():
                row["metadata"] = {}
            else:
                try:
                    row["metadata"] = budget.loads(metadata)
                except InputError as exc:
                    problem = exc.problem.replace("invalid JSON", "is not valid JSON", 1)
                    raise DatasetError(
                        f"'metadata' {problem}", path=path, line=start, limit=exc.limit
                    ) from None
        yield start, row


def _yaml_rows(path: Path, text: str, budget: ValueBudget) -> Rows:
    try:
        document = parse_yaml(text, budget.limits)
    except InputError as exc:
        raise DatasetError.from_input(exc, path) from None
    node, data = document.node, document.data
    if data is None:
        return
    if not isinstance(data, list) or node is None or not isinstance(node, yaml.SequenceNode):
        raise DatasetError(
            f"expected a list of mappings at the top level, got {type(data).__name__}",
            path=path,
            line=1,
        )
    for child, row in zip(node.value, data, strict=True):
        line = child.start_mark.line + 1
        if not isinstance(row, dict):
            raise DatasetError(
                f"expected a mapping, got {type(row).__name__}", path=path, line=line
            )
        yield line, row


_READERS = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".yaml": _yaml_rows, ".yml": _yaml_rows}


def _too_many_items(limits: InputLimits) -> str:
    return f"more than {limits.max_items} items (limits.max_items)"


def _read_items(
    reader: Callable[[Path, str, ValueBudget], Rows], path: Path, text: str, limits: InputLimits
) -> list[Item]:
    """The items ``reader`` finds in ``text``; a repeated id names both lines."""
    items: list[Item] = []
    seen: dict[str, int] = {}
    for line, row in reader(path, text, ValueBudget(limits)):
        if len(items) >= limits.max_items:
            raise DatasetError(
                _too_many_items(limits), path=path, line=line, limit="limits.max_items"
            )
        item = _make_item(row, (path, line))
        if item.id in seen:
            raise DatasetError(
                f"duplicate id {item.id!r} (first on line {seen[item.id]})", path=path, line=line
            )
        seen[item.id] = line
        items.append(item)
    return items


def load_items(path: Path, limits: InputLimits | None = None) -> list[Item]:
    """The items of a ``.jsonl``, ``.csv``, ``.yaml`` or ``.yml`` file, in file order, held to
    ``limits`` (the defaults when ``None``).

    Raises:
        DatasetError: unknown extension, unreadable file, a malformed row (naming file and
            line), a repeated id (naming both lines) or a file over a cap (``limit`` names it).
    """
    limits = limits if limits is not None else InputLimits()
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DatasetError(
            f"unknown dataset format {path.suffix!r} (use .jsonl, .csv, .yaml or .yml)", path=path
        )
    try:
        text = read_bounded(path, limits)
    except InputError as exc:
        raise DatasetError.from_input(exc, path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read: {exc}", path=path) from None
    return _read_items(reader, path, text, limits)


def parse_items(
    rows: Sequence[Any], *, where: str = "items", limits: InputLimits | None = None
) -> list[Item]:
    """Items from already-decoded rows (JSON objects in the file shapes above), e.g. an API
    body, held to ``limits`` (the defaults when ``None``); problems name the row as
    ``items[3]``.

    Raises:
        DatasetError: a row that is not an object, a malformed row, a repeated id or rows over
            a cap (``limit`` names it).
    """
    limits = limits if limits is not None else InputLimits()
    if len(rows) > limits.max_items:
        raise DatasetError(f"{where}: {_too_many_items(limits)}", limit="limits.max_items")
    budget = ValueBudget(limits)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        label = f"{where}[{index}]"
        if not isinstance(row, Mapping):
            raise DatasetError(f"{label}: expected an object, got {type(row).__name__}")
        try:
            budget.check(row)
        except InputError as exc:
            raise DatasetError(f"{label}: {exc.problem}", limit=exc.limit) from None
        try:
            item = _make_item(row, (Path(label), 0))
        except DatasetError as exc:
            raise DatasetError(f"{label}: {exc.problem}") from None
        if item.id in seen:
            raise DatasetError(
                f"{label}: duplicate id {item.id!r} (first in {where}[{seen[item.id]}])"
            )
        seen[item.id] = index
        items.append(item)
    return items


def parse_text(
    text: str, fmt: str, *, name: str = "upload", limits: InputLimits | None = None
) -> list[Item]:
    """Items from the text of a ``jsonl``, ``csv`` or ``yaml`` file (e.g. uploaded over the
    API), held to ``limits`` (the defaults when ``None``); problems name ``name`` and the line,
    as :func:`load_items` does for files.

    Raises:
        DatasetError: an unknown format, a malformed row or a text over a cap.
    """
    limits = limits if limits is not None else InputLimits()
    suffix = "." + fmt.lower().lstrip(".")
    reader = _READERS.get(suffix)
    if reader is None:
        raise DatasetError(f"unknown dataset format {fmt!r} (use jsonl, csv or yaml)")
    try:
        check_size(len(text.encode("utf-8", "surrogatepass")), limits, "the text")
    except InputError as exc:
        raise DatasetError.from_input(exc, name) from None
    return _read_items(reader, Path(name), text, limits)


def check_variables(items: Sequence[Item], required: Collection[str]) -> None:
    """Check that every item provides every variable in ``required`` (a template's variables)
    before any model is called.

    Raises:
        DatasetError: listing which items lack which variables.
    """
    wanted = sorted(set(required))
    missing: list[tuple[str, list[str]]] = []
    for item in items:
        lacking = [name for name in wanted if name not in item.vars]
        if lacking:
            missing.append((item.id, lacking))
    if not missing:
        return
    shown = "; ".join(
        f"item {item_id!r} lacks {', '.join(map(repr, names))}"
        for item_id, names in missing[:_MAX_LISTED]
    )
    more = f"; and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise DatasetError(
        f"{len(missing)} of {len(items)} items lack template variables: {shown}{more}"
    )
