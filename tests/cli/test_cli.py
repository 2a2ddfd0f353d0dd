"""The installed ``bastion`` command, run as a user would run it (real processes, real HTTP)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from bastion.store import migrate
from bastion.tracing.demo_trace import demo_trace_request


def bastion(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bastion.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    return {**clean, "BASTION_HOME": str(tmp_path / "home"), "COLUMNS": "200"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(env: dict[str, str]) -> Iterator[tuple[str, dict[str, str]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bastion.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    pytest.fail(f"bastion serve did not start:\n{output}")
                time.sleep(0.2)
        yield url, env
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def test_demo_runs_end_to_end_and_exits(env: dict[str, str]) -> None:
    result = bastion("demo", "--exit", env=env)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "retrieve documents" in out
    assert "gpt-4o-mini" in out
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in out
    assert (Path(env["BASTION_HOME"]) / "bastion.db").is_file()


def test_keys_serve_ingest_and_read_back(served: tuple[str, dict[str, str]]) -> None:
    url, env = served
    created = bastion("keys", "create", "--name", "ci", "--quiet", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("bst_")

    body, trace_id = demo_trace_request()
    request = urllib.request.Request(
        url + "/v1/traces",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    deadline = time.monotonic() + 30
    while True:
        listed = bastion("traces", "list", "--url", url, "--key", key, "--json", env=env)
        assert listed.returncode == 0, listed.stderr
        if trace_id in listed.stdout or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert trace_id in listed.stdout
    shown = bastion("traces", "show", trace_id, "--url", url, "--key", key, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "chat gpt-4o-mini" in shown.stdout

    keys = bastion("keys", "list", env=env)
    assert "ci" in keys.stdout
    assert key not in keys.stdout  # only a prefix is ever shown again


def test_otel_sdk_exporter_against_bastion_serve(served: tuple[str, dict[str, str]]) -> None:
    """The real OpenTelemetry SDK and OTLP/HTTP exporter (protobuf, gzip) to a real server."""
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url, env = served
    key = bastion("keys", "create", "--quiet", env=env).stdout.strip()
    provider = TracerProvider(resource=Resource.create({"service.name": "cli-test"}))
    exporter = OTLPSpanExporter(
        endpoint=url + "/v1/traces",
        headers={"Authorization": f"Bearer {key}"},
        compression=Compression.Gzip,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("cli-test")
    with tracer.start_as_current_span("root") as root:
        for i in range(50):
            attributes = {"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": i}
            with tracer.start_as_current_span(f"llm {i}", attributes=attributes):
                pass
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()

    shown = bastion("traces", "show", trace_id, "--url", url, "--key", key, "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    tree = orjson.loads(shown.stdout)
    assert tree["trace"]["span_count"] == 51
    assert tree["trace"]["input_tokens"] == sum(range(50))


def test_bad_config_exits_2_naming_file_line_and_key(env: dict[str, str], tmp_path: Path) -> None:
    config = tmp_path / "bastion.yaml"
    config.write_text("port: 8700\ningest:\n  queue_max_spans: lots\n")
    result = bastion("db", "upgrade", "--config", str(config), env=env)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"{config}:3" in message
    assert "ingest.queue_max_spans" in message

    config.write_text("prots: 1\n")
    result = bastion("db", "upgrade", "--config", str(config), env=env)
    assert result.returncode == 2
    assert "unknown key 'prots'" in " ".join(result.stderr.split())


def test_db_downgrade_and_upgrade(env: dict[str, str]) -> None:
    up = bastion("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    assert f"revision {migrate.head_revision()}" in up.stderr
    down = bastion("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert "None" in down.stderr or "base" in down.stderr


def test_traces_json_output_is_machine_readable(env: dict[str, str]) -> None:
    result = bastion("traces", "list", "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout) == {"items": [], "next_cursor": None}
