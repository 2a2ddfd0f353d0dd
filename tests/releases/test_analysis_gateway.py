"""What the rollout analysis counts, end to end: real simulator and server processes on
loopback, the analysis reading the spans they stored (SQLite and PostgreSQL).

- with the exact response cache on, arms are compared on upstream calls: hits neither hide a
  candidate's errors nor make it look dearer, and are reported per arm as the hit rate;
- one slow request among a handful is not a latency regression (Fisher's exact test on the
  requests beyond the limit), and the percentile compared is named as the one used;
- shadow copies are the gateway's own traffic: they never spend the caller's rate limit, a
  ``shadow`` rule limits them, and their refusals are not candidate errors.
"""

from __future__ import annotations

import itertools
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from bastion.releases.assign import choose_arm
from bastion.store.engine import create_engine
from tests.releases.test_rollout_gateway import (  # the simulator fixture is shared
    Server,
    _releases,
    _setup,
    _start,
    _wait_state,
    simulator,
)

__all__ = ["simulator"]

CACHE = "cache: {exact: {ttl_s: 300}}\n"
SHADOW_LIMITS = "rate_limits:\n  - {scope: key, rpm: 5}\n  - {scope: shadow, rpm: 2}\n"


@pytest.fixture
def start_server(
    db_backend: str, tmp_path: Path, simulator: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Server]]:
    """Start a server with extra bastion.yaml sections, on SQLite or PostgreSQL."""
    db_url = None if db_backend == "sqlite" else str(request.getfixturevalue("pg_schema_url"))
    started = []

    def start(extra: str) -> Server:
        env, config, key = _setup(tmp_path, simulator, db_url, extra)
        process, url = _start(tmp_path, env, config, "serve.log")
        started.append(process)
        return Server(url, key, db_url or f"sqlite:///{tmp_path / 'bastion.db'}")

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def _canary(server: Server, candidate_model: str, **policy: Any) -> tuple[str, str, str]:
    """Stable and candidate releases and a running 50% canary: (stable, candidate, rollout)."""
    stable, candidate = _releases(server, candidate_model)
    rollout = server.call(
        "POST",
        "/api/v1/routes/checkout/rollout",
        {"candidate": candidate, "steps": [50, 100], **policy},
    )["rollout_id"]
    time.sleep(1.0)  # the route table has polled the change
    return stable, candidate, str(rollout)


def _users(rollout_id: str, arm: str) -> Iterator[str]:
    """Fresh user ids the 50% canary assigns to ``arm``."""
    for i in itertools.count():
        user = f"user-{i}"
        if choose_arm("canary", 50.0, "checkout", rollout_id, user) == arm:
            yield user


def _send(server: Server, users: Iterator[str], orders: list[str]) -> None:
    for order in orders:
        server.chat(next(users), order=order)


def _plain_chat(server: Server, model: str) -> None:
    request = urllib.request.Request(
        server.url + "/v1/chat/completions",
        data=orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        headers={"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


def _state(server: Server) -> str:
    return str(server.call("GET", "/api/v1/routes/checkout")["recent_rollouts"][0]["state"])


def _analysis(server: Server, done: Callable[[dict[str, Any]], bool], timeout: float) -> Any:
    """The route's latest rollout once ``done(rollout)`` holds (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    while True:
        rollout = server.call("GET", "/api/v1/routes/checkout")["recent_rollouts"][0]
        if done(rollout) or time.monotonic() > deadline:
            return rollout
        time.sleep(0.3)


def test_cache_hits_do_not_make_a_failing_candidate_look_dear(
    start_server: Callable[[str], Server],
) -> None:
    server = start_server(CACHE)
    _stable, _candidate, rollout = _canary(
        server, "flaky30", bake="1h", min_requests=10, thresholds={"latency_floor_ms": 250}
    )
    on_stable, on_canary = _users(rollout, "stable"), _users(rollout, "canary")
    # Stable's arm sees each input eight times, the canary's twice: the same inputs, but
    # stable answers far more of them from the cache. Averaged in, hits made the canary look
    # four times dearer; per upstream call both cost the same (the same model's prices).
    for n in range(30):
        _send(server, on_stable, [f"A{n}"] * 8)
        _send(server, on_canary, [f"A{n}"] * 2)
        if _state(server) != "running":
            break
    ended = _wait_state(server, {"rolled_back", "promoted"}, timeout=30)
    assert ended["state"] == "rolled_back", ended
    assert "error rate" in ended["reason"]  # the candidate's upstream calls fail 30% of the time
    assert "cost" not in ended["reason"], ended["reason"]
    analysis = ended["analysis"]
    assert analysis["compared"].startswith("upstream calls")
    stable, canary = analysis["stable"], analysis["candidate"]
    assert stable["cache_hits"] > stable["upstream"]
    assert stable["hit_rate"] == pytest.approx(stable["cache_hits"] / stable["requests"])
    assert stable["hit_rate"] > canary["hit_rate"]
    assert canary["upstream"] + canary["cache_hits"] == canary["requests"]
    assert canary["error_rate"] == pytest.approx(canary["errors"] / canary["upstream"])
    assert analysis["checks"]["error_rate"]["n_stable"] == stable["upstream"]


def test_cache_hits_do_not_hide_a_candidates_errors(
    start_server: Callable[[str], Server],
) -> None:
    server = start_server(CACHE)
    _stable, _candidate, rollout = _canary(
        server,
        "flaky30",
        bake="2s",
        min_requests=10,
        thresholds={"latency_floor_ms": 250, "error_rate_points": 10},
    )
    on_stable, on_canary = _users(rollout, "stable"), _users(rollout, "canary")
    # Each input eight times on each arm: a failed call is not cached, so the candidate pays
    # for its errors with a retry, but eight of its hits stand beside every error. Over all
    # requests its error rate stayed under 10 points and it was promoted; over upstream calls
    # it is about 30%.
    for n in range(30):
        _send(server, on_stable, [f"B{n}"] * 8)
        _send(server, on_canary, [f"B{n}"] * 8)
        if _state(server) != "running":
            break
    ended = _wait_state(server, {"rolled_back", "promoted"}, timeout=30)
    assert ended["state"] == "rolled_back", ended
    assert "error rate" in ended["reason"]
    analysis = ended["analysis"]
    stable = analysis["stable"]
    # stable's latency is its upstream calls', not its cache hits'
    assert stable["cache_hits"] > stable["upstream"] >= 10
    latency = analysis["checks"]["latency"]
    if "n_stable" in latency:  # tested (not waiting for samples)
        assert latency["n_stable"] == stable["upstream"] - stable["errors"]
    engine = create_engine(server.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT attributes FROM spans WHERE release_id = :r"), {"r": _stable}
            ).all()
    finally:
        engine.dispose()
    hits = sum(1 for (attributes,) in rows if '"bastion.cache.status":"hit"' in attributes)
    assert hits >= stable["cache_hits"]  # the spans say hit; the analysis counted them apart


def test_one_slow_request_does_not_roll_a_canary_back(
    start_server: Callable[[str], Server],
) -> None:
    server = start_server("")
    # First calls of an alias pay for connections and lazy set-up: paid before the rollout,
    # so the one slow request is the only slow one of the candidate's eight.
    for model in ("good", "tiered"):
        for _ in range(3):
            _plain_chat(server, model)
    # The candidate's model alias sends prompts mentioning "slowpoke" to a 700 ms model.
    _stable, _candidate, rollout = _canary(server, "tiered", bake="1h", min_requests=5)
    on_stable, on_canary = _users(rollout, "stable"), _users(rollout, "canary")
    for n in range(7):
        _send(server, on_stable, [f"C{n}a", f"C{n}b", f"C{n}c", f"C{n}d"])
        _send(server, on_canary, [f"C{n}"])
    _send(server, on_canary, ["slowpoke"])
    seen = _analysis(
        server,
        lambda r: (
            r["state"] != "running"
            or ((r.get("analysis") or {}).get("candidate") or {}).get("requests", 0) >= 8
        ),
        timeout=30,
    )
    assert seen["state"] == "running", (seen["reason"], seen["analysis"])  # not on one request
    analysis = seen["analysis"]
    assert analysis["candidate"]["requests"] == 8
    latency = analysis["checks"]["latency"]
    assert latency["metric"] == "p90 latency"  # 8 samples: the p90, named as such
    assert analysis["candidate"]["latency_quantile"] == "p90"
    assert latency["candidate"] >= 700  # the p90 of eight is their slowest...
    assert latency["breach"]
    assert latency["test"].startswith("Fisher's exact test")
    assert latency["beyond_limit_candidate"] == 1
    assert latency["p_value"] > 0.05  # ...and one slow request among eight is not evidence
    assert (analysis["outcome"], latency["status"]) == ("wait", "wait")


def test_shadow_copies_have_their_own_limits_and_refusals_are_not_errors(
    start_server: Callable[[str], Server],
) -> None:
    server = start_server(SHADOW_LIMITS)
    _stable, candidate = _releases(server, "good")
    server.call(
        "POST",
        "/api/v1/routes/checkout/rollout",
        {"candidate": candidate, "strategy": "shadow", "min_requests": 20},
    )
    time.sleep(1.0)  # the route table has polled the change
    statuses = []
    for i in range(5):
        statuses.append(server.chat(f"shopper-{i}")[0])
        time.sleep(0.2)  # each copy reaches the gateway before the next request
    # The key's five requests a minute are the caller's: copies never spend them.
    assert statuses == [200] * 5
    refused, _trace = server.chat("shopper-5")
    assert refused == 429  # the key's limit still holds
    # a forged shadow header is refused outright, never served around the limit
    forged = f"{uuid.uuid4().hex}:{'0' * 32}:{'1' * 32}"
    assert server.chat("mallory", headers={"x-bastion-shadow": forged})[0] == 400

    def counted(rollout: dict[str, Any]) -> bool:  # every span written and analysed
        analysis = rollout.get("analysis") or {}
        arms = analysis.get("candidate") or {}, analysis.get("stable") or {}
        return arms[0].get("requests", 0) >= 5 and arms[1].get("requests", 0) >= 6

    seen = _analysis(server, counted, timeout=30)
    analysis = seen["analysis"]
    shadow, stable = analysis["candidate"], analysis["stable"]
    # Five copies (the refused request was not copied): the `shadow` rule let two through.
    assert (shadow["requests"], shadow["upstream"], shadow["refused"]) == (5, 2, 3)
    assert shadow["errors"] == 0  # the gateway's refusals are not the candidate's errors
    assert (stable["requests"], stable["refused"], stable["errors"]) == (6, 1, 0)


def test_replay_measures_the_candidate_not_the_cache_nor_the_limits(
    start_server: Callable[[str], Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bastion.cli.main import app

    # Six production requests, then six replayed: the model's limit lets three of them through.
    replay_limit = "rate_limits:\n  - {scope: model, match: good, rpm: 9}\n"
    server = start_server(CACHE + replay_limit)
    stable, _candidate = _releases(server, "good")
    traces = [server.chat(f"shopper-{i}", order=f"R{i}")[1] for i in range(6)]
    engine = create_engine(server.db_url)
    try:
        _wait_rows(engine, "SELECT count(*) FROM spans WHERE release_id IS NOT NULL", len(traces))
        monkeypatch.setenv("BASTION_HOME", str(tmp_path))
        monkeypatch.setenv("BASTION_DATABASE_URL", server.db_url)
        monkeypatch.setenv("COLUMNS", "200")
        report = tmp_path / "replay.md"
        # The stable release itself: its requests are exactly the recorded ones, so without
        # care every answer would come from the cache the production requests filled.
        result = CliRunner().invoke(
            app,
            [
                "replay", "--from-traces", "since=1h,prompt=assist,limit=6", "--candidate",
                stable, "--gateway", server.url, "--key", server.key, "--out", str(report),
            ],
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        text = report.read_text()
        assert "| inputs replayed | 6 |" in text
        assert "| errors with the candidate | 0 |" in text  # refusals are not its errors
        assert "| refused by the gateway's rate limits or budgets (not errors) | 3 |" in text
        replayed = "SELECT attributes FROM spans WHERE feature = 'replay'"
        rows = _wait_rows(engine, replayed.replace("attributes", "count(*)"), 6)
        with engine.connect() as conn:
            statuses = [
                orjson.loads(a).get("bastion.cache.status")
                for (a,) in conn.execute(sa.text(replayed))
            ]
    finally:
        engine.dispose()
    assert rows == 6
    assert "hit" not in statuses  # the candidate answered every admitted input itself
    assert statuses.count("bypass") == 3


def _wait_rows(engine: sa.Engine, count_sql: str, at_least: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            found = int(conn.execute(sa.text(count_sql)).scalar_one())
        if found >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
