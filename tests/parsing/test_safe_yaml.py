"""The one YAML reader: no aliases or anchors, no custom tags, caps on size, values, depth and
scalar length, each refusal naming the line and the ``limits.*`` setting."""

from __future__ import annotations

import pytest

from bastion.parsing import InputError, InputLimits, load_yaml, parse_yaml
from bastion.settings import Settings


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: ``levels`` lists of nine references to the list before."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        refs = ",".join([f"*a{n - 1}"] * 9)
        lines.append(f"a{n}: &a{n} [{refs}]")
    return "\n".join(lines) + "\n"


def test_the_billion_laughs_is_refused_at_its_first_anchor() -> None:
    body = billion_laughs()
    assert len(body.encode()) < 600  # a few hundred bytes that would expand to 9**9 strings
    with pytest.raises(InputError, match=r"aliases and anchors are not allowed \(&a0\)") as info:
        load_yaml(body)
    assert info.value.line == 1


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("a: 1\nb: *x\n", 2, "aliases and anchors"),  # an alias to nothing is refused as such
        ("base: &b {x: 1}\nother:\n  <<: *b\n", 1, "aliases and anchors"),  # merge keys too
        ("a: !!python/object/apply:os.system [id]\n", 1, "tag 'tag:yaml.org,2002:python/"),
        ("a: !custom 3\n", 1, "tag '!custom'"),
        ("a: !!binary aGk=\n", 1, "tag 'tag:yaml.org,2002:binary'"),
        ("a: !!set {x: null}\n", 1, "tag 'tag:yaml.org,2002:set'"),
        ("a: [1\n", 2, "invalid YAML"),
        ("a: 1\n---\nb: 2\n", 2, "invalid YAML"),  # one document only
    ],
)
def test_aliases_custom_tags_and_syntax_errors_name_the_line(
    text: str, line: int, problem: str
) -> None:
    with pytest.raises(InputError) as info:
        load_yaml(text)
    assert problem in info.value.problem
    assert info.value.line == line


def test_standard_tags_and_implicit_types_still_read() -> None:
    text = "a: !!str 12\nb: 2024-01-02\nc: [1, 2.5, true, null]\n"
    data = load_yaml(text)
    assert data["a"] == "12"
    assert str(data["b"]) == "2024-01-02"
    assert data["c"] == [1, 2.5, True, None]


def test_each_cap_is_named_with_its_setting() -> None:
    limits = InputLimits(max_document_bytes=2048, max_values=100, max_depth=4, max_field_chars=64)
    deep = "a: " + "[" * 5 + "]" * 5
    with pytest.raises(InputError, match=r"deeper than 4 levels \(limits.max_depth\)") as info:
        load_yaml(deep, limits)
    assert info.value.limit == "limits.max_depth"
    assert load_yaml("a: " + "[" * 3 + "]" * 3, limits) == {"a": [[[]]]}

    many = "[" + ", ".join(["1"] * 100) + "]"
    with pytest.raises(InputError, match=r"more than 100 values \(limits.max_values\)"):
        load_yaml(many, limits)
    assert len(load_yaml("[" + ", ".join(["1"] * 99) + "]", limits)) == 99

    with pytest.raises(InputError, match=r"65 characters .* \(limits.max_field_chars\)") as info:
        load_yaml("a: ok\nb: " + "x" * 65 + "\n", limits)
    assert info.value.line == 2
    with pytest.raises(InputError, match=r"limits.max_field_chars"):
        load_yaml("? " + "k" * 65 + "\n: v\n", limits)  # keys are values too

    with pytest.raises(InputError, match=r"limits.max_document_bytes") as info:
        load_yaml("# " + "x" * 2100 + "\na: 1\n", limits)
    assert info.value.limit == "limits.max_document_bytes"


def test_a_deeper_nesting_than_the_parser_allows_is_a_clean_error() -> None:
    with pytest.raises(InputError, match=r"limits\.max_depth"):
        load_yaml("[" * 100_000 + "]" * 100_000, InputLimits(max_depth=200))


def test_the_node_tree_keeps_lines_for_callers_that_report_them() -> None:
    document = parse_yaml("- a: 1\n- b: 2\n")
    assert document.data == [{"a": 1}, {"b": 2}]
    assert document.node is not None
    assert [child.start_mark.line + 1 for child in document.node.value] == [1, 2]
    assert parse_yaml("").data is None


def test_limits_are_a_settings_section_overridden_by_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASTION_LIMITS__MAX_DEPTH", "9")
    settings = Settings(limits={"max_items": 7})
    assert (settings.limits.max_items, settings.limits.max_depth) == (7, 9)
    with pytest.raises(ValueError, match="max_depth"):
        InputLimits(max_depth=500)  # past what the API's JSON reader allows
