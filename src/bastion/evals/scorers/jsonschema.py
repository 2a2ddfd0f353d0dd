"""A JSON Schema validator for the common subset scorers need, with no dependency.

Types, properties, required, additionalProperties, items, enum, const, numeric and length
bounds, pattern, anyOf/oneOf/allOf/not and local ``$ref``; errors read ``"$.a[0]: message"``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from bastion.evals.scorers.base import ScorerError

__all__ = ["schema_errors"]

_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _resolve_ref(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        raise ScorerError(f"json-schema: only local $ref ('#/...') are supported, got {ref!r}")
    target = root
    for part in ref[1:].lstrip("/").split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        else:
            raise ScorerError(f"json-schema: $ref {ref!r} points nowhere")
    return target


def schema_errors(
    instance: Any, schema: Any, *, path: str = "$", root: Any = None, depth: int = 0
) -> list[str]:
    """Where ``instance`` breaks ``schema``, as ``"$.a[0]: message"`` strings (empty: valid).

    The common JSON Schema subset: ``type`` (a name or a list), ``enum``, ``const``,
    ``properties``, ``required``, ``additionalProperties`` (bool or schema), ``items``,
    ``minItems``/``maxItems``, ``minimum``/``maximum``, ``exclusiveMinimum``/
    ``exclusiveMaximum``, ``minLength``/``maxLength``, ``pattern``, ``anyOf``/``oneOf``/
    ``allOf``/``not`` and local ``$ref``. Unknown keywords are ignored, as the standard says.
    """
    root = schema if root is None else root
    if depth > 64:
        return [f"{path}: schema nests too deeply"]
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    if not isinstance(schema, dict):
        raise ScorerError(f"json-schema: a schema must be an object or a boolean, got {schema!r}")
    if "$ref" in schema:
        return schema_errors(
            instance, _resolve_ref(schema["$ref"], root), path=path, root=root, depth=depth + 1
        )

    def sub(value: Any, sch: Any, where: str) -> list[str]:
        return schema_errors(value, sch, path=where, root=root, depth=depth + 1)

    mismatch = _type_mismatch(instance, schema.get("type"), path)
    if mismatch is not None:
        return [mismatch]
    errors: list[str] = []
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']!r}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} is not {schema['const']!r}")
    if _TYPES["number"](instance):
        errors.extend(_bound_errors(instance, schema, path))
    if isinstance(instance, str):
        errors.extend(_string_errors(instance, schema, path))
    if isinstance(instance, list):
        errors.extend(_array_errors(instance, schema, path, sub))
    if isinstance(instance, dict):
        errors.extend(_object_errors(instance, schema, path, sub))
    errors.extend(_combinator_errors(instance, schema, path, sub))
    if "not" in schema and not sub(instance, schema["not"], path):
        errors.append(f"{path}: matches a schema it must not match")
    return errors


# Checks a value against a subschema at a path, one level deeper: how keyword checks recurse.
_Sub = Callable[[Any, Any, str], list[str]]


def _type_mismatch(instance: Any, kind: Any, path: str) -> str | None:
    """The error when ``instance`` is none of the ``type`` keyword's types (then nothing else
    is checked), else None."""
    if kind is None:
        return None
    kinds = kind if isinstance(kind, list) else [kind]
    for k in kinds:
        if k not in _TYPES:
            raise ScorerError(f"json-schema: unknown type {k!r}")
    if not any(_TYPES[k](instance) for k in kinds):
        return f"{path}: expected {' or '.join(kinds)}, got {_json_type(instance)}"
    return None


def _string_errors(instance: str, schema: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    if isinstance(schema.get("minLength"), int) and len(instance) < schema["minLength"]:
        errors.append(f"{path}: shorter than {schema['minLength']} characters")
    if isinstance(schema.get("maxLength"), int) and len(instance) > schema["maxLength"]:
        errors.append(f"{path}: longer than {schema['maxLength']} characters")
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            if re.search(pattern, instance) is None:
                errors.append(f"{path}: does not match pattern {pattern!r}")
        except re.error as exc:
            raise ScorerError(f"json-schema: invalid pattern {pattern!r}: {exc}") from None
    return errors


def _array_errors(
    instance: list[Any], schema: Mapping[str, Any], path: str, sub: _Sub
) -> list[str]:
    errors: list[str] = []
    if isinstance(schema.get("minItems"), int) and len(instance) < schema["minItems"]:
        errors.append(f"{path}: fewer than {schema['minItems']} items")
    if isinstance(schema.get("maxItems"), int) and len(instance) > schema["maxItems"]:
        errors.append(f"{path}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if items is not None:
        for index, value in enumerate(instance):
            errors.extend(sub(value, items, f"{path}[{index}]"))
    return errors


def _object_errors(
    instance: dict[str, Any], schema: Mapping[str, Any], path: str, sub: _Sub
) -> list[str]:
    errors: list[str] = []
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    if isinstance(required, list):
        errors.extend(
            f"{path}: missing required property {name!r}"
            for name in required
            if name not in instance
        )
    additional = schema.get("additionalProperties", True)
    for name, value in instance.items():
        where = f"{path}.{name}"
        if name in properties:
            errors.extend(sub(value, properties[name], where))
        elif additional is False:
            errors.append(f"{path}: unexpected property {name!r}")
        elif isinstance(additional, dict):
            errors.extend(sub(value, additional, where))
    return errors


def _combinator_errors(instance: Any, schema: Mapping[str, Any], path: str, sub: _Sub) -> list[str]:
    errors: list[str] = []
    for key in ("allOf", "anyOf", "oneOf"):
        options = schema.get(key)
        if not isinstance(options, list):
            continue
        matches = [not sub(instance, option, path) for option in options]
        if key == "allOf":
            for option in options:
                errors.extend(sub(instance, option, path))
        elif key == "anyOf" and not any(matches):
            errors.append(f"{path}: matches none of the anyOf schemas")
        elif key == "oneOf" and sum(matches) != 1:
            errors.append(f"{path}: matches {sum(matches)} of the oneOf schemas, not exactly one")
    return errors


def _bound_errors(number: float, schema: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    for key, word in (
        ("minimum", "less than"),
        ("maximum", "greater than"),
        ("exclusiveMinimum", "not greater than"),
        ("exclusiveMaximum", "not less than"),
    ):
        bound = schema.get(key)
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            continue
        broken = {
            "minimum": number < bound,
            "maximum": number > bound,
            "exclusiveMinimum": number <= bound,
            "exclusiveMaximum": number >= bound,
        }[key]
        if broken:
            errors.append(f"{path}: {number!r} is {word} {bound!r}")
    return errors


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__
