"""Snapshotting production traces into a dataset: how long `from-traces` takes over a store of
N model-call spans (SQLite by default, or `--database-url postgresql+psycopg://...`).

Writes N spans (a tenth with feature `support`), then times three snapshots and the push:

- **newest**: `--feature support --limit 200` (reads pages until 200 items);
- **sampled**: `--sample 0.05 --limit 1000` over every span (reads the whole store);
- **push**: storing the sampled items as a dataset version with their span links.

    python benchmarks/eval_from_traces.py
    python benchmarks/eval_from_traces.py --spans 200000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import orjson
import sqlalchemy as sa

from bastion.auth import ensure_project
from bastion.evals import store
from bastion.evals.from_traces import TraceSelection, snapshot
from bastion.store import migrate
from bastion.store.engine import create_engine
from bastion.store.writer import SpanWriter
from bastion.tracing.model import Span, StatusCode


def _spans(count: int, now: int) -> list[Span]:
    out = []
    for n in range(count):
        start = now - (count - n) * 1_000_000
        out.append(
            Span(
                trace_id=f"{n:032x}", span_id=f"{n:016x}", name="chat", start_ns=start,
                end_ns=start + 900_000, status_code=StatusCode.OK, operation="chat",
                request_model="gpt-4o-mini", feature="support" if n % 10 == 0 else "search",
                input=orjson.dumps({"messages": [
                    {"role": "system", "content": "You answer support questions briefly."},
                    {"role": "user", "content": f"Where is order {n}? It was due yesterday."},
                ]}).decode(),
                output=orjson.dumps([{"role": "assistant", "content": f"Order {n} ships today."}]
                                    ).decode(),
            )
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=50_000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        engine = create_engine(url)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            project_id = ensure_project(conn, f"bench-{time.time_ns()}")
        started = time.perf_counter()
        writer = SpanWriter(engine)
        now = time.time_ns()
        batch = _spans(args.spans, now)
        for start in range(0, len(batch), 5000):
            writer.write([(project_id, s) for s in batch[start : start + 5000]])
        backend = url.split(":")[0]
        print(f"wrote {args.spans:,} spans in {time.perf_counter() - started:.1f} s ({backend})")
        for label, selection in (
            ("newest", TraceSelection(feature="support", limit=200, expected_from_output=True)),
            ("sampled", TraceSelection(sample=0.05, limit=1000)),
        ):
            started = time.perf_counter()
            with engine.connect() as conn:
                taken = snapshot(conn, project_id, selection)
            wall = time.perf_counter() - started
            print(f"{label:8} {len(taken.items):5} items from {taken.matched:7,} spans read: "
                  f"{wall * 1000:7.1f} ms ({taken.matched / wall:,.0f} spans/s)")  # fmt: skip
        started = time.perf_counter()
        pushed = store.push_dataset(engine, project_id, "bench", taken.items, sources=taken.sources)
        print(f"push     {pushed.info.item_count:5} items with links: "
              f"{(time.perf_counter() - started) * 1000:7.1f} ms")  # fmt: skip
        if args.database_url:  # a shared database: leave nothing behind
            with engine.begin() as conn:
                for table in ("eval_item_sources", "eval_dataset_items", "eval_datasets",
                              "spans", "traces", "span_rollups"):  # fmt: skip
                    conn.execute(
                        sa.text(f"DELETE FROM {table} WHERE project_id = :p"), {"p": project_id}
                    )
                conn.execute(sa.text("DELETE FROM projects WHERE id = :p"), {"p": project_id})
        engine.dispose()


if __name__ == "__main__":
    main()
