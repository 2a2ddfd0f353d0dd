"""Helpers of the audit tests: the rows as stored, and a secret for HMAC mode."""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa

from bastion.store.schema import audit_chain, audit_log

# Not a BASTION_* variable: nothing else reads it.
SECRET_ENV = "AUDIT_TEST_SECRET"
SECRET = "audit-test-secret-" + "0123456789abcdef" * 3


def rows(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every audit record as stored, in number order."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings().all()
    return [dict(r) for r in found]


def head(engine: sa.Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(audit_chain)).mappings().one())


def actions(engine: sa.Engine) -> list[tuple[str, str, str, str]]:
    """``(actor, action, object_type, object_id)`` of every record, in order."""
    return [(r["actor"], r["action"], r["object_type"], r["object_id"]) for r in rows(engine)]


def call(
    server: Any,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    request_id: str | None = None,
) -> tuple[int, Any]:
    """One request to a live server, with its admin key unless ``key`` is given."""
    import urllib.error
    import urllib.request

    headers = {**server.headers(key), "Content-Type": "application/json"}
    if request_id is not None:
        headers["x-request-id"] = request_id
    request = urllib.request.Request(
        server.url + path,
        data=None if body is None else orjson.dumps(body),
        method=method,
        headers=headers,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, orjson.loads(exc.read())
