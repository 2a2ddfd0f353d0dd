"""Append-only, fsync'd spool of span batches for when the database cannot take them.

A segment file holds framed records: ``length (4 bytes) | crc32 (4 bytes) | payload``, the
payload being one batch as JSON. A batch is acknowledged only after its record and the
directory entry are fsync'd, so a crash can at worst leave a torn record at a segment's end,
which replay detects by length or checksum and drops (it was never acknowledged).

A segment's modification time is kept at the time of its first record, so the age of the
oldest spooled span survives a restart (and a move between workers' spools).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import orjson

from bastion.store.storable import make_span_storable, storable_json_bytes
from bastion.tracing.model import Span

__all__ = ["Spool", "SpoolCorruption", "SpoolStats"]

log = logging.getLogger("bastion.spool")

_HEADER = struct.Struct("<II")
_SPAN_FIELDS = tuple(f.name for f in fields(Span))
_SEGMENT_MAX_BYTES = 64 * 1024 * 1024


class SpoolCorruption(Exception):
    """A record failed its checksum in the middle of a segment (not a torn tail)."""


def _encode(batch: Sequence[tuple[int, Span]]) -> bytes:
    document = [
        [project_id, [getattr(span, name) for name in _SPAN_FIELDS]] for project_id, span in batch
    ]
    try:
        return orjson.dumps(document, default=str)
    except TypeError:
        pass
    # orjson refused a value (a lone surrogate, an integer beyond 64 bits): spool the spans as
    # they will be stored, which the storable rule makes encodable.
    fixed = []
    for project_id, span in batch:
        copy = replace(span)
        make_span_storable(copy)
        fixed.append([project_id, [getattr(copy, name) for name in _SPAN_FIELDS]])
    return storable_json_bytes(fixed)


def _decode(payload: bytes) -> list[tuple[int, Span]]:
    return [(int(project_id), Span(*values)) for project_id, values in orjson.loads(payload)]


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """What waits in a spool: segments, bytes, spans, and how old its oldest record is."""

    segments: int
    bytes: int
    spans: int
    oldest_age_s: float


class Spool:
    """Segment files under ``directory``; one writer thread appends, the same thread replays."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._current_size = 0
        self._next_seq = 1 + max((self._seq(p) for p in self.segments()), default=0)
        # Spans per segment: counted as they are appended; a segment found on disk is counted
        # by count_spans(), which reads it (the writer thread calls it, never a request).
        self._spans: dict[str, int] = {}
        self._first_record_at = 0.0

    @staticmethod
    def _seq(path: Path) -> int:
        return int(path.stem.split("-")[1])

    def segments(self) -> list[Path]:
        """Segment files, oldest first."""
        return sorted(self.directory.glob("segment-*.spool"), key=self._seq)

    @property
    def empty(self) -> bool:
        return not self.segments()

    def pending_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, batch: Sequence[tuple[int, Span]]) -> None:
        """Durably append one batch (returns after fsync)."""
        payload = _encode(batch)
        record = _HEADER.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            created = False
            if self._current is None or self._current_size >= _SEGMENT_MAX_BYTES:
                self._current = self.directory / f"segment-{self._next_seq:012d}.spool"
                self._next_seq += 1
                self._current_size = 0
                created = True
            if created:
                self._first_record_at = time.time()
            with open(self._current, "ab") as fh:
                fh.write(record)
                fh.flush()
                os.fsync(fh.fileno())
            # The oldest record's time, not the newest's: what the spool's age is read from.
            os.utime(self._current, (self._first_record_at, self._first_record_at))
            self._current_size += len(record)
            self._spans[self._current.name] = self._spans.get(self._current.name, 0) + len(batch)
            if created:
                self._fsync_dir()

    def seal(self) -> None:
        """Stop appending to the current segment, so that it can be replayed and removed."""
        with self._lock:
            self._current = None
            self._current_size = 0

    def read_segment(self, path: Path) -> Iterator[list[tuple[int, Span]]]:
        """The batches in ``path``; a torn record at the end is dropped with a warning."""
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            if offset + _HEADER.size > len(data):
                log.warning("spool %s: dropping a torn header at byte %d", path.name, offset)
                return
            length, crc = _HEADER.unpack_from(data, offset)
            start = offset + _HEADER.size
            payload = data[start : start + length]
            if len(payload) < length or zlib.crc32(payload) != crc:
                if start + length >= len(data):
                    log.warning("spool %s: dropping a torn record at byte %d", path.name, offset)
                    return
                raise SpoolCorruption(f"spool {path.name}: bad checksum at byte {offset}")
            yield _decode(payload)
            offset = start + length

    def oldest(self) -> Path | None:
        """The oldest segment ready for replay (sealing the current one if it is the only one)."""
        segments = self.segments()
        if not segments:
            return None
        with self._lock:
            if self._current == segments[0]:
                self._current = None
                self._current_size = 0
        return segments[0]

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._fsync_dir()
        with self._lock:
            self._spans.pop(path.name, None)

    def quarantine(self, path: Path) -> Path:
        """Move an unreadable segment aside (kept for a person to inspect, never deleted)."""
        target = path.with_suffix(".corrupt")
        path.rename(target)
        self._fsync_dir()
        with self._lock:
            self._spans.pop(path.name, None)
        return target

    def count_spans(self) -> None:
        """Count the spans of segments this spool did not write (a former run's): reads them."""
        for path in self.segments():
            if path.name in self._spans:
                continue
            try:
                count = sum(len(batch) for batch in self.read_segment(path))
            except (OSError, SpoolCorruption):
                continue  # replay reports it
            with self._lock:
                self._spans.setdefault(path.name, count)

    def stats(self) -> SpoolStats:
        """The spool's size and the age of its oldest record (cheap: a directory listing)."""
        segments, sizes, oldest = [], 0, None
        for path in self.segments():
            try:
                info = path.stat()
            except FileNotFoundError:
                continue  # replayed meanwhile
            segments.append(path.name)
            sizes += info.st_size
            oldest = info.st_mtime if oldest is None else min(oldest, info.st_mtime)
        with self._lock:
            spans = sum(self._spans.get(name, 0) for name in segments)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest)
        return SpoolStats(len(segments), sizes, spans, age)

    def describe(self, stats: SpoolStats | None = None) -> dict[str, Any]:
        """``stats`` (default: read now) as a JSON object."""
        stats = stats or self.stats()
        return {
            "segments": stats.segments,
            "bytes": stats.bytes,
            "spans": stats.spans,
            "oldest_age_s": round(stats.oldest_age_s, 3),
        }
