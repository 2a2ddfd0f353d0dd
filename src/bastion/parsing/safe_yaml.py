"""YAML from user input, read safely: the one YAML reader of every file and upload.

Refused, each with an :class:`~bastion.parsing.limits.InputError` naming the line and, for a
cap, the ``limits.*`` setting:

- anchors and aliases (through them a 467-byte "billion laughs" body expands to ten million
  values), merge keys included, since they need an alias;
- tags other than the standard ones (``!!str``, ``!!int``, ``!!map``...): no custom types;
- a document over :class:`~bastion.parsing.limits.InputLimits`: size, values, nesting depth,
  scalar length.

The checks run on the parser's event stream before any node is built, so a refused document
costs one pass of the (C, when libyaml is there) parser and nothing else; an accepted one is
then composed and constructed by a safe loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionEndEvent, CollectionStartEvent, NodeEvent, ScalarEvent

from bastion.parsing.limits import InputError, InputLimits, check_size

__all__ = ["YamlDocument", "load_yaml", "parse_yaml"]

# The C loader when libyaml is there: the same events and marks, several times faster.
_FAST: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STANDARD = "tag:yaml.org,2002:"
_ALLOWED_TAGS = frozenset(
    {"!"}
    | {_STANDARD + t for t in ("null", "bool", "int", "float", "str", "timestamp", "seq", "map")}
)


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed document: its node tree (for line numbers) and its value (``None`` if empty)."""

    node: yaml.Node | None
    data: Any


def parse_yaml(
    text: str, limits: InputLimits | None = None, *, loader: type[yaml.SafeLoader] | None = None
) -> YamlDocument:
    """Check ``text`` against ``limits`` (the defaults when ``None``), then parse one document
    with ``loader`` (a :class:`yaml.SafeLoader` subclass; the C one by default).

    Raises:
        InputError: invalid YAML, an alias, anchor or custom tag, or a document over a cap.
    """
    limits = limits if limits is not None else InputLimits()
    if len(text) * 4 > limits.max_document_bytes:  # UTF-8 is at most 4 bytes a character
        check_size(len(text.encode("utf-8", "surrogatepass")), limits)
    _check_events(text, limits)
    instance = (loader or _FAST)(text)
    try:
        node = instance.get_single_node()
        data = instance.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise _invalid(exc) from None
    finally:
        instance.dispose()
    return YamlDocument(node, data)


def load_yaml(
    text: str, limits: InputLimits | None = None, *, loader: type[yaml.SafeLoader] | None = None
) -> Any:
    """The value of one YAML document, checked as :func:`parse_yaml` checks it."""
    return parse_yaml(text, limits, loader=loader).data


def _line(event: yaml.Event) -> int | None:
    mark = event.start_mark
    return None if mark is None else int(mark.line) + 1


def _check_event(event: yaml.Event, limits: InputLimits) -> None:
    if isinstance(event, AliasEvent):
        raise InputError(
            f"YAML aliases and anchors are not allowed (*{event.anchor})", line=_line(event)
        )
    if not isinstance(event, NodeEvent):
        return
    if event.anchor is not None:
        raise InputError(
            f"YAML aliases and anchors are not allowed (&{event.anchor})", line=_line(event)
        )
    tag = getattr(event, "tag", None)
    if tag is not None and tag not in _ALLOWED_TAGS:
        raise InputError(
            f"YAML tag {tag!r} is not allowed (only the standard ones)", line=_line(event)
        )
    if isinstance(event, ScalarEvent) and len(event.value) > limits.max_field_chars:
        raise InputError(
            f"a value of {len(event.value)} characters is over the limit of "
            f"{limits.max_field_chars} (limits.max_field_chars)",
            limit="limits.max_field_chars",
            line=_line(event),
        )


def _check_events(text: str, limits: InputLimits) -> None:
    parser = _FAST(text)
    depth = values = 0
    try:
        while parser.check_event():
            event: yaml.Event = parser.get_event()  # type: ignore[no-untyped-call]  # untyped stub
            if isinstance(event, CollectionEndEvent):
                depth -= 1
                continue
            _check_event(event, limits)
            if isinstance(event, ScalarEvent | CollectionStartEvent):
                values += 1
                if values > limits.max_values:
                    raise InputError(
                        f"more than {limits.max_values} values (limits.max_values)",
                        limit="limits.max_values",
                        line=_line(event),
                    )
            if isinstance(event, CollectionStartEvent):
                depth += 1
                if depth > limits.max_depth:
                    raise _too_deep(limits, _line(event))
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own cap (1000), past any max_depth
            raise _too_deep(limits, _invalid(exc).line) from None
        raise _invalid(exc) from None
    finally:
        parser.dispose()


def _too_deep(limits: InputLimits, line: int | None) -> InputError:
    return InputError(
        f"nested deeper than {limits.max_depth} levels (limits.max_depth)",
        limit="limits.max_depth",
        line=line,
    )


def _invalid(exc: yaml.YAMLError) -> InputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    return InputError(f"invalid YAML: {problem}", line=None if mark is None else mark.line + 1)
