"""PostgreSQL: the histogram merge of span roll-ups becomes a PL/pgSQL function.

The SQL-language function is not inlinable, so PostgreSQL plans its query again on every
call; the ingest path calls it for every roll-up row it updates, which made roll-ups the
dominant cost of a batch. PL/pgSQL keeps its plans for the session and skips work when
either side is empty. SQLite is unchanged (its function comes from Python on connect).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PLPGSQL_HIST_MERGE = """
CREATE OR REPLACE FUNCTION bastion_hist_merge(a text, b text) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  merged jsonb;
  item record;
BEGIN
  IF b IS NULL OR b = '{}' THEN RETURN COALESCE(a, '{}'); END IF;
  IF a IS NULL OR a = '{}' THEN RETURN b; END IF;
  merged := a::jsonb;
  FOR item IN SELECT key, value FROM jsonb_each_text(b::jsonb) LOOP
    merged := jsonb_set(
      merged,
      ARRAY[item.key],
      to_jsonb(COALESCE((merged ->> item.key)::bigint, 0) + item.value::bigint)
    );
  END LOOP;
  RETURN merged::text;
END
$$
"""

# The definition of revision 0001, restored on downgrade.
_SQL_HIST_MERGE = """
CREATE OR REPLACE FUNCTION bastion_hist_merge(a text, b text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
  SELECT COALESCE(jsonb_object_agg(k, total)::text, '{}') FROM (
    SELECT k, SUM(v::bigint) AS total FROM (
      SELECT key AS k, value AS v FROM jsonb_each_text(COALESCE(a, '{}')::jsonb)
      UNION ALL
      SELECT key, value FROM jsonb_each_text(COALESCE(b, '{}')::jsonb)
    ) AS parts GROUP BY k
  ) AS sums
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PLPGSQL_HIST_MERGE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_SQL_HIST_MERGE)
