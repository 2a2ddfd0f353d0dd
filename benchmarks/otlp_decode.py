"""OTLP protobuf decoding cost per span: the C wire reader against the protobuf runtime.

The request is `ingest_throughput`'s: 500 spans with ~2 KB of GenAI attributes each. Rows, same
body, same process: reading the spans alone (the wire reader's tuples, or the runtime's
``ParseFromString`` and attribute conversion into ``Span`` objects), and the whole
``decode_request`` the receiver runs (reading, then normalising the GenAI attributes), each
with the wire reader and with the runtime reading every body (an install without a C
compiler). Figures are medians over ``--repeats`` batches.

    python benchmarks/otlp_decode.py
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from bastion.tracing import otlp
from bastion.tracing._otlp_wire import read_request
from harness import per_call_us
from ingest_throughput import SPANS_PER_REQUEST, build_request

console = Console(width=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--number", type=int, default=20, help="requests per batch")
    args = parser.parse_args()
    body = build_request(7)

    def runtime_read() -> None:
        otlp._decode_protobuf_runtime(body, otlp.DecodeResult())

    def wire_read_spans() -> None:
        otlp._decode_protobuf(body, otlp.DecodeResult())

    def decode() -> None:
        otlp.decode_request(
            body,
            content_type="application/x-protobuf",
            content_encoding=None,
            max_bytes=2**26,
            max_message_chars=32_000,
        )

    def with_runtime(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> None:
            saved, otlp._read_wire = otlp._read_wire, None
            try:
                fn()
            finally:
                otlp._read_wire = saved

        return run

    cases = [
        ("read: protobuf runtime (baseline)", runtime_read),
        ("read: wire reader, tuples only", lambda: read_request(body)),
        ("read: wire reader into Span objects", wire_read_spans),
        ("decode_request: protobuf runtime (baseline)", with_runtime(decode)),
        ("decode_request: wire reader", decode),
    ]
    table = Table("stage", "µs per span", "vs baseline")
    baseline = 0.0
    for label, fn in cases:
        us = per_call_us(fn, args.repeats, args.number) / SPANS_PER_REQUEST
        if "baseline" in label:
            baseline = us
        table.add_row(label, f"{us:.2f}", f"{baseline / us:.2f}x faster" if us != baseline else "")
    console.print(f"request: {len(body) / 1024:.0f} KiB, {SPANS_PER_REQUEST} spans")
    console.print(table)


if __name__ == "__main__":
    main()
