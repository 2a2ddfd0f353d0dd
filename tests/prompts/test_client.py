"""The SDK's `Client().prompts.get` against a real server on loopback.

Requests are counted by a small HTTP proxy between client and server (`CountingProxy`), which
can also answer 500 or hang, to show what is and is not a network round trip.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import bastion
from bastion.prompts import (
    PromptAuthError,
    PromptNotFound,
    PromptSpec,
    PromptUnavailable,
    PromptVersion,
    TemplateError,
)
from bastion.prompts.versions import annotate_current_span
from bastion.settings import Settings
from tests.conftest import LiveServer, start_live_server
from tests.prompts.test_prompt_api import GREETING, SUPPORT, call

SUPPORT_V2 = {**SUPPORT, "params": {"temperature": 0.1}}


def push(server: LiveServer, *specs: dict[str, Any]) -> list[int]:
    status, out = call(server, "POST", "/api/v1/prompts", {"prompts": list(specs)})
    assert status in (200, 201), out
    return [r["version"] for r in out["results"]]


def move(server: LiveServer, name: str, label: str, version: int) -> None:
    status, out = call(
        server, "PUT", f"/api/v1/prompts/{name}/labels/{label}", {"version": version}
    )
    assert status == 200, out


def seed(server: LiveServer) -> None:
    """`support` v1 (includes `greeting` v1) labelled production; v2 pushed, unlabelled."""
    assert push(server, SUPPORT, GREETING) == [1, 1]
    move(server, "support", "production", 1)
    assert push(server, SUPPORT_V2) == [2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingProxy:
    """A keep-alive HTTP proxy that counts the GETs it forwards, or answers 500, or hangs."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.removeprefix("http://")
        self.paths: list[str] = []
        self.mode = "pass"  # "pass" | "error" | "hang"
        self.delay_s = 0.0
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10

            def do_GET(self) -> None:
                proxy.paths.append(self.path)
                if proxy.mode == "hang":
                    proxy.release.wait(10)
                    self.close_connection = True
                    return
                if proxy.mode == "error":
                    self._answer(502, b'{"error": {"message": "upstream is down"}}')
                    return
                time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=10)
                try:
                    conn.request("GET", self.path, headers=dict(self.headers))
                    response = conn.getresponse()
                    self._answer(response.status, response.read())
                finally:
                    conn.close()

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def count(self) -> int:
        return len(self.paths)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def proxy(live_server: LiveServer) -> Iterator[CountingProxy]:
    p = CountingProxy(live_server.url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "prompt-cache"


@pytest.fixture
def fallback_dir(tmp_path: Path) -> Path:
    """Fallback files: `support` (which includes `greeting`) and `greeting`, both different
    from what the registry serves so a test can tell them apart."""
    directory = tmp_path / "fallback"
    directory.mkdir()
    (directory / "support.prompt.yaml").write_text(
        "name: support\nvariables: {who: string, q: string}\nmessages:\n"
        "  - role: user\n    content: 'FALLBACK {% include \"greeting\" %} {{ q }}'\n"
    )
    (directory / "greeting.prompt.yaml").write_text(
        "name: greeting\nvariables: {who: string}\ntext: 'Hi {{ who }}!'\n"
    )
    return directory


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


# -- fetching and rendering --------------------------------------------------------------------


def test_get_and_render(live_server: LiveServer, cache_dir: Path) -> None:
    seed(live_server)
    with bastion.Client(live_server.url, live_server.admin_key, cache_dir=cache_dir) as client:
        prompt = client.prompts.get("support")
        assert isinstance(prompt, PromptVersion)
        assert (prompt.name, prompt.version, prompt.label, prompt.source) == (
            "support",
            1,
            "production",
            "server",
        )
        # The version's content address (spec plus partial pins), exactly as the API has it.
        _, raw = call(live_server, "GET", "/api/v1/prompts/support")
        assert prompt.content_hash == raw["content_hash"]
        assert prompt.spec == PromptSpec.from_dict(SUPPORT)
        assert prompt.labels == ("production",)
        assert prompt.model == "gpt-4o-mini"
        assert dict(prompt.params) == {}
        assert set(prompt.partials) == {"greeting"}
        expected = [{"role": "user", "content": "Hello Ada. Why?"}]
        assert prompt.render(who="Ada", q="Why?") == expected
        assert prompt.render({"who": "Ada"}, q="Why?") == expected
        with pytest.raises(TemplateError, match="missing variable 'q'"):
            prompt.render(who="Ada")

        pinned = client.prompts.get("support", version=2)
        assert (pinned.version, pinned.label, dict(pinned.params)) == (
            2,
            None,
            {"temperature": 0.1},
        )
        latest = client.prompts.get("support", label="latest")
        assert (latest.version, latest.label) == (2, "latest")
        greeting = client.prompts.get("greeting", version=1)
        assert greeting.render(who="Bo") == "Hello Bo."

    # Every fetch left a last-known-good file, namespaced per server and key.
    files = sorted(p.name for p in cache_dir.glob("*/*.json"))
    assert files == [
        "greeting@v1.json",
        "support@latest.json",
        "support@production.json",
        "support@v2.json",
    ]
    record = orjson.loads(next(cache_dir.glob("*/support@production.json")).read_bytes())
    assert record["prompt"]["version"] == 1
    assert not list(cache_dir.glob("*/.*.tmp"))


def test_bad_names_and_labels_are_refused_locally(tmp_path: Path) -> None:
    with bastion.Client("http://127.0.0.1:9", "k", cache_dir=tmp_path) as client:
        for bad in ("../etc/passwd", "Upper", ""):
            with pytest.raises(ValueError, match="invalid prompt name"):
                client.prompts.get(bad)
        with pytest.raises(ValueError, match="invalid label"):
            client.prompts.get("support", label="../x")
        with pytest.raises(ValueError, match="version must be"):
            client.prompts.get("support", version=0)
    assert not list(tmp_path.iterdir())


# -- the memory cache ----------------------------------------------------------------------------


def test_cache_hit_makes_no_request(
    live_server: LiveServer, proxy: CountingProxy, cache_dir: Path
) -> None:
    seed(live_server)
    with bastion.Client(proxy.url, live_server.admin_key, cache_dir=cache_dir) as client:
        first = client.prompts.get("support")
        assert (first.source, proxy.count) == ("server", 1)
        again = client.prompts.get("support")
        assert (again.source, again.version, again.content_hash) == (
            "cache",
            1,
            first.content_hash,
        )
        for _ in range(1000):
            client.prompts.get("support")
        assert proxy.count == 1

        # A label and a version are different keys; a pinned version is cached for good.
        assert client.prompts.get("support", version=1).source == "server"
        assert client.prompts.get("support", version=1).source == "cache"
        assert client.prompts.get("support", label="staging", version=1).source == "cache"
        assert proxy.count == 2
        assert all(p.startswith("/api/v1/prompts/support?") for p in proxy.paths)

        samples = []
        for _ in range(20):
            started = time.perf_counter()
            for _ in range(1000):
                client.prompts.get("support")
            samples.append((time.perf_counter() - started) / 1000)
        # The target is < 50 µs (see benchmarks/prompt_get.py); loose here for a busy machine.
        assert statistics.median(samples) < 200e-6


def test_pinned_versions_never_expire(
    live_server: LiveServer, proxy: CountingProxy, cache_dir: Path
) -> None:
    seed(live_server)
    with bastion.Client(
        proxy.url, live_server.admin_key, cache_dir=cache_dir, cache_ttl_s=0.05
    ) as client:
        assert client.prompts.get("support", version=2).source == "server"
        time.sleep(0.1)
        assert client.prompts.get("support", version=2).source == "cache"
        assert proxy.count == 1


def test_ttl_expiry_serves_stale_then_the_refreshed_version(
    live_server: LiveServer, proxy: CountingProxy, cache_dir: Path
) -> None:
    seed(live_server)
    ttl = 0.3
    with bastion.Client(
        proxy.url, live_server.admin_key, cache_dir=cache_dir, cache_ttl_s=ttl
    ) as client:
        assert client.prompts.get("support").version == 1
        move(live_server, "support", "production", 2)  # a deploy
        assert client.prompts.get("support").source == "cache"  # within the TTL: unchanged
        time.sleep(ttl + 0.05)

        proxy.delay_s = 0.3  # a slow refresh: every get meanwhile is answered at once
        started = time.perf_counter()
        stale = [client.prompts.get("support") for _ in range(200)]
        assert time.perf_counter() - started < 0.1
        assert {(p.version, p.source) for p in stale} == {(1, "stale")}
        wait_for(lambda: client.prompts.get("support").version == 2)
        assert proxy.count == 2  # one refresh for 200 stale reads
        fresh = client.prompts.get("support")
        assert (fresh.version, fresh.source) == (2, "cache")
        assert dict(fresh.params) == {"temperature": 0.1}

    # The refreshed version replaced the last-known-good file.
    record = orjson.loads(next(cache_dir.glob("*/support@production.json")).read_bytes())
    assert record["prompt"]["version"] == 2


# -- outages ---------------------------------------------------------------------------------------


def test_server_stopped_serves_the_last_known_good_from_disk(
    settings: Settings, cache_dir: Path, fallback_dir: Path
) -> None:
    server, stop = start_live_server(settings)
    try:
        seed(server)
        client = bastion.Client(server.url, server.admin_key, cache_dir=cache_dir, cache_ttl_s=0.1)
        assert client.prompts.get("support").source == "server"
    finally:
        stop()
    try:
        # The same client: its memory copy expires; the refresh fails; the copy keeps serving.
        time.sleep(0.15)
        assert client.prompts.get("support").source == "stale"
        wait_for(lambda: not client.prompts._refreshing)
        assert (client.prompts.get("support").version, client.prompts.get("support").source) == (
            1,
            "stale",
        )
    finally:
        client.close()

    # A new process (fresh client, same cache directory): the disk copy, not the fallback file.
    with bastion.Client(
        server.url, server.admin_key, cache_dir=cache_dir, fallback_dir=fallback_dir
    ) as client:
        prompt = client.prompts.get("support")
        assert (prompt.source, prompt.version, prompt.label) == ("disk", 1, "production")
        assert prompt.render(who="Ada", q="Why?") == [
            {"role": "user", "content": "Hello Ada. Why?"}
        ]
        assert client.prompts.get("support").source == "disk"  # kept in memory as what it is
        # Not cached on disk: the fallback file.
        assert client.prompts.get("support", label="staging").source == "fallback"
        # Neither: the error names the server's error.
        with pytest.raises(PromptUnavailable, match="Connection refused") as info:
            client.prompts.get("other")
        assert "no fallback file" in str(info.value)

    # Another key (or server) has its own namespace: it does not see this key's copies.
    with (
        bastion.Client(server.url, "another-key", cache_dir=cache_dir) as client,
        pytest.raises(PromptUnavailable),
    ):
        client.prompts.get("support")


def test_fresh_client_with_server_down_uses_the_fallback_file(
    tmp_path: Path, fallback_dir: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with bastion.Client(
        url, "k", cache_dir=tmp_path / "empty", fallback_dir=fallback_dir
    ) as client:
        prompt = client.prompts.get("support")
        assert (prompt.source, prompt.version, prompt.name) == ("fallback", None, "support")
        assert prompt.render(who="Ada", q="Why?") == [
            {"role": "user", "content": "FALLBACK Hi Ada! Why?"}
        ]
        assert prompt.span_attributes() == {
            "bastion.prompt.name": "support",
            "bastion.prompt.hash": prompt.content_hash,
            "bastion.prompt.source": "fallback",
        }
        with pytest.raises(PromptUnavailable, match=r"'nope'.*Connection refused"):
            client.prompts.get("nope")


def test_offline_client_without_a_server(
    tmp_path: Path, fallback_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BASTION_URL", raising=False)
    monkeypatch.setenv("BASTION_HOME", str(tmp_path / "home"))
    with bastion.Client(fallback_dir=fallback_dir) as client:
        assert client.base_url is None
        assert client.prompts.get("support").source == "fallback"
        with pytest.raises(PromptUnavailable, match="no server configured"):
            client.prompts.get("nope")
        assert str(tmp_path / "home" / "prompt-cache") in str(client.prompts._disk_dir)


def test_5xx_and_timeouts_are_outages(
    live_server: LiveServer, proxy: CountingProxy, cache_dir: Path, fallback_dir: Path
) -> None:
    seed(live_server)
    with bastion.Client(proxy.url, live_server.admin_key, cache_dir=cache_dir) as client:
        client.prompts.get("support")  # the disk copy
    proxy.mode = "error"
    with bastion.Client(
        proxy.url, live_server.admin_key, cache_dir=cache_dir, fallback_dir=fallback_dir
    ) as client:
        assert client.prompts.get("support").source == "disk"
        assert client.prompts.get("greeting").source == "fallback"
        with pytest.raises(PromptUnavailable, match="server error 502: upstream is down"):
            client.prompts.get("other")

    proxy.mode = "hang"
    before = proxy.count
    with bastion.Client(
        proxy.url,
        live_server.admin_key,
        cache_dir=cache_dir,
        fallback_dir=fallback_dir,
        timeout_s=0.3,
    ) as client:
        started = time.perf_counter()
        assert client.prompts.get("support").source == "disk"
        assert 0.3 <= time.perf_counter() - started < 2
        # The registry just timed out: other prompts do not wait for it again.
        started = time.perf_counter()
        assert client.prompts.get("support", label="staging").source == "fallback"
        assert time.perf_counter() - started < 0.1
        assert proxy.count == before + 1
        proxy.release.set()


def test_server_answers_are_not_masked_by_fallbacks(
    live_server: LiveServer, cache_dir: Path, fallback_dir: Path
) -> None:
    seed(live_server)
    (fallback_dir / "nope.prompt.yaml").write_text("name: nope\ntext: hello\n")
    with bastion.Client(
        live_server.url, live_server.admin_key, cache_dir=cache_dir, fallback_dir=fallback_dir
    ) as client:
        with pytest.raises(PromptNotFound, match="no prompt 'nope' in this project") as info:
            client.prompts.get("nope")
        assert (info.value.status, info.value.name) == (404, "nope")
        with pytest.raises(PromptNotFound, match=r"has no label 'staging' \(labels: production\)"):
            client.prompts.get("support", label="staging")
        with pytest.raises(PromptNotFound, match="has no version 9"):
            client.prompts.get("support", version=9)
    for key in ("wrong-key", None):
        with bastion.Client(
            live_server.url, key, cache_dir=cache_dir, fallback_dir=fallback_dir
        ) as client:
            with pytest.raises(PromptAuthError, match="API key") as auth:
                client.prompts.get("support")
            assert auth.value.status == 401


def test_a_refresh_that_gets_a_404_drops_the_cached_copy(
    live_server: LiveServer, cache_dir: Path
) -> None:
    seed(live_server)
    with bastion.Client(
        live_server.url, live_server.admin_key, cache_dir=cache_dir, cache_ttl_s=0.1
    ) as client:
        move(live_server, "support", "staging", 1)
        assert client.prompts.get("support", label="staging").version == 1
        # The key loses its access: the stale copy is served once, then the error surfaces.
        client.prompts._transport._headers["Authorization"] = "Bearer revoked"  # type: ignore[union-attr]
        time.sleep(0.15)
        assert client.prompts.get("support", label="staging").source == "stale"
        wait_for(lambda: not client.prompts._refreshing)
        with pytest.raises(PromptAuthError):
            client.prompts.get("support", label="staging")


# -- traces ---------------------------------------------------------------------------------------


def test_render_sets_the_prompt_attributes_on_the_current_span(
    live_server: LiveServer, cache_dir: Path, fallback_dir: Path
) -> None:
    seed(live_server)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    with bastion.Client(live_server.url, live_server.admin_key, cache_dir=cache_dir) as client:
        prompt = client.prompts.get("support")
        assert not annotate_current_span(prompt)  # no span: nothing to do, no error
        with tracer.start_as_current_span("answer"):
            prompt.render(who="Ada", q="Why?")
        cached = client.prompts.get("support")
        with tracer.start_as_current_span("again"), pytest.raises(TemplateError):
            cached.render(who="Ada")  # attributed even when rendering fails
    with bastion.Client(
        f"http://127.0.0.1:{free_port()}", "k", cache_dir=cache_dir / "x", fallback_dir=fallback_dir
    ) as offline:
        fallback = offline.prompts.get("support")
        with tracer.start_as_current_span("offline"):
            fallback.render(who="Ada", q="Why?")
    provider.shutdown()

    spans = {s.name: dict(s.attributes or {}) for s in exporter.get_finished_spans()}
    assert spans["answer"] == {
        "bastion.prompt.name": "support",
        "bastion.prompt.version": 1,
        "bastion.prompt.hash": prompt.content_hash,
        "bastion.prompt.source": "server",
    }
    assert spans["again"]["bastion.prompt.source"] == "cache"
    assert spans["offline"] == {
        "bastion.prompt.name": "support",
        "bastion.prompt.hash": fallback.content_hash,
        "bastion.prompt.source": "fallback",
    }


def test_prompt_attributes_reach_the_stored_span(live_server: LiveServer, cache_dir: Path) -> None:
    """OTLP export to Bastion: name and version become the span's prompt fields."""
    seed(live_server)
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            OTLPSpanExporter(endpoint=live_server.url + "/v1/traces", headers=live_server.headers())
        )
    )
    with bastion.Client(live_server.url, live_server.admin_key, cache_dir=cache_dir) as client:
        prompt = client.prompts.get("support")
        with provider.get_tracer("app").start_as_current_span("chat") as span:
            prompt.render(who="Ada", q="Why?")
            trace_id = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()

    stored: dict[str, Any] = {}

    def arrived() -> bool:
        status, body = call(live_server, "GET", f"/api/v1/traces/{trace_id}")
        if status == 200 and body["roots"]:
            stored.update(body["roots"][0])
            return True
        return False

    wait_for(arrived)
    assert (stored["prompt_name"], stored["prompt_version"]) == ("support", 1)
    assert stored["attributes"]["bastion.prompt.hash"] == prompt.content_hash
    assert stored["attributes"]["bastion.prompt.source"] == "server"
