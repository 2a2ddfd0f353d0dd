"""Structured-output scorers: the output is JSON (whole, or inside prose), matching a JSON
Schema when given, and its tool calls name declared tools with arguments matching their
parameter schemas."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from bastion.evals.scorers.base import Output, ScorerError, find_json, parse_json_text
from bastion.evals.scorers.checks import CheckScorer, check_keys, short
from bastion.evals.scorers.jsonschema import schema_errors

if TYPE_CHECKING:
    from bastion.evals.datasets import Item
    from bastion.evals.scorers.registry import ScorerContext

__all__ = ["contains_json", "is_json", "json_schema", "valid_tool_call"]


# -- JSON ---------------------------------------------------------------------------------------


def _schema_arg(spec: Mapping[str, Any], kind: str, *, required: bool) -> Any:
    if "schema" in spec and "value" in spec:
        raise ScorerError(f"{kind}: give the schema as 'schema' or 'value', not both")
    schema = spec.get("schema", spec.get("value"))
    if schema is None:
        if required:
            raise ScorerError(f"{kind}: 'schema' is required")
        return None
    if not isinstance(schema, dict | bool):
        raise ScorerError(f"{kind}: the schema must be an object, got {type(schema).__name__}")
    schema_errors(None, schema)  # raises ScorerError for unsupported constructs at the top
    return schema


def _json_check(value: Any, schema: Any) -> tuple[float, bool, str, dict[str, Any]]:
    errors = schema_errors(value, schema) if schema is not None else []
    if errors:
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        return 0.0, False, f"JSON does not match the schema: {shown}", {"errors": errors}
    return 1.0, True, "valid JSON" + (" matching the schema" if schema is not None else ""), {}


def is_json(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The whole output is JSON (surrounding whitespace allowed; ``fences: true`` also allows
    one Markdown code fence), matching ``schema`` when given."""
    check_keys(spec, {"schema", "value", "fences"})
    schema = _schema_arg(spec, "is-json", required=False)
    fences = bool(spec.get("fences", False))

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        ok, value = parse_json_text(output.text, fences=fences)
        if not ok:
            return 0.0, False, f"output is not JSON: {short(output.text)}", {}
        return _json_check(value, schema)

    return CheckScorer("is-json", check)


def json_schema(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """The output is JSON (one code fence allowed) matching ``schema`` (required)."""
    check_keys(spec, {"schema", "value"})
    schema = _schema_arg(spec, "json-schema", required=True)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        ok, value = parse_json_text(output.text, fences=True)
        if not ok:
            return 0.0, False, f"output is not JSON: {short(output.text)}", {}
        return _json_check(value, schema)

    return CheckScorer("json-schema", check)


def contains_json(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Some JSON object or array inside the output (in prose or a code fence) parses and, when
    ``schema`` is given, matches it."""
    check_keys(spec, {"schema", "value"})
    schema = _schema_arg(spec, "contains-json", required=False)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        candidates = find_json(output.text)
        if not candidates:
            return 0.0, False, "output contains no JSON object or array", {}
        for value in candidates:
            if schema is None or not schema_errors(value, schema):
                return _json_check(value, schema)
        return _json_check(candidates[0], schema)

    return CheckScorer("contains-json", check)


# -- tool calls ---------------------------------------------------------------------------------


def _declared_tools(tools: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    declared: dict[str, Any] = {}
    for tool in tools:
        if not isinstance(tool, Mapping):
            raise ScorerError(f"valid-tool-call: a tool must be an object, got {tool!r}")
        function = tool.get("function")
        body: Mapping[str, Any] = function if isinstance(function, Mapping) else tool
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise ScorerError(f"valid-tool-call: a tool without a name: {tool!r}")
        schema = body.get("parameters", body.get("input_schema", {"type": "object"}))
        declared[name] = schema
    return declared


def _call_parts(call: Mapping[str, Any]) -> tuple[Any, Any]:
    function = call.get("function")
    body: Mapping[str, Any] = function if isinstance(function, Mapping) else call
    arguments = body.get("arguments", body.get("input"))
    return body.get("name"), arguments


def valid_tool_call(spec: Mapping[str, Any], context: ScorerContext | None = None) -> CheckScorer:
    """Every tool call names a declared tool (spec ``tools`` or the context's tools; OpenAI,
    Anthropic or flat shape) and its arguments are JSON matching the tool's parameter schema.
    The score is the share of valid calls; no call at all fails."""
    check_keys(spec, {"tools"})
    tools = spec.get("tools")
    if tools is None:
        tools = list(context.tools) if context is not None else []
    if not isinstance(tools, list | tuple) or not tools:
        raise ScorerError(
            "valid-tool-call: no tools declared (give 'tools' or ScorerContext(tools=...))"
        )
    declared = _declared_tools(tools)
    for schema in declared.values():
        schema_errors(None, schema)

    def check(output: Output, item: Item) -> tuple[float, bool, str, dict[str, Any]]:
        if not output.tool_calls:
            return 0.0, False, "the output has no tool calls", {}
        problems: list[str] = []
        valid = 0
        for index, call in enumerate(output.tool_calls):
            if not isinstance(call, Mapping):
                problems.append(f"call {index + 1}: not an object")
                continue
            name, arguments = _call_parts(call)
            label = f"call {index + 1} ({name!r})"
            if name not in declared:
                problems.append(f"{label}: unknown tool (declared: {', '.join(sorted(declared))})")
                continue
            if isinstance(arguments, str):
                ok, arguments = parse_json_text(arguments) if arguments.strip() else (True, {})
                if not ok:
                    problems.append(f"{label}: arguments are not valid JSON")
                    continue
            elif arguments is None:
                arguments = {}
            errors = schema_errors(arguments, declared[name])
            if errors:
                problems.append(f"{label}: {'; '.join(errors[:3])}")
                continue
            valid += 1
        total = len(output.tool_calls)
        if problems:
            return valid / total, False, "; ".join(problems), {"problems": problems}
        return 1.0, True, f"{total} valid tool call(s)", {}

    return CheckScorer("valid-tool-call", check)
