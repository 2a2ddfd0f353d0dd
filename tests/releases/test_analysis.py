"""Assignment, the analysis verdicts, and the controller deciding from stored spans."""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from bastion.audit import AuditChain
from bastion.auth import ensure_project
from bastion.releases import rollouts, store
from bastion.releases.analysis import Sample, _sampled_output, fetch_samples, judge, stats
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
    arm: str,
    n: int,
    errors: int = 0,
    latency: float = 100.0,
    cost: float = 0.001,
    *,
    seed: int = 0,
    **flags: bool,
) -> list[Sample]:
    """``n`` requests with latencies spread +-20% around ``latency`` (real latencies are never
    all equal), the first ``errors`` of them failed."""
    rng = random.Random(f"{arm}-{seed}")
    out = []
    for i in range(n):
        ms = latency * (0.8 + 0.4 * rng.random())
        out.append(Sample(arm, i < errors, ms, ms / 2, None if i < errors else cost, **flags))
    return out


def test_judge_waits_for_traffic_fails_on_breaches_and_passes_when_baked() -> None:
    policy = make_policy(strategy="canary", min_requests=20)
    stable = _samples("stable", 200, errors=2)
    assert judge(stable, _samples("canary", 5), policy, baked=True).outcome == "wait"
    bad = judge(stable, _samples("canary", 40, errors=12), policy, baked=False)
    assert bad.outcome == "fail"
    assert "error rate" in bad.summary
    assert "two-proportion z-test" in bad.summary  # the reason names the test that decided
    # one error in 21 is within noise: not significant, so not a rollback; but above the
    # threshold, so not a promotion either until more calls settle it
    unsure = judge(stable, _samples("canary", 21, errors=1), policy, baked=True)
    assert (unsure.outcome, unsure.checks["error_rate"]["status"]) == ("wait", "wait")
    assert judge(stable, _samples("canary", 100, errors=1), policy, baked=True).outcome == "pass"
    slow = judge(stable, _samples("canary", 40, latency=400.0), policy, baked=True)
    assert slow.outcome == "fail"
    assert "p90 latency" in slow.summary  # 40 samples: the p90, and it says so
    assert "Fisher's exact test" in slow.summary
    # small absolute latency differences are never a failure (latency_floor_ms)
    assert (
        judge(stable, _samples("canary", 40, latency=140.0), policy, baked=True).outcome == "pass"
    )
    costly = judge(stable, _samples("canary", 40, cost=0.002), policy, baked=True)
    assert costly.outcome == "fail"
    assert "cost per upstream call" in costly.summary
    healthy = judge(stable, _samples("canary", 40), policy, baked=False)
    assert healthy.outcome == "wait"
    assert judge(stable, _samples("canary", 40), policy, baked=True).outcome == "pass"
    strict = make_policy(strategy="canary", min_requests=20, thresholds={"cost_ratio": 3})
    assert judge(stable, _samples("canary", 40, cost=0.002), strict, baked=True).outcome == "pass"


def test_every_compared_metric_names_its_test_and_p_value() -> None:
    quality = {"type": "regex", "value": "^ok$"}
    policy = make_policy(strategy="ab", min_requests=20, quality=quality)
    stable = [dataclasses.replace(s, score=1.0) for s in _samples("a", 60)]
    candidate = [dataclasses.replace(s, score=1.0) for s in _samples("b", 60)]
    verdict = judge(stable, candidate, policy, baked=True)
    assert verdict.outcome == "pass", verdict.reasons
    checks = verdict.to_dict()["checks"]
    assert set(checks) == {"error_rate", "latency", "ttft", "cost", "quality"}
    assert checks["error_rate"]["test"].startswith("two-proportion z-test")
    tests = {"latency": "Fisher's exact test", "ttft": "Fisher's exact test"}
    tests.update({"cost": "Welch z-test", "quality": "Welch z-test"})
    for name, test in tests.items():
        assert checks[name]["test"].startswith(test), checks[name]
        assert 0 <= checks[name]["p_value"] <= 1
        assert (checks[name]["n_stable"], checks[name]["n_candidate"]) == (60, 60)
    assert checks["latency"]["metric"] == "p90 latency"
    assert verdict.to_dict()["stable"]["latency_quantile"] == "p90"
    # with 100 samples on both arms the tail is the p99, on both arms
    big = judge(_samples("a", 120), _samples("b", 120), policy, baked=True)
    assert big.checks["latency"]["metric"] == "p99 latency"
    assert big.to_dict()["candidate"]["latency_quantile"] == "p99"
    worse = [dataclasses.replace(s, score=float(i % 2)) for i, s in enumerate(candidate)]
    failed = judge(stable, worse, policy, baked=True)
    assert failed.outcome == "fail"
    assert "quality 0.500 < stable 1.000" in failed.summary
    assert "Welch z-test" in failed.summary


def test_one_slow_request_is_not_a_latency_regression() -> None:
    policy = make_policy(strategy="canary", min_requests=5)
    stable = _samples("stable", 40, latency=20.0)
    # Every request of the candidate a little slower (another alias, a classifier step): a
    # whole-sample rank test calls that significant; it is far under the limit, so it is not.
    one_slow = _samples("canary", 7, latency=21.0)
    one_slow.append(Sample("canary", False, 700.0, 350.0, 0.001))
    verdict = judge(stable, one_slow, policy, baked=True)
    latency = verdict.checks["latency"]
    assert latency["metric"] == "p90 latency"
    assert latency["breach"]  # the p90 of 8 is their maximum: 700 ms against ~24 ms...
    assert latency["p_value"] > 0.05  # ...but one request among eight is no evidence
    # neither a rollback nor a promotion: more calls will make it significant or dilute it
    assert (verdict.outcome, latency["status"]) == ("wait", "wait"), verdict.reasons
    assert "p90 latency (threshold breached but not significant yet)" in verdict.summary
    # eight requests that are all slower are evidence
    all_slow = _samples("canary", 8, latency=300.0)
    assert judge(stable, all_slow, policy, baked=True).outcome == "fail"
    # below the minimum sample nothing but "wait", however slow
    strict = make_policy(strategy="canary", min_requests=20)
    assert judge(stable, all_slow, strict, baked=True).outcome == "wait"
    # a tail that grows on a tenth of the requests only is a regression
    tail = _samples("canary", 90, latency=20.0) + _samples("canary", 10, latency=700.0)
    grown = judge(_samples("stable", 100, latency=20.0), tail, strict, baked=True)
    assert grown.outcome == "fail"
    assert "10 of 100 requests beyond it, stable 0 of 100" in grown.summary


def test_cache_hits_and_refusals_are_counted_apart_never_compared() -> None:
    policy = make_policy(strategy="canary", min_requests=20)
    # Stable: 30 upstream calls, 270 hits. Candidate: 30% of 30 upstream calls fail, 30 hits.
    stable = _samples("stable", 30) + _samples("stable", 270, latency=1.0, cost=0.0, cache_hit=True)
    candidate = (
        _samples("canary", 30, errors=9)
        + _samples("canary", 30, latency=1.0, cost=0.0, cache_hit=True)
        + _samples("canary", 50, errors=50, latency=1.0, refused=True)
    )
    verdict = judge(stable, candidate, policy, baked=True)
    assert verdict.outcome == "fail"
    assert "error rate 30.0% vs stable 0.0%" in verdict.summary  # over upstream calls only
    assert "cost" not in verdict.summary  # hits cost 0 on both arms: not compared
    doc = verdict.to_dict()
    assert (doc["stable"]["cache_hits"], doc["stable"]["hit_rate"]) == (270, 0.9)
    assert doc["candidate"]["refused"] == 50  # the gateway's limits, not the model's errors
    assert (doc["candidate"]["upstream"], doc["candidate"]["errors"]) == (30, 9)
    # stable's tail latency is its upstream calls', not its 1 ms hits'
    assert doc["stable"]["latency_ms"] > 80
    # only hits on one arm: too few upstream calls to judge, whatever the hits say
    hits_only = _samples("canary", 100, latency=1.0, cost=0.0, cache_hit=True)
    waiting = judge(stable, hits_only, policy, baked=True)
    assert waiting.outcome == "wait"
    assert "too few upstream calls" in waiting.summary


def _span_rows(
    project_id: int,
    release_id: str,
    rollout_id: str,
    arm: str,
    n: int,
    errors: int,
    start_ns: int,
    *,
    error_class: str = "server_error",
    extra: dict[str, object] | None = None,
) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        attributes = {"bastion.release.rollout": rollout_id, "bastion.release.arm": arm}
        attributes.update(extra or {})
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
                "error_class": error_class if i < errors else None,
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
    first = AnalysisController(engine, ReleasesConfig(), owner="replica-1", audit=AuditChain())
    second = AnalysisController(engine, ReleasesConfig(), owner="replica-2", audit=AuditChain())
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
        assert "too few upstream calls" in waiting.reason


def test_fetch_samples_tells_cache_hits_and_refusals_from_upstream_calls(
    engine: sa.Engine,
) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    now_ns = time.time_ns()
    hit = {"bastion.cache.status": "hit", "bastion.cache.layer": "exact"}
    miss = {"bastion.cache.status": "miss"}
    limited = {"bastion.ratelimit.decision": "rejected"}
    with engine.begin() as conn:
        for n, errors, error_class, extra in (
            (5, 0, "server_error", hit),
            (4, 1, "upstream_error", miss),
            (3, 3, "rate_limited", limited),
            (2, 2, "budget_exceeded", {"bastion.budget.decision": "blocked"}),
            # a budget refusing the release's unpriced model is the release's doing: an error
            (1, 1, "budget_unpriced", {"bastion.budget.decision": "blocked"}),
        ):
            rows = _span_rows(
                project_id, "rel", "ro", "canary", n, errors, now_ns,
                error_class=error_class, extra=extra,
            )  # fmt: skip
            conn.execute(spans.insert(), rows)
        samples = fetch_samples(conn, project_id, "ro", ["rel"], now_ns - 1, limit=100)
    arm = stats(samples)
    assert (arm.requests, arm.cache_hits, arm.refused, arm.upstream) == (15, 5, 5, 5)
    assert (arm.errors, arm.error_rate) == (2, 0.4)  # limits' refusals are not the model's errors


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
