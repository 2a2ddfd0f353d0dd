"""More data for the dashboards, sessions and users pages, on top of :mod:`tests.ui.seed`:
calls over the last day by two models, features, tenants, a prompt version and a release; a
three-trace conversation; gateway calls answered from the response cache; hostile text in
user ids, tenants, features and session ids; a session of another project."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson
import sqlalchemy as sa

from bastion.store.writer import SpanWriter
from bastion.tracing.attributes import CACHE_SAVED_USD, CACHE_STATUS, GATEWAY_API
from bastion.tracing.model import Span, StatusCode
from tests.ui.seed import XSS

MS = 1_000_000
HOUR_NS = 3600 * 1_000_000_000
QUESTIONS = ("Where is my parcel?", "It says delivered but it is not here.", "Thanks, refund me.")
ANSWERS = ("It left the depot today.", "I am sorry: let me check with the courier.", "Done.")


@dataclass(frozen=True)
class DashSeeded:
    """What the tests look for."""

    session: str = "chat-42"
    other_session: str = "secret-session"
    xss_session: str = f"s{XSS}"
    session_traces: tuple[str, ...] = tuple(f"{0xA0 + i:032x}" for i in range(3))
    calls: int = 48  # spread over the last 24 hours
    cache_hits: int = 3
    cache_misses: int = 1
    saved_usd: float = 0.03


def _chat(trace: str, start: int, n: int, **fields: object) -> Span:
    return Span(
        trace,
        f"{n + 1:016x}",
        "chat",
        start,
        start + (100 + 10 * n) * MS,
        operation="chat",
        provider="openai",
        input_tokens=10 + n,
        output_tokens=5 + n,
        cost_usd=0.001 * (n % 5 + 1),
        ttft_ms=50.0 + n,
        **fields,  # type: ignore[arg-type]
    )


def _spread(seeded: DashSeeded, now: int, release_id: str) -> list[Span]:
    """Calls over the last day: two models, three features, two tenants, some errors."""
    out = []
    for n in range(seeded.calls):
        start = now - (n % 24) * HOUR_NS - 10 * 60_000 * MS
        out.append(
            _chat(
                f"{0xD0000000 + n:032x}",
                start,
                n,
                request_model="gpt-4o" if n % 3 else "claude-3-haiku",
                feature=("search", "support", "summarise")[n % 3],
                tenant=("acme", "globex")[n % 2],
                user_id=f"dash-user-{n % 4}",
                status_code=int(StatusCode.ERROR) if n % 7 == 0 else int(StatusCode.UNSET),
                error_class="Timeout" if n % 7 == 0 else None,
                prompt_name="support" if n % 2 else None,
                prompt_version=(n % 4 + 1) // 2 if n % 2 else None,
                release_id=release_id if n % 4 == 1 else None,
            )
        )
    return out


def _conversation(seeded: DashSeeded, now: int) -> list[Span]:
    out = []
    history: list[dict[str, str]] = []
    for i, trace in enumerate(seeded.session_traces):
        history.append({"role": "user", "content": QUESTIONS[i]})
        start = now - (3 - i) * 60_000 * MS
        out.append(
            _chat(
                trace,
                start,
                i,
                request_model="gpt-4o",
                user_id="carol",
                session_id=seeded.session,
                feature="support",
                input=orjson.dumps({"messages": history}).decode(),
                output=orjson.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": ANSWERS[i]}}]}
                ).decode(),
            )
        )
        history.append({"role": "assistant", "content": ANSWERS[i]})
    return out


def _cache(seeded: DashSeeded, now: int) -> list[Span]:
    out = []
    outcomes = ["hit"] * seeded.cache_hits + ["miss"] * seeded.cache_misses
    for i, outcome in enumerate(outcomes):
        attributes: dict[str, object] = {GATEWAY_API: "openai", CACHE_STATUS: outcome}
        if outcome == "hit":
            attributes[CACHE_SAVED_USD] = seeded.saved_usd / seeded.cache_hits
        out.append(
            _chat(
                f"{0xCA000000 + i:032x}",
                now - (i + 1) * 60_000 * MS,
                i,
                request_model="gpt-4o",
                request_id=f"req-{i}",
                service_name="bastion-gateway",
                attributes=attributes,
            )
        )
    return out


def _hostile(seeded: DashSeeded, now: int) -> list[Span]:
    return [
        _chat(
            f"{0xEE000000:032x}",
            now - 2 * 60_000 * MS,
            0,
            request_model=f"m{XSS}",
            user_id=f"u{XSS}",
            tenant=f"t{XSS}",
            feature=f"f{XSS}",
            session_id=seeded.xss_session,
            input=orjson.dumps([{"role": "user", "content": f"q{XSS}"}]).decode(),
            output=f"a{XSS}",
        )
    ]


def seed_dashboards(engine: sa.Engine, release_id: str) -> DashSeeded:
    """Write the spans above into ``default`` (and one session into ``other``)."""
    seeded = DashSeeded()
    now = time.time_ns()
    spans = [
        *_spread(seeded, now, release_id),
        *_conversation(seeded, now),
        *_cache(seeded, now),
        *_hostile(seeded, now),
    ]
    with engine.connect() as conn:
        other = conn.execute(sa.text("SELECT id FROM projects WHERE slug = 'other'")).scalar_one()
    writer = SpanWriter(engine)
    writer.write([(1, s) for s in spans])
    secret = _chat(f"{0xEF000000:032x}", now - 60_000 * MS, 0, session_id=seeded.other_session)
    writer.write([(int(other), secret)])
    return seeded
