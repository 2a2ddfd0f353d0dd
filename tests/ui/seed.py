"""What the UI tests look at: people with each role, traces of every kind, a 30,000-span
trace, hostile strings in every place a page shows, and the prompt, release and dataset the
spans link to. Written through the real store writer and registries."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from bastion.auth.roles import PersonRole
from bastion.auth.users import create_user, set_role
from bastion.evals.dataset_store import push_dataset
from bastion.evals.datasets import Item
from bastion.prompts.model import PromptSpec, Variable
from bastion.prompts.registry import push
from bastion.releases.model import ReleaseSpec
from bastion.releases.store import create_release
from bastion.store.writer import SpanWriter
from bastion.tracing.attributes import PROMPT_LABEL, RELEASE_ARM
from bastion.tracing.model import Span, StatusCode

PASSWORD = "correct horse battery staple"
MS = 1_000_000
BIG_SPANS = 30_000
DEEP = 30  # length of the big trace's deep branch
XSS = '<script>alert("xss")</script><img src=x onerror=alert(1)>'


@dataclass
class Seeded:
    """Ids the tests open."""

    support_trace: str = "5" * 32
    billing_trace: str = "b" * 32
    xss_trace: str = "c" * 32
    big_trace: str = "d" * 32
    other_trace: str = "e" * 32
    chat_span: str = "5" * 15 + "2"
    xss_span: str = "c" * 15 + "2"
    deep_spans: list[str] = field(default_factory=list)
    release_id: str = ""
    filler: int = 40
    users: dict[str, str] = field(default_factory=dict)  # name -> role in "default"


def _span_id(n: int) -> str:
    return f"{n:016x}"


def _messages(system: str, user: str) -> str:
    return orjson.dumps(
        {
            "model": "gpt-4o",
            "temperature": 0.2,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        }
    ).decode()


def _support(seeded: Seeded, now: int) -> list[Span]:
    t = seeded.support_trace
    root = Span(
        t,
        "5" * 15 + "1",
        "support-turn",
        now,
        now + 900 * MS,
        user_id="alice",
        session_id="s-1",
        feature="support",
    )
    output = {
        "choices": [
            {
                "message": {
                    "role": "assistant",
                    "content": "Let me look that order up.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup_order", "arguments": '{"order": 1040}'},
                        }
                    ],
                }
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 40},
    }
    chat = Span(
        t,
        seeded.chat_span,
        "chat gpt-4o",
        now + 10 * MS,
        now + 610 * MS,
        parent_span_id=root.span_id,
        operation="chat",
        provider="openai",
        request_model="gpt-4o",
        response_model="gpt-4o",
        input_tokens=120,
        output_tokens=40,
        cost_usd=0.0007,
        ttft_ms=180.0,
        user_id="alice",
        session_id="s-1",
        feature="support",
        prompt_name="support",
        prompt_version=2,
        release_id=seeded.release_id,
        attributes={PROMPT_LABEL: "production", RELEASE_ARM: "candidate"},
        input=_messages("You are the support desk of Example Shop.", "Where is order 1040?"),
        output=orjson.dumps(output).decode(),
    )
    tool = Span(
        t,
        "5" * 15 + "3",
        "tool lookup_order",
        now + 620 * MS,
        now + 880 * MS,
        parent_span_id=root.span_id,
        operation="execute_tool",
        input='{"order": 1040}',
        output='{"status": "shipped"}',
    )
    return [root, chat, tool]


def _billing(seeded: Seeded, now: int) -> list[Span]:
    t = seeded.billing_trace
    root = Span(
        t, "b" * 15 + "1", "billing-question", now, now + 300 * MS, user_id="bob", feature="billing"
    )
    chat = Span(
        t,
        "b" * 15 + "2",
        "chat claude",
        now + 5 * MS,
        now + 290 * MS,
        parent_span_id=root.span_id,
        operation="chat",
        provider="anthropic",
        request_model="claude-3-5-sonnet",
        input_tokens=50,
        output_tokens=0,
        cost_usd=0.0002,
        status_code=int(StatusCode.ERROR),
        error_class="RateLimitError",
        user_id="bob",
        status_message="429 from upstream",
        input=orjson.dumps(
            {
                "system": "Be brief.",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "Why was I charged twice?"}],
                    }
                ],
            }
        ).decode(),
    )
    return [root, chat]


def _xss(seeded: Seeded, now: int) -> list[Span]:
    t = seeded.xss_trace
    root = Span(
        t,
        "c" * 15 + "1",
        f"root {XSS}",
        now,
        now + 50 * MS,
        user_id=f"u{XSS}",
        attributes={"note": XSS, f"key{XSS}": "v"},
    )
    messages = [
        {"role": "system", "content": f"system {XSS}"},
        {"role": "user", "content": f"user {XSS}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"id{XSS}",
                    "function": {
                        "name": f"tool{XSS}",
                        "arguments": orjson.dumps({"a": XSS}).decode(),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "id1", "content": f"result {XSS}"},
    ]
    chat = Span(
        t,
        seeded.xss_span,
        f"chat {XSS}",
        now + 1 * MS,
        now + 40 * MS,
        parent_span_id=root.span_id,
        operation="chat",
        request_model=f"m{XSS}",
        input=orjson.dumps(messages).decode(),
        output=f"plain {XSS}",
        attributes={"payload": {"nested": XSS}},
    )
    return [root, chat]


def _big(seeded: Seeded, now: int) -> list[Span]:
    """30,000 spans: a root, a deep branch, and a wide one of leaves."""
    t = seeded.big_trace
    spans = [Span(t, _span_id(1), "big-agent-run", now, now + 60_000 * MS)]
    parent = _span_id(1)
    for level in range(DEEP):
        span_id = _span_id(100 + level)
        seeded.deep_spans.append(span_id)
        start = now + (level + 1) * MS
        spans.append(
            Span(
                t,
                span_id,
                f"step {level}",
                start,
                now + 30_000 * MS - level * MS,
                parent_span_id=parent,
                input_tokens=1,
                output_tokens=1,
                cost_usd=0.001,
            )
        )
        parent = span_id
    wide = _span_id(2)
    spans.append(
        Span(t, wide, "fan-out", now + 30_000 * MS, now + 59_000 * MS, parent_span_id=_span_id(1))
    )
    for i in range(BIG_SPANS - len(spans)):
        start = now + 30_000 * MS + i * 900_000
        spans.append(
            Span(
                t,
                _span_id(10_000 + i),
                f"item {i}",
                start,
                start + 800_000,
                parent_span_id=wide,
                input_tokens=2,
                output_tokens=3,
            )
        )
    return spans


def _filler(seeded: Seeded, now: int) -> list[Span]:
    spans = []
    for i in range(seeded.filler):
        t = f"{0xF0000000 + i:032x}"
        start = now - (i + 1) * 60_000 * MS
        spans.append(
            Span(
                t,
                _span_id(1),
                f"batch-{i:02d}",
                start,
                start + (i + 1) * 10 * MS,
                user_id="filler",
                request_model="gpt-4o-mini",
                operation="chat",
                input_tokens=i,
                output_tokens=i,
                cost_usd=i / 1000 or None,
            )
        )
    return spans


def _people(conn: sa.Connection, seeded: Seeded) -> None:
    roles = {"ada": PersonRole.OWNER, "mia": PersonRole.MEMBER, "vic": PersonRole.VIEWER}
    for name, role in roles.items():
        create_user(conn, name, password=PASSWORD, role=role)
        seeded.users[name] = role.value
    set_role(conn, "ada", PersonRole.VIEWER, project="other")
    create_user(conn, "olga", password=PASSWORD, role=PersonRole.OWNER, project="other")


def _registry(conn: sa.Connection, seeded: Seeded) -> None:
    for version in (1, 2):
        spec = PromptSpec(
            name="support",
            messages=(
                {"role": "system", "content": f"You are the support desk (v{version})."},
                {"role": "user", "content": "{{ question }}"},
            ),
            variables={"question": Variable("question")},
        )
        push(conn, 1, [spec], message=f"version {version}", author="ada")
    release, _ = create_release(
        conn,
        1,
        ReleaseSpec(name="support-bot", model="gpt-4o", prompts={"support": 2}),
        actor="user:ada",
    )
    seeded.release_id = release.release_id


def seed(engine: sa.Engine) -> Seeded:
    """Everything above, in the ``default`` project (and one trace in ``other``)."""
    seeded = Seeded()
    with engine.begin() as conn:
        _people(conn, seeded)
        _registry(conn, seeded)
        other_id = conn.execute(
            sa.text("SELECT id FROM projects WHERE slug = 'other'")
        ).scalar_one()
    now = time.time_ns() - 5 * 60_000 * MS
    spans: list[Any] = [
        *_support(seeded, now),
        *_billing(seeded, now - 2 * 60_000 * MS),
        *_xss(seeded, now - 3 * 60_000 * MS),
        *_filler(seeded, now - 5 * 60_000 * MS),
    ]
    writer = SpanWriter(engine)
    writer.write([(1, s) for s in spans])
    big = _big(seeded, now - 4 * 60_000 * MS)
    for start in range(0, len(big), 5000):
        writer.write([(1, s) for s in big[start : start + 5000]])
    other = Span(seeded.other_trace, _span_id(1), "other-project-secret", now, now + MS)
    writer.write([(int(other_id), other)])
    push_dataset(
        engine,
        1,
        "golden-support",
        [Item(id="case-1040", vars={"question": "Where is order 1040?"}, expected="shipped")],
        sources={"case-1040": (seeded.support_trace, seeded.chat_span)},
    )
    return seeded
