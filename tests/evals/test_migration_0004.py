"""Migration 0004 up and down with data in place: run kinds, the prompt version of earlier runs
(backfilled from their target JSON), and the item-to-span links."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import sqlalchemy as sa

from bastion.store import migrate
from bastion.store.engine import create_engine


def _columns(engine: sa.Engine, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table)}


def test_0004_up_backfills_and_down_keeps_runs(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        migrate.upgrade(engine, "0003")
        now = datetime.now(UTC)
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO projects (slug, name, created_at) VALUES ('p', 'p', :now)"),
                {"now": now},
            )
            project_id = conn.execute(sa.text("SELECT id FROM projects")).scalar_one()
            for run_id, target in (
                ("a" * 32, {"kind": "prompt", "name": "qa", "version": 3, "model": "m"}),
                ("b" * 32, {"kind": "model", "name": "m", "model": "m"}),
            ):
                conn.execute(
                    sa.text(
                        "INSERT INTO eval_runs (project_id, run_id, target_key, target, "
                        "target_hash, dataset_name, dataset_version, dataset_hash, scorers, "
                        "params, repeats, status, started_at) VALUES (:p, :r, 'k', :t, 'h', "
                        "'d', 1, 'h', '[]', '{}', 1, 'completed', :now)"
                    ),
                    {"p": project_id, "r": run_id, "t": orjson.dumps(target).decode(), "now": now},
                )
        assert "kind" not in _columns(engine, "eval_runs")

        migrate.upgrade(engine)
        assert {"kind", "prompt_name", "prompt_version"} <= _columns(engine, "eval_runs")
        assert "eval_item_sources" in sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT run_id, kind, prompt_name, prompt_version FROM eval_runs "
                    "ORDER BY run_id"
                )
            ).all()
        assert [tuple(r) for r in rows] == [
            ("a" * 32, "quality", "qa", 3),
            ("b" * 32, "quality", None, None),
        ]

        migrate.downgrade(engine, "0003")
        assert migrate.current_revision(engine) == "0003"
        assert not {"kind", "prompt_name", "prompt_version"} & _columns(engine, "eval_runs")
        assert "eval_item_sources" not in sa.inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM eval_runs")).scalar_one() == 2
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()
