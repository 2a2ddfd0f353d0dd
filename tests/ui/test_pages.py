"""The UI over real HTTP on both databases: sign-in redirects, the security headers, static
files, project isolation, filters, pages, saved views and their permissions, escaping."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from bastion.ui.security import CONTENT_SECURITY_POLICY
from tests.ui.conftest import UiSite
from tests.ui.seed import BIG_SPANS, XSS

ROWS = re.compile(r'class="row[ "]')


def _names(html: str) -> set[str]:
    """The trace names linked from a traces list."""
    return set(re.findall(r'<td class="name"><a href="[^"]+">([^<]+)</a>', html))


def test_a_signed_out_request_goes_to_the_login_page_and_back(ui_site: UiSite) -> None:
    anonymous = ui_site.client()
    assert anonymous.get("/").headers["location"] == "/ui/"
    assert anonymous.get("/ui/").headers["location"] == "/ui/login"
    answer = anonymous.get("/ui/p/default/traces?user=alice&range=all")
    assert answer.status_code == 303
    target = urlsplit(answer.headers["location"])
    assert target.path == "/ui/login"
    assert unquote(parse_qs(target.query)["next"][0]) == "/ui/p/default/traces?user=alice&range=all"
    # An htmx request for a fragment sends the whole page to the login page instead.
    fragment = anonymous.get(
        "/ui/p/default/traces/" + ui_site.seeded.support_trace + "/children",
        headers={"HX-Request": "true", "HX-Current-URL": ui_site.url + "/ui/p/default/traces"},
    )
    assert fragment.headers["HX-Redirect"].startswith("/ui/login?next=/ui/p/default/traces")
    login = anonymous.get("/ui/login?next=//evil.example/x")
    assert 'name="next" value="/ui/"' in login.text
    signed_in = ui_site.client("ada")
    assert signed_in.get("/ui/").headers["location"] == "/ui/p/default/traces"
    assert signed_in.get("/ui/login?next=/ui/p/other/traces").headers["location"] == (
        "/ui/p/other/traces"
    )


def _ui_paths(site: UiSite) -> list[str]:
    s = site.seeded
    trace = f"/ui/p/default/traces/{s.support_trace}"
    return [
        "/ui/login",
        "/ui/p/default/traces",
        "/ui/p/default/traces?range=all&sort=cost&dir=asc",
        f"{trace}",
        f"{trace}?span={s.chat_span}",
        f"{trace}/children?parent={'5' * 15}1",
        f"{trace}/spans/{s.chat_span}",
        "/ui/p/default/prompts/support/versions/2",
        f"/ui/p/default/releases/{s.release_id}",
        "/ui/p/default/datasets/golden-support/versions/1?item=case-1040",
        "/ui/p/default/sessions",
        "/ui/p/default/users",
        "/ui/p/default/dashboards",
        "/ui/p/default/traces/" + "0" * 32,
        "/ui/p/nowhere/traces",
    ]


def test_every_page_fragment_and_file_carries_the_security_headers(ui_site: UiSite) -> None:
    ada = ui_site.client("ada")
    statics: set[str] = set()
    for path in _ui_paths(ui_site):
        for htmx in (False, True):
            answer = ada.get(path, headers={"HX-Request": "true"} if htmx else {})
            assert answer.status_code in (200, 303, 404), (path, answer.status_code)
            assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, path
            assert answer.headers["X-Content-Type-Options"] == "nosniff", path
            assert answer.headers["Referrer-Policy"] == "same-origin", path
            statics.update(re.findall(r'(/ui/static/[0-9a-f]{16}/[^"]+)"', answer.text))
    assert {"app.css", "app.js", "vendor/htmx.min.js"} <= {p.split("/", 4)[4] for p in statics}
    for path in statics:
        answer = ada.get(path)
        assert answer.status_code == 200
        assert "immutable" in answer.headers["Cache-Control"]
        assert answer.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    # A stale hash or a path that is not one of the package's files is not served.
    name = next(iter(statics)).split("/", 4)[4]
    assert ada.get(f"/ui/static/{'0' * 16}/{name}").status_code == 404
    assert ada.get(f"/ui/static/{'0' * 16}/../../settings.py").status_code == 404
    assert ada.get(f"/ui/static/{'0' * 16}/%2e%2e/%2e%2e/settings.py").status_code == 404


def test_another_projects_trace_is_not_found(ui_site: UiSite) -> None:
    s = ui_site.seeded
    ada = ui_site.client("ada")  # owner of default, viewer of other
    for path in (
        f"/ui/p/default/traces/{s.other_trace}",
        f"/ui/p/default/traces/{s.other_trace}?span={'0' * 15}1",
        f"/ui/p/default/traces/{s.other_trace}/children",
    ):
        answer = ada.get(path)
        assert answer.status_code == 404, path
        assert "other-project-secret" not in answer.text
    fragment = ada.get(
        f"/ui/p/default/traces/{s.other_trace}/spans/{'0' * 15}1", headers={"HX-Request": "true"}
    )
    assert fragment.status_code == 404
    assert "other-project-secret" not in fragment.text
    # In its own project, for someone with a role there, the same trace opens.
    assert "other-project-secret" in ada.get(f"/ui/p/other/traces/{s.other_trace}").text
    # No role in a project: the project is not found, whether it exists or not.
    vic = ui_site.client("vic")
    assert vic.get("/ui/p/other/traces").status_code == 404
    assert vic.get(f"/ui/p/other/traces/{s.other_trace}").status_code == 404
    assert vic.get("/ui/p/nowhere/traces").status_code == 404


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("user=alice", {"support-turn"}),
        ("model=claude-3-5-sonnet", {"billing-question"}),
        ("provider=anthropic", {"billing-question"}),
        ("status=error", {"billing-question"}),
        ("error_class=RateLimitError", {"billing-question"}),
        ("feature=support&session=s-1", {"support-turn"}),
        ("prompt=support&prompt_version=2", {"support-turn"}),
        ("prompt=support&prompt_version=1", set()),
        ("label=production", {"support-turn"}),
        ("arm=candidate", {"support-turn"}),
        ("arm=stable", set()),
        ("q=order+1040", {"support-turn"}),
        ("name=billing-question", {"billing-question"}),
        ("user=filler&min_latency_ms=395", {"batch-39"}),
        ("user=filler&min_cost_usd=0.039", {"batch-39"}),
    ],
)
def test_filters_narrow_the_list(ui_site: UiSite, query: str, expected: set[str]) -> None:
    answer = ui_site.client("vic").get(f"/ui/p/default/traces?range=all&{query}")
    assert answer.status_code == 200
    assert _names(answer.text) == expected


def test_release_filter_and_time_window(ui_site: UiSite) -> None:
    vic = ui_site.client("vic")
    release = ui_site.seeded.release_id
    page = vic.get(f"/ui/p/default/traces?range=all&release={release}&arm=candidate")
    assert _names(page.text) == {"support-turn"}
    # The seeded traces started minutes ago: none in the last 15 minutes' window is older.
    recent = _names(vic.get("/ui/p/default/traces?range=15m&limit=200").text)
    assert "support-turn" in recent
    assert "batch-39" not in recent
    empty = vic.get("/ui/p/default/traces?start=2001-01-01T00:00&end=2001-01-02T00:00")
    assert _names(empty.text) == set()
    assert "No traces match" in empty.text


@pytest.mark.parametrize("sort", ["time", "latency", "tokens", "cost", "spans"])
def test_every_sort_pages_through_every_trace_once(ui_site: UiSite, sort: str) -> None:
    vic = ui_site.client("vic")
    seen: list[str] = []
    url: str | None = f"/ui/p/default/traces?range=all&sort={sort}&dir=asc&limit=25"
    while url is not None:
        answer = vic.get(url)
        assert answer.status_code == 200, answer.text
        seen += re.findall(r'href="/ui/p/default/traces/([0-9a-f]{32})"', answer.text)
        found = re.search(r'class="next" href="([^"]+)"', answer.text)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert len(seen) == len(set(seen)) == ui_site.seeded.filler + 4


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=7", "limit"),
        ("prompt_version=two", "prompt_version"),
        ("sort=weather", "sort"),
        ("start=yesterday", "start"),
        ("start=1500-01-01T00:00", "start"),
        ("cursor=bm90IGEgY3Vyc29y", "cursor"),
        ("user=%00", "NUL"),
    ],
)
def test_bad_parameters_are_named(ui_site: UiSite, query: str, named: str) -> None:
    answer = ui_site.client("vic").get(f"/ui/p/default/traces?{query}")
    assert answer.status_code == 400
    assert named in answer.text


def test_trace_page_links_to_the_prompt_release_and_dataset(ui_site: UiSite) -> None:
    s = ui_site.seeded
    ada = ui_site.client("ada")
    page = ada.get(f"/ui/p/default/traces/{s.support_trace}?span={s.chat_span}").text
    prompt = "/ui/p/default/prompts/support/versions/2"
    release = f"/ui/p/default/releases/{s.release_id}?arm=candidate"
    dataset = "/ui/p/default/datasets/golden-support/versions/1?item=case-1040"
    for link in (prompt, release, dataset):
        assert f'href="{link.replace("&", "&amp;")}"' in page, link
    assert "Where is order 1040?" in page
    assert "lookup_order" in page
    assert "You are the support desk (v2)." in ada.get(prompt).text
    release_page = ada.get(release).text
    assert "support-bot" in release_page
    assert "candidate" in release_page
    item = ada.get(dataset).text
    assert f"/ui/p/default/traces/{s.support_trace}?span={s.chat_span}" in item
    assert ada.get("/ui/p/default/prompts/support/versions/9").status_code == 404
    assert ada.get("/ui/p/default/prompts/nope/versions/1").status_code == 404
    assert ada.get("/ui/p/default/releases/ffffffffffffffff").status_code == 404
    nul = ada.get("/ui/p/default/datasets/golden-support/versions/1?item=%00")
    assert nul.status_code == 400
    assert "NUL" in nul.text


def test_hostile_text_is_escaped_everywhere(ui_site: UiSite) -> None:
    s = ui_site.seeded
    ada = ui_site.client("ada")
    pages = [
        ada.get(f"/ui/p/default/traces/{s.xss_trace}?span={s.xss_span}").text,
        ada.get(
            f"/ui/p/default/traces/{s.xss_trace}/spans/{s.xss_span}",
            headers={"HX-Request": "true"},
        ).text,
        ada.get("/ui/p/default/traces?range=all&limit=200").text,
        ada.get("/ui/p/default/traces?range=all&q=" + XSS).text,
    ]
    for html in pages:
        assert "<script>alert" not in html
        assert "<img src=x" not in html
        assert "&lt;script&gt;alert(" in html


def test_a_30000_span_trace_opens_a_window_at_a_time(ui_site: UiSite) -> None:
    s = ui_site.seeded
    ada = ui_site.client("ada")
    base = f"/ui/p/default/traces/{s.big_trace}"
    page = ada.get(base)  # its server time is measured by benchmarks/ui_pages.py
    assert page.status_code == 200
    assert len(ROWS.findall(page.text)) < 50  # the root's two children, not 30,000 rows
    wide = ada.get(f"{base}/children?parent={'0' * 15}2")
    assert len(ROWS.findall(wide.text)) == 201  # a window of 200 and a "show more" row
    assert "Show 200 more of" in wide.text
    leaves = BIG_SPANS - len(s.deep_spans) - 2  # less the root and the fan-out span
    last = ada.get(f"{base}/children?parent={'0' * 15}2&offset={leaves - 10}")
    assert len(ROWS.findall(last.text)) == 10
    assert 'class="show-more"' not in last.text
    assert f"item {leaves - 1}<" in last.text
    deepest = s.deep_spans[-1]
    opened = ada.get(f"{base}?span={deepest}").text
    assert f"step {len(s.deep_spans) - 1}" in opened  # its branch opened down to it
    # A span far down a wide list: its window holds it, and the ones before load on demand.
    far = ada.get(f"{base}?span={10_000 + 5005:016x}").text
    assert "item 5005<" in far
    assert "item 4999<" not in far
    assert "item 5000<" in far
    assert "Show 200 earlier of 5,000 before" in far
    earlier = ada.get(f"{base}/children?parent={'0' * 15}2&offset=4800&until=5000").text
    assert "item 4800<" in earlier
    assert "item 4999<" in earlier
    assert "item 5000<" not in earlier
    assert "Show 200 earlier of 4,800 before" in earlier
    assert ada.get(f"{base}/children?offset=x").status_code == 400
    assert ada.get(f"{base}/children?until=-1").status_code == 400
    assert ada.get(f"{base}/children?parent={'9' * 16}").status_code == 404


def test_saved_views_belong_to_their_owner(ui_site: UiSite) -> None:
    mia, ada, vic = ui_site.client("mia"), ui_site.client("ada"), ui_site.client("vic")
    saved = mia.post_form(
        "/ui/p/default/views",
        {"name": "Alice's support", "query": "user=alice&range=all&cursor=x", "shared": "on"},
    )
    assert saved.status_code == 303
    assert saved.headers["location"] == "/ui/p/default/traces?range=all&user=alice"
    page = mia.get("/ui/p/default/traces").text
    view_id = re.search(r'action="/ui/p/default/views/(\d+)/delete"', page)
    assert view_id is not None
    assert "Alice&#39;s support" in page
    delete = f"/ui/p/default/views/{view_id.group(1)}/delete"
    assert (
        mia.post_form("/ui/p/default/views", {"name": "Alice's support", "query": ""}).status_code
        == 400
    )
    # Shared: everyone in the project sees it; only its owner gets (or may use) delete.
    for other in (ada, vic):
        html = other.get("/ui/p/default/traces").text
        assert "Alice&#39;s support" in html
        assert delete not in html
        assert other.post_form(delete, {}).status_code == 403
    # A viewer sees no way to save and is refused when forging one.
    assert 'action="/ui/p/default/views"' not in vic.get("/ui/p/default/traces").text
    assert vic.post_form("/ui/p/default/views", {"name": "x", "query": ""}).status_code == 403
    # Without the session's CSRF token nothing changes.
    assert mia.post_form(delete, {}, csrf=False).status_code == 403
    assert mia.post_form(delete, {"csrf_token": "forged"}, csrf=False).status_code == 403
    assert mia.post_form(delete, {}).status_code == 303
    assert "Alice&#39;s support" not in mia.get("/ui/p/default/traces").text
    assert mia.post_form(delete, {}).status_code == 404


def test_a_private_view_is_its_owners_alone(ui_site: UiSite) -> None:
    mia, ada = ui_site.client("mia"), ui_site.client("ada")
    saved = mia.post_form("/ui/p/default/views", {"name": "mine", "query": "model=gpt-4o"})
    assert saved.status_code == 303
    page = mia.get("/ui/p/default/traces").text
    view_id = re.search(r'action="/ui/p/default/views/(\d+)/delete"', page)
    assert view_id is not None
    assert ">mine</a>" not in ada.get("/ui/p/default/traces").text
    delete = f"/ui/p/default/views/{view_id.group(1)}/delete"
    assert ada.post_form(delete, {}).status_code == 404  # not visible to her at all
    assert mia.post_form(delete, {}).status_code == 303
