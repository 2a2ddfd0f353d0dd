"""Erasure by user, trace and session on SQLite and PostgreSQL: the traces whole, dataset
items made from them, their eval results and scores, derived traces, dead letters, a user's
roll-up rows; nothing of another project; bad requests refused."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bastion.retention import ErasureError, ErasureRequest, erase
from bastion.store.schema import (
    eval_dataset_items,
    eval_datasets,
    eval_item_sources,
    eval_results,
    eval_scores,
    span_rollup_deltas,
    span_rollups,
    spans,
    traces,
)
from tests.retention.support import assert_traces_consistent, find_text
from tests.retention.world import World, build, project_digest


def count(engine: sa.Engine, table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        )


def trace_ids(engine: sa.Engine, project_id: int) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.select(spans.c.trace_id).where(spans.c.project_id == project_id)
            ).scalars()
        )


@pytest.fixture
def world(engine: sa.Engine) -> World:
    return build(engine)


def test_erasing_a_user_removes_their_traces_and_everything_made_from_them(
    engine: sa.Engine, world: World
) -> None:
    other_before = project_digest(engine, world.other_pid)
    assert count(engine, span_rollup_deltas) > 0

    summary = erase(engine, ErasureRequest.of(world.pid, user="alice"), actor="key:1")

    # A1, A2, A3 (Alice on one child of Bob's trace) and the eval call made from A1's item.
    assert (summary.traces, summary.derived_traces, summary.spans) == (4, 1, 3 + 3 + 2 + 2)
    # Items of their five model calls, and of the eval call's (the dataset was snapshotted
    # after it): six, with their results and scores.
    assert (summary.dataset_items, summary.dataset_versions) == (6, 1)
    assert (summary.eval_results, summary.eval_scores, summary.rejects) == (6, 12, 1)
    assert summary.rollup_rows >= 2  # her hour and her day, at least
    assert summary.actor == "key:1"
    assert "alice" not in str(summary.to_dict())
    assert find_text(engine, "ALICE-SECRET") == []
    bob_ids = {t[0].trace_id for t in world.bob}
    assert trace_ids(engine, world.pid) == bob_ids
    assert count(engine, spans, spans.c.project_id == world.pid, spans.c.user_id == "alice") == 0
    assert count(engine, traces, traces.c.project_id == world.pid, traces.c.user_id == "alice") == 0
    r = span_rollups.c
    assert count(engine, span_rollups, r.project_id == world.pid, r.value == "alice") == 0
    assert count(engine, span_rollups, r.project_id == world.pid, r.value == "bob") > 0
    assert count(engine, span_rollups, r.project_id == world.pid, r.dimension == "total") > 0
    # Bob's items, results and scores stay; the dataset version counts what is left.
    assert count(engine, eval_dataset_items, eval_dataset_items.c.project_id == world.pid) == 4
    assert count(engine, eval_item_sources, eval_item_sources.c.project_id == world.pid) == 4
    with engine.connect() as conn:
        item_count = conn.execute(
            sa.select(eval_datasets.c.item_count).where(eval_datasets.c.project_id == world.pid)
        ).scalar()
    assert item_count == 4
    assert count(engine, eval_results, eval_results.c.run_id == world.run_id) == 4
    assert count(engine, eval_scores, eval_scores.c.run_id == world.run_id) == 8
    assert_traces_consistent(engine, world.pid)
    # The other project, holding the same user id, is untouched.
    assert project_digest(engine, world.other_pid) == other_before
    assert find_text(engine, "ALICE-OTHER-SECRET") != []


def test_erasing_a_session_removes_its_traces_only(engine: sa.Engine, world: World) -> None:
    other_before = project_digest(engine, world.other_pid)
    summary = erase(engine, ErasureRequest.of(world.pid, session="s-shared"), actor="key:1")
    a2, b1 = world.alice[1], world.bob[0]
    assert (summary.traces, summary.spans, summary.rollup_rows) == (2, 6, 0)
    assert summary.dataset_items == 4  # two model calls each
    left = trace_ids(engine, world.pid)
    assert a2[0].trace_id not in left
    assert b1[0].trace_id not in left
    assert world.alice[0][0].trace_id in left
    assert find_text(engine, "ALICE-SECRET-2") == []
    assert find_text(engine, "BOB-TEXT-1") == []
    assert find_text(engine, "BOB-TEXT-2") != []
    assert_traces_consistent(engine, world.pid)
    assert project_digest(engine, world.other_pid) == other_before


def test_erasing_a_trace_takes_the_eval_call_made_from_it(engine: sa.Engine, world: World) -> None:
    a1 = world.alice[0]
    summary = erase(engine, ErasureRequest.of(world.pid, trace=a1[0].trace_id.upper()), actor="x")
    assert (summary.traces, summary.derived_traces, summary.dataset_items) == (2, 1, 3)
    assert (summary.eval_results, summary.eval_scores) == (3, 6)
    left = trace_ids(engine, world.pid)
    assert a1[0].trace_id not in left
    assert world.eval_trace[0].trace_id not in left
    assert world.alice[1][0].trace_id in left
    assert find_text(engine, "ALICE-SECRET-1") == []
    assert find_text(engine, "ALICE-SECRET-2") != []
    assert_traces_consistent(engine, world.pid)


def test_erasing_what_is_not_there_removes_nothing(engine: sa.Engine, world: World) -> None:
    before = project_digest(engine, world.pid)
    summary = erase(engine, ErasureRequest.of(world.pid, user="nobody"), actor="x")
    assert summary.traces == summary.spans == summary.dataset_items == 0
    after = project_digest(engine, world.pid)
    # Folding pending roll-up counters is the only change (the same counts, folded).
    assert {k: v for k, v in after.items() if k not in ("span_rollups", "span_rollup_deltas")} == {
        k: v for k, v in before.items() if k not in ("span_rollups", "span_rollup_deltas")
    }


def test_erasure_in_one_project_never_touches_another(engine: sa.Engine, world: World) -> None:
    before = project_digest(engine, world.pid)
    summary = erase(engine, ErasureRequest.of(world.other_pid, user="alice"), actor="x")
    assert summary.traces == 1
    assert find_text(engine, "ALICE-OTHER-SECRET") == []
    after = project_digest(engine, world.pid)
    assert {k: v for k, v in after.items() if k not in ("span_rollups", "span_rollup_deltas")} == {
        k: v for k, v in before.items() if k not in ("span_rollups", "span_rollup_deltas")
    }
    r = span_rollups.c
    assert count(engine, span_rollups, r.project_id == world.pid, r.value == "alice") > 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of user, trace or session (got none)"),
        (
            {"user": "a", "session": "b"},
            "exactly one of user, trace or session (got session, user)",
        ),
        ({"trace": "abc"}, "32 hexadecimal characters"),
        ({"trace": "g" * 32}, "32 hexadecimal characters"),
        ({"user": "  "}, "user must not be empty"),
        ({"session": "s" * 201}, "longer than the 200 characters"),
        ({"user": "a\x00b"}, "NUL"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ErasureError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ErasureRequest.of(1, **fields)


def test_the_subject_is_recorded_only_as_a_digest() -> None:
    request = ErasureRequest.of(7, user="alice")
    assert request.subject_digest == ErasureRequest.of(7, user="alice").subject_digest
    assert request.subject_digest != ErasureRequest.of(8, user="alice").subject_digest
    assert request.subject_digest != ErasureRequest.of(7, session="alice").subject_digest
    assert len(request.subject_digest) == 64
