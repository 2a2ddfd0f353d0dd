"""What one audit record says: who did what to which object, with digests of the state before
and after, never the state itself.

An audit record must not hold secrets or raw content (prompt text, dataset items, personal
data): ``before`` and ``after`` are stored as the SHA-256 of their canonical JSON, and
``details`` is a small flat mapping of identifiers and numbers, checked here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = [
    "MAX_DETAIL_CHARS",
    "MAX_REASON_CHARS",
    "AuditEvent",
    "Scalar",
    "digest",
    "system_actor",
]

Scalar = str | int | float | bool | None
"""A value ``details`` may hold."""

MAX_REASON_CHARS = 2000
MAX_DETAIL_CHARS = 300  # one detail value
_MAX_DETAILS = 24
_ACTION = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)+$")
_ACTOR = re.compile(r"^(user|key|system):[^\s\x00]{1,290}$")
_DETAIL_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# A tripwire, not a filter: a detail named like this is a mistake in the code that records it.
_SECRET_WORDS = ("secret", "password", "passwd", "credential", "cookie", "session_id")


def digest(value: Any) -> str:
    """``sha256:<hex>`` of ``value``'s canonical JSON (sorted keys): equal states, equal
    digests, and nothing of the state can be read back from it."""
    data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def system_actor(component: str) -> str:
    """The actor string of an automatic decision by ``component`` (e.g. ``breaker``)."""
    return f"system:{component}"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One change to record. ``before``/``after`` are the object's state (any JSON value; None
    when the object did not exist, or does not any more) and are stored only as digests."""

    actor: str  # user:NAME, key:ID or system:COMPONENT
    action: str  # e.g. prompt.push, label.move, rollout.promote, breaker.open
    object_type: str
    object_id: str
    project_id: int | None = None  # None: not about one project (operator-wide)
    before: Any = None
    after: Any = None
    details: Mapping[str, Scalar] | None = None
    reason: str | None = None
    request_id: str | None = None

    def check(self) -> None:
        """Raise ValueError naming what is wrong (a programming error, never user input)."""
        if not _ACTOR.match(self.actor):
            raise ValueError(
                f"audit actor {self.actor[:80]!r} is not user:NAME, key:ID or system:COMPONENT"
            )
        if not _ACTION.match(self.action) or len(self.action) > 100:
            raise ValueError(f"audit action {self.action[:80]!r} is not like 'object.verb'")
        if not self.object_type or len(self.object_type) > 100:
            raise ValueError("an audit object type is 1 to 100 characters")
        if not self.object_id or len(self.object_id) > 500:
            raise ValueError("an audit object id is 1 to 500 characters")
        _check_details(self.details)

    def details_json(self) -> str | None:
        """``details`` as stored: canonical JSON, or None."""
        if not self.details:
            return None
        return orjson.dumps(dict(self.details), option=orjson.OPT_SORT_KEYS).decode()


def _check_details(details: Mapping[str, Scalar] | None) -> None:
    if details is None:
        return
    if len(details) > _MAX_DETAILS:
        raise ValueError(f"audit details hold at most {_MAX_DETAILS} entries")
    for key, value in details.items():
        if not _DETAIL_KEY.match(key):
            raise ValueError(f"audit detail name {key[:80]!r} is not lower_snake_case")
        if any(word in key for word in _SECRET_WORDS):
            raise ValueError(f"audit detail {key!r} looks like a secret: record a digest")
        if not isinstance(value, str | int | float | bool) and value is not None:
            raise ValueError(f"audit detail {key!r} must be a string, number or boolean")
        if isinstance(value, str) and len(value) > MAX_DETAIL_CHARS:
            raise ValueError(
                f"audit detail {key!r} is over {MAX_DETAIL_CHARS} characters: record a digest"
            )
