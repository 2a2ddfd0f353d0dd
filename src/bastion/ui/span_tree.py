"""A trace's spans as a tree for the waterfall: children, depths, totals rolled up per subtree,
and the rows one view shows (a window of each expanded span's children, in tree order).

Built from the payload-free outline (:func:`bastion.store.queries_span_tree.trace_outline`),
so a 30,000-span trace is a few tens of milliseconds of work; the page then shows only the
rows that are expanded, at most :data:`WINDOW` children of a span at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from bastion.store.queries_span_tree import OutlineSpan, TraceOutline
from bastion.store.queries_traces import TraceSummary

__all__ = ["EXPAND_ALL_UP_TO", "WINDOW", "Row", "SpanTree", "TreeNode", "build_tree"]

WINDOW = 200  # children of one span shown at a time ("show more" loads the next ones)
EXPAND_ALL_UP_TO = 300  # a trace this small opens with every span shown
BAR_SCALE = 1000  # the waterfall's bars are drawn on a 0..1000 axis


@dataclass(slots=True)
class TreeNode:
    """A span in the tree with its totals over itself and everything below it."""

    span: OutlineSpan
    parent: int | None = None
    depth: int = 0
    children: list[int] = field(default_factory=list)
    descendants: int = 0
    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cost_usd: float | None = None
    errors_below: int = 0


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the waterfall, or (``span`` None) a line that loads more children of
    ``parent_id``: the ``more_left`` after the window, or (``more_until`` set) the ones
    before it, from ``more_offset`` up to ``more_until``."""

    span: OutlineSpan | None
    node: TreeNode | None
    depth: int
    expanded: bool = False
    bar_offset: int = 0
    bar_width: int = 0
    parent_id: str = ""
    more_offset: int = 0
    more_left: int = 0
    more_until: int = 0


@dataclass(frozen=True, slots=True)
class _Frame:
    """Where the depth-first walk of :meth:`SpanTree.rows` is among one span's children."""

    parent: str
    children: list[int]
    next: int
    end: int
    depth: int
    later: bool  # a "show more" row follows the window when children are left


class SpanTree:
    """The tree of one trace's spans; indices refer to :attr:`nodes`, in outline order."""

    def __init__(self, trace: TraceSummary, nodes: list[TreeNode], roots: list[int]) -> None:
        self.trace = trace
        self.nodes = nodes
        self.roots = roots
        self.index = {node.span.span_id: i for i, node in enumerate(nodes)}
        self.start_ns = min((n.span.start_ns for n in nodes), default=trace.start_ns)
        end_ns = max((n.span.end_ns for n in nodes), default=trace.end_ns)
        self.duration_ns = max(1, end_ns - self.start_ns)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, span_id: str) -> TreeNode | None:
        found = self.index.get(span_id)
        return None if found is None else self.nodes[found]

    def children_of(self, span_id: str | None) -> list[int]:
        """The roots for None, else the span's children; KeyError for an unknown span."""
        if span_id is None:
            return self.roots
        return self.nodes[self.index[span_id]].children

    def ancestors(self, span_id: str) -> list[str]:
        """The ids from the root down to the span's parent (empty for a root or unknown id)."""
        found = self.index.get(span_id)
        path: list[str] = []
        parent = self.nodes[found].parent if found is not None else None
        while parent is not None:
            path.append(self.nodes[parent].span.span_id)
            parent = self.nodes[parent].parent
        path.reverse()
        return path

    def bar(self, span: OutlineSpan) -> tuple[int, int]:
        """The span's offset and width on the waterfall's 0..1000 axis (at least 1 wide)."""
        offset = (span.start_ns - self.start_ns) * BAR_SCALE // self.duration_ns
        width = max(0, span.end_ns - span.start_ns) * BAR_SCALE // self.duration_ns
        offset = min(max(0, offset), BAR_SCALE - 1)
        return int(offset), int(max(1, min(width, BAR_SCALE - offset)))

    def focus(self, span_id: str) -> dict[str, int]:
        """For each span on the way down to ``span_id`` (roots: ``""``), the position among
        its children of the next one: windows of long lists that hold the way."""
        found = self.index.get(span_id)
        path: dict[str, int] = {}
        while found is not None:
            parent = self.nodes[found].parent
            siblings = self.roots if parent is None else self.nodes[parent].children
            key = "" if parent is None else self.nodes[parent].span.span_id
            path[key] = siblings.index(found)
            found = parent
        return path

    def _frame(
        self, parent: str, depth: int, offset: int, until: int | None, focus: dict[str, int]
    ) -> tuple[_Frame, Row | None]:
        """The window of ``parent``'s children to show, and the row loading earlier ones."""
        children = self.children_of(parent or None)
        if until is not None:  # the earlier children a "show earlier" row asked for
            start, end, later = offset, min(until, offset + WINDOW), False
        else:
            at = focus.get(parent)
            start = offset if at is None else at - at % WINDOW
            end, later = start + WINDOW, True
        earlier = None
        if start > 0 and (until is not None or parent in focus):
            earlier = Row(
                None,
                None,
                depth,
                parent_id=parent,
                more_offset=max(0, start - WINDOW),
                more_left=start,
                more_until=start,
            )
        return _Frame(parent, children, start, end, depth, later), earlier

    def rows(
        self,
        parent_id: str | None,
        expanded: Iterable[str] = (),
        *,
        offset: int = 0,
        until: int | None = None,
        focus: dict[str, int] | None = None,
    ) -> list[Row]:
        """The rows under ``parent_id`` (None: the roots), depth first: a window of children
        from the ``offset``-th (up to ``until``, when given), each followed by its own rows
        when its id is in ``expanded`` (every span of a small trace is), and rows that load
        the children before and after the window. ``focus`` (from :meth:`focus`) moves the
        windows on the way to a span so that they show it."""
        opened = set(expanded)
        ways = focus or {}
        everything = len(self.nodes) <= EXPAND_ALL_UP_TO
        depth = 0 if parent_id is None else self.nodes[self.index[parent_id]].depth + 1
        out: list[Row] = []
        # An explicit stack: a branch can be thousands of spans deep.
        frame, earlier = self._frame(parent_id or "", depth, offset, until, ways)
        stack = [frame]
        out.extend([earlier] if earlier else [])
        while stack:
            frame = stack.pop()
            i, stop = frame.next, min(frame.end, len(frame.children))
            while i < stop:
                node = self.nodes[frame.children[i]]
                i += 1
                is_open = bool(node.children) and (everything or node.span.span_id in opened)
                bar_offset, bar_width = self.bar(node.span)
                out.append(Row(node.span, node, frame.depth, is_open, bar_offset, bar_width))
                if is_open:
                    # The child's rows, then the rest of this window.
                    stack.append(dataclasses.replace(frame, next=i))
                    child, earlier = self._frame(node.span.span_id, frame.depth + 1, 0, None, ways)
                    stack.append(child)
                    out.extend([earlier] if earlier else [])
                    break
            else:
                left = len(frame.children) - frame.end
                if frame.later and left > 0:
                    out.append(
                        Row(
                            None,
                            None,
                            frame.depth,
                            parent_id=frame.parent,
                            more_offset=frame.end,
                            more_left=left,
                        )
                    )
        return out


def build_tree(outline: TraceOutline) -> SpanTree:
    """The tree of ``outline``'s spans, ordered by start time at every level.

    A span is a root when it has no parent or its parent is not stored. Should parent links
    form a cycle (malformed data), the earliest span no root reaches becomes a root too, so no
    span is ever lost.
    """
    nodes = [TreeNode(span) for span in outline.spans]
    by_id = {node.span.span_id: i for i, node in enumerate(nodes)}
    roots: list[int] = []
    for i, node in enumerate(nodes):
        parent_id = node.span.parent_span_id
        parent = by_id.get(parent_id) if parent_id else None
        if parent is None or parent == i:
            roots.append(i)
        else:
            node.parent = parent
            nodes[parent].children.append(i)
    order = _walk(nodes, list(roots))
    while len(order) < len(nodes):
        # Only spans on a cycle are left: cut it at the earliest one.
        reached = set(order)
        orphan = next(i for i in range(len(nodes)) if i not in reached)
        parent = nodes[orphan].parent
        if parent is not None:
            nodes[parent].children.remove(orphan)
        nodes[orphan].parent = None
        roots.append(orphan)
        order += _walk(nodes, [orphan])
    roots.sort(key=lambda i: (nodes[i].span.start_ns, nodes[i].span.span_id))
    _roll_up(nodes, order)
    return SpanTree(outline.trace, nodes, roots)


def _walk(nodes: list[TreeNode], starts: list[int]) -> list[int]:
    """Breadth-first order from ``starts``, setting each node's depth."""
    order = list(starts)
    for i in starts:
        nodes[i].depth = 0
    position = 0
    while position < len(order):
        node = nodes[order[position]]
        for child in node.children:
            nodes[child].depth = node.depth + 1
            order.append(child)
        position += 1
    return order


def _roll_up(nodes: list[TreeNode], order: list[int]) -> None:
    """Totals per subtree: each node's own counted tokens and cost plus its children's."""
    for node in nodes:
        span = node.span
        if span.counted:
            node.total_input_tokens = span.input_tokens
            node.total_output_tokens = span.output_tokens
            node.total_cost_usd = span.cost_usd
    for i in reversed(order):
        node = nodes[i]
        if node.parent is None:
            continue
        parent = nodes[node.parent]
        parent.descendants += node.descendants + 1
        parent.errors_below += node.errors_below + (1 if node.span.is_error else 0)
        parent.total_input_tokens += node.total_input_tokens
        parent.total_output_tokens += node.total_output_tokens
        if node.total_cost_usd is not None:
            parent.total_cost_usd = (parent.total_cost_usd or 0.0) + node.total_cost_usd
