"""Which arm of a rollout serves a request: a pure function, so every replica agrees.

A subject — the user id, else the session id, else the request id — is hashed with the route
and the rollout id into a point of [0, 100). Canary: the point is below the candidate's weight.
Because the point of a subject does not change while the weight grows, a user who saw the
canary at 5% still sees it at 25%. A/B: below ``split`` is arm ``b`` (the candidate). A new
rollout id reshuffles subjects, so one unlucky group is not the canary of every rollout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

__all__ = ["Arm", "bucket", "choose_arm", "subject_of"]

Arm = str  # "stable" | "canary" | "shadow" | "a" | "b"


def subject_of(attribution: Mapping[str, str], request_id: str) -> tuple[str, str]:
    """``(kind, value)`` of the subject a request is assigned by: user, session or request."""
    user = attribution.get("user_id")
    if user:
        return "user", user
    session = attribution.get("session_id")
    if session:
        return "session", session
    return "request", request_id


def bucket(route: str, rollout_id: str, subject: str) -> float:
    """A uniform point of [0, 100) from sha256 of (route, rollout id, subject)."""
    digest = hashlib.sha256(f"{route}\x1f{rollout_id}\x1f{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


def choose_arm(strategy: str, weight: float, route: str, rollout_id: str, subject: str) -> Arm:
    """The arm that serves ``subject``: ``stable``/``canary`` or ``a``/``b``. Shadow rollouts
    always serve stable (the candidate gets a copy, see ``releases.shadow``)."""
    if strategy == "shadow":
        return "stable"
    point = bucket(route, rollout_id, subject)
    if strategy == "ab":
        return "b" if point < weight else "a"
    return "canary" if point < weight else "stable"
