"""The times the store can hold and compare.

Span times are Unix nanoseconds in signed 64-bit columns, which reach from 1677-09-21 to
2262-04-11. A time outside that range overflows on the way into SQLite or PostgreSQL, so every
time a client gives is checked against a slightly narrower, round range first (narrower so
that a default window, such as the day before a given end, still fits).
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["EARLIEST", "LATEST", "TIME_RANGE", "TimeRangeError", "check_time"]

EARLIEST = datetime(1678, 1, 1, tzinfo=UTC)
LATEST = datetime(2262, 1, 1, tzinfo=UTC)  # exclusive
TIME_RANGE = "from 1678-01-01T00:00:00Z up to (not including) 2262-01-01T00:00:00Z"


class TimeRangeError(ValueError):
    """A time the store cannot hold; the message names it and the allowed range."""


def check_time(value: datetime, name: str) -> datetime:
    """``value`` as an aware datetime (naive means UTC) if the store can hold it.

    Raises :class:`TimeRangeError` naming ``name`` otherwise.
    """
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    # Aware datetimes compare by their UTC instant without converting (which could overflow).
    if not EARLIEST <= aware < LATEST:
        raise TimeRangeError(f"{name} {value.isoformat()} is out of range: times run {TIME_RANGE}")
    return aware
