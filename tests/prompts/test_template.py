"""Template checks and rendering: variables, partials, and the sandbox against injection."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.prompts import PromptSpec, TemplateError, check_spec, render
from bastion.prompts import template as template_module
from bastion.prompts.template import find_includes


def spec_of(content: str | None = None, *, text: str | None = None, **variables: Any) -> PromptSpec:
    data: dict[str, Any] = {"name": "p", "variables": variables}
    if text is not None:
        data["text"] = text
    else:
        data["messages"] = [{"role": "user", "content": content}]
    return PromptSpec.from_dict(data)


SUMMARIZE = PromptSpec.from_dict(
    {
        "name": "summarize",
        "model": "sim-small",
        "variables": {"ticket": {"type": "string"}, "tone": {"default": "neutral"}},
        "messages": [
            {"role": "system", "content": "You summarize support tickets in a {{ tone }} tone."},
            {"role": "user", "content": "{{ ticket }}"},
        ],
    }
)


# -- variables ----------------------------------------------------------------------------------


def test_render_messages_applies_defaults() -> None:
    assert render(SUMMARIZE, {"ticket": "It crashes."}) == [
        {"role": "system", "content": "You summarize support tickets in a neutral tone."},
        {"role": "user", "content": "It crashes."},
    ]
    rendered = render(SUMMARIZE, {"ticket": "x", "tone": "formal"})
    assert isinstance(rendered, list)
    assert "formal tone" in rendered[0]["content"]


def test_render_returns_new_dicts_and_leaves_the_spec_alone() -> None:
    rendered = render(SUMMARIZE, {"ticket": "x"})
    assert isinstance(rendered, list)
    rendered[1]["content"] = "changed"
    assert SUMMARIZE.messages is not None
    assert SUMMARIZE.messages[1]["content"] == "{{ ticket }}"


def test_render_text_prompt() -> None:
    spec = spec_of(text="Translate to {{ lang }}:\n{{ body }}\n", lang={}, body={})
    assert render(spec, {"lang": "French", "body": "hello"}) == "Translate to French:\nhello\n"


def test_template_without_tags_renders_to_itself() -> None:
    text = "No tags here.\nTrailing newline kept.\n"
    assert render(spec_of(text=text), {}) == text


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "missing variable 'ticket'"),
        ({"ticket": "x", "foo": 1}, "unexpected variable 'foo'"),
        ({"ticket": 3}, "variable 'ticket' must be string, got int"),
        ({"ticket": None}, "variable 'ticket' must be string, got null"),
        ({"ticket": "x", "tone": ["a"]}, "variable 'tone' must be string, got list"),
    ],
)
def test_variable_errors(values: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(SUMMARIZE, values)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("integer", 3, True),
        ("integer", -1, 2.5),
        ("number", 2.5, "2.5"),
        ("number", 7, False),
        ("boolean", False, 0),
        ("list", [1, 2], "12"),
        ("list", (1, 2), {"a": 1}),
        ("object", {"a": 1}, [("a", 1)]),
        ("string", "", b"bytes"),
    ],
)
def test_variable_types(kind: str, good: Any, bad: Any) -> None:
    spec = spec_of(text="{{ v }}", v={"type": kind})
    render(spec, {"v": good})
    with pytest.raises(TemplateError, match=f"variable 'v' must be {kind}, got "):
        render(spec, {"v": bad})


def test_optional_variable_without_default_is_none() -> None:
    spec = spec_of(text="a{% if extra %} {{ extra }}{% endif %}", extra={"required": False})
    assert render(spec, {}) == "a"
    assert render(spec, {"extra": "b"}) == "a b"
    assert render(spec, {"extra": None}) == "a"


def test_loops_filters_and_objects() -> None:
    spec = spec_of(
        text=(
            "{% for item in items %}{{ loop.index }}. {{ item.title|upper }}\n{% endfor %}"
            "{{ items|map(attribute='title')|join(', ') }} {{ meta|tojson }}"
        ),
        items={"type": "list"},
        meta={"type": "object"},
    )
    out = render(spec, {"items": [{"title": "a"}, {"title": "b"}], "meta": {"k": "<v>"}})
    assert out == '1. A\n2. B\na, b {"k": "<v>"}'


def test_content_parts_render_text_only() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x/{{ who }}.png"}}
    spec = PromptSpec.from_dict(
        {
            "name": "p",
            "variables": {"who": {}},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi {{ who }}"}, image]},
            ],
        }
    )
    rendered = render(spec, {"who": "ana"})
    assert rendered == [
        {"role": "user", "content": [{"type": "text", "text": "Hi ana"}, image]},
    ]


def test_runtime_errors_become_template_errors() -> None:
    spec = spec_of(text="{{ 10 / n }}", n={"type": "integer"})
    assert render(spec, {"n": 5}) == "2.0"
    with pytest.raises(TemplateError, match=r"cannot render text: ZeroDivisionError"):
        render(spec, {"n": 0})


def test_compiled_templates_are_cached() -> None:
    spec = spec_of(text="cached {{ a }} template", a={})
    render(spec, {"a": "1"})
    before = template_module._compile.cache_info().hits
    render(spec, {"a": "2"})
    assert template_module._compile.cache_info().hits == before + 1


# -- static checks ------------------------------------------------------------------------------


def test_check_spec_names_undeclared_variable_and_place() -> None:
    spec = PromptSpec.from_dict(
        {
            "name": "p",
            "variables": {"a": {}},
            "messages": [
                {"role": "system", "content": "{{ a }}"},
                {"role": "user", "content": "{{ a }}\n{{ x }}"},
            ],
        }
    )
    with pytest.raises(TemplateError) as caught:
        check_spec(spec)
    assert str(caught.value) == "undeclared variable 'x' in messages[1].content"
    assert caught.value.location == ("messages", 1, "content")
    assert caught.value.lineno == 2


def test_locally_assigned_names_are_not_undeclared() -> None:
    check_spec(spec_of(text="{% set y = 1 %}{% for i in xs %}{{ i }}{{ y }}{% endfor %}", xs={}))


def test_check_spec_syntax_error_names_field() -> None:
    spec = PromptSpec.from_dict(
        {
            "name": "p",
            "messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "{{ oops"}],
        }
    )
    with pytest.raises(TemplateError, match=r"syntax error: .* in messages\[1\]\.content"):
        check_spec(spec)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{% macro m() %}x{% endmacro %}", "'{% macro %}' is not allowed"),
        ('{% extends "base" %}', "'{% extends %}' is not allowed"),
        ('{% import "base" as b %}', "'{% import %}' is not allowed"),
        ("{% block b %}x{% endblock %}", "'{% block %}' is not allowed"),
        ("{% set _x = 1 %}", "forbidden name '_x'"),
        ("{{ ticket['__class__'] }}", "forbidden item '__class__'"),
        ("{{ ticket|sort(attribute='__class__') }}", "forbidden attribute '__class__'"),
        ("{{ ticket|selectattr('__class__') }}", "forbidden attribute '__class__'"),
        ("{{ ticket|replace(*ticket) }}", "'*args' and '**kwargs'"),
        ("{{ ticket|pprint }}", "unknown filter 'pprint'"),
        ("{{ ticket is bogus }}", "unknown test 'bogus'"),
        ("{% include ticket %}", "dynamic include"),
        ('{% include ["a", "b"] %}', "dynamic include"),
        ('{% include "a" ignore missing %}', "'ignore missing'"),
        ('{% include "../etc/passwd" %}', "not a prompt name"),
    ],
)
def test_forbidden_constructs(source: str, message: str) -> None:
    with pytest.raises(TemplateError) as caught:
        check_spec(spec_of(text=source, ticket={}), None)
    assert message in str(caught.value)
    with pytest.raises(TemplateError):
        render(spec_of(text=source, ticket={}), {"ticket": "t"})


INJECTIONS = [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ joiner.__init__.__globals__.os }}",
    "{{ lipsum.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ self }}",
    "{{ config }}",
    "{{ config.items() }}",
    "{{ request }}",
    "{{ request.application.__globals__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ range(10) }}",
    "{{ dict(a=1) }}",
    "{{ ticket.__class__ }}",
    "{{ ticket|attr('__class__') }}",
    "{{ '{0.__class__}'.format(ticket) }}",
    "{{ '{0.__class__.__mro__}'.format_map({'0': ticket}) }}",
    "{{ ticket.format }}",
    "{{ ticket.upper.__self__ }}",
    "{{ (ticket|list).__class__ }}",
    "{{ ticket.__class__.__base__.__subclasses__()[100] }}",
    "{{ ticket|map(attribute='__class__')|list }}",
]
# Refused statically; unchecked, the sandbox turns each unsafe attribute into an Undefined.
HARMLESS_UNCHECKED = "{{ ticket|map(attribute='__class__')|list }}"


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_payloads_are_rejected(payload: str) -> None:
    spec = spec_of(payload, ticket={})
    with pytest.raises(TemplateError):
        check_spec(spec)
    with pytest.raises(TemplateError):
        render(spec, {"ticket": "t"})


SANDBOX_ONLY = [p for p in INJECTIONS if p != HARMLESS_UNCHECKED] + [
    "{{ 2 ** 100000000 }}",
    "{{ 'a' * 100000000 }}",
    "{{ [1] * 100000000 }}",
    "{{ '%*d' % (1000000000, 1) }}",
    "{{ ticket|indent(100000000) }}",
    "{{ ticket.upper }}",
]


@pytest.mark.parametrize("payload", SANDBOX_ONLY)
def test_sandbox_alone_refuses_payloads(payload: str) -> None:
    # Defense in depth: with the static checks bypassed, the sandbox still refuses.
    with pytest.raises(TemplateError) as caught:
        template_module._render_source(payload, {"ticket": "t"}, ("text",))
    assert "<class" not in str(caught.value)


def test_unsafe_attribute_via_map_renders_nothing_dangerous() -> None:
    out = template_module._render_source(HARMLESS_UNCHECKED, {"ticket": "t"}, ("text",))
    assert out == "[Undefined]"


def test_sandbox_refusals_never_leak_a_bare_jinja_or_attribute_error() -> None:
    for payload in SANDBOX_ONLY:
        try:
            template_module._render_source(payload, {"ticket": "t"}, ("text",))
        except TemplateError:
            continue
        except Exception as exc:
            pytest.fail(f"{payload!r} raised {type(exc).__name__}: {exc}")
        else:
            pytest.fail(f"{payload!r} rendered")


def test_environment_has_no_globals_and_no_dangerous_filters() -> None:
    env = template_module._ENV
    assert env.globals == {}
    for name in ("attr", "format", "pprint", "random", "center", "batch", "slice", "xmlattr"):
        assert name not in env.filters
    assert env.autoescape is False


# -- partials -----------------------------------------------------------------------------------

TONE = PromptSpec.from_dict(
    {
        "name": "tone-guide",
        "variables": {"tone": {"default": "neutral"}},
        "text": "Write in a {{ tone }} tone.",
    }
)


def with_include(name: str = "tone-guide", **extra: Any) -> PromptSpec:
    return PromptSpec.from_dict(
        {
            "name": "answer",
            "variables": {"question": {}, **extra},
            "messages": [
                {"role": "system", "content": f'{{% include "{name}" %}} Be brief.'},
                {"role": "user", "content": "{{ question }}"},
            ],
        }
    )


def test_includes_are_static_sorted_unique() -> None:
    spec = spec_of(text='{% include "b" %}{% include "a" %}{% include "b" %}')
    assert find_includes(spec) == ("a", "b")
    assert find_includes(with_include()) == ("tone-guide",)


def test_render_with_partial_uses_partial_defaults_and_caller_values() -> None:
    rendered = render(with_include(), {"question": "why?"}, {"tone-guide": TONE})
    assert isinstance(rendered, list)
    assert rendered[0]["content"] == "Write in a neutral tone. Be brief."
    rendered = render(with_include(), {"question": "why?", "tone": "warm"}, {"tone-guide": TONE})
    assert isinstance(rendered, list)
    assert rendered[0]["content"] == "Write in a warm tone. Be brief."


def test_check_spec_checks_partial_names_unless_told_not_to() -> None:
    spec = with_include()
    check_spec(spec, ["tone-guide"])
    check_spec(spec, None)
    with pytest.raises(TemplateError, match=r"unknown partial 'tone-guide' in messages\[0\]"):
        check_spec(spec)
    with pytest.raises(TemplateError, match="includes itself"):
        check_spec(with_include("answer"), None)


def test_partial_errors() -> None:
    with pytest.raises(TemplateError, match="unknown partial 'tone-guide'"):
        render(with_include(), {"question": "q"})
    chat = PromptSpec.from_dict(
        {"name": "tone-guide", "messages": [{"role": "user", "content": "x"}]}
    )
    with pytest.raises(TemplateError, match="must be a text: prompt"):
        render(with_include(), {"question": "q"}, {"tone-guide": chat})
    bad = PromptSpec.from_dict({"name": "tone-guide", "text": "{{ ''.__class__ }}"})
    with pytest.raises(TemplateError, match="in partial 'tone-guide': forbidden attribute"):
        render(with_include(), {"question": "q"}, {"tone-guide": bad})


def test_include_cycle_is_an_error() -> None:
    a = PromptSpec.from_dict({"name": "a", "text": 'A {% include "b" %}'})
    b = PromptSpec.from_dict({"name": "b", "text": 'B {% include "a" %}'})
    with pytest.raises(TemplateError, match="include cycle: answer -> a -> b -> a"):
        render(with_include("a"), {"question": "q"}, {"a": a, "b": b})


def test_nested_partials_render() -> None:
    outer = PromptSpec.from_dict({"name": "outer", "text": '[{% include "tone-guide" %}]'})
    rendered = render(
        with_include("outer"), {"question": "q"}, {"outer": outer, "tone-guide": TONE}
    )
    assert isinstance(rendered, list)
    assert rendered[0]["content"] == "[Write in a neutral tone.] Be brief."
