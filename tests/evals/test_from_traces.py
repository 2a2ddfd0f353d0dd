"""Datasets snapshotted from production traces, links back to the spans, and locked versions,
on SQLite and PostgreSQL (library and CLI)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bastion.auth import Role, ensure_project
from bastion.cli.main import app
from bastion.evals import store
from bastion.evals.datasets import DatasetError, Item
from bastion.evals.from_traces import (
    TraceSelection,
    parse_input,
    parse_output,
    resolve_prompt,
    snapshot,
)
from bastion.prompts import PromptSpec, registry
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode

NOW_NS = time.time_ns()
MINUTE_NS = 60 * 1_000_000_000


def chat_body(question: str, system: str | None = None) -> str:
    messages = [{"role": "user", "content": question}]
    if system:
        messages.insert(0, {"role": "system", "content": system})
    return orjson.dumps({"model": "gpt-4o-mini", "messages": messages}).decode()


def answer(text: str) -> str:
    return orjson.dumps([{"role": "assistant", "content": text}]).decode()


def span(
    n: int,
    *,
    feature: str | None = "support",
    model: str = "gpt-4o-mini",
    input: str | None = None,
    output: str | None = None,
    prompt: tuple[str, int] | None = None,
    variables: dict[str, object] | None = None,
    user: str | None = "u-1",
    error_class: str | None = None,
    ago_minutes: int = 10,
) -> Span:
    start = NOW_NS - ago_minutes * MINUTE_NS + n * 1_000_000
    return Span(
        trace_id=f"{n:032x}",
        span_id=f"{n:016x}",
        name="chat",
        start_ns=start,
        end_ns=start + 5_000_000,
        status_code=StatusCode.ERROR if error_class else StatusCode.OK,
        operation="chat",
        request_model=model,
        feature=feature,
        user_id=user,
        error_class=error_class,
        prompt_name=prompt[0] if prompt else None,
        prompt_version=prompt[1] if prompt else None,
        input=input if input is not None else chat_body(f"question {n}?"),
        output=output if output is not None else answer(f"answer {n}"),
        attributes={"bastion.prompt.variables": variables} if variables else {},
    )


def populate(engine: sa.Engine) -> tuple[int, int]:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
        other = ensure_project(conn, "other")
    batch: list[tuple[int, Span]] = [(project_id, span(i)) for i in range(1, 6)]
    batch += [
        (project_id, span(6, feature="search")),
        (project_id, span(7, model="gpt-4o", input=chat_body("hi", system="Be brief."))),
        (project_id, span(8, error_class="upstream_error", output="")),
        (project_id, span(9, input="")),  # nothing recorded: skipped
        (project_id, span(10, input="x" * 10 + "…[truncated 5000 chars]")),
        (project_id, span(11, prompt=("summarize", 2), variables={"text": "long doc"})),
        (project_id, span(12, prompt=("summarize", 3), variables={"text": "other doc"})),
        (project_id, span(13, ago_minutes=60 * 48)),  # two days ago
        (other, span(14)),
    ]
    SpanWriter(engine).write(batch)
    return project_id, other


def test_parse_input_and_output_shapes() -> None:
    assert parse_input(chat_body("hi", system="sys")) == {
        "messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    }
    anthropic = orjson.dumps(
        {"system": [{"type": "text", "text": "Be kind."}], "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hello"}]}]}
    ).decode()  # fmt: skip
    assert parse_input(anthropic) == {
        "messages": [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]},
        ]
    }
    otel = orjson.dumps([{"role": "user", "parts": [{"type": "text", "content": "q"}]}]).decode()
    assert parse_input(otel) == {"messages": [{"role": "user", "content": "q"}]}
    assert parse_input("plain question") == {"input": "plain question"}
    assert parse_input("") is None
    assert parse_input("abc…[truncated 12 chars]") is None
    assert parse_input('{"no": "messages"}') is None

    assert parse_output(answer("done")) == "done"
    assert parse_output('[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]') == "ab"
    assert parse_output("raw text") == "raw text"
    assert parse_output(None) is None


def test_snapshot_filters_links_and_content_addressing(engine: sa.Engine) -> None:
    project_id, other = populate(engine)
    selection = TraceSelection(feature="support", since=datetime.now(UTC) - timedelta(hours=1))
    with engine.connect() as conn:
        taken = snapshot(conn, project_id, selection)
    # spans 1-5, 7, 8, 11, 12 (feature support, last hour); 9 and 10 have no usable input
    ids = [i.id.split(":")[1] for i in taken.items]
    assert ids == [f"{n:016x}" for n in (12, 11, 8, 7, 5, 4, 3, 2, 1)]  # newest first
    assert taken.matched == 11
    assert taken.skipped == {"no input": 1, "truncated input": 1}
    by_span = {i.id.split(":")[1]: i for i in taken.items}
    first = by_span[f"{1:016x}"]
    assert first.vars == {"messages": [{"role": "user", "content": "question 1?"}]}
    assert first.expected is None
    assert first.metadata["source"]["trace_id"] == f"{1:032x}"
    assert first.metadata["source"]["model"] == "gpt-4o-mini"
    assert first.tags == ("trace", "feature:support")
    assert by_span[f"{11:016x}"].vars == {"text": "long doc"}  # the recorded prompt variables
    assert "error" in by_span[f"{8:016x}"].tags

    pushed = store.push_dataset(engine, project_id, "prod", taken.items, sources=taken.sources)
    assert (pushed.status, pushed.info.version, pushed.info.item_count) == ("created", 1, 9)
    with engine.connect() as conn:
        links = store.item_sources(conn, project_id, "prod", 1)
        assert links[first.id] == (f"{1:032x}", f"{1:016x}")
        assert store.item_sources(conn, other, "prod", 1) == {}
        again = snapshot(conn, project_id, selection)
    repeat = store.push_dataset(engine, project_id, "prod", again.items, sources=again.sources)
    assert (repeat.status, repeat.info.version) == ("unchanged", 1)

    # Another project's key sees none of it, and its own spans only.
    with engine.connect() as conn:
        theirs = snapshot(conn, other, TraceSelection())
    assert [i.id for i in theirs.items] == [f"{14:032x}:{14:016x}"]


def test_snapshot_options(engine: sa.Engine) -> None:
    project_id, _ = populate(engine)
    with engine.connect() as conn:
        expected = snapshot(
            conn, project_id, TraceSelection(model="gpt-4o", expected_from_output=True)
        )
        assert [(i.expected, i.vars["messages"][0]["role"]) for i in expected.items] == [
            ("answer 7", "system")
        ]
        with pytest.raises(DatasetError, match="none could become an item"):
            snapshot(conn, project_id, TraceSelection(error_class="upstream_error",
                                                      expected_from_output=True))  # fmt: skip
        by_version = snapshot(
            conn, project_id, TraceSelection(prompt_name="summarize", prompt_version=3)
        )
        assert [i.vars for i in by_version.items] == [{"text": "other doc"}]
        old = snapshot(
            conn, project_id, TraceSelection(until=datetime.now(UTC) - timedelta(days=1))
        )
        assert [i.id.split(":")[1] for i in old.items] == [f"{13:016x}"]
        limited = snapshot(conn, project_id, TraceSelection(limit=2))
        assert len(limited.items) == 2
        half = snapshot(conn, project_id, TraceSelection(sample=0.5))
        half_again = snapshot(conn, project_id, TraceSelection(sample=0.5))
        everything = snapshot(conn, project_id, TraceSelection())
        assert [i.id for i in half.items] == [i.id for i in half_again.items]  # deterministic
        assert 0 < len(half.items) < len(everything.items)
        with pytest.raises(DatasetError, match="no model-call spans match"):
            snapshot(conn, project_id, TraceSelection(feature="nope"))
    for bad in (
        {"limit": 0},
        {"sample": 0.0},
        {"sample": 1.5},
        {"prompt_version": 2},
        {"since": datetime(2026, 2, 1, tzinfo=UTC), "until": datetime(2026, 1, 1, tzinfo=UTC)},
    ):
        with pytest.raises(DatasetError):
            TraceSelection(**bad)  # type: ignore[arg-type]


def test_resolve_prompt_references(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    spec = PromptSpec.from_dict(
        {
            "name": "summarize",
            "text": "Sum up {{ text }}",
            "variables": {"text": {"type": "string"}},
        }
    )
    registry.run_write(
        engine, lambda c: registry.push(c, project_id, [spec], message="m", author="t")
    )
    registry.run_write(
        engine,
        lambda c: registry.set_label(
            c, project_id, "summarize", 1, "production", actor="t", role=Role.ADMIN
        ),
    )
    with engine.connect() as conn:
        assert resolve_prompt(conn, project_id, "summarize") == ("summarize", None)
        assert resolve_prompt(conn, project_id, "summarize@3") == ("summarize", 3)
        assert resolve_prompt(conn, project_id, "summarize:v2") == ("summarize", 2)
        assert resolve_prompt(conn, project_id, "summarize@production") == ("summarize", 1)
        with pytest.raises(DatasetError, match="no label 'staging'"):
            resolve_prompt(conn, project_id, "summarize@staging")
        with pytest.raises(DatasetError, match="use NAME"):
            resolve_prompt(conn, project_id, "summarize@")


def test_locked_versions_only_grow(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        project_id = ensure_project(conn)
    items = [Item(id="a", vars={"q": "1"}, expected="x")]
    store.push_dataset(engine, project_id, "golden", items)
    info = store.lock_dataset(engine, project_id, "golden")
    assert (info.version, info.locked) == (1, True)
    assert store.lock_dataset(engine, project_id, "golden", 1).locked  # idempotent
    changed = [Item(id="a", vars={"q": "1"}, expected="y")]
    with pytest.raises(store.DatasetLockedError, match="version 1 is locked"):
        store.push_dataset(engine, project_id, "golden", changed)
    forced = store.push_dataset(engine, project_id, "golden", changed, force=True)
    assert (forced.status, forced.info.version, forced.info.locked) == ("created", 2, False)
    with engine.connect() as conn:
        assert store.get_dataset(conn, project_id, "golden", 1).items[0].expected == "x"
    with pytest.raises(store.EvalStoreError, match="no dataset 'golden' version 9"):
        store.lock_dataset(engine, project_id, "golden", 9)
    with pytest.raises(store.EvalStoreError, match="no dataset 'nope'"):
        store.lock_dataset(engine, project_id, "nope")


def test_cli_from_traces_show_and_lock(
    engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    populate(engine)
    for name in ("BASTION_URL", "BASTION_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BASTION_DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "200")

    def cli(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["eval", "dataset", *args])
        return result.exit_code, result.output

    code, out = cli("from-traces", "prod", "--feature", "support", "--since", "1h",
                    "--expected-from-output", "--limit", "3")  # fmt: skip
    assert code == 0, out
    # Newest first: 12, 11, then 10 (truncated input), 9 (no input) and 8 (an error without
    # output, and an expected output was asked for) are skipped, then 7.
    assert (
        "prod@1: created (3 items from 6 matching spans; skipped 1 no input, 1 no output, "
        "1 truncated input"
    ) in " ".join(out.split()), out
    code, out = cli("show", "prod@1", "--json")
    assert code == 0, out
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [r["expected"] for r in rows] == ["answer 12", "answer 11", "answer 7"]
    assert all(r["metadata"]["source"]["span_id"] for r in rows)
    code, out = cli("show", "prod")
    assert code == 0, out
    assert rows[0]["metadata"]["source"]["trace_id"] in out
    code, out = cli("lock", "prod")
    assert (code, "prod@1: locked (3 items)" in out) == (0, True), out
    code, out = cli("from-traces", "prod", "--feature", "support", "--limit", "4")
    assert code == 2, out
    assert "is locked" in out
    code, out = cli("from-traces", "prod", "--feature", "support", "--limit", "4", "--force")
    assert code == 0, out
    assert "prod@2: created (4 items" in out

    for args, message in (
        (("from-traces", "x", "--since", "soon"), "use 30m, 24h, 7d"),
        (("from-traces", "x", "--feature", "nope"), "no model-call spans match"),
        (("from-traces", "x", "--prompt", "summarize@"), "use NAME"),
        (("from-traces", "x", "--sample", "2"), "sample must be a fraction"),
        (("lock", "nope@1"), "no dataset 'nope' version 1"),
        (("show", "prod@x"), "use NAME or NAME@VERSION"),
    ):
        code, out = cli(*args)
        assert code == 2, (args, out)
        assert message in " ".join(out.split()), (args, out)
