"""The prompt registry service on SQLite and PostgreSQL: versions, partials, labels, history."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

from bastion.auth import Role, ensure_project
from bastion.prompts import PromptSpec, render
from bastion.prompts import registry as reg

T = TypeVar("T")


def spec(name: str, text: str | None = None, **extra: Any) -> PromptSpec:
    data: dict[str, Any] = {"name": name, **extra}
    if "messages" not in data:
        data["text"] = text if text is not None else f"Hello from {name}"
    return PromptSpec.from_dict(data)


def chat(name: str, user: str, variables: dict[str, Any] | None = None) -> PromptSpec:
    return PromptSpec.from_dict(
        {
            "name": name,
            "model": "gpt-4o-mini",
            "params": {"temperature": 0.2},
            "variables": variables or {},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": user},
            ],
        }
    )


@pytest.fixture
def project(engine: sa.Engine) -> int:
    with engine.begin() as conn:
        return ensure_project(conn, "alpha")


def write(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    return reg.run_write(engine, work)


def read(engine: sa.Engine, work: Callable[[sa.Connection], T]) -> T:
    with engine.connect() as conn:
        return work(conn)


def push(engine: sa.Engine, project: int, *specs: PromptSpec, message: str = "m") -> list[Any]:
    return write(
        engine, lambda c: reg.push(c, project, list(specs), message=message, author="tester")
    )


def label(engine: sa.Engine, project: int, name: str, version: int, lbl: str, **kw: Any) -> Any:
    kw.setdefault("role", Role.WRITE)
    kw.setdefault("actor", "tester")
    return write(engine, lambda c: reg.set_label(c, project, name, version, lbl, **kw))


# -- versions ----------------------------------------------------------------------------------


def test_push_creates_versions_only_for_new_content(engine: sa.Engine, project: int) -> None:
    first = push(engine, project, spec("a"), spec("b"), message="first")
    assert [(r.name, r.version, r.status) for r in first] == [
        ("a", 1, "created"),
        ("b", 1, "created"),
    ]
    assert first[0].content_hash == spec("a").content_hash()

    again = push(engine, project, spec("a"), spec("b"))
    assert [(r.version, r.status) for r in again] == [(1, "unchanged"), (1, "unchanged")]

    changed = write(
        engine,
        lambda c: reg.push(
            c,
            project,
            [spec("a", "Hi!"), spec("b")],
            message="shorter",
            author="ann",
            git_sha="abc123",
        ),
    )
    assert [(r.version, r.status, r.previous_version) for r in changed] == [
        (2, "updated", 1),
        (1, "unchanged", 1),
    ]
    history = read(engine, lambda c: reg.log(c, project, "a"))
    assert [(v.version, v.message, v.author, v.git_sha) for v in history.versions] == [
        (2, "shorter", "ann", "abc123"),
        (1, "first", "tester", None),
    ]
    got = read(engine, lambda c: reg.get(c, project, "a"))
    assert (got.version, got.spec["text"]) == (2, "Hi!")
    assert PromptSpec.from_dict(got.spec) == spec("a", "Hi!")


def test_content_equal_to_an_older_version_answers_with_that_version(
    engine: sa.Engine, project: int
) -> None:
    push(engine, project, spec("a", "one"))
    push(engine, project, spec("a", "two"))
    [back] = push(engine, project, spec("a", "one"))
    assert (back.version, back.status, back.previous_version) == (1, "unchanged", 2)
    assert [v.version for v in read(engine, lambda c: reg.list_versions(c, project, "a"))] == [2, 1]


def test_a_push_is_all_or_nothing(engine: sa.Engine, project: int) -> None:
    push(engine, project, spec("a", "old"))
    bad = spec("b", "Hello {{ who }}")  # uses a variable it does not declare
    with pytest.raises(reg.RegistryError, match=r"'b'.*undeclared variable 'who'"):
        push(engine, project, spec("a", "new"), bad)
    assert [p.name for p in read(engine, lambda c: reg.list_prompts(c, project))] == ["a"]
    assert read(engine, lambda c: reg.get(c, project, "a")).version == 1
    with pytest.raises(reg.RegistryError, match="more than once"):
        push(engine, project, spec("c"), spec("c", "other"))
    with pytest.raises(reg.RegistryError, match="nothing to push"):
        push(engine, project)


# -- partials ----------------------------------------------------------------------------------


def test_partials_are_pinned_and_served_with_the_prompt(engine: sa.Engine, project: int) -> None:
    tone = spec("tone", "Answer in {{ language }}.", variables={"language": {"type": "string"}})
    main = chat("support", 'Question: {{ q }} {% include "tone" %}', {"q": {"type": "string"}})
    results = push(engine, project, main, tone)
    assert [(r.name, r.version) for r in results] == [("support", 1), ("tone", 1)]

    got = read(engine, lambda c: reg.get(c, project, "support"))
    assert got.partial_versions == {"tone": 1}
    partials = {n: PromptSpec.from_dict(s) for n, s in got.partials.items()}
    rendered = render(PromptSpec.from_dict(got.spec), {"q": "Why?", "language": "French"}, partials)
    assert isinstance(rendered, list)
    assert rendered[1]["content"] == "Question: Why? Answer in French."

    # A new partial version re-pins the includer on its next push, even though its file is the same.
    tone2 = spec("tone", "Answer in {{ language }}, politely.", variables={"language": {}})
    results = push(engine, project, main, tone2)
    assert [(r.name, r.version, r.status) for r in results] == [
        ("support", 2, "updated"),
        ("tone", 2, "updated"),
    ]
    assert read(engine, lambda c: reg.get(c, project, "support")).partial_versions == {"tone": 2}
    old = read(engine, lambda c: reg.get(c, project, "support", version=1))
    assert old.partials["tone"]["text"] == "Answer in {{ language }}."
    # Pushing only the partial later leaves the includer pinned where it was.
    push(engine, project, spec("tone", "Answer in {{ language }}!", variables={"language": {}}))
    assert read(engine, lambda c: reg.get(c, project, "support")).partial_versions == {"tone": 2}


def test_partials_must_exist_be_text_and_not_cycle(engine: sa.Engine, project: int) -> None:
    with pytest.raises(
        reg.RegistryError, match="includes 'ghost', which is neither in the registry"
    ):
        push(engine, project, spec("a", '{% include "ghost" %}'))
    push(engine, project, chat("chatty", "hi"))
    with pytest.raises(reg.RegistryError, match="'chatty', which has messages"):
        push(engine, project, spec("a", '{% include "chatty" %}'))
    with pytest.raises(reg.RegistryError, match="cycle: a -> b -> a"):
        push(engine, project, spec("a", '{% include "b" %}'), spec("b", '{% include "a" %}'))
    push(engine, project, spec("base", "base text"))
    [ok] = push(engine, project, spec("a", 'x {% include "base" %}'))  # included from the registry
    assert ok.status == "created"
    assert read(engine, lambda c: reg.get(c, project, "a")).partial_versions == {"base": 1}


# -- reads and isolation -----------------------------------------------------------------------


def test_get_by_label_version_or_latest(engine: sa.Engine, project: int) -> None:
    for text in ("one", "two", "three"):
        push(engine, project, spec("a", text))
    label(engine, project, "a", 2, "production")
    get = lambda **kw: read(engine, lambda c: reg.get(c, project, "a", **kw))  # noqa: E731
    assert get().version == 3
    assert get(label="latest").version == 3
    assert get(label="production").spec["text"] == "two"
    assert get(label="production").labels == ["production"]
    assert get(version=1).spec["text"] == "one"
    with pytest.raises(reg.NotFoundError, match=r"no label 'staging' \(labels: production\)"):
        get(label="staging")
    with pytest.raises(reg.NotFoundError, match=r"no version 9 \(newest is 3\)"):
        get(version=9)
    with pytest.raises(reg.RegistryError, match="not both"):
        get(version=1, label="production")
    with pytest.raises(reg.NotFoundError, match="no prompt 'nope'"):
        read(engine, lambda c: reg.get(c, project, "nope"))
    [summary] = read(engine, lambda c: reg.list_prompts(c, project))
    assert (summary.name, summary.latest_version, summary.labels) == ("a", 3, {"production": 2})


def test_a_project_never_sees_another_projects_prompts(engine: sa.Engine, project: int) -> None:
    with engine.begin() as conn:
        other = ensure_project(conn, "beta")
    push(engine, project, spec("shared", "alpha's secret"))
    label(engine, project, "shared", 1, "production")
    assert read(engine, lambda c: reg.list_prompts(c, other)) == []
    with pytest.raises(reg.NotFoundError):
        read(engine, lambda c: reg.get(c, other, "shared"))
    with pytest.raises(reg.NotFoundError):
        label(engine, other, "shared", 1, "production")
    with pytest.raises(reg.NotFoundError):
        read(engine, lambda c: reg.diff(c, other, "shared", 1, 1))
    with pytest.raises(reg.RegistryError, match="neither in the registry"):
        push(engine, other, spec("b", '{% include "shared" %}'))
    [mine] = push(engine, other, spec("shared", "beta's own"))
    assert (mine.version, mine.status) == (1, "created")
    assert read(engine, lambda c: reg.get(c, project, "shared")).spec["text"] == "alpha's secret"
    assert read(engine, lambda c: reg.get(c, other, "shared")).spec["text"] == "beta's own"


# -- labels ------------------------------------------------------------------------------------


def test_label_moves_are_recorded_and_protected_labels_need_admin(
    engine: sa.Engine, project: int
) -> None:
    for text in ("one", "two", "three"):
        push(engine, project, spec("a", text))
    first = label(engine, project, "a", 1, "production", reason="launch")
    assert (first.from_version, first.to_version, first.changed) == (None, 1, True)
    assert not label(engine, project, "a", 1, "production").changed  # already there: no event
    moved = label(engine, project, "a", 2, "production", actor="bob")
    assert (moved.from_version, moved.to_version) == (1, 2)

    with pytest.raises(reg.ProtectedLabelError, match="admin"):
        write(
            engine,
            lambda c: reg.protect_label(c, project, "a", "production", actor="x", role="write"),
        )
    write(
        engine,
        lambda c: reg.protect_label(c, project, "a", "production", actor="root", role="admin"),
    )
    with pytest.raises(reg.ProtectedLabelError, match="'production' of prompt 'a' is protected"):
        label(engine, project, "a", 3, "production")
    with pytest.raises(PermissionError):
        write(
            engine, lambda c: reg.rollback(c, project, "a", "production", actor="x", role="write")
        )
    assert label(engine, project, "a", 3, "production", role=Role.ADMIN).to_version == 3
    label(engine, project, "a", 3, "staging")  # other labels stay open to write keys

    events = read(engine, lambda c: reg.log(c, project, "a")).events
    assert [(e.label, e.action, e.from_version, e.to_version, e.actor) for e in events] == [
        ("staging", "set", None, 3, "tester"),
        ("production", "set", 2, 3, "tester"),
        ("production", "protect", 2, 2, "root"),
        ("production", "set", 1, 2, "bob"),
        ("production", "set", None, 1, "tester"),
    ]
    assert events[-1].reason == "launch"
    for bad, why in [("latest", "reserved"), ("Prod", "invalid label"), ("9", "invalid label")]:
        with pytest.raises(reg.RegistryError, match=why):
            label(engine, project, "a", 1, bad)
    with pytest.raises(reg.NotFoundError, match="no version 4"):
        label(engine, project, "a", 4, "canary")


def test_rollback_returns_to_the_previous_version(engine: sa.Engine, project: int) -> None:
    for text in ("one", "two", "three"):
        push(engine, project, spec("a", text))
    label(engine, project, "a", 1, "production")

    def rollback() -> Any:
        return write(
            engine,
            lambda c: reg.rollback(
                c, project, "a", "production", actor="oncall", reason="bad", role="write"
            ),
        )

    with pytest.raises(reg.ConflictError, match="no previous version"):
        rollback()
    label(engine, project, "a", 3, "production")
    back = rollback()
    assert (back.from_version, back.to_version) == (3, 1)
    assert read(engine, lambda c: reg.get(c, project, "a", label="production")).version == 1
    assert rollback().to_version == 3  # a rollback is a move: undoing it goes forward again
    with pytest.raises(reg.NotFoundError, match="no label 'staging'"):
        write(engine, lambda c: reg.rollback(c, project, "a", "staging", actor="x", role="admin"))
    last = read(engine, lambda c: reg.log(c, project, "a")).events[0]
    assert (last.action, last.from_version, last.to_version, last.actor, last.reason) == (
        "rollback",
        1,
        3,
        "oncall",
        "bad",
    )


def test_diff_shows_template_and_config_changes(engine: sa.Engine, project: int) -> None:
    push(engine, project, chat("a", "Summarise: {{ t }}", {"t": {"type": "string"}}))
    changed = chat("a", "Summarise briefly: {{ t }}", {"t": {"type": "string"}})
    push(engine, project, PromptSpec.from_dict({**changed.to_dict(), "params": {"temperature": 0}}))
    label(engine, project, "a", 1, "production")
    text = read(engine, lambda c: reg.diff(c, project, "a", "production", 2))
    assert text.startswith("--- a@v1 (production)\n+++ a@v2\n")
    assert "-Summarise: {{ t }}" in text
    assert "+Summarise briefly: {{ t }}" in text
    assert '-    "temperature": 0.2' in text
    assert '+    "temperature": 0' in text
    assert read(engine, lambda c: reg.diff(c, project, "a", "1", "v1")) == ""
    with pytest.raises(reg.NotFoundError, match="no label 'canary'"):
        read(engine, lambda c: reg.diff(c, project, "a", "canary", 1))


# -- concurrency -------------------------------------------------------------------------------


def run_threads(count: int, target: Callable[[int], None]) -> None:
    failures: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # reported below, so a failing thread fails the test
            failures.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures


def test_concurrent_pushes_never_duplicate_or_skip_versions(
    engine: sa.Engine, project: int
) -> None:
    got: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for k in range(5):
            [result] = push(engine, project, spec("hot", f"thread {i} push {k}"))
            assert result.status in ("created", "updated")
            with lock:
                got.append(result.version)

    run_threads(8, worker)
    assert sorted(got) == list(range(1, 41))
    versions = read(engine, lambda c: reg.list_versions(c, project, "hot"))
    assert [v.version for v in versions] == list(range(40, 0, -1))
    assert len({v.content_hash for v in versions}) == 40


def test_concurrent_label_moves_lose_no_move(engine: sa.Engine, project: int) -> None:
    for n in range(8):
        push(engine, project, spec("a", f"version {n + 1}"))
    changes: list[Any] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for k in range(5):
            change = label(engine, project, "a", (i + k) % 8 + 1, "production", actor=f"t{i}")
            with lock:
                changes.append(change)

    run_threads(8, worker)
    events = list(reversed(read(engine, lambda c: reg.log(c, project, "a")).events))
    assert len(events) == sum(c.changed for c in changes)
    assert events[0].from_version is None
    for before, after in itertools.pairwise(events):
        assert after.from_version == before.to_version  # each move saw the one before it
    current = read(engine, lambda c: reg.get(c, project, "a", label="production"))
    assert current.version == events[-1].to_version
