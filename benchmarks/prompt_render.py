"""Prompt rendering cost: `bastion.prompts.render` against baselines measured in the same run.

Cases: the example `summarize` chat prompt (two messages, one default) and a typical few-shot
`text` prompt with a loop and filters, each rendered through `render` (variable validation,
cached static checks, cached compiled templates, the sandbox). Baselines, same strings, same
process: plain `str.format`, an unsandboxed `jinja2.Environment` with the template compiled
once, and a fresh sandboxed compile on every render (what caching saves). Each figure is the
median over `--repeats` batches of `--number` renders. The bar: a typical template renders in
under 100 µs.

    python benchmarks/prompt_render.py
    python benchmarks/prompt_render.py --repeats 50 --number 2000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jinja2
from rich.console import Console
from rich.table import Table

from bastion.prompts import PromptSpec, render
from bastion.prompts.template import _ENV
from harness import per_call_us

console = Console(width=140)
BAR_US = 100.0

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
    assert sample["bastion render"]() == sample["str.format"]()
    shots = few_shot_cases()
    assert (
        shots["bastion render"]()
        == shots["str.format"]()
        == shots["jinja2, unsandboxed, compiled once"]()
    )

    table = Table(title=f"prompt render, µs per render (median of {args.repeats} x {args.number})")
    for column in ("prompt", "how", "µs / render", "vs str.format", "bar < 100 µs"):
        table.add_column(column, justify="left" if column in ("prompt", "how") else "right")
    for prompt, cases in (("summarize (chat, 2 msgs)", sample), ("few-shot (text, loop)", shots)):
        figures: dict[str, float] = {}
        for how, fn in cases.items():
            # The fresh-compile baseline is ~100x slower: fewer calls keep the run short.
            number = args.number if "fresh" not in how else max(1, args.number // 20)
            figures[how] = per_call_us(fn, args.repeats, number)
            console.print(f"  {prompt} / {how}: {figures[how]:.2f} µs")
        base = figures["str.format"]
        for how, us in figures.items():
            verdict = ""
            if how == "bastion render":
                verdict = "[green]pass[/green]" if us < BAR_US else "[red]FAIL[/red]"
            table.add_row(prompt, how, f"{us:.2f}", f"{us / base:.1f}x", verdict)
    console.print(table)


if __name__ == "__main__":
    main()
