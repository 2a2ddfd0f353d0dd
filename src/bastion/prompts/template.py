"""Prompt templates: a locked-down Jinja2 sandbox, static checks and rendering.

Prompt templates are written by people with registry access but rendered inside the gateway, so
a template is untrusted code. Three layers keep it harmless:

1. **Static checks** (`check_spec`, and again on every `render`, cached per source string): any
   name or attribute starting with `_`, `self`, macros/blocks/imports/extends, dynamic includes,
   `.format()` calls, unknown filters and undeclared variables are refused before anything runs.
2. **The sandbox**: `ImmutableSandboxedEnvironment` with no globals at all (`range`, `lipsum`,
   `cycler`, `joiner`, `namespace`, `dict` are removed: each is a handle into Python), an
   allowlist of filters, `StrictUndefined`, and guards on `*`, `**` and `%` so a template cannot
   build a gigabyte string or number.
3. **Error wrapping**: whatever Jinja or Python raises while rendering leaves as `TemplateError`
   with a message naming the construct or variable, never as a bare `SecurityError` or a 500.

Compiled templates are cached by their source string, so rendering a typical prompt costs
microseconds. Partials are other prompts pulled in with `{% include "name" %}`; they must be
`text:` prompts, and render with the including prompt's variables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2.exceptions as jex
from jinja2 import BaseLoader, Environment, StrictUndefined, Template, Undefined, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bastion.prompts.model import NAME_PATTERN, Path, PromptSpec, Variable, format_path

__all__ = ["TemplateError", "check_spec", "find_includes", "render"]

_MAX_SEQUENCE = 1_000_000  # longest string/list a template may build with `*`
_MAX_EXPONENT = 1024  # `9 ** 9 ** 9` would hang the worker computing a 370-million-digit int
_MAX_INDENT = 64

# Statements that reach across templates or define callables: none is needed in a prompt, and
# each widens what a template can do (macros are callables, extends/import load other sources).
_FORBIDDEN_NODES: dict[type[nodes.Node], str] = {
    nodes.Macro: "{% macro %}",
    nodes.CallBlock: "{% call %}",
    nodes.Extends: "{% extends %}",
    nodes.Block: "{% block %}",
    nodes.Import: "{% import %}",
    nodes.FromImport: "{% from ... import %}",
    nodes.ScopedEvalContextModifier: "{% autoescape %}",
    nodes.EvalContextModifier: "{% autoescape %}",
}
# `str.format` walks attributes by name inside the format string ('{0.__class__}'), out of
# reach of the static attribute check; the sandbox intercepts it too, this refuses it up front.
_FORBIDDEN_METHODS = frozenset({"format", "format_map", "mro"})
_NAME_RE = re.compile(NAME_PATTERN)
_ATTRIBUTE_FILTERS = frozenset({"selectattr", "rejectattr", "groupby"})


class TemplateError(ValueError):
    """A template is invalid or cannot be rendered with the given variables.

    `location` is the template's place in the spec (`("messages", 1, "content")`) and `lineno`
    the 1-based line inside that template, when known: files.py maps them to a file line.
    """

    def __init__(
        self, message: str, *, location: Path | None = None, lineno: int | None = None
    ) -> None:
        super().__init__(message)
        self.location = location
        self.lineno = lineno


# -- the environment ----------------------------------------------------------------------------


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus size guards on the operators that can allocate without bound."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            # "%*d" % (10**9, 1) pads to a gigabyte; prompts concatenate with `~` instead.
            raise jex.SecurityError("string formatting with '%' is not allowed")
        if operator == "**" and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise jex.SecurityError(f"exponent larger than {_MAX_EXPONENT}")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(count, int)
                if sized and len(seq) * count > _MAX_SEQUENCE:
                    raise jex.SecurityError(f"repetition longer than {_MAX_SEQUENCE}")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in _FORBIDDEN_METHODS and super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        # The base class hands out a sandboxed `str.format` before asking is_safe_attribute;
        # returning None makes `.format` just another refused attribute.
        return None


def _finalize(value: Any) -> Any:
    # Only data is printed: a method's or a Jinja internal's repr (`{{ self }}`, `{{ x.upper }}`)
    # shows memory addresses and internals, nothing a prompt needs.
    if isinstance(value, _PRINTABLE) or value is None:
        return value  # an Undefined fails on its own, with the variable's name
    raise jex.SecurityError(f"only data can be printed, not {type(value).__name__}")


_PRINTABLE = (str, int, float, list, tuple, dict, Mapping, Undefined)


_PARTIALS: ContextVar[Mapping[str, PromptSpec] | None] = ContextVar(
    "bastion_prompt_partials", default=None
)


class _PartialLoader(BaseLoader):
    """Resolves `{% include "name" %}` against the `partials` of the render in progress.

    The mapping differs per render, so it travels in a ContextVar (safe across threads and
    asyncio tasks) and Jinja's own name-keyed template cache is off; compiled partials still
    come from the source-keyed cache.
    """

    def load(
        self,
        environment: Environment,
        name: str,
        globals: MutableMapping[str, Any] | None = None,
    ) -> Template:
        partials = _PARTIALS.get() or {}
        spec = partials.get(name)
        if spec is None:
            raise TemplateError(f"unknown partial '{name}'")
        if spec.text is None:
            raise TemplateError(_not_text(name))
        return _compile(spec.text)


def _not_text(name: str) -> str:
    return f"partial '{name}' must be a text: prompt (prompts with messages cannot be included)"


def _indent(value: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    size = width if isinstance(width, int) else len(width)
    if size > _MAX_INDENT:
        raise jex.SecurityError(f"indent wider than {_MAX_INDENT}")
    return str(_BASE_FILTERS["indent"](value, width, first, blank))


def _tojson(value: Any, indent: int | None = None) -> str:
    # Jinja's tojson escapes <, >, & and ' for HTML; a prompt wants the JSON as written.
    if indent is not None and not 0 <= indent <= _MAX_INDENT:
        raise jex.SecurityError(f"tojson indent must be 0..{_MAX_INDENT}")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, indent=indent)


_ENV = _PromptEnvironment(
    undefined=StrictUndefined,
    autoescape=False,  # prompts are not HTML: "<b>" must reach the model as written
    keep_trailing_newline=True,  # a template without tags renders to exactly itself
    finalize=_finalize,
    cache_size=0,  # include names resolve per render (see _PartialLoader)
    loader=_PartialLoader(),
)
_ENV.globals.clear()
_BASE_FILTERS = dict(_ENV.filters)
# Allowlist: text shaping only. Gone: attr (dynamic attribute names), format (% formatting),
# center/batch/slice (allocate by an argument), random, pprint, urlize and the HTML ones.
_SAFE_FILTERS = {
    *("abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "groupby"),
    *("int", "items", "join", "last", "length", "list", "lower", "map", "max", "min"),
    *("reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr", "sort"),
    *("string", "sum", "title", "trim", "truncate", "unique", "upper", "wordcount", "wordwrap"),
}
_ENV.filters = {name: _BASE_FILTERS[name] for name in _SAFE_FILTERS}
_ENV.filters["indent"] = _indent
_ENV.filters["tojson"] = _tojson


@lru_cache(maxsize=2048)
def _compile(source: str) -> Template:
    return _ENV.from_string(source)


# -- static analysis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Analysis:
    """What one template source is, independent of the spec it sits in (so it is cacheable)."""

    problem: tuple[str, int | None] | None  # (reason, lineno): syntax error or forbidden construct
    names: Mapping[str, int]  # variables the template reads from outside -> first line
    includes: tuple[tuple[str, int], ...]  # (partial name, line)


@lru_cache(maxsize=2048)
def _analyse(source: str) -> _Analysis:
    try:
        ast = _ENV.parse(source)
    except jex.TemplateSyntaxError as exc:
        return _Analysis((f"syntax error: {exc.message}", exc.lineno), {}, ())
    problem = _forbidden(ast)
    if problem is not None:
        return _Analysis(problem, {}, ())
    includes = []
    for node in ast.find_all(nodes.Include):
        target = node.template
        if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
            reason = "dynamic include: the partial's name must be a string literal"
            return _Analysis((reason, node.lineno), {}, ())
        if not _NAME_RE.match(target.value):
            reason = f"include of '{target.value}': not a prompt name ({NAME_PATTERN})"
            return _Analysis((reason, node.lineno), {}, ())
        if node.ignore_missing:
            return _Analysis(("'ignore missing' includes are not allowed", node.lineno), {}, ())
        includes.append((target.value, node.lineno))
    names: dict[str, int] = {}
    undeclared = meta.find_undeclared_variables(ast)
    for name_node in ast.find_all(nodes.Name):
        if name_node.name in undeclared and name_node.ctx == "load":
            names.setdefault(name_node.name, name_node.lineno)
    return _Analysis(None, names, tuple(includes))


def _forbidden(ast: nodes.Template) -> tuple[str, int] | None:
    """The first construct a prompt may not use, as (reason, line), or None."""
    for node in ast.find_all(nodes.Node):
        line = node.lineno
        if type(node) in _FORBIDDEN_NODES:
            return f"'{_FORBIDDEN_NODES[type(node)]}' is not allowed in prompts", line
        if isinstance(node, nodes.Name) and (node.name.startswith("_") or node.name == "self"):
            return f"forbidden name '{node.name}'", line
        if isinstance(node, nodes.Getattr | nodes.NSRef) and node.attr.startswith("_"):
            return f"forbidden attribute '{node.attr}'", line
        if isinstance(node, nodes.Getattr) and node.attr in _FORBIDDEN_METHODS:
            return f"forbidden method '{node.attr}'", line
        if isinstance(node, nodes.Getitem) and _private_const(node.arg):
            return f"forbidden item '{_const(node.arg)}'", line
        if isinstance(node, nodes.Filter | nodes.Test):
            table = _ENV.filters if isinstance(node, nodes.Filter) else _ENV.tests
            if node.name not in table:
                kind = "filter" if isinstance(node, nodes.Filter) else "test"
                return f"unknown {kind} '{node.name}'", line
        if isinstance(node, nodes.Filter | nodes.Test | nodes.Call):
            if node.dyn_args is not None or node.dyn_kwargs is not None:
                return "'*args' and '**kwargs' in calls are not allowed", line
            # Attribute names given as strings (`sort(attribute='__class__')`) are attribute
            # access the Getattr check above cannot see.
            candidates = [kw.value for kw in node.kwargs if kw.key == "attribute"]
            if isinstance(node, nodes.Filter) and node.name in _ATTRIBUTE_FILTERS:
                candidates += node.args[:1]
            for value in candidates:
                if _private_const(value):
                    return f"forbidden attribute '{_const(value)}'", line
    return None


def _const(node: nodes.Node) -> Any:
    return node.value if isinstance(node, nodes.Const) else None


def _private_const(node: nodes.Node) -> bool:
    value = _const(node)
    return isinstance(value, str) and any(p.startswith("_") for p in value.split("."))


def find_includes(spec: PromptSpec) -> tuple[str, ...]:
    """Names of the partials `spec` includes, sorted and unique (unparsable templates: none)."""
    found = {name for _, source in spec.template_sources() for name, _ in _analyse(source).includes}
    return tuple(sorted(found))


def _check_source(
    spec: PromptSpec, location: Path, source: str, known_partials: Collection[str] | None
) -> None:
    analysis = _analyse(source)
    where = format_path(location)
    if analysis.problem is not None:
        reason, line = analysis.problem
        raise TemplateError(f"{reason} in {where}", location=location, lineno=line)
    for name, line in analysis.includes:
        if name == spec.name:
            raise TemplateError(f"'{name}' includes itself in {where}", location=location)
        if known_partials is not None and name not in known_partials:
            raise TemplateError(
                f"unknown partial '{name}' in {where}", location=location, lineno=line
            )
    for name, line in analysis.names.items():
        if name not in spec.variables:
            raise TemplateError(
                f"undeclared variable '{name}' in {where}", location=location, lineno=line
            )


def check_spec(spec: PromptSpec, known_partials: Collection[str] | None = ()) -> None:
    """Raise `TemplateError` for the first problem in `spec`'s templates.

    Syntax errors, forbidden constructs, variables used but not declared, and includes of
    partials not in `known_partials`. `known_partials=None` accepts any (static) include name:
    the file loader uses it, since which partials exist is the registry's knowledge.
    """
    for location, source in spec.template_sources():
        _check_source(spec, location, source, known_partials)


# -- rendering ----------------------------------------------------------------------------------


def render(
    spec: PromptSpec,
    variables: Mapping[str, Any],
    partials: Mapping[str, PromptSpec] | None = None,
) -> list[dict[str, Any]] | str:
    """Render `spec` with `variables`: a new messages list, or the text for a `text:` prompt.

    Variables are validated first (missing, unexpected, wrong type: `TemplateError` naming the
    variable) and defaults applied. Partials' variables are part of the schema too, the
    including prompt's declaration winning on a clash. Message dicts are copied with only
    `content` (or the `text` of text parts) rendered; other parts are passed through.
    """
    partials = partials or {}
    closure = _closure(spec, partials)
    schema: dict[str, Variable] = {}
    for partial in closure:
        schema.update(partial.variables)
    schema.update(spec.variables)
    context = _bind(schema, variables)
    for location, source in spec.template_sources():
        _check_source(spec, location, source, None)
    token = _PARTIALS.set(partials)
    try:
        if spec.text is not None:
            return _render_source(spec.text, context, ("text",))
        return list(_render_messages(spec.messages or (), context))
    finally:
        _PARTIALS.reset(token)


def _render_messages(
    messages: tuple[dict[str, Any], ...], context: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    for i, message in enumerate(messages):
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = _render_source(content, context, ("messages", i, "content"))
        elif isinstance(content, list):
            parts: list[Any] = []
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "text":
                    where: Path = ("messages", i, "content", j, "text")
                    part = {**part, "text": _render_source(part["text"], context, where)}
                parts.append(part)
            out["content"] = parts
        yield out


def _closure(spec: PromptSpec, partials: Mapping[str, PromptSpec]) -> list[PromptSpec]:
    """Every partial `spec` reaches through includes, checked; cycles are errors."""
    found: dict[str, PromptSpec] = {}

    def visit(current: PromptSpec, stack: tuple[str, ...]) -> None:
        for name in find_includes(current):
            if name in stack:
                raise TemplateError(f"include cycle: {' -> '.join((*stack, name))}")
            if name in found:
                continue
            partial = partials.get(name)
            if partial is None:
                raise TemplateError(f"unknown partial '{name}' (included by '{current.name}')")
            if partial.text is None:
                raise TemplateError(_not_text(name))
            try:
                check_spec(partial, None)
            except TemplateError as exc:
                raise TemplateError(f"in partial '{name}': {exc}") from None
            found[name] = partial
            visit(partial, (*stack, name))

    visit(spec, (spec.name,))
    return list(found.values())


def _bind(schema: Mapping[str, Variable], values: Mapping[str, Any]) -> dict[str, Any]:
    for name in values:
        if name not in schema:
            raise TemplateError(f"unexpected variable '{name}'")
    context: dict[str, Any] = {}
    for name, variable in schema.items():
        if name not in values or (values[name] is None and not variable.required):
            if variable.required:
                raise TemplateError(f"missing variable '{name}'")
            # Optional without a default reads as None, so `{% if x %}` works under
            # StrictUndefined (which refuses to test an undefined value for truth).
            context[name] = variable.default
            continue
        value = values[name]
        if not variable.accepts(value):
            got = "null" if value is None else type(value).__name__
            raise TemplateError(f"variable '{name}' must be {variable.type}, got {got}")
        context[name] = value
    return context


def _render_source(source: str, context: Mapping[str, Any], location: Path) -> str:
    """Render one template source; every failure leaves as a `TemplateError`."""
    if "{" not in source and "\r" not in source:
        return source  # no tags: Jinja would return it unchanged (keep_trailing_newline)
    where = format_path(location)
    try:
        return _compile(source).render(context)
    except TemplateError:
        raise
    except jex.SecurityError as exc:
        message = f"forbidden construct in {where}: {exc}"
    except jex.UndefinedError as exc:
        message = f"undefined value in {where}: {exc}"
    except jex.TemplateSyntaxError as exc:
        message = f"syntax error in {where}: {exc.message}"
    except jex.TemplateNotFound as exc:
        message = f"unknown partial '{exc.name}' in {where}"
    except Exception as exc:  # noqa: BLE001 - untrusted code: nothing it raises may be a 500
        message = f"cannot render {where}: {type(exc).__name__}: {exc}"
    raise TemplateError(message, location=location)
