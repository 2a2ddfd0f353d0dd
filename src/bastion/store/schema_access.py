"""The access tables: people and their project roles, browser sessions, login attempts, the
audit log with its hash chain, and approvals of risky changes.

Secrets are never stored: a password is kept as its argon2id hash, a session id and its CSRF
token as SHA-256 digests, an audit record holds digests of what changed, never the content.
"""

from __future__ import annotations

import sqlalchemy as sa

from bastion.store.schema_base import metadata
from bastion.store.types import UtcDateTime

__all__ = [
    "approvals",
    "audit_chain",
    "audit_log",
    "login_attempts",
    "memberships",
    "user_sessions",
    "users",
]

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("email", sa.String(320), nullable=True),
    # argon2id, in the PHC string format; None for a user who signs in only through SSO.
    sa.Column("password_hash", sa.Text, nullable=True),
    # The OIDC identity a user signed in with (issuer + subject), when created by SSO.
    sa.Column("oidc_issuer", sa.String(500), nullable=True),
    sa.Column("oidc_subject", sa.String(255), nullable=True),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("oidc_issuer", "oidc_subject"),
)

# A person's role in one project: owner | admin | member | viewer.
memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.PrimaryKeyConstraint("user_id", "project_id"),
    sa.Index(None, "project_id", "user_id"),
)

user_sessions = sa.Table(
    "user_sessions",
    metadata,
    # SHA-256 of the session id the cookie carries: a database reader cannot sign in with it.
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("csrf_hash", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("last_seen_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),  # the absolute expiry
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("client_addr", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.String(500), nullable=True),
    sa.Index(None, "user_id", "expires_at"),
)

# Every login attempt, for throttling by user and by client address.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    sa.Column("user_name", sa.String(200), nullable=False),
    sa.Column("client_addr", sa.String(64), nullable=False),
    sa.Column("succeeded", sa.Boolean, nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Index(None, "user_name", "at"),
    sa.Index(None, "client_addr", "at"),
)

# Append-only. ``seq`` has no gaps; each record's ``hash`` covers its fields and the previous
# record's hash (an HMAC when the server has an audit secret).
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(300), nullable=False),  # user:NAME, key:ID or system:COMPONENT
    sa.Column("project_id", sa.Integer, nullable=True),  # None: not about one project
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("object_type", sa.String(100), nullable=False),
    sa.Column("object_id", sa.String(500), nullable=False),
    sa.Column("before_digest", sa.String(80), nullable=True),
    sa.Column("after_digest", sa.String(80), nullable=True),
    sa.Column("details", sa.Text, nullable=True),  # JSON without secrets or raw content
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("hash_mode", sa.String(16), nullable=False),  # sha256 | hmac-sha256
    sa.Index(None, "project_id", "seq"),
    sa.Index(None, "at"),
)

# One row: the head of the chain, locked by each writer so records are appended in turn.
# ``hash_mode`` is the newest record's (a writer without the secret cannot extend an HMAC
# chain); ``anchor_seq``/``anchor_hash`` are the last pruned record, where verification starts.
audit_chain = sa.Table(
    "audit_chain",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("last_hash", sa.String(64), nullable=False),
    sa.Column("hash_mode", sa.String(16), nullable=False),
    sa.Column("anchor_seq", sa.BigInteger, nullable=False),
    sa.Column("anchor_hash", sa.String(64), nullable=False),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # random hex
    sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id"), nullable=False),
    # label.move | rollout.start | rollout.promote | budget.change | guard.change
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("object", sa.String(500), nullable=False),
    sa.Column("change", sa.Text, nullable=False),  # JSON: what would change, to show
    # The content hash of exactly that change: an approval is used for it and nothing else.
    sa.Column("change_hash", sa.String(80), nullable=False),
    sa.Column("requested_by", sa.String(300), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    # pending | approved | rejected | used | expired
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decided_by", sa.String(300), nullable=True),
    sa.Column("decided_at", UtcDateTime(), nullable=True),
    sa.Column("decision_reason", sa.Text, nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("used_at", UtcDateTime(), nullable=True),
    sa.Index(None, "project_id", "status", "created_at"),
    sa.Index(None, "project_id", "change_hash"),
)
