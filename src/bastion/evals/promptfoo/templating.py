"""promptfoo's Nunjucks ``{{ var }}`` templates rendered by Bastion's sandboxed template engine
(:mod:`bastion.prompts.template`).

Nunjucks and Jinja2 share the syntax a prompt uses (``{{ x }}``, ``{% if %}``, ``{% for %}``,
filters). Of Nunjucks' built-in filters, these render the same way: ``abs``, ``capitalize``,
``default``/``d``, ``dictsort``, ``first``, ``float``, ``groupby``, ``indent``, ``int``,
``join``, ``last``, ``length``, ``list``, ``lower``, ``reject``, ``rejectattr``, ``replace``,
``reverse``, ``round``, ``select``, ``selectattr``, ``sort``, ``string``, ``sum``, ``title``,
``trim``, ``truncate``, ``upper``, ``wordcount``. ``safe`` is accepted and does nothing (prompts
are never HTML-escaped) and ``dump`` is rendered by ``tojson`` (JSON with sorted keys and a
space after ``,``/``:``, where Nunjucks prints compact JSON in insertion order). The rest are
refused by name before any call: :data:`UNSUPPORTED_FILTERS`, and custom
``nunjucksFilters``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from bastion.prompts import PromptSpec, PromptSpecError, TemplateError, render

__all__ = [
    "SUPPORTED_FILTERS",
    "UNSUPPORTED_FILTERS",
    "check_filters",
    "render_prompt",
    "render_string",
]

SUPPORTED_FILTERS = frozenset(
    {"abs", "capitalize", "d", "default", "dictsort", "dump", "first", "float", "groupby",
     "indent", "int", "join", "last", "length", "list", "lower", "reject", "rejectattr",
     "replace", "reverse", "round", "safe", "select", "selectattr", "sort", "string", "sum",
     "title", "trim", "truncate", "upper", "wordcount",
     # Jinja-only filters the engine has: harmless, and a config may well use them.
     "count", "items", "map", "max", "min", "tojson", "unique", "wordwrap"}
)  # fmt: skip
UNSUPPORTED_FILTERS = frozenset(
    {"batch", "center", "escape", "e", "forceescape", "nl2br", "random", "slice", "striptags",
     "urlencode", "urlize"}
)  # fmt: skip
_TAG = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.DOTALL)
_FILTER = re.compile(r"\|\s*([A-Za-z_][A-Za-z0-9_]*)")
_SAFE = re.compile(r"\|\s*safe\b(?!\s*\()")
_DUMP = re.compile(r"\|\s*dump\b")
_VARIABLE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_PY_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "list"),
    (dict, "object"),
)  # fmt: skip


def _strings(source: Any) -> list[str]:
    if isinstance(source, str):
        return [source]
    out: list[str] = []
    for message in source or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out += [
                p["text"]
                for p in content
                if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            ]
    return out


def check_filters(source: Any) -> list[str]:
    """Problems with the filters a template (text or chat messages) uses, one per filter."""
    problems: list[str] = []
    for text in _strings(source):
        for tag in _TAG.findall(text):
            for name in _FILTER.findall(tag):
                if name in SUPPORTED_FILTERS:
                    continue
                if name in UNSUPPORTED_FILTERS:
                    message = f"the Nunjucks filter {name!r} is not supported"
                else:
                    message = f"unknown filter {name!r} (custom nunjucksFilters are not supported)"
                if message not in problems:
                    problems.append(message)
    return problems


def _translate(text: str) -> str:
    """Nunjucks spellings the engine lacks, rewritten inside tags only."""

    def fix(match: re.Match[str]) -> str:
        return _DUMP.sub("| tojson", _SAFE.sub("", match.group(0)))

    return _TAG.sub(fix, text)


def _kind(value: Any) -> str:
    for python_type, name in _PY_TYPES:
        if isinstance(value, python_type):
            return name
    return "string"


def _spec(source: Any, variables: Mapping[str, Any]) -> PromptSpec:
    declared: dict[str, Any] = {}
    for name, value in variables.items():
        if not _VARIABLE.match(name):
            continue  # no template can name it ({{ my-var }} is a subtraction); assertions can
        declared[name] = {"type": _kind(value)} if value is not None else {"required": False}
    body: dict[str, Any] = {"name": "promptfoo", "variables": declared}
    if isinstance(source, str):
        body["text"] = _translate(source)
    else:
        messages = []
        for message in source:
            out = dict(message)
            if isinstance(out.get("content"), str):
                out["content"] = _translate(out["content"])
            messages.append(out)
        body["messages"] = messages
    try:
        return PromptSpec.from_dict(body)
    except PromptSpecError as exc:
        raise TemplateError(str(exc)) from None


def _explain(exc: TemplateError) -> TemplateError:
    text = str(exc)
    match = re.match(r"undeclared variable '([^']+)'", text)
    if match is not None:
        return TemplateError(
            f"the template uses {{{{ {match.group(1)} }}}}, which the test's vars do not set"
        )
    return exc


def render_prompt(
    source: Any, variables: Mapping[str, Any], *, prefix: str = "", suffix: str = ""
) -> list[dict[str, Any]]:
    """``source`` (text, or chat messages) rendered with ``variables`` as chat messages; a
    text prompt becomes one user message. ``prefix``/``suffix`` (a test's ``options``) wrap a
    text prompt.

    Raises:
        TemplateError: a variable is missing, a construct is refused, rendering failed.
    """
    if isinstance(source, str):
        source = f"{prefix}{source}{suffix}"
    elif prefix or suffix:
        raise TemplateError("options.prefix/suffix apply to text prompts, not chat messages")
    # Nunjucks prints null as nothing where Jinja prints "None".
    variables = {k: "" if v is None else v for k, v in variables.items()}
    spec = _spec(source, variables)
    try:
        rendered = render(spec, {k: v for k, v in variables.items() if k in spec.variables})
    except TemplateError as exc:
        raise _explain(exc) from None
    if isinstance(rendered, str):
        return [{"role": "user", "content": rendered}]
    return rendered


def render_string(text: str, variables: Mapping[str, Any]) -> str:
    """An assertion value (or other string) rendered with a test's vars."""
    if "{" not in text:
        return text
    messages = render_prompt(text, variables)
    content = messages[0]["content"]
    return content if isinstance(content, str) else json.dumps(content)
