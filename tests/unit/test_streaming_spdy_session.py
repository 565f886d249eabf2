"""The server side of a SPDY/3.1 session: stream setup, control frames and flow control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from cryopod.errors import StreamClosed
from cryopod.streaming.spdy.frames import (
    DataFrame,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAwayFrame,
    GoAwayStatus,
    Headers,
    PingFrame,
    RstStatus,
    RstStreamFrame,
    Setting,
    SettingId,
    SettingsFrame,
    SynReplyFrame,
    SynStreamFrame,
    WindowUpdateFrame,
)
from cryopod.streaming.spdy.session import (
    STREAM_HARD_LIMIT,
    SpdySession,
    SpdyStream,
    StreamAdmission,
)


class MemoryTransport:
    """A `ByteTransport` whose far end is the test: frames in, decoded frames out."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.sent: list[Frame] = []
        self.closed = False
        self.written = asyncio.Event()
        self._encoder = FrameEncoder()
        self._decoder = FrameDecoder()
        self._pings = 1

    def deliver(self, *frames: Frame) -> None:
        self.incoming.put_nowait(b"".join(self._encoder.encode(frame) for frame in frames))

    def deliver_raw(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    async def read(self) -> bytes:
        return await self.incoming.get()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise StreamClosed("the connection")
        self.sent.extend(self._decoder.feed(data))
        self.written.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds after what the session wrote."""
        async with asyncio.timeout(2):
            while not condition():
                self.written.clear()
                await self.written.wait()

    async def barrier(self) -> None:
        """Wait until the session has handled every frame delivered so far."""
        self._pings += 2
        ping = PingFrame(self._pings)
        self.deliver(ping)
        await self.until(lambda: ping in self.sent)

    async def close(self) -> None:
        self.closed = True
        self.incoming.put_nowait(b"")

    def data_sent(self, stream_id: int) -> int:
        return sum(
            len(f.data) for f in self.sent if isinstance(f, DataFrame) and f.stream_id == stream_id
        )


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
async def session(transport: MemoryTransport) -> AsyncIterator[SpdySession]:
    async with SpdySession(transport) as running:
        yield running


async def open_stream(
    transport: MemoryTransport, session: SpdySession, stream_id: int, kind: str = "stdout"
) -> SpdyStream:
    transport.deliver(SynStreamFrame(stream_id, (("streamtype", kind),)))
    async with asyncio.timeout(2):
        stream = await session.accept()
    assert stream is not None
    return stream


# ----------------------------------------------------------------------------- streams


async def test_a_new_stream_is_replied_before_it_is_handed_out(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1, "stdin")

    assert stream.stream_id == 1
    assert stream.header("streamType") == "stdin"
    assert transport.sent == [SynReplyFrame(1)]


async def test_even_or_reused_stream_ids_are_protocol_errors(
    transport: MemoryTransport, session: SpdySession
) -> None:
    transport.deliver(SynStreamFrame(2), SynStreamFrame(5), SynStreamFrame(3))
    stream = await session.accept()

    assert stream is not None and stream.stream_id == 5
    await transport.until(lambda: len(transport.sent) == 3)
    assert transport.sent == [
        RstStreamFrame(2, RstStatus.PROTOCOL_ERROR),
        SynReplyFrame(5),
        RstStreamFrame(3, RstStatus.PROTOCOL_ERROR),
    ]


async def test_refused_streams_are_reset_and_not_handed_out(transport: MemoryTransport) -> None:
    def admit(headers: Headers) -> str | None:
        return None if dict(headers).get("port") else "no port"

    admission: StreamAdmission = admit
    async with SpdySession(transport, admit=admission) as session:
        transport.deliver(SynStreamFrame(1), SynStreamFrame(3, (("port", "80"),)))
        stream = await session.accept()
    assert stream is not None and stream.stream_id == 3
    assert transport.sent[:2] == [RstStreamFrame(1, RstStatus.REFUSED_STREAM), SynReplyFrame(3)]


async def test_open_streams_are_capped(
    transport: MemoryTransport, session: SpdySession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cryopod.streaming.spdy.session.MAX_OPEN_STREAMS", 2)
    transport.deliver(SynStreamFrame(1), SynStreamFrame(3), SynStreamFrame(5))
    await transport.until(lambda: len(transport.sent) == 3)
    assert transport.sent[2] == RstStreamFrame(5, RstStatus.REFUSED_STREAM)


async def test_data_and_fin_reach_the_reader(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1)
    transport.deliver(DataFrame(1, b"abc"), DataFrame(1, b"def", fin=True))

    assert await stream.read() == b"abc"
    assert await stream.read(2) == b"de"
    assert await stream.read() == b"f"
    assert await stream.read() == b""


async def test_a_syn_stream_with_fin_has_no_input(
    transport: MemoryTransport, session: SpdySession
) -> None:
    transport.deliver(SynStreamFrame(1, (("streamtype", "error"),), fin=True))
    stream = await session.accept()
    assert stream is not None
    assert await stream.read() == b""


async def test_close_sends_fin_once(transport: MemoryTransport, session: SpdySession) -> None:
    stream = await open_stream(transport, session, 1)
    await stream.write(b"out")
    await stream.close()
    await stream.close()

    assert transport.sent[1:] == [DataFrame(1, b"out"), DataFrame(1, b"", fin=True)]
    with pytest.raises(StreamClosed):
        await stream.write(b"more")


async def test_a_peer_reset_ends_the_stream(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1)
    transport.deliver(RstStreamFrame(1, RstStatus.CANCEL))

    assert await stream.read() == b""
    with pytest.raises(StreamClosed):
        await stream.write(b"x")


# ----------------------------------------------------------------------------- control


async def test_peer_pings_are_echoed(transport: MemoryTransport, session: SpdySession) -> None:
    transport.deliver(PingFrame(2), PingFrame(7))  # 2 would answer a ping of ours: ignored
    await transport.until(lambda: bool(transport.sent))
    assert transport.sent == [PingFrame(7)]


async def test_goaway_stops_new_streams(transport: MemoryTransport, session: SpdySession) -> None:
    transport.deliver(GoAwayFrame(0), SynStreamFrame(1))
    assert await session.accept() is None
    assert await session.accept() is None
    await transport.until(lambda: bool(transport.sent))
    assert transport.sent == [RstStreamFrame(1, RstStatus.REFUSED_STREAM)]


async def test_close_sends_goaway_naming_the_last_stream(
    transport: MemoryTransport, session: SpdySession
) -> None:
    await open_stream(transport, session, 5)
    await session.close()

    assert transport.sent[-1] == GoAwayFrame(5, GoAwayStatus.OK)
    assert transport.closed and session.closed


async def test_garbage_is_a_protocol_error_that_ends_the_session(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1)
    transport.deliver_raw(b"\x00\x00\x00\x00\x00\x00\x00\x01x")  # data on stream 0

    async with asyncio.timeout(2):
        await session.wait_closed()
    assert GoAwayFrame(1, GoAwayStatus.PROTOCOL_ERROR) in transport.sent
    assert await stream.read() == b""
    assert await session.accept() is None


async def test_connection_eof_ends_every_stream(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1)
    transport.deliver_raw(b"")

    async with asyncio.timeout(2):
        await session.wait_closed()
    assert await stream.read() == b""
    with pytest.raises(StreamClosed):
        await stream.write(b"x")


# ----------------------------------------------------------------------------- flow control


async def test_window_updates_follow_what_the_backend_reads(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1, "stdin")
    transport.deliver(DataFrame(1, b"a" * 20_000))
    assert len(await stream.read(100_000)) == 20_000
    assert not any(isinstance(f, WindowUpdateFrame) for f in transport.sent)  # under half

    transport.deliver(DataFrame(1, b"b" * 20_000))
    await stream.read(100_000)
    assert transport.sent[-2:] == [WindowUpdateFrame(1, 40_000), WindowUpdateFrame(0, 40_000)]


async def test_a_peer_without_flow_control_is_not_waited_for(
    transport: MemoryTransport, session: SpdySession
) -> None:
    """moby/spdystream (kubectl, crictl) never sends WINDOW_UPDATE: do not stall on it."""
    stream = await open_stream(transport, session, 1)
    async with asyncio.timeout(2):
        await stream.write(b"x" * 300_000)
    assert transport.data_sent(1) == 300_000
    assert max(len(f.data) for f in transport.sent if isinstance(f, DataFrame)) <= 32 * 1024


async def test_a_flow_controlling_peer_gets_no_more_than_its_windows(
    transport: MemoryTransport, session: SpdySession
) -> None:
    transport.deliver(SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 65536),)))
    stream = await open_stream(transport, session, 1)
    writing = asyncio.create_task(stream.write(b"x" * 100_000))

    await transport.until(lambda: transport.data_sent(1) == 65536)
    await asyncio.sleep(0.05)
    assert transport.data_sent(1) == 65536 and not writing.done()

    transport.deliver(WindowUpdateFrame(1, 50_000))  # the session window is still empty
    await asyncio.sleep(0.05)
    assert transport.data_sent(1) == 65536

    transport.deliver(WindowUpdateFrame(0, 50_000))
    async with asyncio.timeout(2):
        await writing
    assert transport.data_sent(1) == 100_000


async def test_a_new_initial_window_applies_to_open_streams(
    transport: MemoryTransport, session: SpdySession
) -> None:
    stream = await open_stream(transport, session, 1)
    transport.deliver(SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 1000),)))
    await transport.barrier()
    writing = asyncio.create_task(stream.write(b"x" * 5000))

    await transport.until(lambda: transport.data_sent(1) == 1000)
    await asyncio.sleep(0.05)
    assert not writing.done()
    transport.deliver(WindowUpdateFrame(1, 4000))
    async with asyncio.timeout(2):
        await writing


async def test_a_reset_wakes_a_writer_waiting_for_window(
    transport: MemoryTransport, session: SpdySession
) -> None:
    transport.deliver(SettingsFrame((Setting(SettingId.INITIAL_WINDOW_SIZE, 10),)))
    stream = await open_stream(transport, session, 1)
    writing = asyncio.create_task(stream.write(b"x" * 100))
    await transport.until(lambda: transport.data_sent(1) == 10)

    transport.deliver(RstStreamFrame(1, RstStatus.CANCEL))
    with pytest.raises(StreamClosed):
        async with asyncio.timeout(2):
            await writing


async def test_a_neglected_stream_does_not_starve_the_others() -> None:
    """spdystream ignores windows: a stream nobody reads grows, but the others flow on,
    and past its hard limit it is reset instead of stalling the connection."""
    transport = MemoryTransport()
    async with SpdySession(transport) as session:
        transport.deliver(
            SynStreamFrame(1, (("streamtype", "data"),)),
            SynStreamFrame(3, (("streamtype", "data"),)),
        )
        neglected = await session.accept()
        served = await session.accept()
        transport.deliver(*(DataFrame(1, b"x" * 40_000) for _ in range(3)))
        transport.deliver(DataFrame(3, b"hello"))
        async with asyncio.timeout(2):
            assert await served.read() == b"hello"
        chunk = b"y" * 64 * 1024
        transport.deliver(
            *(DataFrame(1, chunk) for _ in range(STREAM_HARD_LIMIT // len(chunk) + 1))
        )
        transport.deliver(DataFrame(3, b"still here"))
        async with asyncio.timeout(2):
            assert await served.read() == b"still here"
        assert neglected.reset_received
