"""What the storable rule costs on the ingest path: ``SpanWriter.prepare`` per span with the
rule, against the checks the writer made before it (NUL replaced in a dozen columns, texts cut,
numbers clamped) and against none at all, in the same run on the same decoded spans.

The spans are those of ``ingest_throughput.py`` (500 GenAI spans a request, ~2 KB of
attributes each, decoded by the OTLP reader), so the figure is the rule's share of the CPU a
server spends building rows for the spans it ingests; it runs without a database.

    python benchmarks/storable_rule.py --requests 40 --repeat 15

``--dirty`` puts a NUL into every tenth span's name and user, to show the slow path.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

import bastion.store.writer as writer_module
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span
from bastion.tracing.otlp import decode_request
from ingest_throughput import build_request

console = Console(width=120)


def decoded_spans(requests: int, *, dirty: bool) -> list[list[Span]]:
    batches = []
    for seed in range(requests):
        spans = decode_request(
            build_request(seed),
            content_type="application/x-protobuf",
            content_encoding=None,
            max_bytes=1 << 26,
            max_message_chars=32_000,
        ).spans
        if dirty:
            for span in spans[::10]:
                span.name += "\x00"
                span.user_id = (span.user_id or "") + "\x00"
        batches.append(spans)
    return batches


_CUTS = (
    ("name", 500), ("service_name", 200), ("operation", 64), ("provider", 64),
    ("request_model", 200), ("response_model", 200), ("error_class", 200), ("user_id", 200),
    ("session_id", 200), ("feature", 200), ("tenant", 200), ("prompt_name", 200),
    ("release_id", 64), ("status_message", None), ("input", None), ("output", None),
)  # fmt: skip


def previous_checks(span: Span) -> None:
    """What the writer did before the storable rule: NUL replaced and texts cut column by
    column, and the numbers clamped."""
    for name, size in _CUTS:
        value = getattr(span, name)
        if value is not None:
            if size is not None and len(value) > size:
                value = value[:size]
            setattr(span, name, value.replace("\x00", "\ufffd") if "\x00" in value else value)
    if not 0 <= span.kind <= 5:
        span.kind = 0
    if not 0 <= span.status_code <= 2:
        span.status_code = 0
    span.start_ns = min(max(span.start_ns, 0), 2**63 - 1)
    span.end_ns = min(max(span.end_ns, span.start_ns), 2**63 - 1)
    for name in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens"):
        value = getattr(span, name)
        setattr(span, name, value if value is None or 0 <= value <= 10**12 else None)
    span.prompt_version = (
        span.prompt_version
        if span.prompt_version is None or 0 <= span.prompt_version <= 2**31 - 1
        else None
    )


def time_prepare(writer: SpanWriter, batches: list[list[Span]]) -> float:
    """Microseconds of ``prepare`` per span over every batch."""
    gc.collect()  # the decoding's garbage is not the rule's to collect
    started = time.perf_counter()
    for spans in batches:
        writer.prepare([(1, span) for span in spans])
    return (time.perf_counter() - started) / sum(map(len, batches)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=40, help="500-span requests decoded")
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds of each variant")
    parser.add_argument("--dirty", action="store_true", help="a NUL in every tenth span")
    args = parser.parse_args()

    writer = SpanWriter(sa.create_engine("sqlite://"))
    variants: dict[str, Callable[[Span], None]] = {
        "no checks": lambda span: None,
        "checks before the rule (baseline)": previous_checks,
        "storable rule": writer_module.make_span_storable,
    }
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeat):
        # Fresh spans for each variant (the checks fix spans in place), variants interleaved
        # so that a loaded machine slows them alike.
        for name, check in variants.items():
            batches = decoded_spans(args.requests, dirty=args.dirty)
            writer_module.make_span_storable = check  # type: ignore[assignment]
            timings[name].append(time_prepare(writer, batches))

    table = Table("prepare, µs per span", "median", "min")
    for name, values in timings.items():
        table.add_row(name, f"{statistics.median(values):.2f}", f"{min(values):.2f}")
    base, rule = timings["checks before the rule (baseline)"], timings["storable rule"]
    table.add_row(
        "ratio (rule / baseline)",
        f"{statistics.median(rule) / statistics.median(base):.3f}",
        f"{min(rule) / min(base):.3f}",
    )
    console.print(table)
    spans = args.requests * 500
    console.print(f"{spans} spans a round, {args.repeat} rounds; dirty spans: {args.dirty}")


if __name__ == "__main__":
    main()
