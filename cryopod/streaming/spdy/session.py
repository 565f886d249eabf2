"""The server side of one SPDY/3.1 connection: peer-opened streams and flow control.

The session reads frames from a `ByteTransport`, answers each SYN_STREAM with a SYN_REPLY
before anything else is sent on that stream (spdystream drops data on unreplied streams), and
hands the streams to the handler through `accept`. Frames are encoded and written under one
lock, so header blocks leave in the order their compressor saw them.

Flow control. The receiving side always follows SPDY/3.1: a stream buffers at most a window's
worth (64 KiB) and WINDOW_UPDATEs, per stream and for the session, go out as the backend
consumes. The sending side keeps the peer's windows but only waits on them once the peer has
shown it does flow control (it sent a WINDOW_UPDATE or an INITIAL_WINDOW_SIZE setting):
moby/spdystream, which kubectl, crictl and the kubelet use, neither sends nor honours window
updates, so waiting for them would stall every output larger than 64 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Protocol

from cryopod.errors import SpdyProtocolError, StreamClosed
from cryopod.streaming.backend import DEFAULT_READ_SIZE
from cryopod.streaming.buffers import InboundBuffer
from cryopod.streaming.spdy.frames import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
    Headers,
    HeadersFrame,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    SettingId,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
    header_value,
)

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 64 * 1024
STREAM_HARD_LIMIT = 4 * 1024 * 1024
"""Bytes one stream may hold unread before it is reset (clients that ignore its window)."""
MAX_DATA_CHUNK = 32 * 1024
WINDOW_UPDATE_THRESHOLD = DEFAULT_WINDOW // 2
MAX_OPEN_STREAMS = 1024


class ByteTransport(Protocol):
    """A bidirectional byte pipe the session runs over (an upgraded HTTP connection, or a
    WebSocket carrying SPDY in binary messages)."""

    async def read(self) -> bytes:
        """The next bytes from the peer; b"" once the connection is closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send `data`, waiting while the peer is slow; raises `StreamClosed` if it is gone."""
        ...

    async def close(self) -> None:
        """Flush what was written and close. Idempotent."""
        ...


class StreamAdmission(Protocol):
    """Decides whether a new peer stream is served; a reason string refuses it."""

    def __call__(self, headers: Headers) -> str | None: ...


class SpdyStream:
    """A peer-opened stream: an `InputStream` and `OutputStream` in one."""

    def __init__(self, session: SpdySession, stream_id: int, headers: Headers) -> None:
        self._session = session
        self.stream_id = stream_id
        self.headers = headers
        self.inbound = InboundBuffer(limit=DEFAULT_WINDOW)
        self.send_window = session.initial_send_window
        self.unacknowledged = 0
        self.local_closed = False
        self.reset_received = False

    def __repr__(self) -> str:
        return f"SpdyStream({self.stream_id}, {self.header('streamtype') or '?'})"

    def header(self, name: str) -> str:
        """The first value of header `name`, or ""."""
        return header_value(self.headers, name)

    @property
    def remote_closed(self) -> bool:
        """The peer finished sending (FIN, reset, or the connection ended)."""
        return self.inbound.at_eof or self.reset_received

    async def read(self, max_bytes: int = DEFAULT_READ_SIZE) -> bytes:
        """Up to `max_bytes` bytes from the peer; b"" once it finished sending."""
        data = await self.inbound.read(max_bytes)
        if data:
            await self._session.consumed(self, len(data))
        return data

    async def write(self, data: bytes) -> None:
        """Send `data` in DATA frames within the peer's windows."""
        await self._session.send_data(self, data)

    async def close(self) -> None:
        """Send FIN: this side will not write again. Idempotent."""
        await self._session.finish(self)

    async def reset(self, status: RstStatus = RstStatus.CANCEL) -> None:
        """Abort the stream in both directions."""
        await self._session.reset(self, status)


class SpdySession:
    """One SPDY/3.1 connection, server side. Use as `async with`: it reads frames meanwhile."""

    def __init__(
        self,
        transport: ByteTransport,
        *,
        admit: StreamAdmission | None = None,
        ping_interval: float | None = None,
    ) -> None:
        self._transport = transport
        self._admit = admit
        self._ping_interval = ping_interval
        self._encoder = FrameEncoder()
        self._decoder = FrameDecoder()
        self._write_lock = asyncio.Lock()  # guards encoder state and frame order on the wire
        self._streams: dict[int, SpdyStream] = {}
        self._incoming: asyncio.Queue[SpdyStream | None] = asyncio.Queue()
        self._closed = asyncio.Event()
        self._window_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.last_peer_stream = 0
        self.going_away = False
        self.peer_flow_control = False
        self.initial_send_window = DEFAULT_WINDOW
        self.session_send_window = DEFAULT_WINDOW
        self.session_unacknowledged = 0

    async def __aenter__(self) -> SpdySession:
        self._tasks.append(asyncio.create_task(self._read_frames(), name="spdy-reader"))
        if self._ping_interval is not None:
            self._tasks.append(asyncio.create_task(self._ping(self._ping_interval)))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Return once the connection has ended (either side closed it)."""
        await self._closed.wait()

    async def accept(self) -> SpdyStream | None:
        """The next stream the peer opened; None once it sent GOAWAY or the session ended."""
        stream = await self._incoming.get()
        if stream is None:
            self._incoming.put_nowait(None)  # every later call ends too
        return stream

    async def close(self) -> None:
        """Send GOAWAY and close the connection. Idempotent."""
        if not self.closed:
            with contextlib.suppress(StreamClosed):
                await self._send(GoAwayFrame(self.last_peer_stream, GoAwayStatus.OK))
        self._mark_closed()
        await self._transport.close()

    # ------------------------------------------------------------------ stream operations

    async def send_data(self, stream: SpdyStream, data: bytes) -> None:
        view = memoryview(data)
        while view:
            size = await self._reserve(stream, min(len(view), MAX_DATA_CHUNK))
            await self._send(DataFrame(stream.stream_id, bytes(view[:size])))
            view = view[size:]

    async def finish(self, stream: SpdyStream) -> None:
        if stream.local_closed or stream.reset_received or self.closed:
            stream.local_closed = True
            return
        stream.local_closed = True
        await self._send(DataFrame(stream.stream_id, fin=True))
        self._forget_if_done(stream)

    async def reset(self, stream: SpdyStream, status: RstStatus) -> None:
        already = stream.reset_received or self.closed
        self._on_reset(stream)
        stream.local_closed = True
        if not already:
            await self._send(RstStreamFrame(stream.stream_id, status))

    async def consumed(self, stream: SpdyStream, size: int) -> None:
        """Give bytes the backend has read back to the peer's send windows."""
        stream.unacknowledged += size
        if stream.unacknowledged >= WINDOW_UPDATE_THRESHOLD and not stream.remote_closed:
            delta, stream.unacknowledged = stream.unacknowledged, 0
            await self._send_quietly(WindowUpdateFrame(stream.stream_id, delta))
        await self._grant_session_window(size)

    async def _grant_session_window(self, size: int) -> None:
        self.session_unacknowledged += size
        if self.session_unacknowledged >= WINDOW_UPDATE_THRESHOLD:
            delta, self.session_unacknowledged = self.session_unacknowledged, 0
            await self._send_quietly(WindowUpdateFrame(0, delta))

    # ------------------------------------------------------------------ reading

    async def _read_frames(self) -> None:
        try:
            while data := await self._transport.read():
                for frame in self._decoder.feed(data):
                    await self._dispatch(frame)
        except SpdyProtocolError as exc:
            log.warning("Closing SPDY connection: %s", exc)
            await self._send_quietly(
                GoAwayFrame(self.last_peer_stream, GoAwayStatus.PROTOCOL_ERROR)
            )
            await self._transport.close()
        except Exception:
            log.exception("SPDY session reader failed")
            raise
        finally:
            self._mark_closed()

    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case SynStreamFrame():
                await self._on_syn_stream(frame)
            case DataFrame():
                await self._on_data(frame)
            case HeadersFrame() if frame.fin:
                self._on_remote_fin(frame.stream_id)
            case RstStreamFrame():
                stream = self._streams.get(frame.stream_id)
                if stream is not None:
                    self._on_reset(stream)
            case SettingsFrame():
                self._on_settings(frame)
            case WindowUpdateFrame():
                self._on_window_update(frame)
            case PingFrame() if frame.ping_id % 2 == 1:
                await self._send_quietly(frame)  # the peer's ping (odd id): echo it
            case GoAwayFrame():
                self.going_away = True
                self._incoming.put_nowait(None)

    async def _on_syn_stream(self, frame: SynStreamFrame) -> None:
        stream_id = frame.stream_id
        if stream_id % 2 == 0 or stream_id <= self.last_peer_stream:
            await self._send_quietly(RstStreamFrame(stream_id, RstStatus.PROTOCOL_ERROR))
            return
        self.last_peer_stream = stream_id
        refusal = "the session is going away" if self.going_away else None
        if refusal is None and len(self._streams) >= MAX_OPEN_STREAMS:
            refusal = f"{MAX_OPEN_STREAMS} streams are open already"
        if refusal is None and self._admit is not None:
            refusal = self._admit(frame.headers)
        if refusal is not None:
            log.info("Refusing SPDY stream %d: %s", stream_id, refusal)
            await self._send_quietly(RstStreamFrame(stream_id, RstStatus.REFUSED_STREAM))
            return
        stream = SpdyStream(self, stream_id, frame.headers)
        self._streams[stream_id] = stream
        if frame.fin:
            stream.inbound.feed_eof()
        if frame.unidirectional:
            stream.local_closed = True
        else:
            await self._send_quietly(SynReplyFrame(stream_id))
        self._incoming.put_nowait(stream)

    async def _on_data(self, frame: DataFrame) -> None:
        stream = self._streams.get(frame.stream_id)
        if stream is None or stream.reset_received:
            # Nobody will read them, but they count against the session window.
            await self._grant_session_window(len(frame.data))
            return
        # Never wait on one stream here: every other stream of the connection (resizes,
        # other forwarded connections, pings) comes through this same reader. spdystream
        # clients ignore windows, so a stream its reader neglects may grow; past a hard cap
        # it is reset, as SPDY/3.1 prescribes for a peer that overruns its window.
        if frame.data and not stream.inbound.feed_nowait(frame.data, hard_limit=STREAM_HARD_LIMIT):
            log.warning("SPDY stream %d overran its buffer: reset", frame.stream_id)
            await self._send_quietly(RstStreamFrame(frame.stream_id, RstStatus.FLOW_CONTROL_ERROR))
            self._on_reset(stream)
            return
        if frame.fin:
            self._on_remote_fin(frame.stream_id)

    def _on_remote_fin(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.inbound.feed_eof()
            self._forget_if_done(stream)

    def _on_reset(self, stream: SpdyStream) -> None:
        stream.reset_received = True
        stream.inbound.feed_eof()
        self._streams.pop(stream.stream_id, None)
        self._window_changed.set()

    def _on_settings(self, frame: SettingsFrame) -> None:
        for setting in frame.settings:
            if setting.id != SettingId.INITIAL_WINDOW_SIZE:
                continue
            delta = setting.value - self.initial_send_window
            self.initial_send_window = setting.value
            for stream in self._streams.values():
                stream.send_window += delta
            self.peer_flow_control = True
            self._window_changed.set()

    def _on_window_update(self, frame: WindowUpdateFrame) -> None:
        self.peer_flow_control = True
        if frame.stream_id == 0:
            self.session_send_window += frame.delta
        elif (stream := self._streams.get(frame.stream_id)) is not None:
            stream.send_window += frame.delta
        self._window_changed.set()

    # ------------------------------------------------------------------ writing

    async def _ping(self, interval: float) -> None:
        """Ping now and then: writing is how a vanished peer shows, even while reading from
        it is paused. Answers are not awaited (server pings have even ids)."""
        ping_id = 0
        while not self.closed:
            await asyncio.sleep(interval)
            ping_id = ping_id + 2 if ping_id < 0x7FFFFFFE else 2
            await self._send_quietly(PingFrame(ping_id))

    async def _reserve(self, stream: SpdyStream, wanted: int) -> int:
        """How much of `wanted` may go now, waiting for window if the peer does flow control."""
        while True:
            if self.closed or stream.reset_received or stream.local_closed:
                raise StreamClosed(f"stream {stream.stream_id}")
            available = min(stream.send_window, self.session_send_window)
            if not self.peer_flow_control or available > 0:
                break
            self._window_changed.clear()
            await self._window_changed.wait()
        size = wanted if not self.peer_flow_control else min(wanted, available)
        stream.send_window -= size
        self.session_send_window -= size
        return size

    async def _send(self, frame: Frame) -> None:
        async with self._write_lock:
            if self.closed:
                raise StreamClosed("the connection")
            await self._transport.write(self._encoder.encode(frame))

    async def _send_quietly(self, frame: Frame) -> None:
        """Send a frame whose loss does not matter once the peer is gone."""
        with contextlib.suppress(StreamClosed):
            await self._send(frame)

    def _forget_if_done(self, stream: SpdyStream) -> None:
        if stream.local_closed and stream.remote_closed:
            self._streams.pop(stream.stream_id, None)

    def _mark_closed(self) -> None:
        if self.closed:
            return
        self._closed.set()
        for stream in self._streams.values():
            stream.inbound.feed_eof()
        self._streams.clear()
        self._incoming.put_nowait(None)
        self._window_changed.set()
