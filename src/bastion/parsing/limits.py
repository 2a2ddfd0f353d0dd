"""Caps on what one document parsed from user input may hold, and the error naming a cap.

Every parser of user input (dataset uploads over the API and the CLI, YAML files, JSON, JSONL and
CSV) checks the same caps, set in ``bastion.yaml`` under ``limits:``, so a small body cannot
expand into millions of stored values and a deep one cannot exhaust the stack.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

__all__ = ["InputError", "InputLimits", "check_size", "read_bounded"]

_MIB = 1024 * 1024


class InputLimits(BaseModel):
    """The ``limits:`` section: caps on every document parsed from user input."""

    max_document_bytes: int = Field(
        64 * _MIB,
        ge=1024,
        description="largest document parsed: a dataset file or upload, a YAML, JSON, JSONL or "
        "CSV file (an API body is also capped by ingest.max_request_bytes)",
    )
    max_items: int = Field(100_000, ge=1, description="rows in one dataset file or upload")
    max_values: int = Field(
        5_000_000,
        ge=100,
        description="values in one document (every scalar, list and mapping, keys included), "
        "so a small body cannot expand into a huge one",
    )
    max_depth: int = Field(
        64,
        ge=2,
        le=200,
        description="deepest nesting of lists and mappings (the top level is 1); at most 200, "
        "where the API's JSON reader stops",
    )
    max_field_chars: int = Field(
        1_000_000,
        ge=64,
        description="longest single string: a YAML scalar, a JSON string or key, a CSV cell",
    )


class InputError(ValueError):
    """A document that is malformed or over a cap.

    Attributes:
        problem: what is wrong, without the location.
        limit: the ``limits.*`` setting that refused it, if a cap did.
        line: the 1-based line, when known.
    """

    def __init__(self, problem: str, *, limit: str | None = None, line: int | None = None):
        self.problem = problem
        self.limit = limit
        self.line = line
        super().__init__(problem if line is None else f"line {line}: {problem}")


def check_size(size: int, limits: InputLimits, what: str = "the document") -> None:
    """Refuse a document of ``size`` bytes over ``limits.max_document_bytes``."""
    if size > limits.max_document_bytes:
        raise InputError(
            f"{what} is {size} bytes, over the limit of {limits.max_document_bytes} "
            "(limits.max_document_bytes)",
            limit="limits.max_document_bytes",
        )


def read_bounded(path: Path, limits: InputLimits, *, encoding: str = "utf-8-sig") -> str:
    """The text of ``path``, refused before reading it whole when it is over the size cap.

    Raises:
        InputError: the file is over ``limits.max_document_bytes``.
        OSError, UnicodeDecodeError: as reading the file raises them.
    """
    with path.open("rb") as handle:
        # Read one byte past the cap rather than trusting stat: a pipe has no size.
        data = handle.read(limits.max_document_bytes + 1)
    if len(data) > limits.max_document_bytes:
        raise InputError(
            f"the file is over the limit of {limits.max_document_bytes} bytes "
            "(limits.max_document_bytes)",
            limit="limits.max_document_bytes",
        )
    return data.decode(encoding)
