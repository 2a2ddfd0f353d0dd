"""Server time of every UI page and fragment on a large store, on SQLite and PostgreSQL.

Loads ``--spans`` spans (default 1,000,000) with the realistic shape of ``query_perf.py`` (30
days of traces of 3-5 spans, 2,000 users, 20 models, prompts, errors), plus one 30,000-span
trace, then starts the real server, signs a person in and requests each page ``--runs`` times
over loopback (one kept-alive connection). Prints p50 and p95 per page against the 300 ms goal.

    python benchmarks/ui_pages.py --db both
    python benchmarks/ui_pages.py --db sqlite --spans 200000 --runs 10
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import sqlalchemy as sa
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import query_perf as store_shape
from bastion.auth.roles import PersonRole
from bastion.auth.users import create_user
from bastion.server.app import create_app
from bastion.server.threaded import serve_in_thread
from bastion.settings import Settings
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span

console = store_shape.console
GOAL_MS = 300.0
PASSWORD = "a long ui test passphrase"
BIG_TRACE = "b1" * 16
MS = 1_000_000


def _big_trace(now_ns: int) -> list[Span]:
    """30,000 spans: a root, a 30-deep branch and a fan-out of leaves."""
    spans = [Span(BIG_TRACE, f"{1:016x}", "big-agent-run", now_ns, now_ns + 60_000 * MS)]
    parent = spans[0].span_id
    for level in range(30):
        span_id = f"{100 + level:016x}"
        spans.append(
            Span(
                BIG_TRACE,
                span_id,
                f"step {level}",
                now_ns + level * MS,
                now_ns + 30_000 * MS,
                parent_span_id=parent,
            )
        )
        parent = span_id
    spans.append(
        Span(
            BIG_TRACE,
            f"{2:016x}",
            "fan-out",
            now_ns + 30_000 * MS,
            now_ns + 59_000 * MS,
            parent_span_id=spans[0].span_id,
        )
    )
    for i in range(30_000 - len(spans)):
        start = now_ns + 30_000 * MS + i * 900_000
        spans.append(
            Span(
                BIG_TRACE,
                f"{10_000 + i:016x}",
                f"item {i}",
                start,
                start + 800_000,
                parent_span_id=f"{2:016x}",
                input_tokens=2,
                output_tokens=3,
            )
        )
    return spans


def _serve(settings: Settings) -> tuple[str, Callable[[], None]]:
    """The real application on a loopback port, in a thread; its URL and a stopper."""
    served = serve_in_thread(create_app(settings, gateway=False), start_timeout_s=60)
    return f"127.0.0.1:{served.port}", served.stop


class Browser:
    """One kept-alive connection with a session cookie."""

    def __init__(self, address: str) -> None:
        host, port = address.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.cookie = ""

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, float]:
        sent = {"Cookie": self.cookie, **(headers or {})}
        started = time.perf_counter()
        self.conn.request(method, path, body=body, headers=sent)
        response = self.conn.getresponse()
        data = response.read()
        took = time.perf_counter() - started
        cookie = response.getheader("Set-Cookie")
        if cookie:
            self.cookie = cookie.split(";", 1)[0]
        return response.status, data, took

    def sign_in(self) -> None:
        body = orjson.dumps({"name": "bench", "password": PASSWORD})
        status, data, _ = self.request(
            "POST", "/auth/login", body, {"Content-Type": "application/json"}
        )
        if status != 200:
            raise RuntimeError(f"sign-in failed: {status} {data[:200]!r}")


def _first(data: bytes, marker: bytes, end: bytes = b'"') -> str:
    at = data.index(marker) + len(marker)
    return data[at : data.index(end, at)].decode().replace("&amp;", "&")


def _cases(browser: Browser) -> list[tuple[str, str, dict[str, str]]]:
    """(label, path, headers) of every page and fragment, with ids taken from real pages."""
    base = "/ui/p/default"
    _, listing, _ = browser.request("GET", f"{base}/traces?range=all")
    trace = _first(listing, b'href="/ui/p/default/traces/')
    next_page = _first(listing, b'class="next" href="')
    _, detail, _ = browser.request("GET", f"{base}/traces/{trace}")
    span = _first(detail, b'data-span="')
    hx = {"HX-Request": "true"}
    user = store_shape.USERS[0]
    return [
        ("login page (signed out)", "/ui/login", {"Cookie": ""}),
        ("traces, last 24 h (default)", f"{base}/traces", {}),
        ("traces, all time", f"{base}/traces?range=all", {}),
        ("traces, next page (htmx)", next_page, hx),
        ("traces, user filter, all time", f"{base}/traces?range=all&user={user}", {}),
        ("traces, model + user, all time", f"{base}/traces?range=all&user={user}&model=gpt-4o", {}),
        (
            "traces, prompt + version",
            f"{base}/traces?range=all&prompt=chat-main&prompt_version=3",
            {},
        ),
        ("traces, provider, all time", f"{base}/traces?range=all&provider=mistral", {}),
        ("traces, errors, 7 days", f"{base}/traces?range=7d&status=error", {}),
        ("traces, text search, 24 h", f"{base}/traces?q={store_shape.NEEDLE}", {}),
        ("traces, by latency, 24 h", f"{base}/traces?sort=latency", {}),
        ("traces, by cost, 7 days", f"{base}/traces?range=7d&sort=cost", {}),
        ("traces, by cost, all time", f"{base}/traces?range=all&sort=cost", {}),
        ("trace page (small)", f"{base}/traces/{trace}", {}),
        ("trace page + span panel", f"{base}/traces/{trace}?span={span}", {}),
        ("span panel (htmx)", f"{base}/traces/{trace}/spans/{span}", hx),
        ("30k-span trace page", f"{base}/traces/{BIG_TRACE}", {}),
        ("30k: children window", f"{base}/traces/{BIG_TRACE}/children?parent={2:016x}", hx),
        (
            "30k: last window",
            f"{base}/traces/{BIG_TRACE}/children?parent={2:016x}&offset=29800",
            hx,
        ),
        ("30k: deep link to depth 30", f"{base}/traces/{BIG_TRACE}?span={129:016x}", {}),
        *_dashboard_cases(browser),
    ]


def _dashboard_cases(browser: Browser) -> list[tuple[str, str, dict[str, str]]]:
    """Dashboards, sessions and users: the pages and every fragment they load."""
    base = "/ui/p/default"
    dash = f"{base}/dashboards"
    _, sessions, _ = browser.request("GET", f"{base}/sessions?range=30d")
    session = _first(sessions, b'href="/ui/p/default/sessions/')
    hx = {"HX-Request": "true"}
    return [
        ("dashboards page (charts follow)", f"{dash}?range=7d&group=model", {}),
        ("charts, 24 h by hour", f"{dash}/charts?range=24h", hx),
        ("charts, 24 h by model, hourly", f"{dash}/charts?range=24h&group=model", hx),
        ("charts, 7 d by model, daily", f"{dash}/charts?range=7d&group=model", hx),
        ("charts, 30 d by user, daily", f"{dash}/charts?range=30d&group=user", hx),
        ("charts, 30 d by tenant, daily", f"{dash}/charts?range=30d&group=tenant", hx),
        ("charts, 24 h by prompt version (spans)", f"{dash}/charts?range=24h&group=prompt", hx),
        ("charts, 24 h by release (spans)", f"{dash}/charts?range=24h&group=release", hx),
        ("top spenders, 30 d", f"{dash}/spenders?range=30d", hx),
        ("budgets", f"{dash}/budgets", hx),
        ("cache, 24 h", f"{dash}/cache?range=24h", hx),
        ("cache, 7 d (its bound)", f"{dash}/cache?range=7d", hx),
        ("breakers", f"{dash}/breakers", hx),
        ("sessions, 7 days", f"{base}/sessions", {}),
        ("sessions, 30 days", f"{base}/sessions?range=30d", {}),
        ("session thread", f"{base}/sessions/{session}", {}),
        ("users, 7 days", f"{base}/users", {}),
        ("users, 30 days", f"{base}/users?range=30d", {}),
        ("users: cost chart, 7 days", f"{base}/users/chart", hx),
        ("users: cost chart, 30 days", f"{base}/users/chart?range=30d", hx),
    ]


def _seed(engine: sa.Engine, now_ns: int) -> None:
    with engine.begin() as conn:
        create_user(conn, "bench", password=PASSWORD, role=PersonRole.VIEWER)
    writer = SpanWriter(engine)
    big = _big_trace(now_ns - 3_600 * 1000 * MS)
    for start in range(0, len(big), 5000):
        writer.write([(store_shape.PROJECT, s) for s in big[start : start + 5000]])


def bench(name: str, url: str, args: argparse.Namespace) -> list[tuple[str, float, float, float]]:
    home = Path(tempfile.mkdtemp(prefix="bastion-ui-bench-"))
    settings = Settings(home=home / "home", database_url=url)
    engine = create_engine(url)
    migrate.upgrade(engine)
    now_ns = time.time_ns()
    database = store_shape.Database(name, engine, engine.dispose)
    store_shape.load(database, args.spans, now_ns, batch=5000, deferred=0)
    _seed(engine, now_ns)
    engine.dispose()
    address, stop = _serve(settings)
    rows = []
    try:
        browser = Browser(address)
        browser.sign_in()
        for label, path, headers in _cases(browser):
            first = browser.request("GET", path, headers=headers)
            if first[0] != 200:
                raise RuntimeError(f"{label}: {path} answered {first[0]}: {first[1][:300]!r}")
            took = [
                browser.request("GET", path, headers=headers)[2] * 1000 for _ in range(args.runs)
            ]
            p95 = statistics.quantiles(took, n=20)[-1] if len(took) > 1 else took[0]
            rows.append((label, first[2] * 1000, statistics.median(took), p95))
    finally:
        stop()
    return rows


def _machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pg-url", default=store_shape.PG_URL)
    args = parser.parse_args()
    slow = 0
    for name in ("sqlite", "postgresql") if args.db == "both" else (args.db,):
        if name == "sqlite":
            url = f"sqlite:///{Path(tempfile.mkdtemp(prefix='bastion-ui-bench-')) / 'ui.db'}"
            cleanup: Callable[[], None] = lambda: None  # noqa: E731
        else:
            database = store_shape.open_postgresql(args.pg_url)
            url = database.engine.url.render_as_string(hide_password=False)
            database.engine.dispose()
            cleanup = database.cleanup
        try:
            rows = bench(name, url, args)
        finally:
            cleanup()
        table = Table(title=f"UI pages on {name}, {args.spans:,} spans + a 30,000-span trace")
        for column in ("page", "first ms", "p50 ms", "p95 ms", f"< {GOAL_MS:.0f} ms"):
            table.add_column(column, justify="left" if column == "page" else "right")
        for label, first, p50, p95 in rows:
            ok = p95 < GOAL_MS
            slow += not ok
            table.add_row(label, f"{first:.1f}", f"{p50:.1f}", f"{p95:.1f}", "yes" if ok else "NO")
        console.print(table)
        console.print(_machine())
    sys.exit(1 if slow else 0)


if __name__ == "__main__":
    main()
