"""Brute force: failures per user name and per address answered 429 with Retry-After, counted
in the database so every server process sees them, and never outrun by parallel guesses."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.auth.support import PASSWORD, ServerFactory, add_user, error, session_cookie

WRONG = "not the password at all"


def _login(url: str, name: str, password: str) -> httpx.Response:
    return httpx.post(url + "/auth/login", json={"name": name, "password": password}, timeout=60)


def test_failures_for_one_user_are_throttled(serve: ServerFactory) -> None:
    server = serve(login_max_failures_per_user=3, login_max_failures_per_address=50)
    add_user(server, "ada")
    add_user(server, "grace")
    for _ in range(3):
        assert _login(server.url, "ada", WRONG).status_code == 401
    throttled = _login(server.url, "ada", WRONG)
    assert throttled.status_code == 429
    retry_after = int(throttled.headers["Retry-After"])
    assert 0 < retry_after <= 900
    assert "too many failed sign-ins" in error(throttled)
    # Even the right password waits: the throttle is checked before the password.
    right = _login(server.url, "ADA", PASSWORD)
    assert right.status_code == 429
    assert session_cookie(right) is None
    # Another user from the same address is not held up by ada's failures.
    assert _login(server.url, "grace", PASSWORD).status_code == 200


def test_failures_from_one_address_are_throttled_whatever_the_name(serve: ServerFactory) -> None:
    server = serve(login_max_failures_per_user=50, login_max_failures_per_address=4)
    add_user(server, "ada")
    for name in ("alice", "bob", "carol", "dave"):
        assert _login(server.url, name, WRONG).status_code == 401
    for name in ("erin", "ada"):
        response = _login(server.url, name, PASSWORD)
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) >= 1


def test_a_success_clears_the_users_count_but_not_the_addresses(serve: ServerFactory) -> None:
    server = serve(login_max_failures_per_user=3, login_max_failures_per_address=5)
    add_user(server, "ada")
    for _ in range(2):
        assert _login(server.url, "ada", WRONG).status_code == 401
    assert _login(server.url, "ada", PASSWORD).status_code == 200
    for _ in range(2):  # two more failures: the count for ada starts again after a success
        assert _login(server.url, "ada", WRONG).status_code == 401
    # The address has 4 failures; one more and it is throttled for every name.
    assert _login(server.url, "mallory", WRONG).status_code == 401
    assert _login(server.url, "ada", PASSWORD).status_code == 429


def test_the_throttle_lifts_when_the_window_passes(serve: ServerFactory) -> None:
    server = serve(login_max_failures_per_user=2, login_window_s=2)
    add_user(server, "ada")
    for _ in range(2):
        assert _login(server.url, "ada", WRONG).status_code == 401
    throttled = _login(server.url, "ada", PASSWORD)
    assert throttled.status_code == 429
    wait = int(throttled.headers["Retry-After"])
    assert 1 <= wait <= 2
    time.sleep(wait + 0.2)
    assert _login(server.url, "ada", PASSWORD).status_code == 200


def test_every_server_process_counts_the_same_failures(serve: ServerFactory) -> None:
    """Two servers on one database (as two workers or replicas are): failures made at one
    throttle sign-ins at the other."""
    first = serve(login_max_failures_per_user=3)
    second = serve(login_max_failures_per_user=3)
    add_user(first, "ada")
    assert _login(first.url, "ada", WRONG).status_code == 401
    assert _login(second.url, "ada", WRONG).status_code == 401
    assert _login(first.url, "ada", WRONG).status_code == 401
    response = _login(second.url, "ada", PASSWORD)
    assert response.status_code == 429
    assert "Retry-After" in response.headers


def test_parallel_guesses_cannot_outrun_the_count(serve: ServerFactory) -> None:
    server = serve(login_max_failures_per_user=3, login_max_failures_per_address=100)
    add_user(server, "ada")
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda _: _login(server.url, "ada", WRONG).status_code, range(10)))
    # Each attempt is counted before its password is checked: exactly 3 were checked.
    assert sorted(statuses) == [401] * 3 + [429] * 7
