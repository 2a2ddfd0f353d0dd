from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from bastion.evals.compare import Comparison, ResultRow, RunResults, compare
from bastion.evals.gate import GateRules, GateVerdict, evaluate_gate
from bastion.evals.report import (
    escape_markdown,
    render_json,
    render_junit,
    render_markdown,
    render_terminal,
    write_reports,
)

XSS = "<img src=x onerror=alert(1)>"
LINK = "[click me](javascript:alert(1))"
MALICIOUS = f"{XSS} then {LINK} | `rm -rf` ![i](http://x/y.png) @octocat \x00\x1b end"


def _rows(metric: str, values: list[float], output: str | None = None) -> list[ResultRow]:
    return [
        ResultRow(f"item-{k}", 0, metric, v, v >= 0.5, output=output) for k, v in enumerate(values)
    ]


@pytest.fixture
def regressed() -> tuple[Comparison, GateVerdict]:
    base = RunResults(
        "run-base-1",
        "summarize@production",
        tuple(_rows("accuracy", [1.0] * 40, "fine") + _rows("tone", [0.8] * 40, "ok")),
    )
    cand = RunResults(
        "run-cand-2",
        "summarize@staging",
        tuple(
            _rows("accuracy", [0.0] * 6 + [1.0] * 34, MALICIOUS)
            + _rows("tone", [0.8] * 40, "ok")
            + [ResultRow("extra", 0, "tone", 1.0, True)]
        ),
    )
    cmp = compare(base, cand, resamples=1_000)
    rules = GateRules(margins={"accuracy": 0.02}, min_pass_rate={"*": 0.9})
    return cmp, evaluate_gate(cmp, rules)


@pytest.fixture
def clean() -> tuple[Comparison, GateVerdict]:
    rows = tuple(_rows("accuracy", [1.0] * 40))
    cmp = compare(RunResults("b", "v1", rows), RunResults("c", "v2", rows), resamples=100)
    return cmp, evaluate_gate(cmp, GateRules(margins={"*": 0.05}))


# --------------------------------------------------------------------------- markdown


def test_escape_markdown_neutralises_html_links_and_cells() -> None:
    out = escape_markdown(MALICIOUS)
    for raw in ("<", ">", "|", "`", "[", "]", "@octocat", "\n"):
        assert raw not in out.replace("\\[", "").replace("\\]", "").replace("\\`", ""), raw
    assert "&lt;img" in out
    assert "\\[click me\\]\\(javascript:alert\\(1\\)\\)" in out
    assert "&#124;" in out
    assert escape_markdown("a\nb\n\nc") == "a b c"
    assert escape_markdown("x" * 50, limit=10) == "x" * 9 + "…"


def test_markdown_escapes_malicious_model_output(regressed: tuple[Comparison, GateVerdict]) -> None:
    md = render_markdown(*regressed)
    assert "<img" not in md
    assert "](javascript" not in md
    assert "[click me]" not in md
    assert "![i]" not in md
    assert "@octocat" not in md
    assert not re.search(r"(?<!\\)`", md.split("paired item by item")[1])  # no code span
    assert "\x00" not in md
    assert "\x1b" not in md
    assert "&lt;img src=x onerror=alert\\(1\\)&gt;" in md
    # Every table row still has exactly its columns: the output's `|` did not add a cell.
    item_rows = [line for line in md.splitlines() if line.startswith("| item-")]
    assert len(item_rows) == 6
    for line in item_rows:
        assert len(re.findall(r"(?<!\\)\|", line)) == 7


def test_markdown_headline_table_worst_items_and_mde_note(
    regressed: tuple[Comparison, GateVerdict],
) -> None:
    cmp, verdict = regressed
    md = render_markdown(cmp, verdict)
    assert md.startswith("### ❌ Eval gate failed")
    assert "summarize&#64;production" in md  # no @mention of a "production" team
    assert "run-base-1" in md
    assert "run-cand-2" in md
    acc = cmp.metrics[0]
    assert f"{acc.delta:+.3f} [{acc.ci_low:+.3f}, {acc.ci_high:+.3f}]" in md
    assert "Worst regressed items" in md
    assert "| item-0 | 1.000 | 0.000 | -1.000 | fine |" in md
    assert "**Regressions**" in md
    assert "MDE is the smallest true change" in md
    assert "1 item(s) without a counterpart" in md


def test_markdown_for_a_passing_gate(clean: tuple[Comparison, GateVerdict]) -> None:
    md = render_markdown(*clean)
    assert md.startswith("### ✅ Eval gate passed")
    assert "Worst regressed items" not in md
    assert "**Regressions**" not in md


def test_markdown_truncates_long_outputs() -> None:
    long_out = "word " * 500
    base = RunResults("b", "v1", tuple(_rows("m", [1.0, 1.0])))
    cand = RunResults("c", "v2", tuple(_rows("m", [0.0, 1.0], long_out)))
    cmp = compare(base, cand, resamples=50)
    md = render_markdown(cmp, evaluate_gate(cmp, GateRules()))
    assert "…" in md
    assert long_out.strip() not in md


# --------------------------------------------------------------------------- junit


def test_junit_parses_and_counts_failures(regressed: tuple[Comparison, GateVerdict]) -> None:
    cmp, verdict = regressed
    xml = render_junit(cmp, verdict)
    root = ET.fromstring(xml.encode())
    assert root.tag == "testsuites"
    suite = root.find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    # accuracy: margin + min_pass_rate; tone: min_pass_rate
    assert len(cases) == 3 == int(suite.get("tests", "-1"))
    failed = [c for c in cases if c.find("failure") is not None]
    assert len(failed) == len(verdict.failures) == 2 == int(suite.get("failures", "-1"))
    assert {(c.get("classname"), c.get("name")) for c in failed} == {
        ("evals.accuracy", "margin"),
        ("evals.accuracy", "min_pass_rate"),
    }
    failure = failed[0].find("failure")
    assert failure is not None
    assert failure.get("message") in verdict.failures
    # The malicious output survives as text (escaped by the XML library, control chars replaced).
    assert "<img src=x onerror=alert(1)>" in (failure.text or "")
    assert "\x00" not in xml
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["baseline_run_id"] == "run-base-1"
    assert props["candidate_run_id"] == "run-cand-2"


def test_junit_metric_without_rules_is_a_passing_case(
    clean: tuple[Comparison, GateVerdict],
) -> None:
    cmp, _ = clean
    root = ET.fromstring(render_junit(cmp, evaluate_gate(cmp, GateRules())))
    cases = root.findall("./testsuite/testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("evals.accuracy", "compared")]
    assert root.get("failures") == "0"


# --------------------------------------------------------------------------- json


def test_json_carries_run_ids_numbers_and_verdict(
    regressed: tuple[Comparison, GateVerdict],
) -> None:
    cmp, verdict = regressed
    doc = json.loads(render_json(cmp, verdict))
    assert doc["run_id"] == "run-cand-2"
    assert doc["baseline"] == {"run_id": "run-base-1", "label": "summarize@production"}
    assert doc["candidate"]["run_id"] == "run-cand-2"
    assert doc["verdict"]["passed"] is False
    assert doc["verdict"]["exit_code"] == 1
    assert doc["verdict"]["failures"] == list(verdict.failures)
    acc = doc["metrics"][0]
    mc = cmp.metrics[0]
    assert acc["metric"] == "accuracy"
    assert acc["delta"] == mc.delta
    assert (acc["ci_low"], acc["ci_high"]) == (mc.ci_low, mc.ci_high)
    assert acc["mcnemar"] == {"b": 6, "c": 0, "p": mc.mcnemar_p}
    assert acc["mde"] == mc.mde
    assert acc["passed"] is False
    assert acc["worst_items"][0]["candidate_output"] == MALICIOUS
    tone = doc["metrics"][1]
    assert tone["mcnemar"]["p"] is None
    assert tone["passed"] is True
    assert doc["unpaired_items"] == ["extra"]


def test_json_has_no_infinities_for_single_items() -> None:
    rows = (ResultRow("a", 0, "m", 0.5, True),)
    cmp = compare(RunResults("b", "x", rows), RunResults("c", "y", rows))
    doc = json.loads(render_json(cmp, evaluate_gate(cmp, GateRules())))
    assert doc["metrics"][0]["mde"] is None


# --------------------------------------------------------------------------- terminal & files


def test_terminal_table_lists_every_metric(regressed: tuple[Comparison, GateVerdict]) -> None:
    buffer = io.StringIO()
    render_terminal(*regressed, Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "accuracy" in text
    assert "tone" in text
    assert "FAIL" in text
    assert "Eval gate failed" in text
    assert "McNemar p" in text


def test_write_reports_picks_format_by_extension(
    tmp_path: Path, regressed: tuple[Comparison, GateVerdict]
) -> None:
    paths = [tmp_path / n for n in ("r.md", "r.xml", "r.JSON", "r.txt")]
    write_reports(paths, *regressed)
    assert paths[0].read_text(encoding="utf-8").startswith("### ❌")
    assert ET.parse(paths[1]).getroot().tag == "testsuites"
    assert json.loads(paths[2].read_text(encoding="utf-8"))["run_id"] == "run-cand-2"
    txt = paths[3].read_text(encoding="utf-8")
    assert "accuracy" in txt
    assert "\x1b[" not in txt  # plain text, no colour codes


def test_write_reports_rejects_unknown_extension_before_writing(
    tmp_path: Path, clean: tuple[Comparison, GateVerdict]
) -> None:
    ok, bad = tmp_path / "r.json", tmp_path / "r.html"
    with pytest.raises(ValueError, match=r"r\.html"):
        write_reports([ok, bad], *clean)
    assert not ok.exists()
