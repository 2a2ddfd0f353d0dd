"""Retention policies applied by a pass, on SQLite and PostgreSQL: spans (with their trace
summaries), payloads only, per-item eval scores; batches; dry runs; project isolation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.retention import RetentionError, apply, plan, policy_for
from bastion.retention.turns import Turns
from bastion.settings import ConfigError, Settings, load_settings
from bastion.store.schema import (
    eval_results,
    eval_runs,
    eval_scores,
    ingest_rejects,
    span_rollups,
    spans,
    traces,
)
from bastion.tracing.model import Span
from tests.retention.support import (
    assert_traces_consistent,
    dataset_and_run,
    digest,
    project,
    reject,
    span,
    trace,
    write,
)

METRIC_COLUMNS = (
    "input_tokens", "output_tokens", "cost_usd", "start_ns", "end_ns", "status_code",
    "error_class", "request_model", "user_id", "feature",
)  # fmt: skip


def policy(**periods: object) -> Settings:
    """Settings where project ``default`` keeps data for ``periods`` and ``other`` forever."""
    return Settings(projects={"default": {"retention": periods}})


def rollup_totals(engine: sa.Engine) -> list[tuple[object, ...]]:
    r = span_rollups.c
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.select(
                    r.project_id, r.dimension, r.hour, r.value, r.span_count, r.input_tokens
                ).order_by(r.project_id, r.dimension, r.hour, r.value)
            )
        ]


def stored(engine: sa.Engine, project_id: int, trace_id: str) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(spans)
                .where(spans.c.project_id == project_id, spans.c.trace_id == trace_id)
                .order_by(spans.c.start_ns)
            )
        )


def trace_row(
    engine: sa.Engine, project_id: int, trace_id: str
) -> sa.Row[tuple[object, ...]] | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(traces).where(
                traces.c.project_id == project_id, traces.c.trace_id == trace_id
            )
        ).one_or_none()


@dataclass
class Seeded:
    pid: int
    old: list[Span]
    straddling: list[Span]
    recent: list[Span]


@pytest.fixture
def seeded(engine: sa.Engine) -> dict[str, Seeded]:
    """In ``default`` and in ``other``: a trace of 40 days ago, one whose root started 31 days
    ago and children 29 and 27 days ago (straddling a 30-day cut-off), and one of yesterday."""
    out: dict[str, Seeded] = {}
    for slug in ("default", "other"):
        pid = project(engine, slug)
        old = trace(days_ago=40, text=f"{slug} old", user="u1")
        straddling = trace(days_ago=31, text=f"{slug} straddling", user="u1", child_gap_days=2)
        recent = trace(days_ago=1, text=f"{slug} recent", user="u2")
        write(engine, pid, old + straddling + recent)
        out[slug] = Seeded(pid, old, straddling, recent)
    return out


def test_spans_policy_deletes_old_spans_and_keeps_summaries_consistent(
    engine: sa.Engine, seeded: dict[str, Seeded]
) -> None:
    d = seeded["default"]
    pid, old, straddling, recent = d.pid, d.old, d.straddling, d.recent
    other_before = digest(engine)
    rollups_before = rollup_totals(engine)
    recent_row = trace_row(engine, pid, recent[0].trace_id)

    report = apply(engine, policy(spans_days=30))

    assert stored(engine, pid, old[0].trace_id) == []
    assert trace_row(engine, pid, old[0].trace_id) is None
    kept = stored(engine, pid, straddling[0].trace_id)
    assert [row.span_id for row in kept] == [s.span_id for s in straddling[1:]]
    row = trace_row(engine, pid, straddling[0].trace_id)
    assert row is not None
    # Summarised again from the two children: their times, counts, tokens, cost; no root.
    assert row.span_count == 2
    assert row.start_ns == straddling[1].start_ns
    assert row.end_ns == straddling[2].end_ns
    assert row.llm_count == 2
    assert row.error_count == 1
    assert row.input_tokens == 200
    assert row.output_tokens == 40
    assert row.cost_usd == pytest.approx(0.002)
    assert row.root_span_id is None
    assert row.name == "chat"
    assert trace_row(engine, pid, recent[0].trace_id) == recent_row
    assert_traces_consistent(engine, pid)
    # Roll-ups are sums without content: they keep the deleted spans' history.
    assert rollup_totals(engine) == rollups_before
    (result,) = report.results
    assert (result.project, result.kind, result.rows) == ("default", "spans", 4)
    assert result.details == {"traces_removed": 1, "traces_updated": 1, "rejects": 0}
    # The other project keeps everything: its tables' rows are as they were.
    other_pid = seeded["other"].pid
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(spans).where(spans.c.project_id == other_pid)
            ).scalar()
            == 9
        )
    assert digest(engine)["span_rollups"] == other_before["span_rollups"]


def test_spans_policy_expires_dead_letters_too(engine: sa.Engine) -> None:
    pid = project(engine)
    reject(engine, pid, span("ab" * 16, days_ago=0, text="refused"))
    with engine.begin() as conn:  # refused long ago
        conn.execute(sa.update(ingest_rejects).values(rejected_at=datetime(2000, 1, 1, tzinfo=UTC)))
    reject(engine, pid, span("cd" * 16, days_ago=0, text="refused today"))
    report = apply(engine, policy(spans_days=30))
    assert report.results[0].details["rejects"] == 1
    with engine.connect() as conn:
        left = conn.execute(sa.select(ingest_rejects.c.trace_id)).scalars().all()
    assert left == ["cd" * 16]


def test_work_goes_in_batches_of_the_configured_size(
    engine: sa.Engine, seeded: dict[str, Seeded]
) -> None:
    pid = seeded["default"].pid
    settings = policy(spans_days=30)
    settings.retention.batch_size = 1
    report = apply(engine, settings)
    # Four expired spans, one per transaction, then one finding none left, then the dead
    # letters' batch: the work really was cut into single-row transactions.
    assert report.results[0].rows == 4
    assert report.transactions == 4 + 1 + 1
    assert_traces_consistent(engine, pid)


def test_a_paced_pass_pauses_between_batches(engine: sa.Engine, seeded: dict[str, Seeded]) -> None:
    settings = policy(spans_days=30)
    settings.retention.batch_size = 1
    turns = Turns(engine, duty_cycle=0.2)
    report = apply(engine, settings, turns=turns)
    # At a fifth of its time in transactions, a pass lasts about five times that time.
    assert report.seconds >= 4 * report.busy_s * 0.9


def test_payload_policy_drops_text_and_keeps_metrics(
    engine: sa.Engine, seeded: dict[str, Seeded]
) -> None:
    d = seeded["default"]
    pid, old, recent = d.pid, d.old, d.recent
    before = {row.span_id: row for row in stored(engine, pid, old[0].trace_id)}
    rollups_before = rollup_totals(engine)
    traces_before = digest(engine)["traces"]

    report = apply(engine, policy(payload_days=7))

    (result,) = report.results
    assert result.kind == "payload"
    assert result.rows == 6
    for row in stored(engine, pid, old[0].trace_id):
        was = before[row.span_id]
        assert row.input is None
        assert row.output is None
        assert orjson.loads(row.attributes) == {
            "bastion.feature": "support",
            "bastion.gateway.api": "chat",
            "gen_ai.request.temperature": 0.2,
            "server.port": 443,
        }
        assert orjson.loads(row.events) == [
            {
                "name": "exception",
                "time_ns": orjson.loads(was.events)[0]["time_ns"],
                "attributes": {"attempt": 2},
            }
        ]
        for column in METRIC_COLUMNS:
            assert getattr(row, column) == getattr(was, column), column
    for row in stored(engine, pid, recent[0].trace_id):
        assert "default recent" in row.attributes
    assert rollup_totals(engine) == rollups_before
    assert digest(engine)["traces"] == traces_before
    # The mark remembers how far the pass got: the next one reads nothing again.
    again = apply(engine, policy(payload_days=7))
    assert again.results[0].details["read"] == 0
    # A rescan reads them all again, and finds nothing left to drop.
    rescanned = apply(engine, policy(payload_days=7), rescan=True)
    assert rescanned.results[0].details["read"] == 6
    assert rescanned.results[0].rows == 0


def test_scores_policy_deletes_old_per_item_results_and_keeps_runs(engine: sa.Engine) -> None:
    pid = project(engine)
    write(engine, pid, trace(days_ago=2, text="question"))
    old = dataset_and_run(engine, pid, "old-set", finished_days_ago=100)
    new = dataset_and_run(engine, pid, "new-set")

    report = apply(engine, policy(scores_days=30))

    (result,) = report.results
    assert result.kind == "scores"
    assert (result.rows, result.details) == (2, {"scores": 4, "runs": 1})
    with engine.connect() as conn:
        for table in (eval_results, eval_scores):
            runs = conn.execute(sa.select(table.c.run_id).distinct()).scalars().all()
            assert runs == [new.run_id]
        summaries = dict(conn.execute(sa.select(eval_runs.c.run_id, eval_runs.c.summary)).all())
    assert set(summaries) == {old.run_id, new.run_id}
    assert orjson.loads(summaries[old.run_id]) == {"items": 2}


def test_dry_run_counts_and_changes_nothing(engine: sa.Engine, seeded: dict[str, Seeded]) -> None:
    pid = seeded["default"].pid
    write(engine, pid, trace(days_ago=3, text="x"))
    dataset_and_run(engine, pid, "set", finished_days_ago=100)
    settings = policy(spans_days=30, payload_days=7, scores_days=30)
    before = digest(engine)

    planned = plan(engine, settings)

    assert digest(engine) == before
    counts = {r.kind: (r.rows, r.details) for r in planned.results}
    assert counts["spans"] == (4, {"traces_affected": 2, "rejects": 0})
    assert counts["payload"][0] == 2  # the straddling trace's children (the rest go first)
    # One result (and two scores) per model-call span of the project: 3 traces of 2, and 2.
    assert counts["scores"] == (8, {"runs": 1, "scores": 16})
    done = {r.kind: r.rows for r in apply(engine, settings).results}
    assert done["spans"] == 4
    assert done["payload"] == 2
    assert done["scores"] == 8


def test_unknown_project_is_refused(engine: sa.Engine) -> None:
    with pytest.raises(RetentionError, match="no project 'nope'"):
        plan(engine, policy(spans_days=1), project="nope")


def test_only_the_named_project_is_passed(engine: sa.Engine, seeded: dict[str, Seeded]) -> None:
    settings = Settings(retention={"spans_days": 30})  # a default for every project
    report = apply(engine, settings, project="other")
    assert [r.project for r in report.results] == ["other"]
    pid = seeded["default"].pid
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(spans).where(spans.c.project_id == pid)
            ).scalar()
            == 9
        )


def test_project_forever_overrides_the_default(
    engine: sa.Engine, seeded: dict[str, Seeded]
) -> None:
    settings = Settings(
        retention={"spans_days": 30}, projects={"other": {"retention": {"spans_days": "forever"}}}
    )
    report = apply(engine, settings)
    assert [(r.project, r.rows) for r in report.results] == [("default", 4)]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        (
            "retention:\n  spans_days: 0\n",
            "bastion.yaml:2: invalid value for 'retention.spans_days'",
        ),
        ("retention:\n  payload_days: -3\n", "invalid value for 'retention.payload_days'"),
        ("retention:\n  duty_cycle: 0\n", "invalid value for 'retention.duty_cycle'"),
        (
            "projects:\n  p:\n    retention:\n      spans_days: never\n",
            "invalid value for 'projects.p.retention.spans_days",
        ),
        ("retention:\n  span_days: 3\n", "invalid value for 'retention.span_days'"),
        (
            "projects:\n  p:\n    retention:\n      payload: 3\n",
            "invalid value for 'projects.p.retention.payload'",
        ),
    ],
)
def test_bad_periods_in_the_configuration_are_refused(
    tmp_path: Path, yaml_text: str, message: str
) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(config)


def test_policies_resolve_per_project_over_the_defaults() -> None:
    settings = Settings(
        retention={"spans_days": 90, "payload_days": 30},
        projects={"a": {"retention": {"payload_days": 7, "spans_days": "forever"}}, "b": {}},
    )
    assert policy_for(settings, "a").describe() == {"spans": None, "payload": 7, "scores": None}
    assert policy_for(settings, "b").describe() == {"spans": 90, "payload": 30, "scores": None}
    assert policy_for(settings, "unlisted") == policy_for(settings, "b")
    assert Settings().retention.spans_days is None  # nothing is deleted unless configured
