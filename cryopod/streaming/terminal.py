"""Terminal resize events: decoding the resize stream and handing sizes to the backend.

Clients send a stream of JSON objects `{"Width":W,"Height":H}` (Go's `TerminalSize` with
default field names, which Go matches case-insensitively), back to back and split anywhere by
frames. Only the latest size matters to a terminal, so sizes the backend has not taken yet are
replaced, never queued.
"""

from __future__ import annotations

import asyncio
import codecs
import json

from cryopod.streaming.backend import TerminalSize

MAX_PENDING_TEXT = 4096
_MAX_DIMENSION = 0xFFFF  # Go's TerminalSize fields are uint16


class ResizeDecoder:
    """Turns resize-stream bytes into sizes; stops for good at malformed JSON (as Go does)."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._json = json.JSONDecoder()
        self._pending = ""
        self._broken = False

    def feed(self, data: bytes) -> list[TerminalSize]:
        """The sizes completed by `data`, oldest first."""
        if self._broken:
            return []
        self._pending += self._text.decode(data)
        sizes: list[TerminalSize] = []
        while value := self._next_value():
            size = _terminal_size(value[0])
            if size is not None:
                sizes.append(size)
        return sizes

    def _next_value(self) -> tuple[object] | None:
        text = self._pending.lstrip()
        self._pending = text
        if not text:
            return None
        try:
            value, end = self._json.raw_decode(text)
        except json.JSONDecodeError:
            # An object is complete once its closing brace arrived; until then, wait.
            if "}" in text or len(text) > MAX_PENDING_TEXT:
                self._broken = True
                self._pending = ""
            return None
        self._pending = text[end:]
        return (value,)


def _terminal_size(value: object) -> TerminalSize | None:
    if not isinstance(value, dict):
        return None
    fields = {str(key).lower(): item for key, item in value.items()}
    width, height = fields.get("width", 0), fields.get("height", 0)
    if not (_is_dimension(width) and _is_dimension(height)):
        return None
    assert isinstance(width, int) and isinstance(height, int)
    return TerminalSize(width=width, height=height)


def _is_dimension(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_DIMENSION


class ResizeEvents:
    """An async iterator of the latest size not yet taken; ends after `close`."""

    def __init__(self) -> None:
        self._latest: TerminalSize | None = None
        self._closed = False
        self._changed = asyncio.Event()

    def push(self, size: TerminalSize) -> None:
        """Record `size`, replacing one the backend has not taken yet."""
        if not self._closed:
            self._latest = size
            self._changed.set()

    def close(self) -> None:
        """No more sizes will come; the iterator ends once the last one is taken."""
        self._closed = True
        self._changed.set()

    def __aiter__(self) -> ResizeEvents:
        return self

    async def __anext__(self) -> TerminalSize:
        while self._latest is None:
            if self._closed:
                raise StopAsyncIteration
            self._changed.clear()
            await self._changed.wait()
        size, self._latest = self._latest, None
        return size


def closed_resize_events() -> ResizeEvents:
    """Resize events that never yield: what a backend gets without a TTY."""
    events = ResizeEvents()
    events.close()
    return events
