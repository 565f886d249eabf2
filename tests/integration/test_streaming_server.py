"""The streaming server end to end over real sockets.

The clients here are written from the wire formats, not from cryopod's code: a WebSocket
client on aiohttp's (channel bytes, base64 text frames, the v5 close signal) and a SPDY/3.1
client (framing, zlib header blocks with the SPDY/3 dictionary, flow control). The backend is
an in-process fake (cat, echo, exit codes, a TCP connection for port-forward): the runtime's
real exec, attach and port-forward are wired to the server elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import ssl
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from cryopod.streaming import (
    AttachRequest,
    ExecRequest,
    ExecStreams,
    InputStream,
    OutputStream,
    PortForwardRequest,
    StreamingServer,
    StreamingSettings,
    TerminalSize,
)

TIMEOUT = 10.0

# ============================================================================ fake backend


class FakeBackend:
    """cat, fixed output, exit codes, big output, resize reporting; port-forward over TCP."""

    def __init__(self) -> None:
        self.resizes: list[TerminalSize] = []
        self.sleeping = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls: list[str] = []

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> int:
        self.calls.append(f"exec {container_id} {' '.join(cmd)}")
        program, *args = cmd
        if program == "cat":
            await _copy(streams.stdin, streams.stdout)
            return 0
        if program == "split":  # stdout, stderr, exit code
            assert streams.stdout is not None and streams.stderr is not None
            await streams.stdout.write(b"to stdout\n")
            await streams.stderr.write(b"to stderr\n")
            return int(args[0])
        if program == "big":
            assert streams.stdout is not None
            await _write_pattern(streams.stdout, int(args[0]))
            return 0
        if program == "stty-size":  # like `stty size` after the first resize
            assert streams.stdout is not None
            async for size in resize:
                self.resizes.append(size)
                await streams.stdout.write(f"{size.height} {size.width}\n".encode())
                return 0
            return 1
        if program == "sleep":
            self.sleeping.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        raise RuntimeError(f"no such command {program!r}")

    async def attach(
        self,
        container_id: str,
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> None:
        self.calls.append(f"attach {container_id}")
        await _copy(streams.stdin, streams.stdout)

    async def port_forward(
        self, pod_sandbox_id: str, port: int, inbound: InputStream, outbound: OutputStream
    ) -> None:
        self.calls.append(f"port-forward {pod_sandbox_id} {port}")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(_upstream(inbound, writer))
                group.create_task(_downstream(reader, outbound))
        finally:
            writer.close()


async def _copy(source: InputStream | None, sink: OutputStream | None) -> None:
    assert source is not None and sink is not None
    while data := await source.read():
        await sink.write(data)


async def _write_pattern(sink: OutputStream, size: int) -> None:
    block = bytes(range(256)) * 256
    for offset in range(0, size, len(block)):
        await sink.write(block[: size - offset])


async def _upstream(inbound: InputStream, writer: asyncio.StreamWriter) -> None:
    while data := await inbound.read():
        writer.write(data)
        await writer.drain()
    writer.write_eof()


async def _downstream(reader: asyncio.StreamReader, outbound: OutputStream) -> None:
    while data := await reader.read(65536):
        await outbound.write(data)
    await outbound.close()


def pattern(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


# ============================================================================ fixtures


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def server(backend: FakeBackend, clock: Clock) -> AsyncIterator[StreamingServer]:
    settings = StreamingSettings(
        token_ttl=60.0, stream_creation_timeout=2.0, keepalive_interval=0.2
    )
    async with StreamingServer(backend, settings, clock=clock) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP echo server on loopback: echoes until EOF, then closes."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with tcp:
        yield tcp.sockets[0].getsockname()[1]


def exec_request(*cmd: str, stdin: bool = False, tty: bool = False) -> ExecRequest:
    return ExecRequest(
        container_id="c1", cmd=cmd, stdin=stdin, stdout=True, stderr=not tty, tty=tty
    )


# ============================================================================ WebSocket client

CLOSE_SIGNAL = 255


@dataclass
class WsOutcome:
    protocol: str | None
    channels: dict[int, bytearray] = field(default_factory=dict)
    first_channel: int | None = None

    def text(self, channel: int) -> str:
        return bytes(self.channels.get(channel, b"")).decode()

    def status(self) -> dict[str, object]:
        document: dict[str, object] = json.loads(bytes(self.channels[3]))
        return document


def _ws_decode(message: aiohttp.WSMessage) -> tuple[int, bytes]:
    if message.type is aiohttp.WSMsgType.TEXT:
        text: str = message.data
        return ord(text[0]) - ord("0"), base64.b64decode(text[1:])
    raw: bytes = message.data
    return raw[0], raw[1:]


def _ws_encode(protocol: str | None, channel: int, data: bytes) -> bytes | str:
    if protocol and protocol.startswith(("base64.", "v4.base64.")):
        return chr(ord("0") + channel) + base64.b64encode(data).decode()
    return bytes((channel,)) + data


async def _ws_send(ws: aiohttp.ClientWebSocketResponse, message: bytes | str) -> None:
    if isinstance(message, str):
        await ws.send_str(message)
    else:
        await ws.send_bytes(message)


async def ws_session(
    http: aiohttp.ClientSession,
    url: str,
    protocols: Sequence[str],
    *,
    send: Sequence[tuple[int, bytes]] = (),
    close_stdin: bool = False,
) -> WsOutcome:
    """Connect, send `(channel, data)` messages (then the v5 close of stdin), read until the
    server closes."""
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(url, protocols=tuple(protocols)) as ws:
            outcome = WsOutcome(ws.protocol)
            for channel, data in send:
                await _ws_send(ws, _ws_encode(ws.protocol, channel, data))
            if close_stdin:
                await ws.send_bytes(bytes((CLOSE_SIGNAL, 0)))
            async for message in ws:
                channel, data = _ws_decode(message)
                if outcome.first_channel is None:
                    outcome.first_channel = channel
                outcome.channels.setdefault(channel, bytearray()).extend(data)
    return outcome


# ============================================================================ SPDY client

# The SPDY/3 header dictionary, from the spec: length-prefixed header words, then raw text.
_SPDY_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset",
    "accept-encoding", "accept-language", "accept-ranges", "age", "allow", "authorization",
    "cache-control", "connection", "content-base", "content-encoding", "content-language",
    "content-length", "content-location", "content-md5", "content-range", "content-type", "date",
    "etag", "expect", "expires", "from", "host", "if-match", "if-modified-since",
    "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer",
    "retry-after", "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary",
    "via", "warning", "www-authenticate", "method", "get", "status", "200 OK", "version",
    "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin",
)  # fmt: skip
_SPDY_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504"
    "505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, "
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
SPDY_DICTIONARY = (
    b"".join(struct.pack(">I", len(w)) + w.encode() for w in _SPDY_WORDS) + _SPDY_TAIL.encode()
)
assert zlib.adler32(SPDY_DICTIONARY) == 0xE3C6A7C2  # the dictionary id the spec's zlib uses

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = (
    1, 2, 3, 4, 6, 7, 8, 9,
)  # fmt: skip
FIN = 0x01
WINDOW = 65536


@dataclass
class ClientStream:
    stream_id: int
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    data: bytearray = field(default_factory=bytearray)
    reset_status: int | None = None
    receive_window: int = WINDOW
    ungranted: int = 0

    async def read_all(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            await self.finished.wait()
        return bytes(self.data)


class SpdyClient:
    """A SPDY/3.1 client over any byte pipe, kept apart from cryopod's implementation.

    `flow_control` announces the initial window in SETTINGS and checks the server never
    sends past the windows it was granted; `auto_grant` gives window back every 32 KiB.
    Without flow control it behaves like moby/spdystream: no SETTINGS, no WINDOW_UPDATE.
    """

    def __init__(
        self,
        read: Callable[[], Awaitable[bytes]],
        write: Callable[[bytes], Awaitable[None]],
        *,
        flow_control: bool,
        auto_grant: bool = True,
    ) -> None:
        self._read = read
        self._write = write
        self.flow_control = flow_control
        self.auto_grant = auto_grant
        self._deflate = zlib.compressobj(zdict=SPDY_DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=SPDY_DICTIONARY)
        self._buffer = bytearray()
        self.streams: dict[int, ClientStream] = {}
        self._next_id = 1
        self.session_window = WINDOW
        self.session_ungranted = 0
        self.violations: list[str] = []
        self.goaway = asyncio.Event()
        self.closed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.flow_control:
            entry = struct.pack(">II", 7, WINDOW)  # flags 0, id 7 = INITIAL_WINDOW_SIZE
            await self._write(self._control(SETTINGS, 0, struct.pack(">I", 1) + entry))
        self._reader = asyncio.create_task(self._read_frames())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    # ---------------------------------------------------------------- sending

    @staticmethod
    def _control(frame_type: int, flags: int, payload: bytes) -> bytes:
        return struct.pack(">HHI", 0x8003, frame_type, flags << 24 | len(payload)) + payload

    def _header_block(self, headers: dict[str, str]) -> bytes:
        block = struct.pack(">I", len(headers))
        for name, value in headers.items():
            block += struct.pack(">I", len(name)) + name.encode()
            block += struct.pack(">I", len(value)) + value.encode()
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    async def open_stream(self, headers: dict[str, str], *, fin: bool = False) -> ClientStream:
        stream = ClientStream(self._next_id)
        self._next_id += 2
        self.streams[stream.stream_id] = stream
        payload = struct.pack(">IIBB", stream.stream_id, 0, 0, 0) + self._header_block(headers)
        await self._write(self._control(SYN_STREAM, FIN if fin else 0, payload))
        return stream

    async def send(self, stream: ClientStream, data: bytes, *, fin: bool = False) -> None:
        flags = FIN if fin else 0
        await self._write(struct.pack(">II", stream.stream_id, flags << 24 | len(data)) + data)

    async def grant(self, stream: ClientStream, delta: int) -> None:
        update = self._control(WINDOW_UPDATE, 0, struct.pack(">II", stream.stream_id, delta))
        session = self._control(WINDOW_UPDATE, 0, struct.pack(">II", 0, delta))
        stream.receive_window += delta
        self.session_window += delta
        await self._write(update + session)

    async def goaway_and_close(self) -> None:
        await self._write(self._control(GOAWAY, 0, struct.pack(">II", 0, 0)))

    # ---------------------------------------------------------------- receiving

    async def _read_frames(self) -> None:
        try:
            while chunk := await self._read():
                self._buffer += chunk
                while len(self._buffer) >= 8:
                    length = int.from_bytes(self._buffer[5:8], "big")
                    if len(self._buffer) < 8 + length:
                        break
                    head, payload = bytes(self._buffer[:8]), bytes(self._buffer[8 : 8 + length])
                    del self._buffer[: 8 + length]
                    await self._on_frame(head, payload)
        finally:
            self.closed.set()
            for stream in self.streams.values():
                stream.finished.set()

    async def _on_frame(self, head: bytes, payload: bytes) -> None:
        if head[0] & 0x80:
            await self._on_control(int.from_bytes(head[2:4], "big"), head[4], payload)
            return
        stream = self.streams[int.from_bytes(head[:4], "big") & 0x7FFFFFFF]
        if not stream.replied.is_set():
            self.violations.append(f"data on stream {stream.stream_id} before SYN_REPLY")
        stream.data += payload
        if self.flow_control:
            await self._account(stream, len(payload))
        if head[4] & FIN:
            stream.finished.set()

    async def _account(self, stream: ClientStream, size: int) -> None:
        stream.receive_window -= size
        self.session_window -= size
        if stream.receive_window < 0 or self.session_window < 0:
            self.violations.append(f"server overran the window on stream {stream.stream_id}")
        stream.ungranted += size
        if self.auto_grant and stream.ungranted >= WINDOW // 2:
            delta, stream.ungranted = stream.ungranted, 0
            await self.grant(stream, delta)

    async def _on_control(self, frame_type: int, flags: int, payload: bytes) -> None:
        if frame_type in (SYN_REPLY, HEADERS):
            self._inflate.decompress(payload[4:])  # keeps the shared zlib stream in step
            stream = self.streams[int.from_bytes(payload[:4], "big") & 0x7FFFFFFF]
            stream.replied.set()
            if flags & FIN:
                stream.finished.set()
        elif frame_type == RST_STREAM:
            stream_id, status = struct.unpack(">II", payload)
            self.streams[stream_id].reset_status = status
            self.streams[stream_id].finished.set()
        elif frame_type == GOAWAY:
            self.goaway.set()
        elif frame_type == PING:
            await self._write(self._control(PING, 0, payload))


@dataclass
class SpdyHandshake:
    status: int
    headers: dict[str, list[str]]
    client: SpdyClient | None
    writer: asyncio.StreamWriter

    def header(self, name: str) -> list[str]:
        return self.headers.get(name.lower(), [])


async def spdy_connect(
    url: str,
    protocols: Sequence[str],
    *,
    flow_control: bool = False,
    auto_grant: bool = True,
    tls: ssl.SSLContext | None = None,
) -> SpdyHandshake:
    """POST with `Upgrade: SPDY/3.1` as client-go does; a started client on 101."""
    target = URL(url)
    assert target.host is not None and target.port is not None
    reader, writer = await asyncio.open_connection(target.host, target.port, ssl=tls)
    lines = [
        f"POST {target.raw_path_qs} HTTP/1.1",
        f"Host: {target.host}:{target.port}",
        "Connection: Upgrade",
        "Upgrade: SPDY/3.1",
        *(f"X-Stream-Protocol-Version: {name}" for name in protocols),
        "Content-Length: 0",
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in filter(None, header_lines):
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    status = int(status_line.split()[1])
    if status != 101:
        writer.close()
        return SpdyHandshake(status, headers, None, writer)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    client = SpdyClient(
        lambda: reader.read(65536), write, flow_control=flow_control, auto_grant=auto_grant
    )
    await client.start()
    return SpdyHandshake(status, headers, client, writer)


@contextlib.asynccontextmanager
async def spdy_session(
    url: str, protocols: Sequence[str], **options: object
) -> AsyncIterator[SpdyClient]:
    handshake = await spdy_connect(url, protocols, **options)  # type: ignore[arg-type]
    assert handshake.status == 101, handshake
    assert handshake.client is not None
    try:
        yield handshake.client
    finally:
        await handshake.client.stop()
        handshake.writer.close()


async def spdy_exec(
    client: SpdyClient, *, stdin: bytes | None = None, stderr: bool = True, resize: bytes = b""
) -> dict[str, bytes]:
    """Open the remotecommand streams as client-go does (error first), feed stdin, read all."""
    streams = {"error": await client.open_stream({"streamtype": "error"})}
    if stdin is not None:
        streams["stdin"] = await client.open_stream({"streamtype": "stdin"})
    streams["stdout"] = await client.open_stream({"streamtype": "stdout"})
    if stderr:
        streams["stderr"] = await client.open_stream({"streamtype": "stderr"})
    if resize:
        streams["resize"] = await client.open_stream({"streamtype": "resize"})
        await client.send(streams["resize"], resize)
    if stdin is not None:
        await client.send(streams["stdin"], stdin, fin=True)
    return {
        kind: await stream.read_all()
        for kind, stream in streams.items()
        if kind in ("error", "stdout", "stderr")
    }


# ============================================================================ tests: tokens


async def test_reused_token_is_refused(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("split", "0"))
    first = await ws_session(http, url, ["v4.channel.k8s.io"])
    assert first.status()["status"] == "Success"
    async with http.get(url) as response:
        assert response.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_session(http, url, ["v4.channel.k8s.io"])
    assert refused.value.status == 404


async def test_expired_token_is_refused(
    server: StreamingServer, http: aiohttp.ClientSession, clock: Clock
) -> None:
    url = server.exec_url(exec_request("split", "0"))
    clock.now += 61
    handshake = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert handshake.status == 404
    async with http.get(server.attach_url(AttachRequest(container_id="c", stdout=True))) as fresh:
        assert fresh.status != 404  # a fresh token still works (400: no upgrade asked)


async def test_token_of_another_kind_is_refused(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("split", "0"))
    async with http.get(url.replace("/exec/", "/attach/")) as response:
        assert response.status == 404


# ============================================================================ tests: WebSocket exec


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io"])
async def test_websocket_exec_keeps_streams_apart_and_reports_exit_code(
    server: StreamingServer, http: aiohttp.ClientSession, protocol: str
) -> None:
    outcome = await ws_session(http, server.exec_url(exec_request("split", "3")), [protocol])

    assert outcome.protocol == protocol
    assert outcome.first_channel == 1  # the empty "ready" message on stdout
    assert outcome.text(1) == "to stdout\n"
    assert outcome.text(2) == "to stderr\n"
    assert outcome.status() == {
        "metadata": {},
        "status": "Failure",
        "message": "command terminated with non-zero exit code: command 'split 3' exited with 3",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
    }


async def test_websocket_exec_success_status(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    outcome = await ws_session(
        http, server.exec_url(exec_request("split", "0")), ["v4.channel.k8s.io"]
    )
    assert bytes(outcome.channels[3]) == b'{"metadata":{},"status":"Success"}'


async def test_websocket_v5_close_signal_ends_stdin(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("cat", stdin=True))
    outcome = await ws_session(
        http, url, ["v5.channel.k8s.io"], send=[(0, b"hello "), (0, b"world")], close_stdin=True
    )
    assert outcome.text(1) == "hello world"
    assert outcome.status()["status"] == "Success"


async def test_websocket_client_prefers_first_protocol_it_names(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("split", "0"))
    protocols = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"]
    outcome = await ws_session(http, url, protocols)
    assert outcome.protocol == "v5.channel.k8s.io"


async def test_websocket_base64_protocol_uses_text_frames(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("split", "0"))
    outcome = await ws_session(http, url, ["v4.base64.channel.k8s.io"])
    assert outcome.text(1) == "to stdout\n"
    assert outcome.status()["status"] == "Success"


async def test_websocket_v1_reports_failure_as_text(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    url = server.exec_url(exec_request("split", "2"))
    outcome = await ws_session(http, url, ["channel.k8s.io"])
    assert outcome.text(2) == "to stderr\n"
    assert outcome.text(3).startswith("command terminated with non-zero exit code")


async def test_websocket_backend_error_is_an_internal_error_status(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    outcome = await ws_session(http, server.exec_url(exec_request("nope")), ["v4.channel.k8s.io"])
    status = outcome.status()
    assert status["status"] == "Failure" and status["reason"] == "InternalError"
    assert "no such command" in str(status["message"])


async def test_websocket_unknown_protocol_is_refused(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_session(http, server.exec_url(exec_request("split", "0")), ["v9.nope"])
    assert refused.value.status == 400


async def test_websocket_resize_reaches_backend(
    server: StreamingServer, http: aiohttp.ClientSession, backend: FakeBackend
) -> None:
    url = server.exec_url(exec_request("stty-size", tty=True))
    outcome = await ws_session(
        http, url, ["v4.channel.k8s.io"], send=[(4, b'{"Width":132,'), (4, b'"Height":43}')]
    )
    assert outcome.text(1) == "43 132\n"
    assert backend.resizes == [TerminalSize(width=132, height=43)]


async def test_websocket_attach(server: StreamingServer, http: aiohttp.ClientSession) -> None:
    url = server.attach_url(AttachRequest(container_id="c1", stdin=True, stdout=True))
    outcome = await ws_session(
        http, url, ["v5.channel.k8s.io"], send=[(0, b"typed")], close_stdin=True
    )
    assert outcome.text(1) == "typed"
    assert outcome.status()["status"] == "Success"


async def test_client_disconnect_cancels_the_backend(
    server: StreamingServer, http: aiohttp.ClientSession, backend: FakeBackend
) -> None:
    url = server.exec_url(exec_request("sleep"))
    async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
        await ws.receive()  # the ready message
    async with asyncio.timeout(TIMEOUT):
        await backend.cancelled.wait()


async def test_disconnect_with_unread_stdin_cancels_the_backend(
    server: StreamingServer, http: aiohttp.ClientSession, backend: FakeBackend
) -> None:
    url = server.exec_url(exec_request("sleep", stdin=True))
    quick_close = aiohttp.ClientWSTimeout(ws_close=0.1)  # the server reads nothing, no answer
    async with http.ws_connect(url, protocols=("v4.channel.k8s.io",), timeout=quick_close) as ws:
        await backend.sleeping.wait()
        for _ in range(64):  # far more than the server buffers; nobody reads it
            await ws.send_bytes(b"\x00" + bytes(16 * 1024))
    async with asyncio.timeout(TIMEOUT):
        await backend.cancelled.wait()


async def test_server_stop_ends_running_sessions(
    backend: FakeBackend, http: aiohttp.ClientSession
) -> None:
    async with StreamingServer(backend) as server, asyncio.timeout(TIMEOUT):
        url = server.exec_url(exec_request("sleep"))
        async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
            assert (await ws.receive()).data == b"\x01"  # ready
            await backend.sleeping.wait()
            stopping = asyncio.create_task(server.stop())
            assert (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            await stopping
    assert backend.cancelled.is_set()


async def test_twenty_concurrent_execs(
    server: StreamingServer, http: aiohttp.ClientSession
) -> None:
    async def one(index: int) -> str:
        url = server.exec_url(exec_request("cat", stdin=True))
        data = f"exec {index}".encode()
        outcome = await ws_session(
            http, url, ["v5.channel.k8s.io"], send=[(0, data)], close_stdin=True
        )
        return outcome.text(1)

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [f"exec {i}" for i in range(20)]


# ============================================================================ tests: SPDY exec


async def test_spdy_exec_v4_keeps_streams_apart_and_reports_exit_code(
    server: StreamingServer,
) -> None:
    url = server.exec_url(exec_request("split", "7"))
    handshake = await spdy_connect(url, ["v4.channel.k8s.io", "v3.channel.k8s.io"])
    assert handshake.status == 101
    assert handshake.header("x-stream-protocol-version") == ["v4.channel.k8s.io"]
    assert handshake.client is not None
    try:
        output = await spdy_exec(handshake.client)
        async with asyncio.timeout(TIMEOUT):
            await handshake.client.goaway.wait()
    finally:
        await handshake.client.stop()
        handshake.writer.close()

    assert output["stdout"] == b"to stdout\n"
    assert output["stderr"] == b"to stderr\n"
    status = json.loads(output["error"])
    assert status["reason"] == "NonZeroExitCode"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "7"}]
    assert handshake.client.violations == []


async def test_spdy_exec_with_stdin(server: StreamingServer) -> None:
    url = server.exec_url(exec_request("cat", stdin=True))
    async with spdy_session(url, ["v4.channel.k8s.io"]) as client:
        output = await spdy_exec(client, stdin=b"piped in")
    assert output["stdout"] == b"piped in"
    assert output["error"] == b'{"metadata":{},"status":"Success"}'


async def test_spdy_exec_v2_reports_failure_as_text(server: StreamingServer) -> None:
    url = server.exec_url(exec_request("split", "1"))
    async with spdy_session(url, ["v2.channel.k8s.io"]) as client:
        output = await spdy_exec(client)
    assert output["error"].startswith(b"command terminated with non-zero exit code")


async def test_spdy_resize_reaches_backend(server: StreamingServer, backend: FakeBackend) -> None:
    url = server.exec_url(exec_request("stty-size", tty=True))
    async with spdy_session(url, ["v5.channel.k8s.io"]) as client:
        output = await spdy_exec(client, stderr=False, resize=b'{"Width":100,"Height":30}\n')
    assert output["stdout"] == b"30 100\n"
    assert backend.resizes == [TerminalSize(width=100, height=30)]


async def test_spdy_client_disconnect_cancels_the_backend(
    server: StreamingServer, backend: FakeBackend
) -> None:
    handshake = await spdy_connect(server.exec_url(exec_request("sleep")), ["v4.channel.k8s.io"])
    assert handshake.client is not None
    for kind in ("error", "stdout", "stderr"):
        await handshake.client.open_stream({"streamtype": kind})
    async with asyncio.timeout(TIMEOUT):
        await backend.sleeping.wait()
        handshake.writer.close()
        await backend.cancelled.wait()
    await handshake.client.stop()


async def test_spdy_disconnect_with_unread_stdin_cancels_the_backend(
    server: StreamingServer, backend: FakeBackend
) -> None:
    url = server.exec_url(exec_request("sleep", stdin=True))
    handshake = await spdy_connect(url, ["v4.channel.k8s.io"])
    assert handshake.client is not None
    streams = {
        kind: await handshake.client.open_stream({"streamtype": kind})
        for kind in ("error", "stdin", "stdout", "stderr")
    }
    async with asyncio.timeout(TIMEOUT):
        await backend.sleeping.wait()
        for _ in range(64):  # far more than the server buffers; nobody reads it
            await handshake.client.send(streams["stdin"], bytes(16 * 1024))
        handshake.writer.close()
        await backend.cancelled.wait()
    await handshake.client.stop()


async def test_spdy_protocol_mismatch_is_forbidden(server: StreamingServer) -> None:
    handshake = await spdy_connect(server.exec_url(exec_request("split", "0")), ["v9.nope"])
    assert handshake.status == 403
    assert "v4.channel.k8s.io" in handshake.header("x-accepted-stream-protocol-versions")


@pytest.mark.parametrize("flow_control", [True, False], ids=["flow-control", "spdystream-like"])
async def test_spdy_one_mebibyte_of_output_does_not_stall(
    server: StreamingServer, flow_control: bool
) -> None:
    size = 1 << 20
    url = server.exec_url(exec_request("big", str(size)))
    async with spdy_session(url, ["v4.channel.k8s.io"], flow_control=flow_control) as client:
        output = await spdy_exec(client)
    assert output["stdout"] == pattern(size)
    assert json.loads(output["error"])["status"] == "Success"
    assert client.violations == []


async def test_spdy_server_waits_for_window_updates(server: StreamingServer) -> None:
    size = 256 * 1024
    url = server.exec_url(exec_request("big", str(size)))
    async with spdy_session(
        url, ["v4.channel.k8s.io"], flow_control=True, auto_grant=False
    ) as client:
        error = await client.open_stream({"streamtype": "error"})
        stdout = await client.open_stream({"streamtype": "stdout"})
        await client.open_stream({"streamtype": "stderr"})
        await asyncio.sleep(0.5)
        assert len(stdout.data) == WINDOW  # exactly the initial window, then it waits
        await client.grant(stdout, size)
        assert await stdout.read_all() == pattern(size)
        assert json.loads(await error.read_all())["status"] == "Success"
    assert client.violations == []


# ============================================================================ tests: port-forward


async def test_port_forward_over_spdy(
    server: StreamingServer, echo_port: int, backend: FakeBackend
) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1"))
    async with spdy_session(url, ["portforward.k8s.io"]) as client:
        headers = {"port": str(echo_port), "requestid": "0"}
        error = await client.open_stream({"streamtype": "error", **headers}, fin=True)
        data = await client.open_stream({"streamtype": "data", **headers})
        await client.send(data, b"ping over spdy")
        await client.send(data, b"", fin=True)
        assert await data.read_all() == b"ping over spdy"
        assert await error.read_all() == b""
        # A second connection on the same session, from a client without request ids.
        error2 = await client.open_stream({"streamtype": "error", "port": str(echo_port)}, fin=True)
        data2 = await client.open_stream({"streamtype": "data", "port": str(echo_port)})
        await client.send(data2, pattern(200_000), fin=True)
        assert await data2.read_all() == pattern(200_000)
        assert await error2.read_all() == b""
    assert backend.calls == [f"port-forward pod1 {echo_port}"] * 2


async def test_port_forward_over_spdy_reports_backend_errors(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1"))
    async with spdy_session(url, ["portforward.k8s.io"]) as client:
        closed_port = {"port": "1", "requestid": "5"}  # nothing listens on port 1
        error = await client.open_stream({"streamtype": "error", **closed_port}, fin=True)
        await client.open_stream({"streamtype": "data", **closed_port})
        message = await error.read_all()
    assert message.startswith(b"error forwarding port 1 to pod pod1")


async def test_port_forward_spdy_stream_without_port_is_refused(server: StreamingServer) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1"))
    async with spdy_session(url, ["portforward.k8s.io"]) as client:
        stream = await client.open_stream({"streamtype": "data"})
        await stream.read_all()
    assert stream.reset_status == 3  # REFUSED_STREAM


async def test_port_forward_over_websocket(
    server: StreamingServer, http: aiohttp.ClientSession, echo_port: int
) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1", ports=(echo_port,)))
    prefix = echo_port.to_bytes(2, "little")
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
            received: dict[int, bytearray] = {0: bytearray(), 1: bytearray()}
            await ws.send_bytes(b"\x00" + b"ping over websocket")
            async for message in ws:
                channel, data = _ws_decode(message)
                received[channel] += data
                if len(received[0]) == len(prefix) + len(b"ping over websocket"):
                    break
    assert bytes(received[0]) == prefix + b"ping over websocket"
    assert bytes(received[1]) == prefix


async def test_port_forward_over_websocket_takes_ports_from_the_query(
    server: StreamingServer, http: aiohttp.ClientSession, echo_port: int
) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1"))
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(
            f"{url}?port={echo_port}", protocols=("v4.base64.channel.k8s.io",)
        ) as ws:
            first = await ws.receive()
            assert first.type is aiohttp.WSMsgType.TEXT
            assert _ws_decode(first) == (0, echo_port.to_bytes(2, "little"))


async def test_port_forward_over_spdy_tunnelled_in_websocket(
    server: StreamingServer, http: aiohttp.ClientSession, echo_port: int
) -> None:
    url = server.port_forward_url(PortForwardRequest(pod_sandbox_id="pod1"))
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(url, protocols=("SPDY/3.1+portforward.k8s.io",)) as ws:
            assert ws.protocol == "SPDY/3.1+portforward.k8s.io"

            async def read() -> bytes:
                message = await ws.receive()
                return message.data if message.type is aiohttp.WSMsgType.BINARY else b""

            client = SpdyClient(read, ws.send_bytes, flow_control=False)
            await client.start()
            headers = {"port": str(echo_port), "requestid": "1"}
            error = await client.open_stream({"streamtype": "error", **headers}, fin=True)
            data = await client.open_stream({"streamtype": "data", **headers})
            await client.send(data, b"ping through the tunnel", fin=True)
            assert await data.read_all() == b"ping through the tunnel"
            assert await error.read_all() == b""
            await client.stop()


# ============================================================================ tests: TLS


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_serves_websocket_and_spdy(
    backend: FakeBackend, certificate: tuple[Path, Path], http: aiohttp.ClientSession
) -> None:
    cert, key = certificate
    settings = StreamingSettings(tls_cert_file=str(cert), tls_key_file=str(key))
    trust = ssl.create_default_context(cafile=str(cert))
    async with StreamingServer(backend, settings) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        url = server.exec_url(exec_request("split", "0"))
        async with http.ws_connect(url, protocols=("v4.channel.k8s.io",), ssl=trust) as ws:
            messages = [_ws_decode(message) async for message in ws]
        assert (1, b"to stdout\n") in messages
        url = server.exec_url(exec_request("split", "0"))
        async with spdy_session(url, ["v4.channel.k8s.io"], tls=trust) as client:
            output = await spdy_exec(client)
        assert output["stdout"] == b"to stdout\n"
