"""Render a comparison and its gate verdict: terminal table, Markdown, JUnit XML, JSON.

Model outputs are untrusted. Markdown escapes everything GitHub would turn into HTML, links,
code spans, table cells or mentions; JUnit text goes through :mod:`xml.etree` (with characters
XML 1.0 cannot carry removed); JSON is JSON.
"""

from __future__ import annotations

import io
import json
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bastion.evals.compare import Comparison, ItemDelta, MetricComparison
from bastion.evals.gate import GateVerdict

__all__ = [
    "escape_markdown",
    "render_json",
    "render_junit",
    "render_markdown",
    "render_terminal",
    "write_reports",
]

OUTPUT_PREVIEW_CHARS = 160


def _num(x: float) -> str:
    return "—" if math.isinf(x) or math.isnan(x) else f"{x:.3f}"


def _delta_ci(mc: MetricComparison) -> str:
    return f"{mc.delta:+.3f} [{mc.ci_low:+.3f}, {mc.ci_high:+.3f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _verdict_word(verdict: GateVerdict, metric: str) -> str:
    ok = verdict.metric_passed(metric)
    return "no rule" if ok is None else ("pass" if ok else "FAIL")


def _headline(comparison: Comparison, verdict: GateVerdict) -> str:
    if verdict.passed:
        return "Eval gate passed"
    return f"Eval gate failed: {len(verdict.failures)} rule(s) regressed"


# --------------------------------------------------------------------------- terminal


def render_terminal(comparison: Comparison, verdict: GateVerdict, console: Console) -> None:
    """Print a Rich table of per-metric statistics, then the verdict, failures and warnings."""
    table = Table(
        title=(
            f"{comparison.baseline.label} (baseline {comparison.baseline.run_id}) vs "
            f"{comparison.candidate.label} (candidate {comparison.candidate.run_id})"
        ),
        title_justify="left",
    )
    table.add_column("metric")
    table.add_column("items", justify="right")
    table.add_column("baseline", justify="right")
    table.add_column("candidate", justify="right")
    table.add_column("delta [95% CI]", justify="right")
    table.add_column("pass rate", justify="right")
    table.add_column("McNemar p", justify="right")
    table.add_column("MDE", justify="right")
    table.add_column("verdict")
    for mc in comparison.metrics:
        word = _verdict_word(verdict, mc.metric)
        style = {"pass": "green", "FAIL": "bold red"}.get(word, "dim")
        table.add_row(
            Text(mc.metric),
            str(mc.n_items),
            _num(mc.baseline_mean),
            _num(mc.candidate_mean),
            _delta_ci(mc),
            f"{mc.baseline_pass_rate:.1%} → {mc.candidate_pass_rate:.1%}",
            _p(mc.mcnemar_p),
            _num(mc.mde),
            Text(word, style=style),
        )
    console.print(table)
    head = _headline(comparison, verdict)
    console.print(Text(head, style="bold green" if verdict.passed else "bold red"))
    for failure in verdict.failures:
        console.print(Text(f"  ✗ {failure}", style="red"))
    for warning in verdict.warnings:
        console.print(Text(f"  ! {warning}", style="yellow"))


# --------------------------------------------------------------------------- markdown

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MD_SPECIAL = re.compile(r"[\\`*_{}\[\]<>()#+!|~@&]")
_MD_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", "@": "&#64;", "|": "&#124;"}


def escape_markdown(text: str, *, limit: int | None = None) -> str:
    """Escape untrusted text for one line of GitHub-flavoured Markdown (also a table cell).

    Control characters are dropped and newlines collapse to spaces; ``<``, ``>``, ``&``, ``@``
    and ``|`` become entities (no HTML, no mentions, no cell breaks); other Markdown
    punctuation - backticks, brackets, emphasis - is backslash-escaped so no link, image or
    code span can form.
    """
    flat = " ".join(_CONTROL.sub("", text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1].rstrip() + "…"
    return _MD_SPECIAL.sub(lambda m: _MD_ENTITIES.get(m.group(), "\\" + m.group()), flat)


def _md_output(text: str | None) -> str:
    return "*(none)*" if text is None else escape_markdown(text, limit=OUTPUT_PREVIEW_CHARS)


def render_markdown(comparison: Comparison, verdict: GateVerdict) -> str:
    """A PR comment: headline, per-metric table, failures, warnings, worst items, MDE note."""
    base, cand = comparison.baseline, comparison.candidate
    icon = "✅" if verdict.passed else "❌"
    lines = [
        f"### {icon} {_headline(comparison, verdict)}",
        "",
        f"Baseline **{escape_markdown(base.label)}** (run `{_code(base.run_id)}`) vs "
        f"candidate **{escape_markdown(cand.label)}** (run `{_code(cand.run_id)}`), "
        "paired item by item.",
        "",
        "| metric | items | baseline | candidate | delta [95% CI] | pass rate | McNemar p "
        "| MDE | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for mc in comparison.metrics:
        word = _verdict_word(verdict, mc.metric)
        word = {"pass": "✅ pass", "FAIL": "❌ **fail**"}.get(word, word)
        lines.append(
            f"| {escape_markdown(mc.metric)} | {mc.n_items} | {_num(mc.baseline_mean)} "
            f"| {_num(mc.candidate_mean)} | {_delta_ci(mc)} "
            f"| {mc.baseline_pass_rate:.1%} → {mc.candidate_pass_rate:.1%} "
            f"| {escape_markdown(_p(mc.mcnemar_p))} | {_num(mc.mde)} | {word} |"
        )
    if verdict.failures:
        lines += ["", "**Regressions**", ""]
        lines += [f"- {escape_markdown(f)}" for f in verdict.failures]
    if verdict.warnings:
        lines += ["", "**Warnings**", ""]
        lines += [f"- {escape_markdown(w)}" for w in verdict.warnings]
    regressed = [mc for mc in comparison.metrics if mc.worst_items]
    if regressed:
        lines += ["", "<details><summary>Worst regressed items</summary>", ""]
        for mc in regressed:
            lines += [
                f"**{escape_markdown(mc.metric)}**",
                "",
                "| item | baseline | candidate | delta | baseline output | candidate output |",
                "|---|---:|---:|---:|---|---|",
            ]
            lines += [_md_item(item) for item in mc.worst_items]
            lines.append("")
        lines.append("</details>")
    if comparison.unpaired_items:
        lines += [
            "",
            f"{len(comparison.unpaired_items)} item(s) without a counterpart in the other run "
            "were left out of the paired statistics.",
        ]
    lines += [
        "",
        "<sub>Delta = candidate - baseline, per item (repeats averaged first), with a paired "
        "bootstrap 95% CI; McNemar's exact test compares per-item pass/fail. MDE is the "
        "smallest true change this many items detect with 80% power at alpha = 0.05: a smaller "
        "drop can go unnoticed.</sub>",
        "",
    ]
    return "\n".join(lines)


def _code(text: str) -> str:
    """Text inside a code span: strip backticks and newlines, which would end or break it."""
    return " ".join(text.replace("`", "'").split())


def _md_item(item: ItemDelta) -> str:
    return (
        f"| {escape_markdown(item.item_id, limit=60)} | {item.baseline:.3f} "
        f"| {item.candidate:.3f} | {item.delta:+.3f} | {_md_output(item.baseline_output)} "
        f"| {_md_output(item.candidate_output)} |"
    )


# --------------------------------------------------------------------------- junit

# Characters XML 1.0 cannot represent at all (even escaped): remove them from model output.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def render_junit(comparison: Comparison, verdict: GateVerdict) -> str:
    """JUnit XML: one ``<testcase>`` per (metric, rule) check; failed checks carry a failure.

    Metrics without any rule get one passing ``compared`` test case so they still show up.
    """
    suite_name = f"bastion eval gate: {comparison.candidate.label} vs {comparison.baseline.label}"
    suites = ET.Element("testsuites", name="bastion eval gate")
    suite = ET.SubElement(suites, "testsuite", name=_xml_text(suite_name))
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("baseline_run_id", comparison.baseline.run_id),
        ("baseline_label", comparison.baseline.label),
        ("candidate_run_id", comparison.candidate.run_id),
        ("candidate_label", comparison.candidate.label),
    ):
        ET.SubElement(props, "property", name=name, value=_xml_text(value))
    by_metric = {mc.metric: mc for mc in comparison.metrics}
    cases: list[tuple[str, str, bool, str]] = [
        (c.metric, c.rule, c.passed, c.message) for c in verdict.checks
    ]
    checked = {c.metric for c in verdict.checks}
    cases += [
        (mc.metric, "compared", True, _delta_ci(mc))
        for mc in comparison.metrics
        if mc.metric not in checked
    ]
    failures = 0
    for metric, rule, passed, message in cases:
        case = ET.SubElement(
            suite, "testcase", classname=_xml_text(f"evals.{metric}"), name=rule, time="0"
        )
        mc = by_metric.get(metric)
        if passed:
            ET.SubElement(case, "system-out").text = _xml_text(message)
            continue
        failures += 1
        failure = ET.SubElement(case, "failure", message=_xml_text(message), type="regression")
        detail = [message]
        if mc is not None:
            detail.append(_stats_line(mc))
            for item in mc.worst_items:
                detail.append(
                    f"item {item.item_id}: {item.baseline:.3f} -> {item.candidate:.3f} "
                    f"({item.delta:+.3f})\n  baseline: {item.baseline_output!r}\n"
                    f"  candidate: {item.candidate_output!r}"
                )
        failure.text = _xml_text("\n".join(detail))
    for element in (suites, suite):
        element.set("tests", str(len(cases)))
        element.set("failures", str(failures))
        element.set("errors", "0")
    if verdict.warnings:
        ET.SubElement(suite, "system-err").text = _xml_text("\n".join(verdict.warnings))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _stats_line(mc: MetricComparison) -> str:
    return (
        f"{mc.n_items} items; baseline {_num(mc.baseline_mean)}, candidate "
        f"{_num(mc.candidate_mean)}, delta {_delta_ci(mc)}; pass rate "
        f"{mc.baseline_pass_rate:.1%} -> {mc.candidate_pass_rate:.1%}; McNemar b={mc.mcnemar_b} "
        f"c={mc.mcnemar_c} p={_p(mc.mcnemar_p)}; MDE {_num(mc.mde)}"
    )


# --------------------------------------------------------------------------- json


def _finite(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x


def _metric_json(mc: MetricComparison, verdict: GateVerdict) -> dict[str, Any]:
    return {
        "metric": mc.metric,
        "n_items": mc.n_items,
        "baseline_mean": mc.baseline_mean,
        "candidate_mean": mc.candidate_mean,
        "delta": mc.delta,
        "ci_low": mc.ci_low,
        "ci_high": mc.ci_high,
        "confidence": 0.95,
        "baseline_pass_rate": mc.baseline_pass_rate,
        "candidate_pass_rate": mc.candidate_pass_rate,
        "mcnemar": {"b": mc.mcnemar_b, "c": mc.mcnemar_c, "p": mc.mcnemar_p},
        "mde": _finite(mc.mde),
        "passed": verdict.metric_passed(mc.metric),
        "worst_items": [
            {
                "item_id": i.item_id,
                "baseline": i.baseline,
                "candidate": i.candidate,
                "delta": i.delta,
                "baseline_output": i.baseline_output,
                "candidate_output": i.candidate_output,
            }
            for i in mc.worst_items
        ],
    }


def render_json(comparison: Comparison, verdict: GateVerdict) -> str:
    """Everything as JSON: run ids and labels, per-metric numbers, checks and the verdict.

    An undefined MDE (fewer than 2 items) is ``null``; so is McNemar's p without discordant items.
    """
    doc = {
        "run_id": comparison.candidate.run_id,
        "baseline": {"run_id": comparison.baseline.run_id, "label": comparison.baseline.label},
        "candidate": {
            "run_id": comparison.candidate.run_id,
            "label": comparison.candidate.label,
        },
        "verdict": {
            "passed": verdict.passed,
            "exit_code": verdict.exit_code,
            "failures": list(verdict.failures),
            "warnings": list(verdict.warnings),
            "checks": [
                {"metric": c.metric, "rule": c.rule, "passed": c.passed, "message": c.message}
                for c in verdict.checks
            ],
        },
        "metrics": [_metric_json(mc, verdict) for mc in comparison.metrics],
        "unpaired_items": list(comparison.unpaired_items),
    }
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- files


def render_text(comparison: Comparison, verdict: GateVerdict, *, width: int = 140) -> str:
    """The terminal table as plain text (no colour codes)."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    render_terminal(comparison, verdict, console)
    return buffer.getvalue()


_RENDERERS: dict[str, Callable[[Comparison, GateVerdict], str]] = {
    ".md": render_markdown,
    ".xml": render_junit,
    ".json": render_json,
    ".txt": render_text,
}


def write_reports(paths: Sequence[Path], comparison: Comparison, verdict: GateVerdict) -> None:
    """Write one report per path, the format chosen by extension (.md, .xml, .json, .txt).

    Every extension is checked before any file is written.
    """
    unknown = [str(p) for p in paths if Path(p).suffix.lower() not in _RENDERERS]
    if unknown:
        raise ValueError(
            f"unknown report format for {', '.join(unknown)}: "
            f"use one of {', '.join(sorted(_RENDERERS))}"
        )
    for path in paths:
        p = Path(path)
        p.write_text(_RENDERERS[p.suffix.lower()](comparison, verdict), encoding="utf-8")
