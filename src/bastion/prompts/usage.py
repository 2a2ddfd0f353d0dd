"""Lineage and usage per prompt version: where it was deployed and what its traffic looked like.

For one prompt, every version (from the registry, plus any version seen only on spans, such as
OTLP spans that carry ``bastion.prompt.version``) with:

- its **deployments**: each label move (set or rollback) that pointed a label at it, and when
  that label moved away again;
- its **traffic** since a time: spans and traces, errors and error rate, p95 latency (exact,
  nearest rank), input/output tokens, cost, first/last seen and the most recent trace ids;
- its **eval scores**: the newest completed eval run per dataset (and kind) that evaluated
  that version, with each metric's mean and pass rate (:mod:`bastion.prompts.eval_scores`).

One grouped query, one window query for p95 and one for recent traces, each over the
``(project_id, prompt_name, prompt_version, start_ns)`` index of ``spans``; SQLAlchemy Core
only, so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel, Field

from bastion.prompts.eval_scores import VersionEvalScores, eval_scores_by_version
from bastion.prompts.registry_queries import MOVES, NotFoundError, RegistryError
from bastion.store.queries_common import is_counted, span_is_error
from bastion.store.schema import prompt_label_events, prompt_labels, prompt_versions, prompts, spans
from bastion.store.time_range import TIME_RANGE, TimeRangeError, check_time

__all__ = ["Deployment", "PromptUsage", "VersionUsage", "parse_since", "prompt_usage"]

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Deployment(BaseModel):
    """A label pointing at the version, from ``at`` until ``until`` (null: it still does)."""

    label: str
    action: str = Field(description="set or rollback")
    from_version: int | None = Field(description="where the label pointed before")
    actor: str
    reason: str | None
    at: datetime
    until: datetime | None


class VersionUsage(BaseModel):
    """One version's lineage and traffic."""

    version: int | None = Field(description="null for spans that named the prompt, not a version")
    content_hash: str | None
    created_at: datetime | None
    labels: list[str] = Field(description="labels pointing at it now")
    deployments: list[Deployment] = Field(description="oldest first")
    span_count: int
    trace_count: int
    error_count: int
    error_rate: float | None = Field(description="errors / spans; null without spans")
    p95_latency_ms: float | None = Field(description="nearest-rank 95th percentile")
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = Field(description="null when no span had a known price")
    first_seen: datetime | None
    last_seen: datetime | None
    recent_trace_ids: list[str] = Field(description="newest first")
    evals: list[VersionEvalScores] = Field(
        default_factory=list,
        description="newest completed eval run per dataset and kind that evaluated this version",
    )


class PromptUsage(BaseModel):
    """Every version of a prompt, newest first."""

    name: str
    since: datetime | None
    versions: list[VersionUsage]


def parse_since(
    value: str | None, *, now: datetime | None = None, name: str = "since"
) -> datetime | None:
    """``30m``, ``24h``, ``7d`` (ago) or an ISO 8601 time; naive times are UTC.

    ``name`` is what an error calls the value. A time the store cannot hold (far past or
    future, see :mod:`bastion.store.time_range`) is an error too.
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    amount = value[:-1]
    try:
        if value[-1] in _UNITS and amount.isascii() and amount.isdigit():
            ago = timedelta(**{_UNITS[value[-1]]: int(amount)})
            parsed = (now or datetime.now(UTC)) - ago
        else:
            parsed = datetime.fromisoformat(value)
        return check_time(parsed, name)
    except (OverflowError, TimeRangeError) as exc:
        raise RegistryError(f"{name} {value!r} is out of range: times run {TIME_RANGE}") from exc
    except ValueError as exc:
        raise RegistryError(f"{name} {value!r}: use 30m, 24h, 7d or an ISO 8601 time") from exc


def _time(ns: int | None) -> datetime | None:
    return None if ns is None else datetime.fromtimestamp(ns / 1e9, UTC)


def _deployments(
    conn: sa.Connection, project_id: int, prompt_id: int
) -> dict[int, list[Deployment]]:
    rows = conn.execute(
        sa.select(prompt_label_events)
        .where(
            prompt_label_events.c.project_id == project_id,
            prompt_label_events.c.prompt_id == prompt_id,
            prompt_label_events.c.action.in_(MOVES),
        )
        .order_by(prompt_label_events.c.id)
    ).all()
    out: dict[int, list[Deployment]] = {}
    open_by_label: dict[str, Deployment] = {}
    for row in rows:
        previous = open_by_label.get(row.label)
        if previous is not None:
            previous.until = row.at
        deployment = Deployment(
            label=row.label,
            action=row.action,
            from_version=row.from_version,
            actor=row.actor,
            reason=row.reason,
            at=row.at,
            until=None,
        )
        open_by_label[row.label] = deployment
        out.setdefault(int(row.to_version), []).append(deployment)
    return out


def _traffic(
    conn: sa.Connection, conds: list[sa.ColumnElement[bool]], recent: int
) -> tuple[dict[int | None, Any], dict[int | None, float], dict[int | None, list[str]]]:
    s = spans.c
    error = sa.case((span_is_error(s), 1), else_=0)
    totals = {
        row.prompt_version: row
        for row in conn.execute(
            sa.select(
                s.prompt_version,
                sa.func.count().label("spans"),
                sa.func.count(sa.distinct(s.trace_id)).label("traces"),
                sa.func.sum(error).label("errors"),
                sa.func.sum(s.input_tokens).label("input_tokens"),
                sa.func.sum(s.output_tokens).label("output_tokens"),
                sa.func.sum(s.cost_usd).label("cost_usd"),
                sa.func.min(s.start_ns).label("first_ns"),
                sa.func.max(s.start_ns).label("last_ns"),
            )
            .where(*conds)
            .group_by(s.prompt_version)
        )
    }
    # Nearest-rank p95: the r-th smallest latency with r = ceil(0.95 n), in integer arithmetic.
    ranked = (
        sa.select(
            s.prompt_version,
            s.latency_ms,
            sa.func.row_number()
            .over(partition_by=s.prompt_version, order_by=s.latency_ms)
            .label("rn"),
            sa.func.count().over(partition_by=s.prompt_version).label("n"),
        )
        .where(*conds)
        .subquery()
    )
    p95 = {
        row.prompt_version: float(row.latency_ms)
        for row in conn.execute(
            sa.select(ranked.c.prompt_version, ranked.c.latency_ms).where(
                ranked.c.rn * 100 >= ranked.c.n * 95, (ranked.c.rn - 1) * 100 < ranked.c.n * 95
            )
        )
    }
    newest = (
        sa.select(
            s.prompt_version,
            s.trace_id,
            sa.func.row_number()
            .over(partition_by=s.prompt_version, order_by=(s.start_ns.desc(), s.trace_id))
            .label("rn"),
        )
        .where(*conds)
        .subquery()
    )
    traces: dict[int | None, list[str]] = {}
    for row in conn.execute(
        sa.select(newest.c.prompt_version, newest.c.trace_id)
        .where(newest.c.rn <= recent * 4)  # a trace may hold several of the prompt's spans
        .order_by(newest.c.prompt_version, newest.c.rn)
    ):
        ids = traces.setdefault(row.prompt_version, [])
        if row.trace_id not in ids and len(ids) < recent:
            ids.append(row.trace_id)
    return totals, p95, traces


def prompt_usage(
    conn: sa.Connection,
    project_id: int,
    name: str,
    *,
    since: datetime | None = None,
    recent: int = 5,
) -> PromptUsage:
    """Per version of prompt ``name``: its deployments and its spans' numbers since ``since``.

    Raises :class:`NotFoundError` when the prompt is neither in the registry nor on any span.
    """
    prompt_id = conn.execute(
        sa.select(prompts.c.id).where(prompts.c.project_id == project_id, prompts.c.name == name)
    ).scalar()
    registered: dict[int, Any] = {}
    labels: dict[int, list[str]] = {}
    deployments: dict[int, list[Deployment]] = {}
    if prompt_id is not None:
        registered = {
            int(row.version): row
            for row in conn.execute(
                sa.select(
                    prompt_versions.c.version,
                    prompt_versions.c.content_hash,
                    prompt_versions.c.created_at,
                ).where(
                    prompt_versions.c.project_id == project_id,
                    prompt_versions.c.prompt_id == prompt_id,
                )
            )
        }
        for row in conn.execute(
            sa.select(prompt_labels.c.label, prompt_labels.c.version)
            .where(prompt_labels.c.project_id == project_id, prompt_labels.c.prompt_id == prompt_id)
            .order_by(prompt_labels.c.label)
        ):
            labels.setdefault(int(row.version), []).append(row.label)
        deployments = _deployments(conn, project_id, int(prompt_id))
    conds: list[sa.ColumnElement[bool]] = [
        spans.c.project_id == project_id,
        spans.c.prompt_name == name,
        is_counted(spans.c),  # a call the gateway traced counts once, on the gateway's span
    ]
    if since is not None:
        conds.append(spans.c.start_ns >= int(since.timestamp() * 1_000_000_000))
    totals, p95, traces = _traffic(conn, conds, recent)
    scores = eval_scores_by_version(conn, project_id, name)
    if prompt_id is None and not totals and not scores:
        raise NotFoundError(f"no prompt {name!r} in this project, and no spans name it")
    numbers: set[int | None] = {*registered, *totals, *scores}
    ordered = sorted(numbers, key=lambda v: (v is None, -(v or 0)))
    versions = []
    for number in ordered:
        stored = registered.get(number) if number is not None else None
        total = totals.get(number)
        count = int(total.spans) if total is not None else 0
        errors = int(total.errors or 0) if total is not None else 0
        versions.append(
            VersionUsage(
                version=number,
                content_hash=stored.content_hash if stored is not None else None,
                created_at=stored.created_at if stored is not None else None,
                labels=labels.get(number, []) if number is not None else [],
                deployments=deployments.get(number, []) if number is not None else [],
                span_count=count,
                trace_count=int(total.traces) if total is not None else 0,
                error_count=errors,
                error_rate=errors / count if count else None,
                p95_latency_ms=p95.get(number),
                input_tokens=int(total.input_tokens or 0) if total is not None else 0,
                output_tokens=int(total.output_tokens or 0) if total is not None else 0,
                cost_usd=float(total.cost_usd) if total and total.cost_usd is not None else None,
                first_seen=_time(total.first_ns) if total is not None else None,
                last_seen=_time(total.last_ns) if total is not None else None,
                recent_trace_ids=traces.get(number, []),
                evals=scores.get(number, []) if number is not None else [],
            )
        )
    return PromptUsage(name=name, since=since, versions=versions)
