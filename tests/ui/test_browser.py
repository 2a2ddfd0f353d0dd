"""The UI in a real browser (Playwright driving Debian's chromium), on both databases.

Golden paths: sign in, filter, page, open a 30,000-span trace and walk down a deep branch,
read a payload, follow a span's link to its prompt version. Attacks: hostile text in span
names, attributes, messages and tool arguments stays text (an alert would fail the test), the
policy header is on every page, a viewer gets no write controls and a 403 when forging one,
another project's trace is a 404. No page may trip its own Content-Security-Policy.

Screenshots go to a temporary folder (printed) or ``BASTION_UI_SCREENSHOTS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Response,
    expect,
    sync_playwright,
)

from bastion.ui.security import CONTENT_SECURITY_POLICY
from tests.ui.conftest import UiSite
from tests.ui.seed import PASSWORD, XSS

CHROMIUM = Path("/usr/bin/chromium")


# One browser for this module's tests. Not for the session: Playwright's synchronous API keeps
# an event loop running on the main thread while it is open, and other tests call asyncio.run.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/ensure-services.sh installs Debian's chromium")
    with sync_playwright() as playwright:
        # The sandbox needs user namespaces, which a root CI container does not give.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@dataclass
class Tab:
    """A browser tab that records every dialog and every error the page logs."""

    page: Page
    site: UiSite
    shots: Path
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> Response:
        response = self.page.goto(self.site.url + path)
        assert response is not None
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        return response

    def sign_in(self, user: str) -> None:
        answer = self.page.context.request.post(
            self.site.url + "/auth/login", data={"name": user, "password": PASSWORD}
        )
        assert answer.ok, answer.text()

    def shot(self, name: str) -> None:
        path = self.shots / f"{name}-{self.site.backend}.png"
        self.page.screenshot(path=str(path), full_page=False)
        print(f"screenshot: {path}")

    def clean(self) -> None:
        """No alert ran, and the page broke none of its own rules (CSP reports are errors)."""
        assert self.dialogs == []
        assert self.errors == []


@pytest.fixture
def tab(browser: Browser, ui_site: UiSite, screenshot_dir: Path) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=ui_site.url)
    page = context.new_page()
    page.set_default_timeout(10_000)
    opened = Tab(page, ui_site, screenshot_dir)

    def on_dialog(dialog: object) -> None:
        opened.dialogs.append(dialog.message)  # type: ignore[attr-defined]
        dialog.dismiss()  # type: ignore[attr-defined]

    def on_console(message: ConsoleMessage) -> None:
        # Refused requests are the tests' own doing (a wrong password, a forged form); a
        # missing file of the page's own shows up in on_response.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            opened.errors.append(message.text)

    def on_response(response: Response) -> None:
        if "/ui/static/" in response.url and response.status >= 400:
            opened.errors.append(f"{response.status} for {response.url}")

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("response", on_response)
    page.on("pageerror", lambda e: opened.errors.append(str(e)))
    yield opened
    context.close()


def test_sign_in_from_the_login_page(tab: Tab) -> None:
    page = tab.page
    tab.open("/ui/p/default/traces?range=all")
    expect(page).to_have_url(tab.site.url + "/ui/login?next=/ui/p/default/traces%3Frange%3Dall")
    page.fill("input[name=name]", "ada")
    page.fill("input[name=password]", "not the password at all")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("invalid user name or password")
    tab.shot("login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(tab.site.url + "/ui/p/default/traces?range=all")
    expect(page.locator("h1")).to_have_text("Traces")
    expect(page.locator("#user-menu summary")).to_have_text("ada")
    tab.shot("traces-all")
    tab.clean()


def test_filter_by_user_and_model_and_page_through(tab: Tab) -> None:
    page = tab.page
    tab.sign_in("vic")
    tab.open("/ui/p/default/traces?range=all&limit=25")
    page.click(".more-filters summary")
    page.fill("input[name=user]", "filler")
    page.fill("input[name=model]", "gpt-4o-mini")
    page.click("#trace-filters button[type=submit]")
    page.wait_for_url(lambda url: "user=filler" in url and "model=gpt-4o-mini" in url)
    rows = page.locator("table.traces tbody tr")
    expect(rows).to_have_count(25)
    expect(page.locator("td.name a").first).to_have_text("batch-00")
    expect(page.locator(".chart canvas")).to_have_count(1)  # uPlot drew the latency chart
    tab.shot("traces")
    page.click("a.next")  # htmx swaps the results and pushes the page's URL
    expect(rows).to_have_count(tab.site.seeded.filler - 25)
    page.wait_for_url(lambda url: "cursor=" in url)
    page.reload()
    expect(rows).to_have_count(tab.site.seeded.filler - 25)
    page.fill("input[name=model]", "claude-3-5-sonnet")
    page.click("#trace-filters button[type=submit]")
    expect(page.locator("td.empty")).to_contain_text("No traces match")
    tab.clean()


def test_a_30000_span_trace_opens_fast_and_a_deep_branch_expands(tab: Tab) -> None:
    page = tab.page
    seeded = tab.site.seeded
    tab.sign_in("ada")
    path = f"/ui/p/default/traces/{seeded.big_trace}"
    # Its speed is measured by benchmarks/ui_pages.py; here, that it opens a window of rows.
    tab.open(path)
    expect(page.locator(f'.row[data-span="{seeded.deep_spans[0]}"]')).to_be_visible()
    assert page.locator(".row[data-span]").count() < 50  # a window, not 30,000 rows
    for span_id in seeded.deep_spans[:-1]:
        page.click(f'.row[data-span="{span_id}"] button.toggle')
    deepest = seeded.deep_spans[-1]
    page.click(f'.row[data-span="{deepest}"] a.span-link')
    expect(page.locator(".span-detail h2")).to_have_text(f"step {len(seeded.deep_spans) - 1}")
    tab.shot("big-trace")
    page.wait_for_url(lambda url: url.endswith(f"?span={deepest}"))
    # Closing the branch at its top removes every row below it.
    page.click(f'.row[data-span="{seeded.deep_spans[0]}"] button.toggle')
    expect(page.locator(f'.row[data-span="{deepest}"]')).to_have_count(0)
    fan_out = "0" * 15 + "2"
    page.click(f'.row[data-span="{fan_out}"] button.toggle')
    leaves = page.locator('.row[data-depth="2"][data-span]')
    expect(leaves).to_have_count(200)
    page.click("button.show-more")
    expect(leaves).to_have_count(400)
    tab.clean()


def test_read_a_payload_copy_it_and_follow_the_prompt_link(tab: Tab) -> None:
    page = tab.page
    seeded = tab.site.seeded
    tab.sign_in("ada")
    tab.open(f"/ui/p/default/traces/{seeded.support_trace}")
    page.click(f'.row[data-span="{seeded.chat_span}"] a.span-link')
    panel = page.locator("#span-panel")
    expect(panel.locator(".message.role-system")).to_contain_text("support desk of Example Shop")
    user = panel.locator(".message.role-user")
    expect(user).to_contain_text("Where is order 1040?")
    expect(panel.locator(".tool-call .tool-name")).to_have_text("lookup_order")
    expect(panel.locator(".tool-call")).to_contain_text("1040")
    user.locator("button.copy").first.click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "Where is order 1040?"
    tab.shot("trace")
    panel.locator("a.chip.prompt").click()
    expect(page).to_have_url(tab.site.url + "/ui/p/default/prompts/support/versions/2")
    expect(page.locator("h1")).to_contain_text("support")
    expect(page.locator(".message.role-system")).to_contain_text("You are the support desk (v2).")
    tab.clean()


def test_hostile_strings_are_shown_as_text(tab: Tab) -> None:
    page = tab.page
    seeded = tab.site.seeded
    tab.sign_in("ada")
    tab.open(f"/ui/p/default/traces/{seeded.xss_trace}?span={seeded.xss_span}")
    expect(page.locator("h1")).to_have_text(f"root {XSS}")
    panel = page.locator("#span-panel")
    expect(panel.locator(".message.role-user")).to_contain_text(f"user {XSS}")
    expect(panel.locator(".tool-call .tool-name")).to_have_text(f"tool{XSS}")
    expect(panel.locator(".tool-call")).to_contain_text(XSS)  # the tool's arguments
    attributes = panel.locator("section.payload", has=page.locator("h3", has_text="Attributes"))
    expect(attributes).to_contain_text(XSS)
    # Loaded again through htmx, as a fragment: still text.
    page.click(f'.row[data-span="{seeded.xss_span}"] a.span-link')
    expect(panel.locator(".span-detail h2")).to_have_text(f"chat {XSS}")
    tab.open("/ui/p/default/traces?range=all&limit=200&q=" + XSS)
    tab.open("/ui/p/default/traces?range=all&limit=200")
    expect(page.get_by_text(f"root {XSS}")).to_have_count(1)
    assert page.locator("img").count() == 0
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    tab.clean()


def test_a_viewer_gets_no_write_controls_and_a_403_when_forging(tab: Tab) -> None:
    page = tab.page
    tab.sign_in("vic")
    tab.open("/ui/p/default/traces")
    expect(page.locator("form.save-view")).to_have_count(0)
    expect(page.locator("form[action$='/delete']")).to_have_count(0)
    token = page.evaluate("document.body.dataset.csrf")
    forged = page.context.request.post(
        tab.site.url + "/ui/p/default/views",
        form={"name": "sneaky", "query": "", "csrf_token": token},
    )
    assert forged.status == 403
    assert "may only read" in forged.text()
    tab.clean()


def test_another_projects_trace_is_a_404_and_the_switcher_lists_my_projects(tab: Tab) -> None:
    page = tab.page
    tab.sign_in("ada")
    response = tab.open(f"/ui/p/default/traces/{tab.site.seeded.other_trace}")
    assert response.status == 404
    expect(page.locator(".error-message")).to_contain_text("No trace")
    page.click("#project-switcher summary")
    page.click("#project-switcher a:has-text('other')")
    expect(page).to_have_url(tab.site.url + "/ui/p/other/traces")
    expect(page.locator("#project-switcher summary strong")).to_have_text("other")
    for section in ("sessions", "users", "dashboards"):
        tab.open(f"/ui/p/other/{section}")
        expect(page.locator("h1")).to_have_text(section.capitalize())
    # Signing out ends the session: the next page asks to sign in again.
    page.click("#user-menu summary")
    page.click("#user-menu button[type=submit]")
    expect(page).to_have_url(tab.site.url + "/ui/login")
    tab.open("/ui/p/other/traces")
    page.wait_for_url(lambda url: "/ui/login?next=" in url)
    tab.clean()
