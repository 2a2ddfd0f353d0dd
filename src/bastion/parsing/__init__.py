"""Bounded parsers of user input: YAML, JSON, JSONL and CSV held to the ``limits:`` caps."""

from bastion.parsing.bounded import ValueBudget, allow_csv_fields
from bastion.parsing.limits import InputError, InputLimits, check_size, read_bounded
from bastion.parsing.safe_yaml import YamlDocument, load_yaml, parse_yaml

__all__ = [
    "InputError",
    "InputLimits",
    "ValueBudget",
    "YamlDocument",
    "allow_csv_fields",
    "check_size",
    "load_yaml",
    "parse_yaml",
    "read_bounded",
]
