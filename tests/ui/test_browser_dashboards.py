"""Dashboards, sessions and users in a real browser (Debian's chromium), on both databases.

Charts are drawn from seeded calls and change with the group-by and range controls; a session
reads as a thread; hostile user ids, tenants, features and session ids stay text (an alert or
a policy violation fails the test); a viewer gets no write controls; another project's
session is a 404; at 420 px the main tables do not scroll the page sideways.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import UiSite
from tests.ui.seed_dashboards import QUESTIONS, DashSeeded, seed_dashboards
from tests.ui.test_browser import Tab
from tests.ui.test_browser import browser as browser  # the fixtures, used here too
from tests.ui.test_browser import tab as tab

DASH = "/ui/p/default/dashboards"


@pytest.fixture(scope="module")
def dash(ui_site: UiSite) -> DashSeeded:
    return seed_dashboards(ui_site.engine, ui_site.seeded.release_id)


def _requests_chart(tab: Tab) -> dict[str, Any]:
    box = tab.page.locator("[data-chart-key=requests] [data-series-chart]")
    data: dict[str, Any] = json.loads(box.get_attribute("data-series-chart") or "{}")
    return data


def test_dashboards_draw_every_chart_with_its_numbers(tab: Tab, dash: DashSeeded) -> None:
    page = tab.page
    page.set_viewport_size({"width": 1280, "height": 800})
    tab.sign_in("ada")
    tab.open(f"{DASH}?range=24h")
    expect(page.locator(".dash-chart .uplot")).to_have_count(6)
    expect(page.locator(".dash-chart canvas")).to_have_count(6)
    data = _requests_chart(tab)
    assert sum(v or 0 for v in data["values"][0]) >= dash.calls
    expect(page.locator("#dash-cache")).to_contain_text("75.0%")
    expect(page.locator("#dash-spenders")).to_contain_text("dash-user-0")
    tab.shot("dashboards")
    chart = page.locator("[data-chart-key=requests]")
    chart.locator("summary").click()
    expect(chart.locator("tbody tr").first).to_be_visible()
    tab.clean()


def test_group_by_and_range_controls_change_the_chart(tab: Tab, dash: DashSeeded) -> None:
    page = tab.page
    tab.sign_in("ada")
    tab.open(f"{DASH}?range=24h")
    expect(page.locator("[data-chart-key=requests] .uplot")).to_have_count(1)
    assert _requests_chart(tab)["labels"] == ["requests"]
    page.select_option("select[name=group]", "model")
    page.click("#dashboard-controls button[type=submit]")
    page.wait_for_url(lambda url: "group=model" in url)
    expect(page.locator("[data-chart-key=requests] .uplot")).to_have_count(1)
    labels = _requests_chart(tab)["labels"]
    assert {"gpt-4o", "claude-3-haiku"} <= set(labels)
    expect(page.locator("[data-chart-key=requests] .u-legend")).to_contain_text("claude-3-haiku")
    hours = len(_requests_chart(tab)["x"])
    page.select_option("select[name=range]", "7d")
    page.select_option("select[name=step]", "day")
    page.click("#dashboard-controls button[type=submit]")
    page.wait_for_url(lambda url: "range=7d" in url and "step=day" in url and "group=model" in url)
    expect(page.locator("[data-chart-key=requests] .uplot")).to_have_count(1)
    days = len(_requests_chart(tab)["x"])
    assert days in (7, 8)
    assert hours in (24, 25)
    tab.shot("dashboards-by-model")
    tab.clean()


def test_a_session_reads_as_a_thread(tab: Tab, dash: DashSeeded) -> None:
    page = tab.page
    tab.sign_in("mia")
    tab.open("/ui/p/default/sessions?range=24h")
    page.click(f"a:has-text('{dash.session}')")
    expect(page.locator("h1")).to_contain_text(dash.session)
    turns = page.locator(".thread > .turn")
    expect(turns).to_have_count(3)
    for i, question in enumerate(QUESTIONS):
        expect(turns.nth(i).locator(".role-user")).to_contain_text(question)
    tab.shot("session-thread")
    turns.first.locator(".turn-head a").click()
    expect(page).to_have_url(tab.site.url + f"/ui/p/default/traces/{dash.session_traces[0]}")
    tab.clean()


def test_hostile_names_stay_text(tab: Tab, dash: DashSeeded) -> None:
    page = tab.page
    tab.sign_in("ada")
    for path in (
        "/ui/p/default/users?range=24h",
        "/ui/p/default/sessions?range=24h",
        f"/ui/p/default/sessions/{quote(dash.xss_session, safe='')}",
        f"{DASH}?group=tenant&range=24h",
        f"{DASH}?group=feature&range=24h",
    ):
        tab.open(path)
        page.wait_for_load_state("networkidle")
        assert page.locator("img[src=x]").count() == 0, path
    expect(page.locator("#dash-spenders")).to_contain_text('<script>alert("xss")</script>')
    tab.clean()


def test_a_viewer_has_no_write_controls_and_other_sessions_are_404(
    tab: Tab, dash: DashSeeded
) -> None:
    page = tab.page
    tab.sign_in("vic")
    for path in (f"{DASH}?range=24h", "/ui/p/default/sessions", "/ui/p/default/users"):
        tab.open(path)
        page.wait_for_load_state("networkidle")
        # Signing out is the only form that changes anything.
        expect(page.locator("form[method=post]")).to_have_count(1)
    response = tab.open(f"/ui/p/default/sessions/{dash.other_session}")
    assert response.status == 404
    expect(page.locator(".error-message")).to_contain_text("No such session")
    tab.clean()


def test_a_narrow_window_does_not_scroll_sideways(tab: Tab, dash: DashSeeded) -> None:
    page = tab.page
    page.set_viewport_size({"width": 420, "height": 800})
    tab.sign_in("ada")
    for path in (
        f"{DASH}?range=24h&group=model",
        "/ui/p/default/sessions?range=24h",
        f"/ui/p/default/sessions/{dash.session}",
        "/ui/p/default/users?range=24h",
    ):
        tab.open(path)
        page.wait_for_load_state("networkidle")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    tab.shot("dashboards-narrow")
    tab.clean()
