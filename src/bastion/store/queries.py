"""Read queries over stored spans: trace and span listings, trace trees and LLM metrics.

Every function takes a connection or an engine and a project id, and every statement filters
by that project first, so one project's rows never appear in another's results. Inputs and
outputs are pydantic models, ready to become JSON and an OpenAPI schema.
"""

from __future__ import annotations

from bastion.store.queries_common import MAX_LIMIT, Bind, SpanFilter, TraceFilter
from bastion.store.queries_metrics import (
    GROUP_BY_KEYS,
    MetricsGroup,
    MetricsSummary,
    metrics_summary,
)
from bastion.store.queries_traces import (
    SpanNode,
    SpanPage,
    SpanRecord,
    TracePage,
    TraceSummary,
    TraceTree,
    get_trace,
    list_spans,
    list_traces,
)

__all__ = [
    "GROUP_BY_KEYS",
    "MAX_LIMIT",
    "Bind",
    "MetricsGroup",
    "MetricsSummary",
    "SpanFilter",
    "SpanNode",
    "SpanPage",
    "SpanRecord",
    "TraceFilter",
    "TracePage",
    "TraceSummary",
    "TraceTree",
    "get_trace",
    "list_spans",
    "list_traces",
    "metrics_summary",
]
