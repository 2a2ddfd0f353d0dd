"""Red-team reports, apart from quality reports: per category, the attack success rate, the
allowed rate and the successful attacks. Terminal, Markdown (a PR comment), JUnit XML (one
test case per attack, failed when it succeeded) and JSON (with the ``run_id``)."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bastion.evals.redteam.run import RedteamReport, rate_text
from bastion.evals.report import escape_markdown

__all__ = [
    "render_json",
    "render_junit",
    "render_markdown",
    "render_terminal",
    "render_text",
    "write_reports",
]

OUTPUT_PREVIEW_CHARS = 160
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml(text: str) -> str:
    return _XML_INVALID.sub("\ufffd", text)


def _headline(report: RedteamReport) -> str:
    word = {"pass": "PASSED", "fail": "FAILED", "error": "ERROR"}[report.verdict]
    errors = f", {report.errors} attacks unanswered" if report.errors else ""
    return (
        f"red team {word}: {report.successes} of {report.attempts} attacks succeeded "
        f"({rate_text(report.success_rate)}) against {report.target}{errors}"
    )


def _table(report: RedteamReport) -> Table:
    table = Table(
        "category", "attacks", "succeeded", "success rate", "allowed", "errors", "verdict",
        title=f"red team {report.run_id} ({report.dataset})",
    )  # fmt: skip
    for c in report.categories:
        table.add_row(
            c.category, str(c.attempts), str(c.successes), rate_text(c.success_rate),
            rate_text(c.max_success_rate), str(c.errors), "pass" if c.passed else "FAIL",
        )  # fmt: skip
    return table


def render_terminal(report: RedteamReport, console: Console) -> None:
    console.print(_table(report))
    for c in report.categories:
        for s in c.successful:
            console.print(
                Text(f"  ✗ {c.category}/{s.item_id}: {'; '.join(s.reasons)}", style="red")
            )
    style = "bold green" if report.verdict == "pass" else "bold red"
    console.print(Text(_headline(report), style=style))


def render_text(report: RedteamReport) -> str:
    console = Console(width=140, record=True, file=io.StringIO())
    render_terminal(report, console)
    return console.export_text()


def render_markdown(report: RedteamReport) -> str:
    icon = {"pass": "✅", "fail": "❌", "error": "⚠️"}[report.verdict]
    lines = [
        f"## {icon} Bastion red team: {escape_markdown(report.target)}",
        "",
        escape_markdown(_headline(report)) + f" (run `{report.run_id}`, {report.dataset})",
        "",
        "| category | attacks | succeeded | success rate | allowed | errors | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for c in report.categories:
        lines.append(
            f"| {c.category} | {c.attempts} | {c.successes} | {rate_text(c.success_rate)} | "
            f"{rate_text(c.max_success_rate)} | {c.errors} | {'pass' if c.passed else '**fail**'} |"
        )
    successful = [(c.category, s) for c in report.categories for s in c.successful]
    if successful:
        lines += ["", "### Successful attacks", ""]
        for category, s in successful:
            output = (
                "*(none)*"
                if s.output is None
                else escape_markdown(s.output, limit=OUTPUT_PREVIEW_CHARS)
            )
            lines.append(
                f"- **{category}/{escape_markdown(s.item_id)}**: "
                f"{escape_markdown('; '.join(s.reasons))}  \n  output: {output}"
            )
    return "\n".join(lines) + "\n"


def render_junit(report: RedteamReport) -> str:
    """One test suite per category, one test case per (attack, repeat) that got an answer;
    a successful attack is a failure, an unanswered one an error."""
    suites = ET.Element("testsuites", name="bastion red team")
    total = failures = errors = 0
    for c in report.categories:
        suite = ET.SubElement(suites, "testsuite", name=f"redteam.{c.category}")
        props = ET.SubElement(suite, "properties")
        for name, value in (
            ("run_id", report.run_id),
            ("target", report.target),
            ("success_rate", f"{c.success_rate:.4f}"),
            ("max_success_rate", f"{c.max_success_rate:.4f}"),
        ):
            ET.SubElement(props, "property", name=name, value=_xml(value))
        for s in c.successful:
            case = ET.SubElement(
                suite, "testcase", classname=f"redteam.{c.category}",
                name=_xml(f"{s.item_id}#{s.repeat}"), time="0",
            )  # fmt: skip
            failure = ET.SubElement(
                case, "failure", message=_xml("; ".join(s.reasons)), type="attack_succeeded"
            )
            failure.text = _xml(s.output or "")
        resisted = c.attempts - c.successes
        if resisted:
            case = ET.SubElement(
                suite, "testcase", classname=f"redteam.{c.category}",
                name=f"{resisted} attacks resisted", time="0",
            )  # fmt: skip
        if c.errors:
            case = ET.SubElement(
                suite, "testcase", classname=f"redteam.{c.category}", name="unanswered", time="0"
            )
            ET.SubElement(case, "error", message=f"{c.errors} attacks got no answer")
        cases = len(c.successful) + (1 if resisted else 0) + (1 if c.errors else 0)
        suite.set("tests", str(cases))
        suite.set("failures", str(len(c.successful)))
        suite.set("errors", "1" if c.errors else "0")
        total += cases
        failures += len(c.successful)
        errors += 1 if c.errors else 0
    suites.set("tests", str(total))
    suites.set("failures", str(failures))
    suites.set("errors", str(errors))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def render_json(report: RedteamReport) -> str:
    return orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n"


_RENDERERS: dict[str, Callable[[RedteamReport], str]] = {
    ".md": render_markdown,
    ".xml": render_junit,
    ".json": render_json,
    ".txt": render_text,
}


def check_paths(paths: Sequence[Path]) -> None:
    """Refuse unknown report extensions (before anything is run or written)."""
    unknown = [str(p) for p in paths if Path(p).suffix.lower() not in _RENDERERS]
    if unknown:
        raise ValueError(
            f"unknown report format for {', '.join(unknown)}: "
            f"use one of {', '.join(sorted(_RENDERERS))}"
        )


def write_reports(paths: Sequence[Path], report: RedteamReport) -> None:
    """One report per path, the format chosen by its extension (.md, .xml, .json, .txt)."""
    check_paths(paths)
    for path in paths:
        p = Path(path)
        p.write_text(_RENDERERS[p.suffix.lower()](report), encoding="utf-8")
