"""Migrations go up and down cleanly on both databases."""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.schema import metadata


def test_upgrade_creates_every_table_and_downgrade_removes_them(db_url: str) -> None:
    engine = create_engine(db_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    tables = set(sa.inspect(engine).get_table_names())
    assert set(metadata.tables) <= tables

    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    assert not set(metadata.tables) & set(sa.inspect(engine).get_table_names())

    migrate.upgrade(engine)  # and up again, from nothing
    assert set(metadata.tables) <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_migrated_schema_matches_the_declared_metadata(engine: sa.Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_histogram_merge_function_exists_in_sql(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        merged = conn.execute(
            sa.text("SELECT bastion_hist_merge(:a, :b)"), {"a": '{"3": 2}', "b": '{"3": 1, "7": 4}'}
        ).scalar_one()
    from bastion.store.histogram import decode

    assert decode(merged) == {3: 3, 7: 4}
