"""Span trees kept for a while, so expanding a branch of a large trace does not rebuild it.

A tree is reused only while its trace is unchanged: the caller passes the trace's current
stamp (span count, start, end, read from its ``traces`` row), and a tree built from an older
outline is dropped. Trees expire after ``ttl_s`` regardless, and the cache holds at most
``max_spans`` spans over all its trees, dropping the least recently used first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from bastion.ui.span_tree import SpanTree

__all__ = ["Stamp", "TreeCache"]

Stamp = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Entry:
    stamp: Stamp
    tree: SpanTree
    stored_at: float


class TreeCache:
    """Trees by (project id, trace id); used from the event loop's thread only."""

    def __init__(self, *, max_spans: int = 300_000, ttl_s: float = 300.0) -> None:
        self.max_spans = max_spans
        self.ttl_s = ttl_s
        self._entries: OrderedDict[tuple[int, str], _Entry] = OrderedDict()
        self._spans = 0

    def get(self, project_id: int, trace_id: str, stamp: Stamp) -> SpanTree | None:
        key = (project_id, trace_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.stamp != stamp or time.monotonic() - entry.stored_at > self.ttl_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry.tree

    def put(self, project_id: int, trace_id: str, stamp: Stamp, tree: SpanTree) -> None:
        if len(tree) > self.max_spans:
            return
        key = (project_id, trace_id)
        self._drop(key)
        while self._entries and self._spans + len(tree) > self.max_spans:
            self._drop(next(iter(self._entries)))
        self._entries[key] = _Entry(stamp, tree, time.monotonic())
        self._spans += len(tree)

    def _drop(self, key: tuple[int, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._spans -= len(entry.tree)
