"""The rollout controller's automatic promotions and rollbacks are audited as the system."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.audit import AuditChain, AuditTrail, verify
from bastion.auth import ensure_project
from bastion.releases import rollouts, store
from bastion.releases.config import ReleasesConfig
from bastion.releases.controller import AnalysisController
from bastion.releases.model import ReleaseSpec, make_policy
from bastion.store.schema import spans
from bastion.store.transactions import run_write
from tests.audit.support import SECRET, actions

CHAIN = AuditChain(SECRET)


def _span_rows(
    project_id: int, release_id: str, rollout_id: str, arm: str, n: int, errors: int, start_ns: int
) -> list[dict[str, Any]]:
    """``n`` stored calls of one arm of a rollout, the first ``errors`` of them failed."""
    attributes = orjson.dumps({"bastion.release.rollout": rollout_id, "bastion.release.arm": arm})
    return [
        {
            "project_id": project_id,
            "trace_id": os.urandom(16).hex(),
            "trace_seq": int.from_bytes(os.urandom(7), "big"),
            "span_id": os.urandom(8).hex(),
            "parent_span_id": None,
            "name": "chat",
            "kind": 2,
            "start_ns": start_ns + i,
            "end_ns": start_ns + i + 1,
            "status_code": 2 if i < errors else 1,
            "latency_ms": 20.0,
            "error_class": "server_error" if i < errors else None,
            "release_id": release_id,
            "attributes": attributes.decode(),
            "resource": "{}",
            "events": "[]",
            "ingested_ns": start_ns,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(
    ("bad", "decided"), [(True, "rollout.rollback"), (False, "rollout.promote")]
)
def test_automatic_decisions_are_recorded_by_the_controller(
    engine: sa.Engine, bad: bool, decided: str
) -> None:
    person = AuditTrail(CHAIN, "key:7")
    with engine.begin() as conn:
        project_id = ensure_project(conn)

    def create(model: str) -> str:
        spec = ReleaseSpec(name="r", model=model)
        info, _ = run_write(
            engine, lambda c: store.create_release(c, project_id, spec, actor="t", audit=person)
        )
        return info.release_id

    stable, candidate = create("stable-model"), create("candidate-model")
    run_write(
        engine,
        lambda c: store.deploy(c, project_id, "r", "production", stable, actor="t", audit=person),
    )
    policy = make_policy(strategy="canary", steps="10,100", bake=0, min_requests=20)
    rollout = run_write(
        engine,
        lambda c: rollouts.start_rollout(
            c, project_id, "r", "production", candidate, policy, actor="t", audit=person
        ),
    )
    now_ns = time.time_ns()
    with engine.begin() as conn:
        rid = rollout.rollout_id
        conn.execute(spans.insert(), _span_rows(project_id, stable, rid, "stable", 100, 1, now_ns))
        conn.execute(
            spans.insert(),
            _span_rows(project_id, candidate, rid, "canary", 30, 15 if bad else 0, now_ns),
        )
    controller = AnalysisController(engine, ReleasesConfig(), owner="replica-1", audit=CHAIN)
    controller.tick(rollout.step_started_at + timedelta(seconds=1))
    assert actions(engine) == [
        ("key:7", "release.create", "release", stable),
        ("key:7", "release.create", "release", candidate),
        ("key:7", "route.deploy", "route", "r@production"),
        ("key:7", "rollout.start", "rollout", rid),
        ("system:rollout-controller", decided, "rollout", rid),
    ]
    with engine.connect() as conn:
        assert verify(conn, CHAIN).intact
