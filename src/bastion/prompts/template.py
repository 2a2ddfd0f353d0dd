"""Prompt templates: a locked-down Jinja2 sandbox, static checks and rendering.

Prompt templates are written by people with registry access but rendered inside the gateway, so
a template is untrusted code. Four layers keep it harmless:

1. **Static checks** (`check_spec`, and again on every `render`, cached per source string): any
   name or attribute starting with `_`, `self`, macros/blocks/imports/extends, dynamic includes,
   `.format()` calls, unknown filters and undeclared variables are refused before anything runs.
2. **The sandbox**: `ImmutableSandboxedEnvironment` with no globals at all (`range`, `lipsum`,
   `cycler`, `joiner`, `namespace`, `dict` are removed: each is a handle into Python), an
   allowlist of filters and `StrictUndefined`.
3. **A budget** (`template_budget`; the guards in `template_guards` and `template_filters`, the
   static side in `template_static`): every render runs under `TemplateLimits` (output size,
   CPU time, memory, nesting). Operators, `~`, loops, filters, method calls and printing are
   guarded, so a template cannot build a gigabyte string, loop for minutes or recurse past the
   stack; what the source shows (nesting, constant sizes) is refused by `check_spec` already,
   at push.
4. **Error wrapping**: whatever Jinja or Python raises while rendering leaves as `TemplateError`
   with a message naming the construct or variable, never as a bare `SecurityError` or a 500;
   a limit leaves as `TemplateLimitError` naming the limit.

Compiled templates are cached by their source string, so rendering a typical prompt costs
microseconds. Partials are other prompts pulled in with `{% include "name" %}`; they must be
`text:` prompts, and render with the including prompt's variables.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jinja2.exceptions as jex
from jinja2 import BaseLoader, Environment, StrictUndefined, Template, meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bastion.names import PROMPT as PROMPT_NAME
from bastion.prompts.model import NAME_PATTERN, Path, PromptSpec, Variable, format_path
from bastion.prompts.template_budget import (
    ACTIVE_BUDGET,
    DEFAULT_LIMITS,
    LimitExceeded,
    RenderBudget,
    TemplateLimits,
    current_budget,
    uncharged,
)
from bastion.prompts.template_filters import guard_filters
from bastion.prompts.template_guards import (
    GuardedCodeGenerator,
    check_binop,
    check_call,
    check_result,
    finalize,
    guard_iter,
    guard_loops,
    guarded_concat,
    guarded_join,
)
from bastion.prompts.template_static import (
    MAX_LOOP_NESTING,
    PARSE_SAFE_DEPTH,
    Shape,
    bracket_depth,
    measure,
    shape_problem,
)

__all__ = ["TemplateError", "TemplateLimitError", "check_spec", "find_includes", "render"]

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


class TemplateLimitError(TemplateError):
    """A template exceeded one of its `TemplateLimits`; `limit` names which.

    `output`, `cpu_ms`, `memory` or `nesting`. The gateway answers it with a 422 (the template
    is valid, this render of it is not), the registry with a 400 when the source shows it.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: str,
        location: Path | None = None,
        lineno: int | None = None,
    ) -> None:
        super().__init__(message, location=location, lineno=lineno)
        self.limit = limit


# -- the environment ----------------------------------------------------------------------------


class _PromptEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with every operation that can allocate or repeat charged to the budget."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = GuardedCodeGenerator
    concat = staticmethod(guarded_concat)  # joins {% set %} / {% filter %} block output

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_binop(current_budget(), operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(
        __self,  # noqa: N805 - the base's own spelling, so `self` may be a keyword argument
        __context: Any,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        budget = current_budget()
        args = check_call(budget, __obj, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        return check_result(budget, result, "a call")

    guard_iter = staticmethod(guard_iter)  # each loop's iterable (see `guard_loops`)
    guard_join = staticmethod(guarded_join)  # the `~` operator (see `GuardedCodeGenerator`)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in _FORBIDDEN_METHODS and super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        # The base class hands out a sandboxed `str.format` before asking is_safe_attribute;
        # returning None makes `.format` just another refused attribute.
        return None


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


_ENV = _PromptEnvironment(
    undefined=StrictUndefined,
    autoescape=False,  # prompts are not HTML: "<b>" must reach the model as written
    keep_trailing_newline=True,  # a template without tags renders to exactly itself
    finalize=finalize,
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
_ENV.filters = guard_filters(_BASE_FILTERS)
assert set(_ENV.filters) == _SAFE_FILTERS | {"indent", "tojson"}, "every filter has its guard"


@lru_cache(maxsize=2048)
def _compile(source: str) -> Template:
    # Jinja's from_string, with every loop's iterable walked through the budget.
    with uncharged():
        code = _ENV.compile(guard_loops(_ENV.parse(source)))
        return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)


# -- static analysis ----------------------------------------------------------------------------


_FLAT = Shape(0, 1)


@dataclass(frozen=True, slots=True)
class _Analysis:
    """What one template source is, independent of the spec it sits in (so it is cacheable)."""

    problem: tuple[str, int | None] | None  # (reason, lineno): syntax error or forbidden construct
    names: Mapping[str, int]  # variables the template reads from outside -> first line
    includes: tuple[tuple[str, int], ...]  # (partial name, line)
    shape: Shape = _FLAT  # nesting and constant sizes, checked against the limits


@lru_cache(maxsize=2048)
def _analyse(source: str) -> _Analysis:
    with uncharged():
        return _analysed(source)


def _analysed(source: str) -> _Analysis:
    try:
        brackets = bracket_depth(_ENV, source)
        if brackets[0] > PARSE_SAFE_DEPTH:  # never handed to the recursive parser
            return _Analysis(None, {}, (), Shape(*brackets))
        ast = _ENV.parse(source)
    except jex.TemplateSyntaxError as exc:
        return _Analysis((f"syntax error: {exc.message}", exc.lineno), {}, ())
    except RecursionError:  # e.g. hundreds of nested blocks; the limit is far below
        return _Analysis(None, {}, (), Shape(PARSE_SAFE_DEPTH + 1, 1))
    shape = measure(ast, brackets)
    if shape.depth > PARSE_SAFE_DEPTH:  # too deep to walk with Jinja's recursive visitors
        return _Analysis(None, {}, (), shape)
    problem = _forbidden(ast) or shape.forbidden
    if problem is not None:
        return _Analysis(problem, {}, ())
    includes = []
    for node in ast.find_all(nodes.Include):
        target = node.template
        if not (isinstance(target, nodes.Const) and isinstance(target.value, str)):
            reason = "dynamic include: the partial's name must be a string literal"
            return _Analysis((reason, node.lineno), {}, ())
        if not PROMPT_NAME.is_valid(target.value):
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
    return _Analysis(None, names, tuple(includes), shape)


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
    spec: PromptSpec,
    location: Path,
    source: str,
    known_partials: Collection[str] | None,
    limits: TemplateLimits,
) -> None:
    # This runs on every render: the place is formatted only for an error.
    analysis = _analyse(source)
    if analysis.problem is not None:
        reason, line = analysis.problem
        where = format_path(location)
        raise TemplateError(f"{reason} in {where}", location=location, lineno=line)
    shape = analysis.shape
    if (
        shape.depth > limits.max_nesting
        or shape.loops > MAX_LOOP_NESTING
        or shape.constant_size > limits.max_output_bytes
    ):
        _check_shape(shape, limits, location)
    for name, line in analysis.includes:
        if name == spec.name:
            where = format_path(location)
            raise TemplateError(f"'{name}' includes itself in {where}", location=location)
        if known_partials is not None and name not in known_partials:
            where = format_path(location)
            raise TemplateError(
                f"unknown partial '{name}' in {where}", location=location, lineno=line
            )
    for name, line in analysis.names.items():
        if name not in spec.variables:
            where = format_path(location)
            raise TemplateError(
                f"undeclared variable '{name}' in {where}", location=location, lineno=line
            )


def _check_shape(shape: Shape, limits: TemplateLimits, location: Path) -> None:
    """Refuse nesting and constants the source already shows to be past `limits`."""
    found = shape_problem(shape, limits.max_nesting, limits.max_output_bytes)
    if found is not None:
        reason, limit, line = found
        message = f"{reason} in {format_path(location)}"
        raise TemplateLimitError(message, limit=limit, location=location, lineno=line)


def check_spec(
    spec: PromptSpec,
    known_partials: Collection[str] | None = (),
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> None:
    """Raise `TemplateError` for the first problem in `spec`'s templates.

    Syntax errors, forbidden constructs, variables used but not declared, includes of partials
    not in `known_partials`, and what the source shows to be past `limits` (nesting, constant
    sizes: a `TemplateLimitError`). `known_partials=None` accepts any (static) include name:
    the file loader uses it, since which partials exist is the registry's knowledge. Each
    template is compiled too, so one that Python itself cannot compile is refused here.
    """
    for location, source in spec.template_sources():
        _check_source(spec, location, source, known_partials, limits)
        if "{" in source or "\r" in source:
            try:
                _compile(source)
            except (SyntaxError, RecursionError, MemoryError, jex.TemplateError) as exc:
                where = format_path(location)
                raise TemplateError(
                    f"cannot compile {where}: {type(exc).__name__}: {exc}", location=location
                ) from None


# -- rendering ----------------------------------------------------------------------------------


def render(
    spec: PromptSpec,
    variables: Mapping[str, Any],
    partials: Mapping[str, PromptSpec] | None = None,
    *,
    limits: TemplateLimits = DEFAULT_LIMITS,
) -> list[dict[str, Any]] | str:
    """Render `spec` with `variables`: a new messages list, or the text for a `text:` prompt.

    Variables are validated first (missing, unexpected, wrong type: `TemplateError` naming the
    variable) and defaults applied. Partials' variables are part of the schema too, the
    including prompt's declaration winning on a clash. Message dicts are copied with only
    `content` (or the `text` of text parts) rendered; other parts are passed through. The whole
    render, all messages and partials together, runs under `limits`: past one, a
    `TemplateLimitError` naming it.
    """
    budget = RenderBudget(limits)
    budget_token = ACTIVE_BUDGET.set(budget)
    try:
        partials = partials or {}
        closure = _closure(spec, partials, limits)
        schema: dict[str, Variable] = {}
        for partial in closure:
            schema.update(partial.variables)
        schema.update(spec.variables)
        context = _bind(schema, variables)
        for location, source in spec.template_sources():
            _check_source(spec, location, source, None, limits)
        token = _PARTIALS.set(partials)
        try:
            rendered: list[dict[str, Any]] | str
            if spec.text is not None:
                rendered = _render_source(spec.text, context, ("text",), budget)
            else:
                rendered = list(_render_messages(spec.messages or (), context, budget))
            if budget.output_chars * 4 > limits.max_output_bytes:  # maybe too many bytes
                budget.check_encoded(_texts(rendered) if isinstance(rendered, list) else [rendered])
            if budget.deadline is not None:  # the clock runs: the last stretch counts too
                budget.check_clock()
            return rendered
        finally:
            _PARTIALS.reset(token)
    except LimitExceeded as exc:
        raise TemplateLimitError(exc.message, limit=exc.limit) from None
    finally:
        ACTIVE_BUDGET.reset(budget_token)


def _render_messages(
    messages: tuple[dict[str, Any], ...], context: dict[str, Any], budget: RenderBudget
) -> Iterator[dict[str, Any]]:
    for i, message in enumerate(messages):
        out = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            out["content"] = _render_source(content, context, ("messages", i, "content"), budget)
        elif isinstance(content, list):
            parts: list[Any] = []
            for j, part in enumerate(content):
                if isinstance(part, Mapping) and part.get("type") == "text":
                    where: Path = ("messages", i, "content", j, "text")
                    text = _render_source(part["text"], context, where, budget)
                    part = {**part, "text": text}
                parts.append(part)
            out["content"] = parts
        yield out


def _texts(messages: list[dict[str, Any]]) -> Iterator[str]:
    """The rendered text of `messages` (contents and text parts)."""
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else [{"text": content}]:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                yield text


def _closure(
    spec: PromptSpec, partials: Mapping[str, PromptSpec], limits: TemplateLimits
) -> list[PromptSpec]:
    """Every partial `spec` reaches through includes, checked; cycles are errors."""
    if not find_includes(spec):
        return []  # the common case, on every render
    found: dict[str, PromptSpec] = {}

    def visit(current: PromptSpec, stack: tuple[str, ...]) -> None:
        for name in find_includes(current):
            if name in stack:
                raise TemplateError(f"include cycle: {' -> '.join((*stack, name))}")
            if len(stack) >= limits.max_nesting:
                raise TemplateLimitError(
                    f"partials included deeper than {limits.max_nesting} levels "
                    f"('{name}' by '{current.name}'; templates.max_nesting)",
                    limit="nesting",
                )
            if name in found:
                continue
            partial = partials.get(name)
            if partial is None:
                raise TemplateError(f"unknown partial '{name}' (included by '{current.name}')")
            if partial.text is None:
                raise TemplateError(_not_text(name))
            try:
                check_spec(partial, None, limits=limits)
            except TemplateLimitError as exc:
                raise TemplateLimitError(f"in partial '{name}': {exc}", limit=exc.limit) from None
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


def _render_source(
    source: str,
    context: dict[str, Any],
    location: Path,
    budget: RenderBudget | None = None,
) -> str:
    """Render one template source; every failure leaves as a `TemplateError`.

    The output is counted chunk by chunk as the template streams it, so a loop printing large
    strings stops at the limit instead of after building the whole text. Without `budget`
    (a direct call) the source gets a default budget of its own.
    """
    token = None
    if budget is None:
        budget = RenderBudget()
        token = ACTIVE_BUDGET.set(budget)
    try:
        if "{" not in source and "\r" not in source:
            budget.emit(len(source))
            return source  # no tags: Jinja would return it unchanged (keep_trailing_newline)
        template = _compile(source)
        chunks: list[str] = []
        keep = chunks.append
        room = budget.limits.max_output_bytes - budget.output_chars
        size = 0
        for chunk in template.root_render_func(template.new_context(context)):
            size += len(chunk)
            if size > room:
                budget.emit(size)  # raises, naming the limit
            keep(chunk)
        budget.output_chars += size
        return "".join(chunks)
    except TemplateError:
        raise
    except LimitExceeded as exc:
        message = f"{exc.message} in {format_path(location)}"
        raise TemplateLimitError(message, limit=exc.limit, location=location) from None
    except RecursionError:
        raise TemplateLimitError(
            f"nesting too deep to render in {format_path(location)} (Python's recursion limit)",
            limit="nesting",
            location=location,
        ) from None
    except jex.SecurityError as exc:
        message = f"forbidden construct in {format_path(location)}: {exc}"
    except jex.UndefinedError as exc:
        message = f"undefined value in {format_path(location)}: {exc}"
    except jex.TemplateSyntaxError as exc:
        message = f"syntax error in {format_path(location)}: {exc.message}"
    except jex.TemplateNotFound as exc:
        message = f"unknown partial '{exc.name}' in {format_path(location)}"
    except Exception as exc:  # noqa: BLE001 - untrusted code: nothing it raises may be a 500
        message = f"cannot render {format_path(location)}: {type(exc).__name__}: {exc}"
    finally:
        if token is not None:
            ACTIVE_BUDGET.reset(token)
    raise TemplateError(message, location=location)
