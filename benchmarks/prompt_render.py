"""Prompt rendering cost: `bastion.prompts.render` against baselines measured in the same run.

Cases: the example `summarize` chat prompt (two messages, one default) and a typical few-shot
`text` prompt with a loop and filters, each rendered through `render` (variable validation,
cached static checks, cached compiled templates, the sandbox and its budget). Baselines, same
strings, same process: plain `str.format`, an unsandboxed `jinja2.Environment` with the
template compiled once, a fresh sandboxed compile on every render (what caching saves), and
the render as it was before templates ran under a budget (the same validation and static
checks, a sandbox without the guards, `Template.render`): the budget's cost is the ratio of
`bastion render` to it, bar: within 10%. Each figure is the median over `--repeats` batches of
`--number` renders. The bar: a typical template renders in under 100 µs.

    python benchmarks/prompt_render.py
    python benchmarks/prompt_render.py --repeats 50 --number 2000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

import jinja2
import jinja2.sandbox
from rich.console import Console
from rich.table import Table

from bastion.prompts import PromptSpec, render
from bastion.prompts import template as template_module
from bastion.prompts.template import _ENV
from bastion.prompts.template_budget import DEFAULT_LIMITS
from harness import per_call_us

console = Console(width=140)
BAR_US = 100.0
BUDGET_BAR = 1.10  # the budget may cost at most 10% over the render without it
BEFORE = "before the budget (unguarded sandbox)"


class _UnguardedEnvironment(jinja2.sandbox.ImmutableSandboxedEnvironment):
    """The template sandbox as it was without the budget (its operator and format guards)."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            raise jinja2.exceptions.SecurityError("string formatting with '%' is not allowed")
        return super().call_binop(context, operator, left, right)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return attr not in ("format", "format_map", "mro") and super().is_safe_attribute(
            obj, attr, value
        )

    def wrap_str_format(self, value: Any) -> None:
        return None


_PRINTABLE_BEFORE = (str, int, float, list, tuple, dict, Mapping, jinja2.Undefined)


def _finalize_before(value: Any) -> Any:
    if isinstance(value, _PRINTABLE_BEFORE) or value is None:
        return value
    raise jinja2.exceptions.SecurityError(f"only data can be printed, not {type(value).__name__}")


def _unguarded_sandbox() -> _UnguardedEnvironment:
    """Same options as the prompt sandbox, filters unwrapped, no budget."""
    env = _UnguardedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize_before,
    )
    env.globals.clear()
    env.filters = {name: env.filters[name] for name in template_module._SAFE_FILTERS}
    return env


_UNGUARDED = _unguarded_sandbox()
_UNGUARDED_TEMPLATES: dict[str, jinja2.Template] = {}


def render_before_budget(spec: PromptSpec, variables: dict[str, Any]) -> Any:
    """`render` as it was before the budget: the same checks, then the unguarded sandbox."""
    closure = template_module._closure(spec, {}, DEFAULT_LIMITS)
    schema = {name: v for partial in closure for name, v in partial.variables.items()}
    context = template_module._bind({**schema, **spec.variables}, variables)
    for location, source in spec.template_sources():
        template_module._check_source(spec, location, source, None, DEFAULT_LIMITS)

    def one(source: str) -> str:
        if "{" not in source:
            return source
        template = _UNGUARDED_TEMPLATES.get(source)
        if template is None:
            template = _UNGUARDED_TEMPLATES[source] = _UNGUARDED.from_string(source)
        return template.render(context)

    token = template_module._PARTIALS.set({})
    try:
        if spec.text is not None:
            return one(spec.text)
        return [{**m, "content": one(m["content"])} for m in spec.messages or ()]
    finally:
        template_module._PARTIALS.reset(token)


SUMMARIZE = PromptSpec.from_dict(
    {
        "name": "summarize",
        "description": "Summarize a support ticket",
        "model": "sim-small",
        "params": {"temperature": 0.2, "max_tokens": 200},
        "variables": {"ticket": {"type": "string"}, "tone": {"default": "neutral"}},
        "messages": [
            {"role": "system", "content": "You summarize support tickets in a {{ tone }} tone."},
            {"role": "user", "content": "{{ ticket }}"},
        ],
    }
)
SUMMARIZE_VARS = {"ticket": "The app crashes when I upload a file larger than 10 MB."}

FEW_SHOT_TEXT = (
    "Classify the sentiment of the last review as {{ labels|join(', ') }}.\n\n"
    "{% for ex in examples %}Review: {{ ex.text|trim }}\nSentiment: {{ ex.label|upper }}\n\n"
    "{% endfor %}Review: {{ review|trim }}\nSentiment:"
)
FEW_SHOT = PromptSpec.from_dict(
    {
        "name": "classify",
        "variables": {
            "labels": {"type": "list", "default": ["positive", "negative", "neutral"]},
            "examples": {"type": "list"},
            "review": {"type": "string"},
        },
        "text": FEW_SHOT_TEXT,
    }
)
EXAMPLES = [
    {"text": "Loved it, works perfectly. ", "label": "positive"},
    {"text": "Broke after two days.", "label": "negative"},
    {"text": "It is a phone case.", "label": "neutral"},
]
FEW_SHOT_VARS = {
    "examples": EXAMPLES,
    "review": "  Battery life is great but the screen scratches.",
}


def summarize_cases() -> dict[str, Callable[[], Any]]:
    assert SUMMARIZE.messages is not None
    system = SUMMARIZE.messages[0]["content"]
    user = SUMMARIZE.messages[1]["content"]
    system_fmt, user_fmt = system.replace("{{ tone }}", "{tone}"), "{ticket}"
    values = {"tone": "neutral", **SUMMARIZE_VARS}
    plain = jinja2.Environment(autoescape=False)  # prompts, not HTML
    plain_templates = [plain.from_string(system), plain.from_string(user)]

    def str_format() -> list[dict[str, str]]:
        return [
            {"role": "system", "content": system_fmt.format(**values)},
            {"role": "user", "content": user_fmt.format(**values)},
        ]

    def jinja_plain() -> list[dict[str, str]]:
        return [
            {"role": m["role"], "content": t.render(values)}
            for m, t in zip(SUMMARIZE.messages or (), plain_templates, strict=True)
        ]

    def fresh_compile() -> list[dict[str, str]]:
        return [
            {"role": m["role"], "content": _ENV.from_string(m["content"]).render(values)}
            for m in SUMMARIZE.messages or ()
        ]

    return {
        "bastion render": lambda: render(SUMMARIZE, SUMMARIZE_VARS),
        BEFORE: lambda: render_before_budget(SUMMARIZE, SUMMARIZE_VARS),
        "str.format": str_format,
        "jinja2, unsandboxed, compiled once": jinja_plain,
        "sandbox, fresh compile each render": fresh_compile,
    }


def few_shot_cases() -> dict[str, Callable[[], Any]]:
    labels = "positive, negative, neutral"
    shot = "Review: {text}\nSentiment: {label}\n\n"
    plain = jinja2.Environment(autoescape=False)  # prompts, not HTML
    plain_template = plain.from_string(FEW_SHOT_TEXT)
    values = {"labels": ["positive", "negative", "neutral"], **FEW_SHOT_VARS}

    def str_format() -> str:
        shots = "".join(
            shot.format(text=ex["text"].strip(), label=ex["label"].upper()) for ex in EXAMPLES
        )
        head = f"Classify the sentiment of the last review as {labels}.\n\n"
        return head + shots + f"Review: {FEW_SHOT_VARS['review'].strip()}\nSentiment:"

    return {
        "bastion render": lambda: render(FEW_SHOT, FEW_SHOT_VARS),
        BEFORE: lambda: render_before_budget(FEW_SHOT, FEW_SHOT_VARS),
        "str.format": str_format,
        "jinja2, unsandboxed, compiled once": lambda: plain_template.render(values),
        "sandbox, fresh compile each render": lambda: _ENV.from_string(FEW_SHOT_TEXT).render(
            values
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="batches per figure")
    parser.add_argument("--number", type=int, default=1000, help="renders per batch")
    args = parser.parse_args()

    # The outputs must agree before timing means anything.
    sample = summarize_cases()
    assert sample["bastion render"]() == sample["str.format"]() == sample[BEFORE]()
    shots = few_shot_cases()
    assert (
        shots["bastion render"]()
        == shots["str.format"]()
        == shots["jinja2, unsandboxed, compiled once"]()
        == shots[BEFORE]()
    )

    table = Table(title=f"prompt render, µs per render (median of {args.repeats} x {args.number})")
    columns = ("prompt", "how", "µs / render", "vs str.format", "vs before", "bar")
    for column in columns:
        table.add_column(column, justify="left" if column in ("prompt", "how") else "right")
    for prompt, cases in (("summarize (chat, 2 msgs)", sample), ("few-shot (text, loop)", shots)):
        figures: dict[str, float] = {}
        for how, fn in cases.items():
            # The fresh-compile baseline is ~100x slower: fewer calls keep the run short.
            number = args.number if "fresh" not in how else max(1, args.number // 20)
            figures[how] = per_call_us(fn, args.repeats, number)
            console.print(f"  {prompt} / {how}: {figures[how]:.2f} µs")
        base, before = figures["str.format"], figures[BEFORE]
        for how, us in figures.items():
            verdict = ""
            if how == "bastion render":
                ok = us < BAR_US and us / before <= BUDGET_BAR
                verdict = "[green]pass[/green]" if ok else "[red]FAIL[/red]"
                verdict += f" (< {BAR_US:.0f} µs, ≤ {BUDGET_BAR:.2f}x before)"
            ratio = f"{us / base:.1f}x"
            table.add_row(prompt, how, f"{us:.2f}", ratio, f"{us / before:.2f}x", verdict)
    console.print(table)


if __name__ == "__main__":
    main()
