"""A bounded in-memory byte pipe: the protocol side feeds it, the backend reads it."""

from __future__ import annotations

import asyncio
from collections import deque

from cryopod.streaming.backend import DEFAULT_READ_SIZE


class InboundBuffer:
    """Bytes from the client waiting for the backend; an `InputStream`.

    `feed` waits while `limit` bytes are buffered, so a slow reader pushes back on the
    connection instead of growing memory. After `feed_eof`, reads drain what is left and then
    answer b"".
    """

    def __init__(self, *, limit: int = 64 * 1024) -> None:
        self._limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()

    @property
    def size(self) -> int:
        """Bytes buffered and not read yet."""
        return self._size

    @property
    def at_eof(self) -> bool:
        """True once EOF was fed and every byte read."""
        return self._eof and not self._size

    async def feed(self, data: bytes) -> None:
        """Append `data` once there is room; data after EOF is dropped."""
        while self._size >= self._limit and not self._eof:
            self._writable.clear()
            await self._writable.wait()
        if self._eof or not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()

    def feed_nowait(self, data: bytes, *, hard_limit: int) -> bool:
        """Append `data` at once, for a reader that serves other streams too and must never
        wait on this one; False (nothing appended) once `hard_limit` bytes are buffered."""
        if self._eof or not data:
            return True
        if self._size + len(data) > hard_limit:
            return False
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()
        return True

    def feed_eof(self) -> None:
        """The client is done sending; wake every waiter."""
        self._eof = True
        self._readable.set()
        self._writable.set()

    async def read(self, max_bytes: int = DEFAULT_READ_SIZE) -> bytes:
        """Up to `max_bytes` bytes, waiting for some; b"" at EOF."""
        while not self._size and not self._eof:
            self._readable.clear()
            await self._readable.wait()
        if not self._size:
            return b""
        data = self._take(max_bytes)
        if self._size < self._limit:
            self._writable.set()
        return data

    def _take(self, max_bytes: int) -> bytes:
        first = self._chunks.popleft()
        if len(first) > max_bytes:
            self._chunks.appendleft(first[max_bytes:])
            first = first[:max_bytes]
        self._size -= len(first)
        return first
