"""Prometheus metrics of the ingest pipeline, registered in the server's own registry."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bastion.ingest.spool import Spool
from bastion.store.write_errors import REJECT_REASONS

__all__ = ["IngestMetrics"]


class IngestMetrics:
    """Counters and gauges of the queue, the writer, the spool and the dead-letter store."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.received = Counter(
            "bastion_spans_received", "Spans accepted onto the queue", registry=registry
        )
        self.written = Counter(
            "bastion_spans_written", "Spans committed to the database", registry=registry
        )
        self.duplicates = Counter(
            "bastion_spans_duplicate",
            "Spans skipped because they were already stored",
            registry=registry,
        )
        self.spooled = Counter(
            "bastion_spans_spooled", "Spans written to the disk spool", registry=registry
        )
        self.replayed = Counter(
            "bastion_spans_replayed",
            "Spans moved from the spool into the database",
            registry=registry,
        )
        self.rejected = Counter(
            "bastion_spans_rejected_backpressure",
            "Spans refused because the queue was full",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "bastion_ingest_rejected",
            "Acknowledged spans the database refused, kept in the dead-letter store, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self.dead_lettered.labels(reason)  # every reason shows, at 0 until it happens
        self.failed_batches = Counter(
            "bastion_ingest_db_failures",
            "Batches the database refused (then spooled)",
            registry=registry,
        )
        self.queue_spans = Gauge(
            "bastion_ingest_queue_spans", "Spans waiting in memory", registry=registry
        )
        self._registry = registry
        self.rollup_deltas_folded = Counter(
            "bastion_rollup_deltas_folded",
            "Deferred roll-up rows (one per batch) folded into the hourly roll-ups",
            registry=registry,
        )
        self.database_up = Gauge(
            "bastion_ingest_database_up",
            "1 when the last write to the database succeeded",
            registry=registry,
        )
        self.database_up.set(1)

    def watch_spool(self, spool: Spool) -> None:
        """Read the spool's gauges from ``spool`` at every scrape (its age grows by itself)."""
        self._registry.register(_SpoolCollector(spool))


_SPOOL_GAUGES = (
    ("bastion_ingest_spool_bytes", "Bytes waiting in the spool", "bytes"),
    ("bastion_ingest_spool_segments", "Segment files waiting in the spool", "segments"),
    ("bastion_ingest_spool_spans", "Spans waiting in the spool", "spans"),
    (
        "bastion_ingest_spool_oldest_age_seconds",
        "Seconds since the oldest record still in the spool was spooled (0 when empty)",
        "oldest_age_s",
    ),
)


class _SpoolCollector(Collector):
    """The spool's gauges from one directory listing per scrape, not one per gauge."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self.spool.stats()
        for name, documentation, field in _SPOOL_GAUGES:
            yield GaugeMetricFamily(name, documentation, value=getattr(stats, field))
