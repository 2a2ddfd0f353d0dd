"""JSON values held to the caps by one iterative walk; the same budget spans a document."""

from __future__ import annotations

import csv

import orjson
import pytest

from bastion.parsing import InputError, InputLimits, ValueBudget, allow_csv_fields

LIMITS = InputLimits(max_values=100, max_depth=4, max_field_chars=64)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_depth_is_measured_whatever_the_input() -> None:
    assert ValueBudget(LIMITS).loads(nested(4)) == [[[[]]]]
    with pytest.raises(InputError, match=r"deeper than 4 levels \(limits.max_depth\)") as info:
        ValueBudget(LIMITS).loads(nested(5), line=3)
    assert (info.value.limit, info.value.line) == ("limits.max_depth", 3)
    # Past orjson's own limit, and far past Python's recursion limit: still the same error.
    for depth in (2_000, 200_000):
        with pytest.raises(InputError, match=r"limits\.max_depth"):
            ValueBudget(LIMITS).loads(nested(depth))
    with pytest.raises(InputError, match=r"limits\.max_depth"):
        ValueBudget(LIMITS).check({"a": {"b": {"c": {"d": [1]}}}})


def test_values_are_counted_across_the_parts_of_one_document() -> None:
    budget = ValueBudget(LIMITS)
    row = {"q": "x", "n": [1, 2, 3]}  # 1 mapping + 2 keys + 1 string + 1 list + 3 numbers = 8
    for _ in range(12):
        budget.check(row)
    assert budget.values == 96
    with pytest.raises(InputError, match=r"more than 100 values \(limits.max_values\)"):
        budget.check(row)
    with pytest.raises(InputError, match=r"limits\.max_values"):
        ValueBudget(LIMITS).loads(orjson.dumps(list(range(100))))


def test_strings_and_keys_over_the_field_cap_are_refused() -> None:
    ValueBudget(LIMITS).check({"k" * 64: "v" * 64})
    for value in ({"q": "v" * 65}, {"k" * 65: 1}, ["x" * 65]):
        with pytest.raises(InputError, match=r"65 characters .*\(limits.max_field_chars\)"):
            ValueBudget(LIMITS).check(value)
    with pytest.raises(InputError, match=r"limits\.max_field_chars"):
        ValueBudget(LIMITS).field("c" * 65)


def test_invalid_json_is_an_input_error() -> None:
    with pytest.raises(InputError, match="invalid JSON") as info:
        ValueBudget(LIMITS).loads("{bad", line=7)
    assert info.value.line == 7
    assert info.value.limit is None


def test_the_csv_cell_cap_follows_the_largest_configured_field() -> None:
    before = csv.field_size_limit()
    allow_csv_fields(InputLimits(max_field_chars=before + 10))
    assert csv.field_size_limit() == before + 11
    allow_csv_fields(InputLimits(max_field_chars=64))  # never lowered: it is process-wide
    assert csv.field_size_limit() == before + 11
