"""Assignment, the analysis verdicts, and the controller deciding from stored spans."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.releases import rollouts, store
from bastion.releases.analysis import Sample, _sampled_output, judge
from bastion.releases.assign import bucket, choose_arm, subject_of
from bastion.releases.config import ReleasesConfig, load_releases_config
from bastion.releases.controller import AnalysisController
from bastion.releases.model import ReleaseSpec, make_policy
from bastion.settings import ConfigError, load_settings
from bastion.store.schema import spans
from bastion.store.transactions import run_write


def test_assignment_is_deterministic_uniform_and_monotonic() -> None:
    users = [f"user-{i}" for i in range(4000)]
    at5 = {u for u in users if choose_arm("canary", 5, "r", "ro1", u) == "canary"}
    at25 = {u for u in users if choose_arm("canary", 25, "r", "ro1", u) == "canary"}
    assert at5 <= at25  # growing the weight keeps everyone already on the canary there
    assert 100 < len(at5) < 300  # ~5% of 4000
    assert 850 < len(at25) < 1150
    assert choose_arm("canary", 25, "r", "ro1", "user-1") == choose_arm(
        "canary", 25, "r", "ro1", "user-1"
    )
    # another rollout reshuffles who is in the canary
    other = {u for u in users if choose_arm("canary", 5, "r", "ro2", u) == "canary"}
    assert other != at5
    arms = Counter(choose_arm("ab", 50, "r", "ro1", u) for u in users)
    assert set(arms) == {"a", "b"}
    assert abs(arms["a"] - arms["b"]) < 300
    assert choose_arm("shadow", 100, "r", "ro1", "u") == "stable"
    assert 0 <= bucket("r", "x", "y") < 100


def test_subject_falls_back_from_user_to_session_to_request() -> None:
    assert subject_of({"user_id": "u", "session_id": "s"}, "req") == ("user", "u")
    assert subject_of({"session_id": "s"}, "req") == ("session", "s")
    assert subject_of({}, "req") == ("request", "req")


def _samples(
    arm: str, n: int, errors: int = 0, latency: float = 100.0, cost: float = 0.001
) -> list[Sample]:
    return [Sample(arm, i < errors, latency, latency / 2, cost) for i in range(n)]


def test_judge_waits_for_traffic_fails_on_breaches_and_passes_when_baked() -> None:
    policy = make_policy(strategy="canary", min_requests=20)
    stable = _samples("stable", 200, errors=2)
    assert judge(stable, _samples("canary", 5), policy, baked=True).outcome == "wait"
    bad = judge(stable, _samples("canary", 40, errors=12), policy, baked=False)
    assert bad.outcome == "fail"
    assert "error rate" in bad.summary
    # one error in 20 is within noise: not significant, so not a rollback
    assert judge(stable, _samples("canary", 20, errors=1), policy, baked=True).outcome == "pass"
    slow = judge(stable, _samples("canary", 40, latency=400.0), policy, baked=True)
    assert slow.outcome == "fail"
    assert "p99 latency" in slow.summary
    # small absolute latency differences are never a failure (latency_floor_ms)
    assert (
        judge(stable, _samples("canary", 40, latency=140.0), policy, baked=True).outcome == "pass"
    )
    costly = judge(stable, _samples("canary", 40, cost=0.002), policy, baked=True)
    assert costly.outcome == "fail"
    assert "cost per request" in costly.summary
    healthy = judge(stable, _samples("canary", 40), policy, baked=False)
    assert healthy.outcome == "wait"
    assert judge(stable, _samples("canary", 40), policy, baked=True).outcome == "pass"
    strict = make_policy(strategy="canary", min_requests=20, thresholds={"cost_ratio": 3})
    assert judge(stable, _samples("canary", 40, cost=0.002), strict, baked=True).outcome == "pass"


def _span_rows(
    project_id: int, release_id: str, rollout_id: str, arm: str, n: int, errors: int, start_ns: int
) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        attributes = {"bastion.release.rollout": rollout_id, "bastion.release.arm": arm}
        rows.append(
            {
                "project_id": project_id,
                "trace_id": os.urandom(16).hex(),
                "trace_seq": int.from_bytes(os.urandom(7), "big"),  # no traces row is needed
                "span_id": os.urandom(8).hex(),
                "parent_span_id": None,
                "name": "chat",
                "kind": 2,
                "start_ns": start_ns + i,
                "end_ns": start_ns + i + 1,
                "status_code": 2 if i < errors else 1,
                "latency_ms": 20.0 + random.random(),
                "error_class": "server_error" if i < errors else None,
                "release_id": release_id,
                "attributes": orjson.dumps(attributes).decode(),
                "resource": "{}",
                "events": "[]",
                "ingested_ns": start_ns,
            }
        )
    return rows


@pytest.mark.parametrize("bad", [True, False])
def test_controller_decides_from_stored_spans(engine: sa.Engine, bad: bool) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    ids = []
    for model in ("stable-model", "candidate-model"):
        spec = ReleaseSpec(name="r", model=model)
        info, _ = run_write(
            engine, lambda c, s=spec: store.create_release(c, project_id, s, actor="t")
        )
        ids.append(info.release_id)
    stable, candidate = ids
    run_write(engine, lambda c: store.deploy(c, project_id, "r", "production", stable, actor="t"))
    policy = make_policy(strategy="canary", steps="10,50", bake=0, min_requests=20)
    rollout = run_write(
        engine,
        lambda c: rollouts.start_rollout(
            c, project_id, "r", "production", candidate, policy, actor="t"
        ),
    )
    now_ns = time.time_ns()
    with engine.begin() as conn:
        conn.execute(
            spans.insert(),
            _span_rows(project_id, stable, rollout.rollout_id, "stable", 100, 1, now_ns),
        )
        conn.execute(
            spans.insert(),
            _span_rows(
                project_id, candidate, rollout.rollout_id, "canary", 30, 15 if bad else 0, now_ns
            ),
        )
        # a span of the same release on another rollout does not count
        conn.execute(
            spans.insert(), _span_rows(project_id, candidate, "other", "canary", 50, 50, now_ns)
        )
    first = AnalysisController(engine, ReleasesConfig(), owner="replica-1")
    second = AnalysisController(engine, ReleasesConfig(), owner="replica-2")
    later = rollout.step_started_at + timedelta(seconds=1)
    assert run_write(
        engine, lambda c: rollouts.claim_lease(c, project_id, rollout.rollout_id, "replica-1", 30)
    )
    (skipped,) = second.tick(later)  # the lease is replica-1's: replica-2 leaves it alone
    assert skipped.outcome == "skipped"
    (decision,) = first.tick(later)
    with engine.connect() as conn:
        after = rollouts.get_rollout(conn, project_id, rollout.rollout_id)
        events = store.history(conn, project_id, "r", "production")
    if bad:
        assert (decision.outcome, decision.action) == ("fail", "rollback")
        assert after.state == "rolled_back"
        assert after.analysis is not None
        assert after.analysis["candidate"]["errors"] == 15
        assert events[-1].action == "rollback"
        assert "error rate 50.0%" in (events[-1].reason or "")
    else:
        assert (decision.outcome, decision.action) == ("pass", "step")
        assert (after.state, after.weight) == ("running", 50.0)
        assert events[-1].action == "step"
        # the new step's window starts empty: too little traffic, so it waits
        (waiting,) = first.tick(after.step_started_at + timedelta(seconds=1))
        assert waiting.outcome == "wait"
        assert "too little traffic" in waiting.reason


def test_releases_config_is_validated_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text("releases:\n  analysis_interval_s: 0.5\n  refresh_s: -1\n")
    with pytest.raises(
        ConfigError, match=r"bastion.yaml:3: invalid value for 'releases.refresh_s'"
    ):
        load_releases_config(load_settings(config))
    config.write_text("releases: {surprise: 1}\n")
    with pytest.raises(ConfigError, match=r"releases\.surprise"):
        load_releases_config(load_settings(config))
    config.write_text("releases: {analysis_interval_s: 1}\n")
    assert load_releases_config(load_settings(config)).analysis_interval_s == 1


def test_quality_sample_scores_that_fraction_of_answers_chosen_by_span_id() -> None:
    from types import SimpleNamespace

    rng = random.Random(7)
    rows = [
        SimpleNamespace(span_id=f"{rng.getrandbits(64):016x}", error_class=None, output="ok")
        for _ in range(4000)
    ]
    for rate in (0.1, 0.5, 0.8):
        chosen = [r for r in rows if _sampled_output(r, rate) is not None]
        assert abs(len(chosen) / len(rows) - rate) < 0.03
        # The same span is always in or out: every replica scores the same answers.
        assert chosen == [r for r in rows if _sampled_output(r, rate) is not None]
    assert all(_sampled_output(r, 1.0) == "ok" for r in rows)
    assert all(_sampled_output(r, None) is None for r in rows)
    failed = SimpleNamespace(span_id=rows[0].span_id, error_class="upstream_error", output="x")
    assert _sampled_output(failed, 1.0) is None  # errors are counted, never scored
