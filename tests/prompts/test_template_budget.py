"""Templates render under a budget: output size, CPU time, memory and nesting.

Every attack below, on the unguarded sandbox, either grew the process by gigabytes, held the
CPU for minutes, or died in a RecursionError; here each is a `TemplateLimitError` naming its
limit, raised before the damage (sizes are checked before anything is built).
"""

from __future__ import annotations

from typing import Any

import jinja2
import jinja2.sandbox
import pytest

from bastion.prompts import (
    PromptSpec,
    TemplateError,
    TemplateLimitError,
    TemplateLimits,
    check_spec,
    render,
)
from bastion.prompts.template_budget import DEFAULT_LIMITS, ProjectLimits
from bastion.settings import ConfigError, Settings, load_settings

SMALL = TemplateLimits(max_output_bytes=64 * 1024, cpu_ms=50, max_nesting=32)
BIG = "y" * 20_000
VALUES: dict[str, Any] = {
    "s": "x" * 1000,
    "short": "x" * 60,
    "big": BIG,
    "lines": "a\n" * 20_000,
    "n": 10**9,
    "huge_int": 2**60,
    "items": ["a", "b"],
    "rows": [{"a": str(i)} for i in range(1000)],
}


_TYPES = {str: "string", int: "integer", list: "list"}


def spec_of(text: str) -> PromptSpec:
    """A text prompt that may read every name in `VALUES`."""
    variables: dict[str, Any] = {
        name: {"required": False, "type": _TYPES[type(value)]} for name, value in VALUES.items()
    }
    return PromptSpec.from_dict({"name": "p", "variables": variables, "text": text})


def limit_of(text: str, limits: TemplateLimits = SMALL, **values: Any) -> str:
    with pytest.raises(TemplateLimitError) as caught:
        render(spec_of(text), {**VALUES, **values}, limits=limits)
    assert "text" in str(caught.value)  # names where
    return caught.value.limit


# -- attacks at render: what the source cannot show -------------------------------------------

MEMORY_ATTACKS = [
    "{{ 'a' * n }}",
    "{{ [0] * n }}",
    "{{ items * n }}",
    "{{ s.center(n) }}",
    "{{ s.ljust(n) }}",
    "{{ s.rjust(n) }}",
    "{{ s.zfill(n) }}",
    "{{ (s ~ '\t').expandtabs(n) }}",
    "{{ s.replace('', big) }}",
    "{{ s|replace('', big) }}",
    "{{ s|replace('x', big) }}",
    "{{ big.join(items * 10) }}",
    "{{ ([big] * 10)|join }}",
    "{{ (items * 5)|join(big) }}",
    "{{ s.translate({120: big}) }}",
    "{{ big|wordwrap(1, wrapstring=big) }}",
    "{{ lines|indent(64) }}",
    "{{ big + big + big + big }}",
    "{{ big ~ big ~ big ~ big }}",
    "{% set a = big ~ big %}{% set b = a ~ a %}{{ b|length }}",
    "{{ ([[1, 2]] * 40000)|sum(start=[])|length }}",
    "{{ ([big] * 10)|string|length }}",
    "{{ ([big] * 10)|tojson|length }}",
    "{{ ([big] * 10)|upper|length }}",
    "{{ ([big] * 10) ~ '' }}",
    "{{ huge_int ** 1000 }}",
    "{% set a = huge_int ** 200 %}{% set b = a * a %}{% set c = b * b %}{{ c * c }}",
    "{% set t %}{% for c in s %}{{ big }}{% endfor %}{% endset %}{{ t|length }}",
    "{% filter upper %}{% for c in s %}{{ big }}{% endfor %}{% endfilter %}",
]


@pytest.mark.parametrize("text", MEMORY_ATTACKS)
def test_operations_that_would_build_past_the_limit_are_refused_first(text: str) -> None:
    assert limit_of(text) == "memory"


def test_a_nested_list_is_measured_before_it_is_printed() -> None:
    # The 15 GB case: each repetition is a million items, the printed text a terabyte.
    assert limit_of("{{ [[0] * 1000000] * 1000000 }}", DEFAULT_LIMITS) == "memory"


@pytest.mark.parametrize(
    "text",
    [
        "{% for c in big %}{{ big }}{% endfor %}",  # 400 MB of prompt, 20 kB at a time
        "{% for c in s %}{{ s }}{{ s }}{% endfor %}",
        "{{ lines }}{{ lines }}",
        "{% for row in rows %}{{ row|tojson }}{{ big }}{% endfor %}",
    ],
)
def test_output_is_counted_as_the_template_streams_it(text: str) -> None:
    assert limit_of(text) == "output"


def test_output_counts_every_message_of_the_prompt_together() -> None:
    spec = PromptSpec.from_dict(
        {
            "name": "p",
            "variables": {"big": {}},
            "messages": [
                {"role": "system", "content": "{{ big }}"},
                {"role": "user", "content": [{"type": "text", "text": "{{ big }}{{ big }}"}]},
                {"role": "user", "content": "{{ big }}"},
            ],
        }
    )
    with pytest.raises(TemplateLimitError) as caught:
        render(spec, {"big": "z" * 20_000}, limits=SMALL)
    assert caught.value.limit == "output"
    assert caught.value.location == ("messages", 2, "content")


def test_output_is_measured_in_utf8_bytes() -> None:
    spec = PromptSpec.from_dict({"name": "p", "variables": {"t": {}}, "text": "{{ t }}"})
    assert render(spec, {"t": "é" * 30_000}, limits=SMALL) == "é" * 30_000  # 60,000 bytes
    with pytest.raises(TemplateLimitError) as caught:
        render(spec, {"t": "é" * 40_000}, limits=SMALL)  # 40,000 characters, 80,000 bytes
    assert caught.value.limit == "output"
    assert "65,536 bytes" in str(caught.value)


def test_text_without_tags_counts_too() -> None:
    spec = PromptSpec.from_dict({"name": "p", "text": "plain " * 12_000})
    with pytest.raises(TemplateLimitError, match="larger than 65,536 bytes"):
        render(spec, {}, limits=SMALL)


CPU_ATTACKS = [
    # 10^9 iterations that print nothing: stopped by the clock, not by the output limit.
    "{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}",
    # Short loops are charged up front, not item by item: nested, they still add up.
    "{% for a in short %}" * 5 + "{% endfor %}" * 5,
    "{% for a in s %}{% for b in s %}{% for c in s %}{{ '' }}{% endfor %}{% endfor %}{% endfor %}",
    "{% for a in s %}{% for b in s %}{% if a == b %}{% endif %}{% endfor %}{% endfor %}",
    "{% for a in s %}{{ (items * 1000)|map('upper')|select|list|length }}{% endfor %}",
    "{% for a in s %}{{ (big * 50)|list|unique|list|length }}{% endfor %}",
    "{{ (rows * 100)|sort(attribute='a')|length }}",
    "{{ (rows * 100)|groupby('a')|length }}",
    "{{ (big * 100)|wordwrap(3)|length }}",
    "{{ (big * 100)|title|length }}",
    "{{ (big * 100).split('y')|length }}",
    "{% for a in s %}{{ ', '.join(items * 5000)|length }}{% endfor %}",
    "{% for a in s %}{{ (items * 5000)|join(',')|length }}{% endfor %}",
]


@pytest.mark.parametrize("text", CPU_ATTACKS)
def test_work_is_cut_at_the_cpu_limit(text: str) -> None:
    # Default (8 MB) sizes: each step here is allowed, only the amount of work is not.
    assert limit_of(text, DEFAULT_LIMITS) == "cpu_ms"


def test_cpu_limit_is_per_render_and_configurable() -> None:
    text = "{% for a in s %}{{ a }}{% endfor %}"
    assert render(spec_of(text), VALUES, limits=SMALL) == VALUES["s"]
    tight = TemplateLimits(max_output_bytes=SMALL.max_output_bytes, cpu_ms=0.001)
    assert limit_of(text, tight) == "cpu_ms"


def test_recursive_loops_are_bounded_in_depth() -> None:
    text = "{% for a in items recursive %}{{ loop([a, a]) }}{% endfor %}"
    assert limit_of(text) == "nesting"
    tree: dict[str, Any] = {"children": [{"children": [{"children": []}]}]}
    walk = "{% for n in [tree] recursive %}({{ loop(n.children) }}){% endfor %}"
    variables = {"tree": {"type": "object"}}
    spec = PromptSpec.from_dict({"name": "p", "variables": variables, "text": walk})
    assert render(spec, {"tree": tree}, limits=SMALL) == "((()))"


def test_partials_included_past_the_nesting_limit_are_refused() -> None:
    chain = {
        f"p{i}": PromptSpec.from_dict({"name": f"p{i}", "text": f'{{% include "p{i + 1}" %}}'})
        for i in range(40)
    }
    chain["p40"] = PromptSpec.from_dict({"name": "p40", "text": "end"})
    shallow = TemplateLimits(max_nesting=48)
    assert render(chain["p0"], {}, chain, limits=shallow) == "end"
    with pytest.raises(TemplateLimitError) as caught:
        render(chain["p0"], {}, chain, limits=SMALL)
    assert caught.value.limit == "nesting"


def test_a_limit_is_never_swallowed_by_a_filter_that_catches_errors() -> None:
    # `int` turns a ValueError into its default; a limit is no ValueError.
    assert limit_of("{{ ('9' * n)|int }}") == "memory"
    assert limit_of("{{ (s.center(n))|int(7) }}") == "memory"


# -- what the source shows: refused by check_spec, at push ------------------------------------

STATIC_LIMITS = [
    ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nesting"),
    ("{{ " + "[" * 5000 + "]" * 5000 + " }}", "nesting"),
    ("{{ " + "(" * 40 + "1" + ")" * 40 + " }}", "nesting"),
    ("{{ " + " + ".join(["1"] * 200) + " }}", "nesting"),
    ("{{ " + " ~ ".join(["s|upper"] * 5) + "|upper" * 60 + " }}", "nesting"),
    ("{{ " + "not " * 3000 + "s }}", "nesting"),
    ("{{ " + "-" * 3000 + "1 }}", "nesting"),
    ("{% if s %}" * 400 + "{% endif %}" * 400, "nesting"),
    ("{% for a in s %}" * 17 + "{% endfor %}" * 17, "nesting"),
    ("{{ 'a' * 10**9 }}", "memory"),
    ("{{ 'a' * 1000000000 }}", "memory"),
    ("{{ [0] * 10**9 }}", "memory"),
    ("{{ [0, 1] * 5000000 }}", "memory"),
    ("{{ ('ab' * 3000000) + ('ab' * 3000000) }}", "memory"),
    ("{{ 'x'.center(10**9) }}", "memory"),
    ("{{ 'x'.ljust(10**9) }}", "memory"),
    ("{{ 'x'.zfill(10**9) }}", "memory"),
    ("{{ (2 ** 1000) ** 1000 }}", "memory"),
]


@pytest.mark.parametrize(("text", "limit"), STATIC_LIMITS)
def test_limits_the_source_shows_are_refused_before_it_runs(text: str, limit: str) -> None:
    spec = spec_of(text)
    with pytest.raises(TemplateLimitError) as caught:
        check_spec(spec)
    assert caught.value.limit == limit
    assert caught.value.location == ("text",)
    with pytest.raises(TemplateLimitError):
        render(spec, VALUES)


STATIC_FORBIDDEN = [
    ("{{ '%s' % s }}", "string formatting with '%'"),
    ("{{ '%*d' % (n, 1) }}", "string formatting with '%'"),
    ("{{ '{:>1000000000}'.format(1) }}", "forbidden method 'format'"),
    ("{{ range(10**10)|list }}", "undeclared variable 'range'"),
    ("{{ lipsum(10**6) }}", "undeclared variable 'lipsum'"),
    ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "'{% macro %}' is not allowed"),
    ("{{ s|center(10**9) }}", "unknown filter 'center'"),
    ("{{ items|batch(10**9) }}", "unknown filter 'batch'"),
    ("{{ s|indent(10**9) }}", "indent wider than 64"),
    ("{{ 2 ** 100000000 }}", "exponent larger than 1024"),
    ("{{ s|format(n) }}", "unknown filter 'format'"),
]


@pytest.mark.parametrize(("text", "message"), STATIC_FORBIDDEN)
def test_resource_constructs_that_are_not_allowed_at_all(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("*", r"\*").replace("(", r"\(")):
        check_spec(spec_of(text))


def test_nesting_within_the_limit_renders() -> None:
    assert render(spec_of("{{ " + "(" * 25 + "1" + ")" * 25 + " }}"), {}) == "1"
    deep = "{% for a in items %}" * 15 + "." + "{% endfor %}" * 15
    assert render(spec_of(deep), {"items": ["a"]}) == "."
    assert render(spec_of("{{ " + " + ".join(["1"] * 20) + " }}"), {}) == "20"


def test_max_nesting_comes_from_the_limits() -> None:
    text = "{{ " + "(" * 20 + "1" + ")" * 20 + " }}"
    check_spec(spec_of(text))
    with pytest.raises(TemplateLimitError, match="deeper than 12 levels"):
        check_spec(spec_of(text), limits=TemplateLimits(max_nesting=12))


# -- ordinary templates are unchanged -----------------------------------------------------------

ORDINARY = [
    "{% for r in rows[:3] %}{{ loop.index }}/{{ loop.length }} {{ r.a }}{% if not loop.last %}, "
    "{% endif %}{% endfor %}",
    "{% for r in rows[:5] if r.a != '2' %}{{ r.a }}{% else %}none{% endfor %}",
    "{{ items|join(', ') }} {{ rows[:3]|map(attribute='a')|join('-') }}",
    "{{ rows[:4]|sort(attribute='a', reverse=true)|map(attribute='a')|list }}",
    "{{ rows[:6]|groupby('a')|map(attribute='grouper')|list }}",
    "{{ ['b', 'A', 'c']|sort }} {{ ['b', 'a', 'b']|unique|list }} {{ [3, 1, 2]|max }}",
    "{{ [[1], [2, 3]]|sum(start=[]) }} {{ [1, 2, 3]|sum }} {{ rows[:3]|sum(attribute='a', "
    "start='') if false else 'x' }}",
    "{{ s[:12]|replace('x', 'ab', 2) }} {{ 'a b c d e f'|wordwrap(3) }}",
    "{{ 'one\ntwo'|indent(2, true) }} {{ 'Hello world'|title|upper|lower|capitalize }}",
    "{{ '  pad  '|trim }}|{{ 'hello world'|truncate(9, true, '…', 0) }}|{{ 'a b'|wordcount }}",
    "{{ 'x'.center(5, '*') }}{{ 'x'.ljust(3, '.') }}{{ '7'.zfill(3) }}{{ 'a\tb'.expandtabs(4) }}",
    "{{ ', '.join(items) }} {{ 'a-b'.replace('-', '+') }} {{ 'a b'.split() }}",
    "{{ 'ab' * 3 }} {{ [1] * 3 }} {{ 2 ** 10 }} {{ 7 * 6 }} {{ 'a' + 'b' }} {{ [1] + [2] }}",
    "{{ s[:3] ~ '-' ~ items ~ 1 }} {{ items }} {{ {'k': items} }} {{ (1, 'a') }}",
    "{% set t %}{% for i in items %}<{{ i }}>{% endfor %}{% endset %}{{ t|upper }}",
    "{% filter upper %}{% for i in items %}{{ i }}{% endfor %}{% endfilter %}",
    "{% for a in [[1, [2]], [3]] recursive %}{% if a is iterable %}[{{ loop(a) }}]{% else %}"
    "{{ a }}{% endif %}{% endfor %}",
    "{% with x = items|length %}{{ x }}{% endwith %} {{ items|first }}{{ items|last }}"
    "{{ items|reverse|list }}{{ items|length }}{{ -3|abs }}{{ 2.567|round(1) }}{{ '5'|int }}",
    "{{ rows[:2]|selectattr('a', 'equalto', '1')|list }} {{ [1, 2, 3]|select('odd')|list }}"
    "{{ [1, 2, 3]|reject('odd')|list }} {{ rows[:2]|rejectattr('a')|list }}",
    "{{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1}|items|list }} {{ none|default('d') }}",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_templates_render_as_plain_jinja_does(text: str) -> None:
    reference = jinja2.sandbox.ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )
    expected = reference.from_string(text).render(VALUES)
    assert render(spec_of(text), VALUES, limits=SMALL) == expected


def test_tojson_is_unchanged() -> None:
    assert render(spec_of("{{ rows[:2]|tojson }}"), VALUES) == '[{"a": "0"}, {"a": "1"}]'


# -- configuration ------------------------------------------------------------------------------


def test_limits_from_settings_with_a_projects_own_cpu_time() -> None:
    settings = Settings(
        gateway={"max_request_bytes": 4096},
        templates={"cpu_ms": 20, "max_nesting": 16},
        projects={"acme": {"template_cpu_ms": 200}},
    )
    limits = ProjectLimits.from_settings(settings)
    assert limits.of("acme") == TemplateLimits(max_output_bytes=4096, cpu_ms=200, max_nesting=16)
    assert limits.of("other") == TemplateLimits(max_output_bytes=4096, cpu_ms=20, max_nesting=16)
    own = Settings(templates={"max_output_bytes": 10_000})
    assert ProjectLimits.from_settings(own).of("x").max_output_bytes == 10_000
    assert ProjectLimits.from_settings(Settings()).of("x") == DEFAULT_LIMITS


def test_template_settings_from_the_environment_and_their_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BASTION_TEMPLATES__CPU_MS", "75")
    assert load_settings().templates.cpu_ms == 75
    monkeypatch.setenv("BASTION_TEMPLATES__MAX_NESTING", "500")
    with pytest.raises(ConfigError, match=r"templates\.max_nesting"):
        load_settings()
