"""Dashboards, sessions and users over real HTTP on both databases: the numbers the charts and
tables show against the stored spans, group-by and range controls, bad input, escaping of
hostile names, project isolation, and what a viewer may do."""

from __future__ import annotations

import html
import json
import re
import time
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from bastion.gateway.limits_config import BudgetRule, LimitsConfig
from bastion.ui.dashboard_panels import budget_usage
from bastion.ui.security import CONTENT_SECURITY_POLICY
from tests.ui.conftest import UiSite
from tests.ui.seed_dashboards import ANSWERS, QUESTIONS, DashSeeded, seed_dashboards

CHART = re.compile(r"data-series-chart='([^']*)'")
DASH = "/ui/p/default/dashboards"


@pytest.fixture(scope="module")
def dash(ui_site: UiSite) -> DashSeeded:
    return seed_dashboards(ui_site.engine, ui_site.seeded.release_id)


def _charts(text: str) -> dict[str, dict[str, Any]]:
    """The charts of a fragment by title, decoded from their data attributes."""
    found = [json.loads(html.unescape(raw)) for raw in CHART.findall(text)]
    return {chart["title"]: chart for chart in found}


def _series_total(chart: dict[str, Any], label: str) -> float:
    index = chart["labels"].index(label)
    return sum(v or 0 for v in chart["values"][index])


def _llm_calls(ui_site: UiSite, where: str, since_s: int) -> int:
    """An independent count of the counted model calls of ``default`` since ``since_s``."""
    query = (
        "SELECT count(*) FROM spans WHERE project_id = 1 AND duplicate_of IS NULL"
        " AND (operation IN ('chat', 'text_completion', 'embeddings', 'generate_content')"
        " OR request_model IS NOT NULL) AND start_ns >= :since" + (f" AND {where}" if where else "")
    )
    with ui_site.engine.connect() as conn:
        return int(conn.execute(sa.text(query), {"since": since_s * 1_000_000_000}).scalar_one())


def test_the_page_answers_before_its_charts_and_every_fragment_is_secured(
    ui_site: UiSite, dash: DashSeeded
) -> None:
    ada = ui_site.client("ada")
    page = ada.get(f"{DASH}?group=model&range=24h&step=hour")
    assert page.status_code == 200
    assert "data-series-chart" not in page.text  # the charts come as a fragment
    for panel in ("charts", "spenders", "budgets", "cache", "breakers"):
        assert f'hx-get="{DASH}/{panel}' in page.text, panel
        answer = ada.get(f"{DASH}/{panel}?group=model&range=24h", headers={"HX-Request": "true"})
        assert answer.status_code == 200, (panel, answer.text)
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert 'hx-get="/ui/p/default/dashboards/charts?range=24h&amp;step=hour&amp;group=model"' in (
        page.text
    )


def test_ungrouped_charts_count_every_call_and_show_their_numbers(
    ui_site: UiSite, dash: DashSeeded
) -> None:
    since = int(time.time()) - 86_400
    answer = ui_site.client("ada").get(f"{DASH}/charts?range=24h&step=hour")
    charts = _charts(answer.text)
    assert set(charts) == {
        "Requests",
        "Error rate",
        "Latency (ms)",
        "Time to first token (ms)",
        "Tokens",
        "Cost (USD)",
    }
    requests = charts["Requests"]
    assert len(requests["x"]) in (24, 25)
    assert _series_total(requests, "requests") == _llm_calls(ui_site, "", since)
    assert charts["Latency (ms)"]["labels"] == ["p50", "p95", "p99"]
    assert charts["Tokens"]["labels"] == ["in", "out"]
    assert any(v for v in charts["Error rate"]["values"][0])
    assert answer.text.count("<summary>Numbers</summary>") == 6
    assert "Read from roll-ups" in answer.text


def test_grouping_by_model_splits_the_calls(ui_site: UiSite, dash: DashSeeded) -> None:
    since = int(time.time()) - 86_400
    answer = ui_site.client("ada").get(f"{DASH}/charts?group=model&range=24h&step=hour")
    requests = _charts(answer.text)["Requests"]
    assert {"gpt-4o", "claude-3-haiku"} <= set(requests["labels"])
    expected = _llm_calls(ui_site, "request_model = 'claude-3-haiku'", since)
    assert _series_total(requests, "claude-3-haiku") == expected == dash.calls // 3
    assert "Latency p99 (ms)" in _charts(answer.text)


def test_many_users_draw_the_leading_ones_from_their_own_rows(
    ui_site: UiSite, dash: DashSeeded
) -> None:
    since = int(time.time()) - 7 * 86_400
    answer = ui_site.client("ada").get(f"{DASH}/charts?group=user&range=7d&step=day")
    requests = _charts(answer.text)["Requests"]
    assert len(requests["labels"]) == 6  # more users than that: the six with most calls
    assert "(not set)" not in requests["labels"]
    assert "Calls without a user are not drawn here" in answer.text
    for n in range(4):
        user = f"dash-user-{n}"
        assert user in requests["labels"]
        expected = _llm_calls(ui_site, f"user_id = '{user}'", since)
        assert _series_total(requests, user) == expected == dash.calls // 4


def test_prompt_version_and_release_read_spans_over_a_bounded_range(
    ui_site: UiSite, dash: DashSeeded
) -> None:
    ada = ui_site.client("ada")
    by_prompt = ada.get(f"{DASH}/charts?group=prompt&range=24h")
    labels = _charts(by_prompt.text)["Requests"]["labels"]
    assert {"support v1", "support v2"} <= set(labels)
    assert "Read from spans" in by_prompt.text
    by_release = ada.get(f"{DASH}/charts?group=release&range=24h")
    requests = _charts(by_release.text)["Requests"]
    assert _series_total(requests, ui_site.seeded.release_id) >= dash.calls // 4
    too_long = ada.get(f"{DASH}?group=release&range=7d")
    assert too_long.status_code == 400
    assert "at most 24h" in too_long.text


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("group=colour", "group must be one of"),
        ("range=1y", "range must be one of"),
        ("step=minute", "step must be hour or day"),
        ("range=7d&step=hour", "too many points"),
    ],
)
def test_bad_controls_are_a_400_naming_the_problem(ui_site: UiSite, query: str, names: str) -> None:
    ada = ui_site.client("ada")
    for path in (DASH, f"{DASH}/charts", f"{DASH}/spenders"):
        answer = ada.get(f"{path}?{query}", headers={"HX-Request": "true"})
        assert answer.status_code == 400, path
        assert names in html.unescape(answer.text), path


def test_top_spenders_cache_and_breakers(ui_site: UiSite, dash: DashSeeded) -> None:
    ada = ui_site.client("ada")
    spenders = ada.get(f"{DASH}/spenders?range=24h").text
    for name in ("dash-user-0", "acme", "globex", "search", "summarise"):
        assert f">{name}</td>" in spenders, name
    cache = ada.get(f"{DASH}/cache?range=24h").text
    hits, misses = dash.cache_hits, dash.cache_misses
    assert f"{100 * hits / (hits + misses):.1f}%" in cache
    assert "$0.03" in cache
    breakers = ada.get(f"{DASH}/breakers").text
    assert "No model alias declares a breaker" in breakers


def test_budget_usage_is_counted_from_the_roll_ups(ui_site: UiSite, dash: DashSeeded) -> None:
    limits = LimitsConfig(
        budgets=(
            BudgetRule(0, "feature", "day", 1.0, match="search"),
            BudgetRule(1, "project", "month", None, limit_tokens=1_000_000),
            BudgetRule(2, "key", "day", 5.0),
        )
    )
    now = time.time()
    day_start = int(now - now % 86_400) * 1_000_000_000
    with ui_site.engine.connect() as conn:
        usage = budget_usage(conn, 1, "default", limits, now)
        spent = conn.execute(
            sa.text(
                "SELECT sum(cost_usd) FROM spans WHERE project_id = 1 AND feature = 'search'"
                " AND start_ns >= :start AND duplicate_of IS NULL"
            ),
            {"start": day_start},
        ).scalar_one()
    feature, project, key = usage
    assert [value for value, _ in feature.usage] == ["search"]
    assert feature.usage[0][1] == pytest.approx(spent)
    assert project.usage[0][0] == "default"
    assert project.unit == "tokens"
    assert project.usage[0][1] > 0
    assert key.usage == []
    assert "not in the roll-ups" in key.note
    empty = ui_site.client("ada").get(f"{DASH}/budgets").text
    assert "No budgets are declared" in empty


def test_a_session_reads_as_one_conversation_in_order(ui_site: UiSite, dash: DashSeeded) -> None:
    ada = ui_site.client("ada")
    listing = ada.get("/ui/p/default/sessions?range=24h").text
    assert f'href="/ui/p/default/sessions/{dash.session}"' in listing
    thread = ada.get(f"/ui/p/default/sessions/{dash.session}")
    assert thread.status_code == 200
    said = [*QUESTIONS, *ANSWERS]
    positions = [thread.text.index(html.escape(text)) for text in said]
    turns = [(positions[i], positions[i + 3]) for i in range(3)]
    flat = [p for pair in turns for p in pair]
    assert flat == sorted(flat), "each question, then its answer, trace after trace"
    # Each earlier question is shown once: the history a call repeats is not shown again.
    assert thread.text.count(html.escape(QUESTIONS[0])) == 1
    for trace in dash.session_traces:
        assert f'href="/ui/p/default/traces/{trace}"' in thread.text


def test_another_projects_session_is_a_404(ui_site: UiSite, dash: DashSeeded) -> None:
    mine = ui_site.client("ada").get(f"/ui/p/default/sessions/{dash.other_session}")
    assert mine.status_code == 404
    assert "secret" not in mine.text.replace(dash.other_session, "")
    theirs = ui_site.client("olga").get(f"/ui/p/other/sessions/{dash.other_session}")
    assert theirs.status_code == 200
    assert ui_site.client("olga").get(f"/ui/p/default/sessions/{dash.session}").status_code == 404


def test_users_page_has_per_user_and_per_tenant_numbers(ui_site: UiSite, dash: DashSeeded) -> None:
    answer = ui_site.client("mia").get("/ui/p/default/users?range=24h")
    assert answer.status_code == 200
    assert 'href="/ui/p/default/traces?user=dash-user-0&amp;range=all"' in answer.text
    assert 'href="/ui/p/default/traces?tenant=acme&amp;range=all"' in answer.text
    assert "data-series-chart" not in answer.text  # the chart follows as a fragment
    assert 'hx-get="/ui/p/default/users/chart?range=24h"' in answer.text
    chart = ui_site.client("mia").get("/ui/p/default/users/chart?range=24h")
    cost = _charts(chart.text)["Cost (USD)"]
    assert "dash-user-0" in cost["labels"]
    assert ui_site.client("mia").get("/ui/p/default/users/chart?range=1y").status_code == 400
    assert ui_site.client("mia").get("/ui/p/default/users?range=2y").status_code == 400


def test_hostile_names_are_text_everywhere(ui_site: UiSite, dash: DashSeeded) -> None:
    ada = ui_site.client("ada")
    paths = [
        "/ui/p/default/users?range=24h",
        "/ui/p/default/sessions?range=24h",
        f"/ui/p/default/sessions/{quote(dash.xss_session, safe='')}",
        f"{DASH}/spenders?range=24h",
        f"{DASH}/charts?group=tenant",
        f"{DASH}/charts?group=feature",
    ]
    for path in paths:
        answer = ada.get(path)
        assert answer.status_code == 200, path
        assert "<script>alert" not in answer.text, path
        assert "<img src=x" not in answer.text, path
        assert "&lt;script&gt;alert(" in answer.text, path  # shown, as text


def test_a_viewer_sees_the_pages_but_no_write_controls(ui_site: UiSite, dash: DashSeeded) -> None:
    vic = ui_site.client("vic")
    for path in (DASH, "/ui/p/default/sessions", "/ui/p/default/users"):
        answer = vic.get(path)
        assert answer.status_code == 200, path
        # The only form that changes something is signing out.
        assert answer.text.count('method="post"') == 1, path
