"""One trace: its span tree on a waterfall, and one span's details with its payloads.

``GET /ui/p/<project>/traces/<trace_id>`` renders the page (``?span=<id>`` selects a span and
opens the branch down to it). The tree's rows come a window at a time: expanding a span asks
``…/children?parent=<id>`` for the rows of its children, ``offset`` for the next window, and
selecting a span asks ``…/spans/<span_id>`` for its panel. A trace id of another project, like
one that does not exist, is a 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bastion.store.queries_span_tree import (
    DatasetItemRef,
    get_span,
    trace_dataset_items,
    trace_outline,
    trace_stamp,
)
from bastion.store.queries_traces import SpanRecord
from bastion.tracing.attributes import PROMPT_LABEL, RELEASE_ARM
from bastion.ui.pages import Page, UiRoute, page
from bastion.ui.payloads import JsonNode, Payload, json_node, read_payload
from bastion.ui.span_tree import SpanTree, TreeNode, build_tree
from bastion.ui.state import UI
from bastion.ui.templating import duration_ns

__all__ = ["ROUTES", "SpanView"]

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_MAX_OFFSET = 10_000_000


@dataclass(frozen=True, slots=True)
class SpanView:
    """Everything the span panel shows."""

    span: SpanRecord
    node: TreeNode | None
    offset_ms: float
    input: Payload
    output: Payload
    attributes: JsonNode
    resource: JsonNode
    events: JsonNode
    prompt_label: str | None
    release_arm: str | None
    datasets: list[DatasetItemRef] = field(default_factory=list)


async def _tree(p: Page, trace_id: str) -> SpanTree | None:
    """The trace's tree, from the cache while the trace is unchanged."""
    trees = p.request.app[UI].trees
    stamp = await p.read(lambda c: trace_stamp(c, p.project_id, trace_id))
    if stamp is None:
        return None
    cached = trees.get(p.project_id, trace_id, stamp)
    if cached is not None:
        return cached

    def build(conn: Any) -> SpanTree | None:
        outline = trace_outline(conn, p.project_id, trace_id)
        return None if outline is None else build_tree(outline)

    tree = await p.read(build)
    if tree is not None:
        summary = tree.trace
        trees.put(
            p.project_id, trace_id, (summary.span_count, summary.start_ns, summary.end_ns), tree
        )
    return tree


def _trace_id(p: Page) -> str | None:
    raw = p.request.match_info["trace_id"].lower()
    return raw if _TRACE_ID.fullmatch(raw) else None


def _not_found(p: Page, trace_id: str | None) -> web.Response:
    what = f"trace {trace_id}" if trace_id else "trace with that id (32 hex digits)"
    return p.error(404, f"No {what} in project {p.project.project_slug}.")


def _count(raw: str) -> int | None:
    """A whole number of children from a query parameter, or None."""
    if raw.isascii() and raw.isdigit() and int(raw) <= _MAX_OFFSET:
        return int(raw)
    return None


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


async def _span_view(
    p: Page, tree: SpanTree, trace_id: str, span_id: str, datasets: list[DatasetItemRef]
) -> SpanView | None:
    record = await p.read(lambda c: get_span(c, p.project_id, trace_id, span_id))
    if record is None:
        return None
    attributes = record.attributes
    return SpanView(
        span=record,
        node=tree.node(span_id),
        offset_ms=(record.start_ns - tree.start_ns) / 1e6,
        input=read_payload(record.input),
        output=read_payload(record.output),
        attributes=json_node(attributes),
        resource=json_node(record.resource),
        events=json_node(record.events),
        prompt_label=_string(attributes.get(PROMPT_LABEL)),
        release_arm=_string(attributes.get(RELEASE_ARM)),
        datasets=[d for d in datasets if d.span_id == span_id],
    )


def _axis(tree: SpanTree) -> list[str]:
    """The waterfall's time labels: its start, middle and end."""
    return ["0", duration_ns(tree.duration_ns // 2), duration_ns(tree.duration_ns)]


async def trace(p: Page) -> web.StreamResponse:
    trace_id = _trace_id(p)
    tree = None if trace_id is None else await _tree(p, trace_id)
    if trace_id is None or tree is None:
        return _not_found(p, trace_id)
    datasets = await p.read(lambda c: trace_dataset_items(c, p.project_id, trace_id))
    selected = p.request.query.get("span", "").lower()
    view = None
    expanded = {tree.nodes[i].span.span_id for i in tree.roots}
    focus: dict[str, int] = {}
    if _SPAN_ID.fullmatch(selected) and tree.node(selected) is not None:
        expanded.update(tree.ancestors(selected))
        focus = tree.focus(selected)
        view = await _span_view(p, tree, trace_id, selected, datasets)
    return p.render(
        "traces/detail.html",
        tree=tree,
        trace=tree.trace,
        trace_id=trace_id,
        rows=tree.rows(None, expanded, focus=focus),
        axis=_axis(tree),
        selected=selected if view else "",
        view=view,
        datasets=datasets,
        current="traces",
    )


async def children(p: Page) -> web.StreamResponse:
    trace_id = _trace_id(p)
    tree = None if trace_id is None else await _tree(p, trace_id)
    if trace_id is None or tree is None:
        return _not_found(p, trace_id)
    parent = p.request.query.get("parent", "").lower() or None
    offset = _count(p.request.query.get("offset", "0"))
    until = _count(p.request.query.get("until", "")) if "until" in p.request.query else None
    if offset is None or (until is None and "until" in p.request.query):
        return p.error(400, "offset and until are whole numbers of children")
    if parent is not None and tree.node(parent) is None:
        return p.error(404, f"No span {parent} in trace {trace_id}.")
    rows = tree.rows(parent, offset=offset, until=until)
    return p.render(
        "traces/_rows.html", tree=tree, trace_id=trace_id, rows=rows, selected="", view=None
    )


async def span(p: Page) -> web.StreamResponse:
    trace_id = _trace_id(p)
    span_id = p.request.match_info["span_id"].lower()
    if trace_id is None or not _SPAN_ID.fullmatch(span_id):
        return _not_found(p, trace_id)
    if p.request.headers.get("HX-Request") != "true":
        location = f"{p.base}/traces/{trace_id}?span={span_id}"
        return web.Response(status=303, headers={"Location": location})
    tree = await _tree(p, trace_id)
    if tree is None:
        return _not_found(p, trace_id)
    datasets = await p.read(lambda c: trace_dataset_items(c, p.project_id, trace_id))
    view = await _span_view(p, tree, trace_id, span_id, datasets)
    if view is None:
        return p.error(404, f"No span {span_id} in trace {trace_id}.")
    return p.render("traces/_span.html", tree=tree, trace_id=trace_id, view=view)


ROUTES = [
    UiRoute("GET", "/ui/p/{project}/traces/{trace_id}", page(trace)),
    UiRoute("GET", "/ui/p/{project}/traces/{trace_id}/children", page(children)),
    UiRoute("GET", "/ui/p/{project}/traces/{trace_id}/spans/{span_id}", page(span)),
]
