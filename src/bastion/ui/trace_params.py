"""The traces list's state, all of it in the URL's query so any view can be shared or saved:
time range, every filter, sort, page size and cursor.

Parameter names follow the read API's (``/api/v1/traces``) where it has them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import parse_qsl, urlencode

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bastion.store.queries_trace_search import SortKey, TraceOrder, TraceSearch
from bastion.store.time_range import check_time

__all__ = [
    "FILTER_FIELDS",
    "PAGE_SIZES",
    "RANGES",
    "TraceListParams",
    "parse_params",
    "parse_query_string",
]

RANGES: dict[str, timedelta | None] = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "all": None,
}
_NS = 1_000_000_000
PAGE_SIZES = (25, 50, 100, 200)
_TEXT = 200  # longest value of a text filter (the columns hold 200 characters)

# (parameter, label, hint) of the text filters, in the order the form shows them.
FILTER_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("name", "Trace name", "exact name of the root span"),
    ("model", "Model", "asked for or served"),
    ("provider", "Provider", "openai, anthropic, …"),
    ("user", "User", "user id"),
    ("session", "Session", "session id"),
    ("feature", "Feature", ""),
    ("tenant", "Tenant", ""),
    ("service", "Service", "service.name"),
    ("error_class", "Error class", ""),
    ("prompt", "Prompt", "prompt name"),
    ("prompt_version", "Prompt version", "number"),
    ("label", "Prompt label", "production, …"),
    ("release", "Release", "release id"),
    ("arm", "Arm", "stable or candidate"),
    ("request_id", "Request id", "the gateway's x-request-id"),
)


class TraceListParams(BaseModel):
    """Every parameter of the traces list; unknown parameters are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    range: Literal["15m", "1h", "6h", "24h", "7d", "30d", "all"] = "24h"
    start: datetime | None = Field(None, description="from (UTC unless it says otherwise)")
    end: datetime | None = Field(None, description="until, exclusive")
    name: str | None = Field(None, max_length=500)
    model: str | None = Field(None, max_length=_TEXT)
    provider: str | None = Field(None, max_length=64)
    user: str | None = Field(None, max_length=_TEXT)
    session: str | None = Field(None, max_length=_TEXT)
    feature: str | None = Field(None, max_length=_TEXT)
    tenant: str | None = Field(None, max_length=_TEXT)
    service: str | None = Field(None, max_length=_TEXT)
    status: Literal["ok", "error"] | None = None
    error_class: str | None = Field(None, max_length=_TEXT)
    prompt: str | None = Field(None, max_length=_TEXT)
    prompt_version: int | None = Field(None, ge=1, le=2**31 - 1)
    label: str | None = Field(None, max_length=64)
    release: str | None = Field(None, max_length=64)
    arm: str | None = Field(None, max_length=64)
    request_id: str | None = Field(None, max_length=128)
    q: str | None = Field(None, max_length=500)
    min_latency_ms: float | None = Field(None, ge=0, le=1e12, allow_inf_nan=False)
    min_cost_usd: float | None = Field(None, ge=0, le=1e9, allow_inf_nan=False)
    sort: SortKey = "time"
    dir: Literal["asc", "desc"] = "desc"
    limit: int = Field(50, description="page size: 25, 50, 100 or 200")
    cursor: str | None = Field(None, max_length=400)

    @field_validator("limit")
    @classmethod
    def _page_size(cls, value: int) -> int:
        if value not in PAGE_SIZES:
            raise ValueError(f"use one of {', '.join(map(str, PAGE_SIZES))}")
        return value

    @field_validator("start", "end")
    @classmethod
    def _storable(cls, value: datetime | None) -> datetime | None:
        return None if value is None else check_time(value, "time")

    def window_ns(self, now: datetime) -> tuple[int | None, int | None]:
        """The time window: ``start``/``end`` when given, else the ``range`` before ``now``."""
        if self.start is not None or self.end is not None:
            return _ns(self.start), _ns(self.end)
        span = RANGES[self.range]
        return (None if span is None else _ns(now - span)), None

    def to_search(self, now: datetime) -> TraceSearch:
        start_ns, end_ns = self.window_ns(now)
        return TraceSearch(
            start_ns=start_ns,
            end_ns=end_ns,
            name=self.name,
            model=self.model,
            provider=self.provider,
            user_id=self.user,
            session_id=self.session,
            feature=self.feature,
            tenant=self.tenant,
            service_name=self.service,
            status=self.status,
            error_class=self.error_class,
            prompt_name=self.prompt,
            prompt_version=self.prompt_version,
            prompt_label=self.label,
            release_id=self.release,
            release_arm=self.arm,
            request_id=self.request_id,
            text=self.q,
            min_latency_ms=self.min_latency_ms,
            min_cost_usd=self.min_cost_usd,
        )

    @property
    def order(self) -> TraceOrder:
        return TraceOrder(key=self.sort, descending=self.dir == "desc")

    def as_query(self) -> dict[str, str]:
        """The parameters that differ from the defaults, as URL query values."""
        out: dict[str, str] = {}
        for key, value in self.model_dump(exclude_defaults=True).items():
            if value is None:
                continue
            out[key] = value.isoformat() if isinstance(value, datetime) else str(value)
        return out

    def query_string(self, **changes: str | None) -> str:
        """The URL query of this state with ``changes`` (None removes a parameter)."""
        values = {**self.as_query(), **changes}
        return urlencode({k: v for k, v in values.items() if v is not None and v != ""})

    @property
    def active_filters(self) -> int:
        """How many filters narrow the list (the time range aside)."""
        ignored = {"range", "start", "end", "sort", "dir", "limit", "cursor"}
        return sum(1 for key in self.as_query() if key not in ignored)


def _ns(value: datetime | None) -> int | None:
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return int(aware.timestamp()) * _NS + aware.microsecond * 1000


def parse_params(query: Mapping[str, str]) -> tuple[TraceListParams, str | None]:
    """The state in ``query``, or the defaults and a message naming the bad parameter. Empty
    values (a form's blank fields) count as absent."""
    values = {k: v.strip() for k, v in query.items() if v.strip()}
    for key, value in values.items():
        if "\x00" in value:  # PostgreSQL cannot compare text holding NUL
            return TraceListParams(), f"invalid {key!r}: it holds a NUL character"
    try:
        return TraceListParams.model_validate(values), None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "query"
        return TraceListParams(), f"invalid {where!r}: {first['msg']}"


def parse_query_string(raw: str) -> tuple[TraceListParams, str | None]:
    """:func:`parse_params` of a query string (a saved view's)."""
    return parse_params(dict(parse_qsl(raw, keep_blank_values=False)))
