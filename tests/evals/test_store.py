"""Eval storage on SQLite and PostgreSQL: dataset versions, runs, results, cache, isolation."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item
from bastion.evals.scorers.base import Score


def items(n: int, *, suffix: str = "") -> list[Item]:
    return [
        Item(id=f"i{k}", vars={"q": f"question {k}{suffix}"}, expected=str(k)) for k in range(n)
    ]


@pytest.fixture
def project(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return ensure_project(conn)


def new_run(engine: sa.Engine, project: int, key: str = "p@production", **kw: object) -> str:
    with engine.connect() as conn:
        dataset = store.get_dataset(conn, project, "golden").info
    return store.create_run(
        engine,
        project,
        target_key=key,
        target={"kind": "prompt", "name": "p", "label": "production", "version": 1},
        target_hash="sha256:t",
        dataset=dataset,
        scorers=[{"type": "equals", "value": "{{ expected }}"}],
        params={},
        repeats=1,
    )


def result(item_id: str, value: float, *, repeat: int = 0, error: str | None = None):
    scores = () if error else (Score("equals", value, value >= 0.5, "r", {"k": 1}),)
    return store.RecordedResult(
        item_id, repeat, None if error else f"out {item_id}", f"key-{item_id}-{repeat}", scores,
        latency_ms=12.5, trace_id="ab" * 16, error=error,
    )  # fmt: skip


def test_dataset_versions_are_content_addressed_and_lockable(engine: sa.Engine, project: int):
    first = store.push_dataset(engine, project, "golden", items(3))
    assert (first.status, first.info.version, first.info.item_count) == ("created", 1, 3)
    again = store.push_dataset(engine, project, "golden", items(3))
    assert (again.status, again.info.version) == ("unchanged", 1)
    second = store.push_dataset(engine, project, "golden", items(3, suffix="!"), lock=True)
    assert (second.status, second.info.version, second.info.locked) == ("created", 2, True)
    with pytest.raises(DatasetError, match="locked"):
        store.push_dataset(engine, project, "golden", items(4))
    assert store.push_dataset(engine, project, "golden", items(4), force=True).info.version == 3
    # Going back to old content answers with the old version.
    assert store.push_dataset(engine, project, "golden", items(3)).info.version == 1

    with engine.connect() as conn:
        newest = store.get_dataset(conn, project, "golden")
        v2 = store.get_dataset(conn, project, "golden", 2)
        assert newest.info.version == 3
        assert len(newest.items) == 4
        assert [i.id for i in v2.items] == ["i0", "i1", "i2"]
        assert v2.items[1].vars == {"q": "question 1!"}
        assert v2.items[1].expected == "1"
        assert v2.item_hashes["i1"] == v2.items[1].content_hash()
        assert [(d.name, d.version) for d in store.list_datasets(conn, project)] == [
            ("golden", 1), ("golden", 2), ("golden", 3),
        ]  # fmt: skip
        with pytest.raises(store.EvalStoreError, match="no version 9"):
            store.get_dataset(conn, project, "golden", 9)
        with pytest.raises(store.EvalStoreError, match="no dataset 'nope'"):
            store.get_dataset(conn, project, "nope")


def test_results_are_idempotent_and_load_for_compare(engine: sa.Engine, project: int):
    store.push_dataset(engine, project, "golden", items(3))
    run_id = new_run(engine, project)
    store.record_results(engine, project, run_id, [result("i0", 1.0), result("i1", 0.0)])
    # The same key again replaces, never duplicates; an error is not "finished".
    store.record_results(engine, project, run_id, [result("i1", 1.0), result("i2", 0, error="x")])
    with engine.connect() as conn:
        assert store.finished_pairs(conn, project, run_id) == {("i0", 0), ("i1", 0)}
        loaded = store.load_results(conn, project, run_id)
    assert loaded.label == "p@production (v1)"
    assert [(r.item_id, r.metric, r.value, r.passed, r.output) for r in loaded.rows] == [
        ("i0", "equals", 1.0, True, "out i0"),
        ("i1", "equals", 1.0, True, "out i1"),
    ]
    store.finish_run(engine, project, run_id, "completed", {"n": 2})
    with engine.connect() as conn:
        info = store.get_run(conn, project, run_id)
        assert (info.status, info.summary, info.repeats) == ("completed", {"n": 2}, 1)
        assert info.finished_at is not None


def test_cache_finds_outputs_of_earlier_runs_of_the_project_only(engine: sa.Engine, project: int):
    store.push_dataset(engine, project, "golden", items(2))
    run_id = new_run(engine, project)
    store.record_results(
        engine, project, run_id, [result("i0", 1.0), result("i1", 0, error="HTTP 500")]
    )
    with engine.connect() as conn:
        found = store.cached_outputs(conn, project, ["key-i0-0", "key-i1-0", "key-zz-0"])
    assert list(found) == ["key-i0-0"]  # errors are never cached
    assert found["key-i0-0"].output == "out i0"
    assert found["key-i0-0"].latency_ms == 12.5
    with engine.begin() as conn:
        other = ensure_project(conn, "other")
    with engine.connect() as conn:
        assert store.cached_outputs(conn, other, ["key-i0-0"]) == {}
        with pytest.raises(store.EvalStoreError):
            store.get_run(conn, other, run_id)
        assert store.list_datasets(conn, other) == []


def test_latest_completed_run_of_a_target(engine: sa.Engine, project: int):
    store.push_dataset(engine, project, "golden", items(1))
    older = new_run(engine, project)
    store.finish_run(engine, project, older, "completed")
    newer = new_run(engine, project)  # still running: not "completed"
    with engine.connect() as conn:
        assert store.latest_run(conn, project, "golden", "p@production").run_id == older
        assert store.latest_run(conn, project, "golden", "p@production", status=None).run_id in {
            older,
            newer,
        }
        with pytest.raises(store.EvalStoreError, match="p@staging"):
            store.latest_run(conn, project, "golden", "p@staging")
    assert store.cache_key("t", "i", "p", 0) != store.cache_key("t", "i", "p", 1)
