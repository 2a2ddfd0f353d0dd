"""Datasets: the three file formats, reserved keys, errors naming file and line, ids, hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bastion.evals.datasets import (
    DatasetError,
    DatasetVersion,
    Item,
    check_variables,
    load_items,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- JSONL --------------------------------------------------------------------------------------


def test_jsonl_vars_form_and_flat_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.jsonl",
        json.dumps({"id": "a", "vars": {"q": "2+2"}, "expected": "4", "tags": ["math", "easy"]})
        + "\n\n"
        + json.dumps({"q": "capital of France", "lang": "en", "__expected": "Paris"})
        + "\n"
        + json.dumps({"id": 7, "q": "x", "metadata": {"source": "ticket-1"}, "tags": "a;b"})
        + "\n",
    )
    items = load_items(path)
    assert items[0].id == "a"
    assert items[0].vars == {"q": "2+2"}
    assert items[0].expected == "4"
    assert items[0].tags == ("math", "easy")
    assert items[1].vars == {"q": "capital of France", "lang": "en"}
    assert items[1].expected == "Paris"
    assert items[1].id == items[1].content_hash().removeprefix("sha256:")[:16]
    assert items[2].id == "7"
    assert items[2].metadata == {"source": "ticket-1"}
    assert items[2].tags == ("a", "b")
    assert items[2].expected is None


def test_jsonl_structured_expected_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, "d.jsonl", json.dumps({"vars": {"x": 1}, "expected": {"a": [1, 2]}}))
    assert load_items(path)[0].expected == {"a": [1, 2]}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"vars": [1]}', "'vars' must be an object"),
        ('{"vars": {"a": 1}, "extra": 2}', "unknown key(s) 'extra'"),
        ('{"a": 1, "expected": 1, "__expected": 2}', "both 'expected' and '__expected'"),
        ('{"a": 1, "tags": 5}', "'tags' must be"),
        ('{"a": 1, "metadata": "x"}', "'metadata' must be an object"),
        ('{"a": 1, "id": ""}', "'id' is empty"),
        ('{"a": 1, "id": true}', "'id' must be a string or an integer"),
    ],
)
def test_jsonl_malformed_row_names_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, "bad.jsonl", '{"a": 1}\n\n' + line + "\n")
    with pytest.raises(DatasetError) as info:
        load_items(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert problem in message
    assert info.value.line == 3
    assert info.value.path == path


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path, "dup.jsonl", '{"id": "x", "a": 1}\n{"id": "y", "a": 2}\n{"id": "x", "a": 3}\n'
    )
    with pytest.raises(DatasetError, match=r"dup\.jsonl:3: duplicate id 'x' \(first on line 1\)"):
        load_items(path)


def test_identical_rows_without_ids_collide(tmp_path: Path) -> None:
    path = write(tmp_path, "dup.jsonl", '{"a": 1}\n{"a": 1}\n')
    with pytest.raises(DatasetError, match="duplicate id"):
        load_items(path)


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_columns_expected_tags_metadata(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.csv",
        "id,question,context,__expected,tags,metadata\n"
        'q1,What is 2+2?,,4,math;easy,"{""owner"": ""ann""}"\n'
        '"q2","Multi\nline",ctx,,"geo, hard",\n',
    )
    items = load_items(path)
    assert items[0] == Item(
        id="q1",
        vars={"question": "What is 2+2?", "context": ""},
        expected="4",
        tags=("math", "easy"),
        metadata={"owner": "ann"},
    )
    assert items[1].vars == {"question": "Multi\nline", "context": "ctx"}
    assert items[1].expected is None  # an empty expected cell means none
    assert items[1].tags == ("geo", "hard")


def test_csv_expected_column_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffq,expected\nhello,world\n".encode())
    (item,) = load_items(path)
    assert item.vars == {"q": "hello"}
    assert item.expected == "world"


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("q,a\n1,2\n3\n", 3, "1 cells but the header has 2 columns"),
        ("q,q\n1,2\n", 1, "duplicate column(s) 'q'"),
        ("q,,x\n1,2,3\n", 1, "empty column name"),
        ("q,expected,__expected\n1,2,3\n", 1, "both 'expected' and '__expected'"),
        ('q,metadata\n1,"{bad"\n', 2, "'metadata' is not valid JSON"),
        ('q,metadata\n1,"[1]"\n', 2, "'metadata' must be an object"),
        ('q\n"unterminated\n', 2, "malformed CSV"),
    ],
)
def test_csv_malformed_row_names_file_and_line(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DatasetError) as info:
        load_items(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert problem in str(info.value)


def test_csv_line_numbers_count_multiline_cells(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", 'q,a\n"x\ny\nz",1\n2\n')
    with pytest.raises(DatasetError, match=r"m\.csv:5: "):
        load_items(path)


# -- YAML ---------------------------------------------------------------------------------------


def test_yaml_list_of_mappings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "golden.yaml",
        "- id: one\n  vars:\n    city: Paris\n  expected: France\n  tags: [geo]\n"
        "- city: Lima\n  expected: Peru\n  metadata: {hard: true}\n",
    )
    items = load_items(path)
    assert items[0] == Item("one", {"city": "Paris"}, "France", ("geo",), {})
    assert items[1].vars == {"city": "Lima"}
    assert items[1].metadata == {"hard": True}


def test_yml_extension_and_empty_file(tmp_path: Path) -> None:
    assert load_items(write(tmp_path, "empty.yml", "")) == []


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("- a: 1\n- just a string\n", 2, "expected a mapping"),
        ("- a: 1\n-   vars: [1, 2]\n", 2, "'vars' must be an object"),
        ("a: 1\n", 1, "expected a list of mappings"),
        ("- a: [1\n- b: 2\n", 2, "invalid YAML"),
        ("- a: 1\n  id: x\n- id: x\n  a: 2\n", 3, "duplicate id 'x' (first on line 1)"),
    ],
)
def test_yaml_errors_name_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(DatasetError) as info:
        load_items(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert problem in str(info.value)


def test_yaml_dates_hash_as_iso_strings(tmp_path: Path) -> None:
    (item,) = load_items(write(tmp_path, "d.yaml", "- when: 2026-11-30\n"))
    assert item.content_hash().startswith("sha256:")


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"unknown dataset format '\.txt'"):
        load_items(write(tmp_path, "x.txt", ""))
    with pytest.raises(DatasetError, match="cannot read"):
        load_items(tmp_path / "missing.jsonl")


# -- hashing ------------------------------------------------------------------------------------


def test_item_hash_is_stable_and_sensitive() -> None:
    base = Item("a", {"x": 1, "y": "two"}, "out", ("t",), {"m": 1})
    same = Item("b", {"y": "two", "x": 1}, "out", ("t",), {"m": 1})
    assert base.content_hash() == same.content_hash()  # key order and id do not matter
    assert base.content_hash() == (
        "sha256:"
        + hashlib.sha256(
            b'{"expected":"out","metadata":{"m":1},"tags":["t"],"vars":{"x":1,"y":"two"}}'
        ).hexdigest()
    )
    for changed in (
        Item("a", {"x": 2, "y": "two"}, "out", ("t",), {"m": 1}),
        Item("a", {"x": 1, "y": "two"}, "out!", ("t",), {"m": 1}),
        Item("a", {"x": 1, "y": "two"}, "out", ("u",), {"m": 1}),
        Item("a", {"x": 1, "y": "two"}, "out", ("t",), {"m": 2}),
        Item("a", {"x": "1", "y": "two"}, "out", ("t",), {"m": 1}),
    ):
        assert changed.content_hash() != base.content_hash()


def test_ids_from_content_are_stable_across_loads_and_formats(tmp_path: Path) -> None:
    jsonl = write(tmp_path, "a.jsonl", '{"q": "hi", "expected": "hello"}\n')
    csv_ = write(tmp_path, "a.csv", "q,expected\nhi,hello\n")
    yaml_ = write(tmp_path, "a.yaml", "- q: hi\n  expected: hello\n")
    ids = {load_items(p)[0].id for p in (jsonl, csv_, yaml_, jsonl)}
    assert len(ids) == 1


def test_dataset_version_hash_covers_order_ids_and_content() -> None:
    a = Item("a", {"x": 1})
    b = Item("b", {"x": 2})
    version = DatasetVersion("golden", (a, b))
    assert version.content_hash() == DatasetVersion("renamed", (a, b)).content_hash()
    assert version.content_hash() != DatasetVersion("golden", (b, a)).content_hash()
    assert version.content_hash() != DatasetVersion("golden", (a,)).content_hash()
    assert (
        version.content_hash() != DatasetVersion("golden", (a, Item("c", {"x": 2}))).content_hash()
    )
    assert (
        version.content_hash() != DatasetVersion("golden", (a, Item("b", {"x": 3}))).content_hash()
    )
    with pytest.raises(DatasetError, match="repeats id 'a'"):
        DatasetVersion("golden", (a, Item("a", {"x": 9})))


# -- variables ----------------------------------------------------------------------------------


def test_check_variables_lists_items_and_variables() -> None:
    items = [Item("a", {"q": 1, "ctx": 2}), Item("b", {"q": 1}), Item("c", {})]
    check_variables(items[:1], {"q", "ctx"})
    check_variables(items, set())
    with pytest.raises(DatasetError) as info:
        check_variables(items, ["q", "ctx"])
    message = str(info.value)
    assert "2 of 3 items lack template variables" in message
    assert "item 'b' lacks 'ctx'" in message
    assert "item 'c' lacks 'ctx', 'q'" in message
    assert "'a'" not in message


def test_check_variables_truncates_long_lists() -> None:
    items = [Item(str(i), {}) for i in range(30)]
    with pytest.raises(DatasetError, match="and 10 more"):
        check_variables(items, ["q"])
