"""Durable ingestion: the pipeline that batches spans into the store, its disk spool for
database outages, and the isolation of spans the database refuses."""

from bastion.ingest.metrics import IngestMetrics
from bastion.ingest.pipeline import Backpressure, IngestPipeline, NotDurable
from bastion.ingest.spool import Spool

__all__ = ["Backpressure", "IngestMetrics", "IngestPipeline", "NotDurable", "Spool"]
