"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

__all__ = ["UtcDateTime"]


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware datetime on every backend.

    PostgreSQL keeps the instant and returns aware datetimes; SQLite stores the wall time
    without its offset and returns naive ones. Values are therefore stored as UTC and read
    back as UTC-aware, so the API renders the same RFC 3339 time (with its offset) on both.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)
