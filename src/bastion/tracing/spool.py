"""Append-only, fsync'd spool of span batches for when the database cannot take them.

A segment file holds framed records: ``length (4 bytes) | crc32 (4 bytes) | payload``, the
payload being one batch as JSON. A batch is acknowledged only after its record and the
directory entry are fsync'd, so a crash can at worst leave a torn record at a segment's end,
which replay detects by length or checksum and drops (it was never acknowledged).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import orjson

from bastion.tracing.model import Span

__all__ = ["Spool", "SpoolCorruption"]

log = logging.getLogger("bastion.spool")

_HEADER = struct.Struct("<II")
_SPAN_FIELDS = tuple(f.name for f in fields(Span))
_SEGMENT_MAX_BYTES = 64 * 1024 * 1024


class SpoolCorruption(Exception):
    """A record failed its checksum in the middle of a segment (not a torn tail)."""


def _encode(batch: Sequence[tuple[int, Span]]) -> bytes:
    return orjson.dumps(
        [
            [project_id, [getattr(span, name) for name in _SPAN_FIELDS]]
            for project_id, span in batch
        ],
        default=str,
    )


def _decode(payload: bytes) -> list[tuple[int, Span]]:
    return [(int(project_id), Span(*values)) for project_id, values in orjson.loads(payload)]


class Spool:
    """Segment files under ``directory``; one writer thread appends, the same thread replays."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._current: Path | None = None
        self._current_size = 0
        self._next_seq = 1 + max((self._seq(p) for p in self.segments()), default=0)

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
            with open(self._current, "ab") as fh:
                fh.write(record)
                fh.flush()
                os.fsync(fh.fileno())
            self._current_size += len(record)
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

    def quarantine(self, path: Path) -> Path:
        """Move an unreadable segment aside (kept for a person to inspect, never deleted)."""
        target = path.with_suffix(".corrupt")
        path.rename(target)
        self._fsync_dir()
        return target

    def describe(self) -> dict[str, Any]:
        segments = self.segments()
        return {"segments": len(segments), "bytes": sum(p.stat().st_size for p in segments)}
