"""Server-sent events: an incremental parser and an encoder, both allocation-light."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SseEvent", "SseParser", "encode_event"]


@dataclass(slots=True)
class SseEvent:
    """One event: its ``event:`` name (None when absent) and its joined ``data:`` lines."""

    event: str | None
    data: str


class SseParser:
    """Feed raw bytes as they arrive; get complete events back (a partial one waits)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SseEvent]:
        self._buffer += chunk
        events: list[SseEvent] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return events
            line = self._buffer[:end].rstrip(b"\r").decode("utf-8", "replace")
            self._buffer = self._buffer[end + 1 :]
            if not line:
                if self._data or self._event is not None:
                    events.append(SseEvent(self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(":"):
                continue  # comment / keep-alive
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value

    def close(self) -> list[SseEvent]:
        """Events left when the stream ended without a final blank line."""
        events = self.feed(b"\n\n") if self._buffer else []
        if self._data:
            events.append(SseEvent(self._event, "\n".join(self._data)))
            self._event, self._data = None, []
        return events


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """One SSE event with a single ``data:`` line (``data`` must not contain newlines)."""
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
