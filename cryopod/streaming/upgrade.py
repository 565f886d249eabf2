"""Byte transports for SPDY: an HTTP connection taken over after `101 Switching Protocols`,
and a WebSocket whose binary messages carry a SPDY byte stream (`SPDY/3.1+portforward.k8s.io`).

aiohttp has no public hijack; this takes the connection over the way its own
`WebSocketResponse` does: the 101 response is prepared (and so sent), then a payload parser
installed with `set_parser` receives every byte that follows, the handshake's tail included.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractStreamWriter

from cryopod.errors import StreamClosed

READ_BUFFER_LIMIT = 256 * 1024
CLOSE_LINGER = 2.0


class UpgradedConnection:
    """The raw bytes of an upgraded HTTP/1.1 connection; a SPDY `ByteTransport`."""

    def __init__(
        self, request: web.BaseRequest, writer: AbstractStreamWriter, *, linger: float
    ) -> None:
        self._transport = request.transport
        self._writer = writer
        self._linger = linger
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = asyncio.Event()
        self._readable = asyncio.Event()
        self._paused = False
        self._closed = False

    @classmethod
    async def accept(
        cls,
        request: web.BaseRequest,
        headers: Mapping[str, str],
        *,
        linger: float = CLOSE_LINGER,
    ) -> tuple[web.StreamResponse, UpgradedConnection]:
        """Answer 101 with `headers` and take the connection over."""
        response = web.StreamResponse(status=101, headers=headers)
        response.force_close()
        writer = await response.prepare(request)
        assert writer is not None, "a fresh response always prepares"
        connection = cls(request, writer, linger=linger)
        protocol: Any = request.protocol  # its set_parser is typed for WebSocketReader only
        protocol.set_parser(_PayloadSink(connection))
        protocol.keep_alive(False)
        return response, connection

    async def read(self) -> bytes:
        while not self._chunks and not self._eof.is_set():
            self._readable.clear()
            await self._readable.wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        self._resume_reading()
        return data

    async def write(self, data: bytes) -> None:
        if self._closed:
            raise StreamClosed("the connection")
        try:
            await self._writer.write(data)
        except ConnectionError as exc:
            raise StreamClosed("the connection") from exc

    async def close(self) -> None:
        """Flush, half-close and give the peer `linger` seconds to close its side too.

        Closing a socket with unread input makes the kernel send RST, which can destroy data
        the peer has not read yet; waiting for its EOF avoids that.
        """
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            if transport.can_write_eof():
                transport.write_eof()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._linger):
                    await self._eof.wait()
        finally:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._size += len(data)
        self._readable.set()
        if self._size >= READ_BUFFER_LIMIT and not self._paused and self._transport is not None:
            self._paused = True
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self._transport.pause_reading()

    def eof_received(self) -> None:
        self._eof.set()
        self._readable.set()

    def _resume_reading(self) -> None:
        if self._paused and self._transport is not None and not self._transport.is_closing():
            self._paused = False
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self._transport.resume_reading()


class _PayloadSink:
    """The payload parser aiohttp feeds an upgraded connection's bytes to."""

    def __init__(self, connection: UpgradedConnection) -> None:
        self._connection = connection

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._connection.data_received(data)
        return False, b""

    def feed_eof(self) -> None:
        self._connection.eof_received()


class WebSocketTunnel:
    """A SPDY byte stream carried in binary WebSocket messages; a SPDY `ByteTransport`."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self._ws = ws

    async def read(self) -> bytes:
        while not self._ws.closed:
            message = await self._ws.receive()
            if message.type is WSMsgType.BINARY and message.data:
                data: bytes = message.data
                return data
            if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if message.type is WSMsgType.ERROR:
                break
        return b""

    async def write(self, data: bytes) -> None:
        if self._ws.closed:
            raise StreamClosed("the connection")
        try:
            await self._ws.send_bytes(data)
        except ConnectionError as exc:
            raise StreamClosed("the connection") from exc

    async def close(self) -> None:
        await self._ws.close()
