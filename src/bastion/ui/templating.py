"""The Jinja environment of the UI's templates, and the filters they format numbers with.

Autoescape is on for every template whatever its name: every value from a span, a user or an
attribute is escaped where it is written into HTML. No template marks data ``|safe``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import jinja2

from bastion.ui.assets import Assets

__all__ = ["make_environment"]

_NS_PER_MS = 1_000_000


def duration_ms(value: float | None) -> str:
    """A latency for people: ``840 ms``, ``1.25 s``, ``3 min 5 s``."""
    if value is None:
        return "-"
    if value < 1:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 60_000:
        return f"{value / 1000:.2f} s"
    minutes, seconds = divmod(value / 1000, 60)
    return f"{minutes:.0f} min {seconds:.0f} s"


def duration_ns(value: int | None) -> str:
    return duration_ms(None if value is None else value / _NS_PER_MS)


def count(value: int | None) -> str:
    """``12,345``; a dash for unknown."""
    return "-" if value is None else f"{value:,}"


def usd(value: float | None) -> str:
    """A cost: ``$0.0042``, ``$12.50``; a dash when unknown."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if abs(value) < 0.01:
        return f"${value:.6f}".rstrip("0")
    return f"${value:,.4f}".rstrip("0").rstrip(".")


def utc_ns(value: int) -> str:
    """Unix nanoseconds as ``2026-12-07 16:45:03.123``, UTC."""
    moment = datetime.fromtimestamp(value / 1e9, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def iso_ns(value: int) -> str:
    """Unix nanoseconds as an ISO 8601 instant, for ``<time datetime=...>``."""
    return datetime.fromtimestamp(value / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def query(params: dict[str, Any], **changes: Any) -> str:
    """``params`` with ``changes`` applied (None removes a key), as a query string."""
    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v is not None and v != ""})


def make_environment(assets: Assets) -> jinja2.Environment:
    """The environment: package templates, autoescape everywhere, undefined names fail."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bastion.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        duration_ms=duration_ms,
        duration_ns=duration_ns,
        count=count,
        usd=usd,
        utc_ns=utc_ns,
        iso_ns=iso_ns,
    )
    env.globals.update(static=assets.url, query=query)
    return env
