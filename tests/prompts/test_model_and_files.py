"""The prompt model and prompt files: validation, canonical hashing, file:line errors."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from bastion.prompts import (
    PromptDirError,
    PromptFileError,
    PromptSpec,
    PromptSpecError,
    Variable,
    dump_prompt_file,
    load_prompt_dir,
    load_prompt_file,
)
from bastion.prompts.template import find_includes

SUMMARIZE = """\
name: summarize
description: Summarize a support ticket
model: sim-small
params: {temperature: 0.2, max_tokens: 200}
variables:
  ticket: {type: string, required: true}
  tone: {type: string, default: neutral}
messages:                 # or `text:` for a plain completion prompt
  - role: system
    content: You summarize support tickets in a {{ tone }} tone.
  - role: user
    content: "{{ ticket }}"
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def base(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "summarize",
        "variables": {"ticket": {"type": "string"}},
        "messages": [{"role": "user", "content": "{{ ticket }}"}],
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


# -- the model ----------------------------------------------------------------------------------


def test_load_example_file(tmp_path: Path) -> None:
    spec = load_prompt_file(write(tmp_path, "summarize.prompt.yaml", SUMMARIZE))
    assert spec.name == "summarize"
    assert spec.model == "sim-small"
    assert spec.params == {"temperature": 0.2, "max_tokens": 200}
    assert spec.variables["ticket"] == Variable("ticket", "string", True)
    assert spec.variables["tone"] == Variable("tone", "string", False, "neutral")
    assert spec.messages is not None
    assert spec.messages[1] == {
        "role": "user",
        "content": "{{ ticket }}",
    }
    assert spec.text is None
    assert find_includes(spec) == ()


def test_a_default_makes_a_variable_optional() -> None:
    assert Variable("tone", default="neutral").required is False
    assert Variable("tone").required is True


def test_to_dict_round_trips_and_omits_empty_fields() -> None:
    spec = PromptSpec.from_dict(base())
    assert spec.to_dict() == {
        "name": "summarize",
        "variables": {"ticket": {"type": "string"}},
        "messages": [{"role": "user", "content": "{{ ticket }}"}],
    }
    assert PromptSpec.from_dict(spec.to_dict()) == spec


def test_canonical_json_is_sorted_orjson_of_to_dict() -> None:
    spec = PromptSpec.from_dict(base(description="d", params={"b": 1, "a": 2}))
    raw = spec.canonical_json()
    assert orjson.loads(raw) == spec.to_dict()
    assert raw.index(b'"description"') < raw.index(b'"messages"') < raw.index(b'"name"')
    assert raw.index(b'"a":2') < raw.index(b'"b":1')
    digest = spec.content_hash()
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64


def test_hash_is_stable_across_key_order_quoting_and_whitespace(tmp_path: Path) -> None:
    reordered = """\
    # the same prompt, written differently
    messages:
    - content: 'You summarize support tickets in a {{ tone }} tone.'
      role: system
    - {role: user, content: "{{ ticket }}"}
    variables:
      tone:
        default: "neutral"
        type: string
      ticket: string
    params:
      max_tokens: 200
      temperature: 0.20
    model: "sim-small"
    description:   Summarize a support ticket
    name: summarize
    """
    one = load_prompt_file(write(tmp_path / "a", "summarize.prompt.yaml", SUMMARIZE))
    two = load_prompt_file(write(tmp_path / "b", "summarize.prompt.yaml", reordered))
    assert one == two
    assert one.canonical_json() == two.canonical_json()
    assert one.content_hash() == two.content_hash()


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": "{{ ticket }} "}]},
        {"messages": [{"role": "system", "content": "{{ ticket }}"}]},
        {"variables": {"ticket": {"type": "string", "default": "x"}}},
        {"variables": {"ticket": {"type": "string", "description": "the ticket"}}},
        {"model": "sim-large"},
        {"params": {"temperature": 0.3}},
        {"description": "new"},
        {"metadata": {"owner": "support"}},
        {"tools": [{"type": "function", "function": {"name": "lookup"}}]},
        {"response_format": {"type": "json_object"}},
        {"name": "summarize2"},
    ],
)
def test_any_content_change_changes_the_hash(change: dict[str, Any]) -> None:
    original = PromptSpec.from_dict(base(params={"temperature": 0.2}))
    changed = PromptSpec.from_dict({**original.to_dict(), **change})
    assert changed.content_hash() != original.content_hash()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (base(colour="red"), "colour: unknown key"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "missing required key 'name'"),
        (base(name="Summarize"), "name: must match"),
        (base(name="a/b"), "name: must match"),
        (base(text="hi"), "exactly one of 'messages' or 'text' is required, got both"),
        (base(messages=None), "exactly one of 'messages' or 'text' is required, got neither"),
        (base(messages=[{"role": "robot", "content": "x"}]), "messages[0].role: must be one of"),
        (base(messages=[{"role": "user"}]), "messages[0].content: missing content"),
        (base(messages=[{"role": "user", "content": 3}]), "messages[0].content: must be a"),
        (base(messages=[]), "messages: must not be empty"),
        (base(variables={"ticket": {"type": "text"}}), "variables.ticket.type: must be one of"),
        (base(variables={"ticket": {"type": "integer", "default": "1"}}), "default: must be"),
        (
            base(variables={"t": {"default": "x", "required": True}}),
            "variables.t.required: a variable with a default cannot be required",
        ),
        (base(variables={"_t": {}}), "variables._t: variable names must be identifiers"),
        (base(variables={"t": {"kind": "string"}}), "variables.t.kind: unknown key"),
        (base(params=[1]), "params: must be a mapping, got list"),
        (base(params={"seed": 2**70}), "params.seed: integer out of range"),
        (base(metadata={"when": object()}), "metadata.when: must be JSON data"),
        (base(tools={"a": 1}), "tools: must be a list"),
        (base(model=""), "model: must not be empty"),
    ],
)
def test_from_dict_errors_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(PromptSpecError) as caught:
        PromptSpec.from_dict(data)
    assert message in str(caught.value)


def test_content_parts_are_validated_and_kept() -> None:
    parts = [
        {"type": "text", "text": "Describe {{ ticket }}"},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
    ]
    spec = PromptSpec.from_dict(base(messages=[{"role": "user", "content": parts}]))
    assert spec.messages is not None
    assert spec.messages[0]["content"] == parts
    with pytest.raises(PromptSpecError, match=r"messages\[0\]\.content\[0\]\.type"):
        PromptSpec.from_dict(base(messages=[{"role": "user", "content": [{"text": "x"}]}]))


# -- files --------------------------------------------------------------------------------------


def test_dump_is_human_ordered_and_round_trips(tmp_path: Path) -> None:
    spec = load_prompt_file(write(tmp_path, "summarize.prompt.yaml", SUMMARIZE))
    text = dump_prompt_file(spec)
    keys = [line.split(":")[0] for line in text.splitlines() if line[:1].isalpha()]
    assert keys == ["name", "description", "model", "params", "variables", "messages"]
    assert "params: {temperature: 0.2, max_tokens: 200}" in text
    again = load_prompt_file(write(tmp_path / "again", "summarize.prompt.yaml", text))
    assert again == spec
    assert dump_prompt_file(again) == text


def test_round_trip_of_awkward_content(tmp_path: Path) -> None:
    spec = PromptSpec.from_dict(
        {
            "name": "awkward",
            "description": "yes",
            "variables": {
                "items": {"type": "list", "default": ["a", "b"]},
                "n": {"type": "integer", "required": False, "description": "how many: at most"},
            },
            "messages": [
                {"role": "system", "content": "  leading spaces\nline two \nünïcödé: {{ n }}\n"},
                {"role": "user", "content": [{"type": "text", "text": "#{{ items|join(', ') }}"}]},
                {"role": "assistant", "content": "null"},
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "response_format": {"type": "json_object"},
            "metadata": {"owner": "team", "tags": ["a", "b"], "on": True},
            "params": {"temperature": 0.0, "stop": ["\n\n"]},
        }
    )
    text = dump_prompt_file(spec)
    assert load_prompt_file(write(tmp_path, "awkward.prompt.yaml", text)) == spec


def test_text_prompt_dumps_as_literal_block(tmp_path: Path) -> None:
    spec = PromptSpec.from_dict(
        {"name": "greet", "variables": {"who": {}}, "text": "Hello {{ who }}.\nBye.\n"}
    )
    text = dump_prompt_file(spec)
    assert "text: |\n  Hello {{ who }}.\n  Bye.\n" in text
    assert load_prompt_file(write(tmp_path, "greet.prompt.yaml", text)) == spec


BAD_FILES = [
    ("name: bad\ncolour: red\ntext: hi\n", 2, "colour: unknown key"),
    ("name: bad\ntext: [unclosed\n", 3, "invalid YAML"),
    ("name: bad\ntext: hi\nparams:\n  - 1\n", 3, "params: must be a mapping, got list"),
    ("name: bad\ntext: hi\nmessages:\n  - {role: user, content: hi}\n", 1, "got both"),
    ("name: bad\ndescription: nothing\n", 1, "got neither"),
    (
        "name: bad\nmessages:\n  - role: user\n    content: hi\n  - role: robot\n    content: x\n",
        5,
        "messages[1].role: must be one of",
    ),
    (
        "name: bad\nvariables:\n  tone:\n    type: colour\ntext: '{{ tone }}'\n",
        4,
        "variables.tone.type: must be one of",
    ),
    (
        "name: bad\nvariables: {a: {}}\nmessages:\n  - role: system\n    content: hi\n"
        "  - role: user\n    content: '{{ a }} {{ b }}'\n",
        7,
        "undeclared variable 'b' in messages[1].content",
    ),
    (
        "name: bad\nvariables: {a: {}}\ntext: |\n  line one {{ a }}\n  line two\n  {{ oops }}\n",
        6,
        "undeclared variable 'oops' in text",
    ),
    ("name: bad\ntext: |\n  fine\n  {% if %}\n", 4, "syntax error"),
    ("name: bad\ntext: '{{ x.__class__ }}'\nvariables: {x: {}}\n", 2, "forbidden attribute"),
    ("name: other\ntext: hi\n", 1, "name: 'other' does not match the file name"),
    ("name: bad\ntext: hi\ntext: again\n", 3, "text: duplicate key"),
    ("name: bad\nmetadata:\n  a: &x [1]\n  b: *x\ntext: hi\n", 3, "YAML aliases"),
    ("- just\n- a list\n", 1, "expected a mapping"),
    ("", 1, "empty file"),
]


@pytest.mark.parametrize(("content", "line", "reason"), BAD_FILES)
def test_bad_file_names_file_line_and_reason(
    tmp_path: Path, content: str, line: int, reason: str
) -> None:
    path = write(tmp_path, "bad.prompt.yaml", content)
    with pytest.raises(PromptFileError) as caught:
        load_prompt_file(path)
    error = caught.value
    assert error.path == path
    assert (error.line, reason in error.reason) == (line, True), error.reason
    assert str(error) == f"{path}:{line}: {error.reason}"


def test_file_error_without_line() -> None:
    error = PromptFileError(Path("x.prompt.yaml"), None, "cannot read")
    assert str(error) == "x.prompt.yaml: cannot read"


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    spec = load_prompt_file(write(tmp_path, "hello.world.prompt.yaml", "text: hi\n"))
    assert spec.name == "hello.world"


def test_markdown_prompt_body_is_the_text(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "essay.prompt.md",
        """\
        ---
        model: sim-small
        variables:
          topic: {}
        ---

        Write an essay about {{ topic }}.

        Keep it short.
        """,
    )
    spec = load_prompt_file(path)
    assert spec.name == "essay"
    assert spec.text == "Write an essay about {{ topic }}.\n\nKeep it short."
    assert spec.model == "sim-small"


def test_markdown_errors_point_into_the_file(tmp_path: Path) -> None:
    body_error = write(
        tmp_path, "a.prompt.md", "---\nvariables: {x: {}}\n---\n\nok {{ x }}\n{{ y }}\n"
    )
    with pytest.raises(PromptFileError) as caught:
        load_prompt_file(body_error)
    assert (caught.value.line, "undeclared variable 'y'" in caught.value.reason) == (6, True)

    front_error = write(tmp_path, "b.prompt.md", "---\nname: b\nmodle: x\n---\nhi\n")
    with pytest.raises(PromptFileError) as caught:
        load_prompt_file(front_error)
    assert (caught.value.line, caught.value.reason.startswith("modle: unknown key")) == (3, True)

    with_text = write(tmp_path, "c.prompt.md", "---\ntext: hi\n---\nbody\n")
    with pytest.raises(PromptFileError, match=r"c\.prompt\.md:2: text: not allowed"):
        load_prompt_file(with_text)

    no_front = write(tmp_path, "d.prompt.md", "just a body\n")
    with pytest.raises(PromptFileError, match=r"d\.prompt\.md:1: .*front matter"):
        load_prompt_file(no_front)


def test_load_dir_is_recursive_and_sorted_by_name(tmp_path: Path) -> None:
    write(tmp_path, "support/summarize.prompt.yaml", SUMMARIZE)
    write(tmp_path, "alpha.prompt.yaml", "text: a\n")
    write(tmp_path, "deep/er/zeta.prompt.md", "---\n---\nz\n")
    write(tmp_path, ".git/ignored.prompt.yaml", "garbage: [\n")
    write(tmp_path, "notes.yaml", "garbage: [\n")
    specs = load_prompt_dir(tmp_path)
    assert [spec.name for spec in specs] == ["alpha", "summarize", "zeta"]


def test_load_dir_collects_every_error(tmp_path: Path) -> None:
    write(tmp_path, "good.prompt.yaml", "text: fine\n")
    write(tmp_path, "a/dup.prompt.yaml", "text: one\n")
    write(tmp_path, "b/dup.prompt.yaml", "\ntext: two\n")
    write(tmp_path, "broken.prompt.yaml", "name: broken\ntext: [\n")
    write(tmp_path, "mismatch.prompt.yaml", "text: hi\nname: other\n")
    write(tmp_path, "undeclared.prompt.yaml", "text: '{{ who }}'\n")
    with pytest.raises(PromptDirError) as caught:
        load_prompt_dir(tmp_path)
    errors = {str(e.path.relative_to(tmp_path)): (e.line, e.reason) for e in caught.value.errors}
    assert set(errors) == {
        "b/dup.prompt.yaml",
        "broken.prompt.yaml",
        "mismatch.prompt.yaml",
        "undeclared.prompt.yaml",
    }
    # No `name:` key (it comes from the file name): the line where the document starts.
    assert errors["b/dup.prompt.yaml"][0] == 2
    assert "duplicate prompt name 'dup'" in errors["b/dup.prompt.yaml"][1]
    assert "a/dup.prompt.yaml" in errors["b/dup.prompt.yaml"][1]
    assert errors["mismatch.prompt.yaml"][0] == 2
    assert "undeclared variable 'who'" in errors["undeclared.prompt.yaml"][1]
    assert "4 invalid prompt files" in str(caught.value)


def test_load_dir_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PromptDirError) as caught:
        load_prompt_dir(tmp_path / "nope")
    assert caught.value.errors[0].reason == "not a directory"
