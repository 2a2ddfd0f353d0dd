"""Tables, as SQLAlchemy Core metadata shared by SQLite and PostgreSQL.

Every row belongs to a project, and every index leads with ``project_id`` so that a query
scoped to one project never reads another's rows. Span times are integer Unix nanoseconds
(OpenTelemetry's own unit); JSON documents are stored as text encoded with orjson.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store.schema_access import (
    approvals,
    audit_chain,
    audit_log,
    login_attempts,
    memberships,
    user_sessions,
    users,
)
from bastion.store.schema_base import metadata
from bastion.store.schema_retention import retention_marks
from bastion.store.schema_ui import ui_saved_views
from bastion.store.types import UtcDateTime

__all__ = [
    "api_keys",
    "approvals",
    "audit_chain",
    "audit_log",
    "eval_dataset_items",
    "eval_datasets",
    "eval_item_sources",
    "eval_results",
    "eval_runs",
    "eval_scores",
    "ingest_rejects",
    "login_attempts",
    "memberships",
    "metadata",
    "projects",
    "prompt_label_events",
    "prompt_labels",
    "prompt_versions",
    "prompts",
    "release_events",
    "release_rollouts",
    "release_routes",
    "releases",
    "retention_marks",
    "span_rollups",
    "spans",
    "traces",
    "ui_saved_views",
    "user_sessions",
    "users",
]


projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("slug", sa.String(64), nullable=False, unique=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # First characters of the key, shown in listings so a person can tell keys apart.
    sa.Column("prefix", sa.String(16), nullable=False),
    # SHA-256 of the whole key: keys carry 190+ bits of randomness, so a fast hash is safe.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Index(None, "project_id", "id"),
)

spans = sa.Table(
    "spans",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    # The trace's ``traces.seq``: spans are keyed by it rather than by the random trace id.
    sa.Column("trace_seq", sa.BigInteger, nullable=False),
    sa.Column("span_id", sa.String(16), nullable=False),
    sa.Column("parent_span_id", sa.String(16), nullable=True),
    sa.Column("name", sa.String(500), nullable=False),
    sa.Column("kind", sa.SmallInteger, nullable=False),
    sa.Column("start_ns", sa.BigInteger, nullable=False),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Column("status_code", sa.SmallInteger, nullable=False),
    sa.Column("status_message", sa.Text, nullable=True),
    sa.Column("service_name", sa.String(200), nullable=True),
    # First-class LLM fields, extracted at write time.
    sa.Column("operation", sa.String(64), nullable=True),
    sa.Column("provider", sa.String(64), nullable=True),
    sa.Column("request_model", sa.String(200), nullable=True),
    sa.Column("response_model", sa.String(200), nullable=True),
    sa.Column("input_tokens", sa.BigInteger, nullable=True),
    sa.Column("output_tokens", sa.BigInteger, nullable=True),
    sa.Column("cached_tokens", sa.BigInteger, nullable=True),
    sa.Column("cache_write_tokens", sa.BigInteger, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("error_class", sa.String(200), nullable=True),
    sa.Column("user_id", sa.String(200), nullable=True),
    sa.Column("session_id", sa.String(200), nullable=True),
    sa.Column("feature", sa.String(200), nullable=True),
    sa.Column("tenant", sa.String(200), nullable=True),
    sa.Column("prompt_name", sa.String(200), nullable=True),
    sa.Column("prompt_version", sa.Integer, nullable=True),
    sa.Column("release_id", sa.String(64), nullable=True),
    sa.Column("input", sa.Text, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("events", sa.Text, nullable=False),
    sa.Column("ingested_ns", sa.BigInteger, nullable=False),
    # The gateway's x-request-id, on the spans of calls it served (only the gateway sets it, so
    # it also tells a gateway call from a span some client reported about the same call).
    sa.Column("request_id", sa.String(128), nullable=True),
    # On a client's span of a call the gateway served and traced too: that gateway span's id
    # (same trace). Such a span is kept and shown but never counted (bastion.store.call_links).
    sa.Column("duplicate_of", sa.String(16), nullable=True),
    # New traces take ever larger seqs, so a batch's spans go to the end of this key instead
    # of to a page each all over it, as random trace ids sent them: once the key outgrows the
    # cache, that was a page read and a page written per span (SQLite writes whole pages to
    # its WAL at every commit).
    sa.PrimaryKeyConstraint("project_id", "trace_seq", "span_id"),
    sa.Index(None, "project_id", "start_ns"),
    sa.Index(None, "project_id", "request_model", "start_ns"),
    # Per prompt version usage (bastion.prompts.usage): counts, p95 and recent traces. Partial:
    # most spans name no prompt, and an index entry for each would tax every insert.
    sa.Index(
        None,
        "project_id",
        "prompt_name",
        "prompt_version",
        "start_ns",
        sqlite_where=sa.text("prompt_name IS NOT NULL"),
        postgresql_where=sa.text("prompt_name IS NOT NULL"),
    ),
    # Canary analysis reads one release's spans since a rollout step began (bastion.releases).
    sa.Index(
        None,
        "project_id",
        "release_id",
        "start_ns",
        sqlite_where=sa.text("release_id IS NOT NULL"),
        postgresql_where=sa.text("release_id IS NOT NULL"),
    ),
    # Lookups by the gateway's request id. Partial, like the ones below: only gateway spans.
    sa.Index(
        None,
        "project_id",
        "request_id",
        sqlite_where=sa.text("request_id IS NOT NULL"),
        postgresql_where=sa.text("request_id IS NOT NULL"),
    ),
    # Which traces of a batch hold a gateway call made inside a caller's span: the only ones
    # where a client's span of the same call may need linking (bastion.store.call_links).
    sa.Index(
        None,
        "project_id",
        "trace_seq",
        "parent_span_id",
        sqlite_where=sa.text("request_id IS NOT NULL AND parent_span_id IS NOT NULL"),
        postgresql_where=sa.text("request_id IS NOT NULL AND parent_span_id IS NOT NULL"),
    ),
)

# One row per trace, maintained by additive upserts as its spans arrive in any order.
traces = sa.Table(
    "traces",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    # Numbers traces in the order they were first seen; spans refer to their trace by it.
    # PostgreSQL draws it from an identity sequence, the SQLite writer (the only one holding
    # the write lock) from the largest so far.
    sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
    sa.Column("start_ns", sa.BigInteger, nullable=False),
    sa.Column("end_ns", sa.BigInteger, nullable=False),
    sa.Column("root_span_id", sa.String(16), nullable=True),
    sa.Column("name", sa.String(500), nullable=True),
    sa.Column("span_count", sa.Integer, nullable=False),
    sa.Column("error_count", sa.Integer, nullable=False),
    sa.Column("llm_count", sa.Integer, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("user_id", sa.String(200), nullable=True),
    sa.Column("session_id", sa.String(200), nullable=True),
    sa.Column("feature", sa.String(200), nullable=True),
    sa.Column("tenant", sa.String(200), nullable=True),
    sa.Column("service_name", sa.String(200), nullable=True),
    sa.PrimaryKeyConstraint("project_id", "trace_id"),
    sa.UniqueConstraint("seq"),
    sa.Index(None, "project_id", "start_ns"),
    sa.Index(None, "project_id", "user_id", "start_ns"),
    sa.Index(None, "project_id", "session_id", "start_ns"),
    sa.Index(None, "project_id", "feature", "start_ns"),
    sa.Index(None, "project_id", "tenant", "start_ns"),
)

# Hourly roll-ups of LLM spans along one dimension at a time (total, model, feature, user, ...).
# Counters are additive; latency and TTFT histograms are sparse log-bucket maps merged on write.
span_rollups = sa.Table(
    "span_rollups",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("hour", sa.BigInteger, nullable=False),  # Unix seconds at the start of the hour
    sa.Column("dimension", sa.String(16), nullable=False),
    sa.Column("value", sa.String(200), nullable=False),  # '' stands for "not set"
    sa.Column("span_count", sa.BigInteger, nullable=False),
    sa.Column("error_count", sa.BigInteger, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cached_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("cost_unknown_count", sa.BigInteger, nullable=False),
    sa.Column("latency_hist", sa.Text, nullable=False),
    sa.Column("ttft_hist", sa.Text, nullable=False),
    sa.PrimaryKeyConstraint("project_id", "dimension", "hour", "value"),
)


# Roll-up counters of committed span batches not yet folded into span_rollups: one row per
# batch and project, a JSON document of RollupTotals (bastion.store.aggregates). The ingest
# pipeline writes these instead of upserting span_rollups in every transaction and folds them
# in about once a second; summaries read both in one statement, so nothing is ever missing.
span_rollup_deltas = sa.Table(
    "span_rollup_deltas",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("totals", sa.Text, nullable=False),
)

# The dead-letter store: spans the database refused even after the storable rule
# (bastion.store.storable), each kept whole as JSON with why it was refused, never retried.
# A span is kept once however often it is refused (an exporter retrying, a spool replayed).
ingest_rejects = sa.Table(
    "ingest_rejects",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    sa.Column("span_id", sa.String(16), nullable=False),
    # One of a few labels (bastion.store.write_errors.REJECT_REASONS), as on /metrics.
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("error_class", sa.String(200), nullable=False),  # the database's error class
    sa.Column("message", sa.Text, nullable=False),  # its message, shortened
    sa.Column("record", sa.Text, nullable=False),  # the span as JSON, made storable
    sa.Column("rejected_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("project_id", "trace_id", "span_id"),
    sa.Index(None, "project_id", "id"),
)

# -- prompt registry -------------------------------------------------------------------------
# A prompt is a name; its versions are immutable and content-addressed; labels point at versions
# and every label move is appended to prompt_label_events (the deploy/rollback history).

prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("project_id", "name"),
)

prompt_versions = sa.Table(
    "prompt_versions",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # 1, 2, 3, ... per prompt
    # sha256 of the spec's canonical JSON (and of the partial pins, when it includes partials).
    sa.Column("content_hash", sa.String(80), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # canonical JSON of the PromptSpec
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("author", sa.String(200), nullable=False),
    sa.Column("git_sha", sa.String(64), nullable=True),
    sa.Column("partials", sa.Text, nullable=False),  # JSON {partial name: pinned version}
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "prompt_id", "version"),
    sa.UniqueConstraint("project_id", "prompt_id", "content_hash"),
)

prompt_labels = sa.Table(
    "prompt_labels",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("protected", sa.Boolean, nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "prompt_id", "label"),
)

# Append-only: one row per label move (set or rollback) and per protection change.
prompt_label_events = sa.Table(
    "prompt_label_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id"), nullable=False),
    sa.Column("label", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),  # set | rollback | protect | unprotect
    sa.Column("from_version", sa.Integer, nullable=True),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index(None, "project_id", "prompt_id", "label", "id"),
)


# -- evals -----------------------------------------------------------------------------------
# A dataset version is immutable and content-addressed (like a prompt version); its items are
# rows of eval_dataset_items. A run evaluates one target on one dataset version; each
# (item, repeat) has one eval_results row and one eval_scores row per metric, written together.

eval_datasets = sa.Table(
    "eval_datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),  # 1, 2, 3, ... per name
    sa.Column("content_hash", sa.String(80), nullable=False),  # DatasetVersion.content_hash()
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("locked", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("project_id", "name", "version"),
    sa.UniqueConstraint("project_id", "name", "content_hash"),
)

eval_dataset_items = sa.Table(
    "eval_dataset_items",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("dataset_version_id", sa.Integer, sa.ForeignKey("eval_datasets.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("item_hash", sa.String(80), nullable=False),
    sa.Column("item", sa.Text, nullable=False),  # JSON {id, vars, expected, tags, metadata}
    sa.PrimaryKeyConstraint("project_id", "dataset_version_id", "position"),
)

# Where an item of a dataset version made from production traces came from (also kept in the
# item's metadata); indexed by trace so a trace can tell which datasets it feeds.
eval_item_sources = sa.Table(
    "eval_item_sources",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("dataset_version_id", sa.Integer, sa.ForeignKey("eval_datasets.id"), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("trace_id", sa.String(32), nullable=False),
    sa.Column("span_id", sa.String(16), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "dataset_version_id", "item_id"),
    sa.Index(None, "project_id", "trace_id"),
)

eval_runs = sa.Table(
    "eval_runs",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),  # uuid4 hex
    # What "prompt@label" in `bastion eval gate` finds: "name@label", "name:3" or "model:alias".
    sa.Column("target_key", sa.String(300), nullable=False),
    sa.Column("target", sa.Text, nullable=False),  # JSON {kind, name, label, version, model}
    sa.Column("target_hash", sa.String(80), nullable=False),
    sa.Column("dataset_name", sa.String(200), nullable=False),
    sa.Column("dataset_version", sa.Integer, nullable=False),
    sa.Column("dataset_hash", sa.String(80), nullable=False),
    sa.Column("scorers", sa.Text, nullable=False),  # JSON list of scorer specs
    sa.Column("params", sa.Text, nullable=False),  # JSON request parameters
    sa.Column("repeats", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # running | completed | failed
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("summary", sa.Text, nullable=True),  # JSON, set when the run ends
    # quality (a dataset scored for quality) or redteam (an attack suite; reported apart).
    sa.Column("kind", sa.String(16), nullable=False, server_default="quality"),
    # The prompt version evaluated (null for a plain model target): scores per version.
    sa.Column("prompt_name", sa.String(200), nullable=True),
    sa.Column("prompt_version", sa.Integer, nullable=True),
    sa.PrimaryKeyConstraint("project_id", "run_id"),
    sa.Index(None, "project_id", "dataset_name", "target_key", "started_at"),
    sa.Index(None, "project_id", "prompt_name", "prompt_version", "started_at"),
)

eval_results = sa.Table(
    "eval_results",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("cost_usd", sa.Float, nullable=True),
    sa.Column("trace_id", sa.String(32), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # sha256 of (target hash, item hash, params hash, repeat): a stored output for the same key
    # from any earlier run of the project is reused instead of calling the model again.
    sa.Column("cache_key", sa.String(80), nullable=False),
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "run_id", "item_id", "repeat"),
    sa.Index(None, "project_id", "cache_key"),
)

eval_scores = sa.Table(
    "eval_scores",
    metadata,
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("item_id", sa.String(200), nullable=False),
    sa.Column("repeat", sa.Integer, nullable=False),
    sa.Column("metric", sa.String(200), nullable=False),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("passed", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON
    sa.PrimaryKeyConstraint("project_id", "run_id", "item_id", "repeat", "metric"),
)


# -- releases --------------------------------------------------------------------------------
# A release is an immutable, content-addressed bundle (prompt versions, model, params, tools,
# guard policy). A route points at one stable release per environment; a rollout moves a
# candidate towards it step by step; every change is appended to release_events (the history).

releases = sa.Table(
    "releases",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("release_id", sa.String(64), nullable=False),  # first 16 hex of the content hash
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("content_hash", sa.String(80), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # canonical JSON of the ReleaseSpec
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "release_id"),
    sa.Index(None, "project_id", "name", "created_at"),
)

release_routes = sa.Table(
    "release_routes",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("environment", sa.String(64), nullable=False),
    sa.Column("release_id", sa.String(64), nullable=False),  # the stable release
    sa.Column("updated_by", sa.String(200), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("project_id", "route", "environment"),
)

release_rollouts = sa.Table(
    "release_rollouts",
    metadata,
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("rollout_id", sa.String(32), nullable=False),  # uuid4 hex
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("environment", sa.String(64), nullable=False),
    sa.Column("strategy", sa.String(16), nullable=False),  # canary | ab | shadow
    sa.Column("stable_release_id", sa.String(64), nullable=False),
    sa.Column("candidate_release_id", sa.String(64), nullable=False),
    sa.Column("policy", sa.Text, nullable=False),  # JSON RolloutPolicy
    # running | paused | promoted | rolled_back | aborted
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),  # index into policy.steps
    sa.Column("weight", sa.Float, nullable=False),  # percent of traffic on the candidate
    sa.Column("step_started_at", UtcDateTime(), nullable=False),
    sa.Column("analysis", sa.Text, nullable=True),  # JSON of the latest analysis
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("gate", sa.Text, nullable=True),  # JSON evidence of the eval gate it required
    sa.Column("created_by", sa.String(200), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # The replica whose analysis controller may decide for this rollout, and until when.
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.PrimaryKeyConstraint("project_id", "rollout_id"),
    sa.Index(None, "project_id", "route", "environment", "state"),
)

# Append-only: every deploy, rollout start, step, pause, promotion, abort and rollback.
release_events = sa.Table(
    "release_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("environment", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("rollout_id", sa.String(32), nullable=True),
    # What serves after the event: the stable release, and the candidate with its weight.
    sa.Column("stable_release_id", sa.String(64), nullable=True),
    sa.Column("candidate_release_id", sa.String(64), nullable=True),
    sa.Column("strategy", sa.String(16), nullable=True),
    sa.Column("weight", sa.Float, nullable=False),
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index(None, "project_id", "route", "environment", "at"),
)
