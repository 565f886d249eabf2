"""Exec, attach and port-forward over WebSocket channel protocols (see `channels`), and the
SPDY-in-WebSocket tunnel `SPDY/3.1+portforward.k8s.io` that `crictl port-forward
--transport websocket` and newer kubectl speak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

from aiohttp import WSMsgType, hdrs, web

from cryopod.errors import StreamClosed
from cryopod.streaming.backend import ExecStreams, OutputStream, StreamingBackend
from cryopod.streaming.buffers import InboundBuffer
from cryopod.streaming.channels import (
    DEFAULT_PROTOCOL,
    ERROR_CHANNEL,
    PORTFORWARD_PROTOCOLS,
    REMOTECOMMAND_PROTOCOLS,
    RESIZE_CHANNEL,
    STDERR_CHANNEL,
    STDIN_CHANNEL,
    STDOUT_CHANNEL,
    ChannelClose,
    ChannelData,
    ChannelProtocol,
    decode_message,
    encode_message,
)
from cryopod.streaming.httpstream import run_port_forward
from cryopod.streaming.model import PortForwardRequest
from cryopod.streaming.remotecommand import CommandRequest, run_command
from cryopod.streaming.sessions import background, run_while_connected
from cryopod.streaming.settings import StreamingSettings
from cryopod.streaming.status import Status
from cryopod.streaming.terminal import ResizeDecoder, ResizeEvents
from cryopod.streaming.upgrade import WebSocketTunnel

log = logging.getLogger(__name__)

SPDY_TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
MAX_MESSAGE_PAYLOAD = 32 * 1024
CLOSE_TIMEOUT = 2.0
"""Seconds to wait for the client to answer our close frame."""


def is_websocket_request(request: web.BaseRequest) -> bool:
    """An `Upgrade: websocket` request with `upgrade` among its Connection tokens."""
    upgrade = request.headers.get(hdrs.UPGRADE, "").strip().lower()
    tokens = {
        token.strip().lower() for token in request.headers.get(hdrs.CONNECTION, "").split(",")
    }
    return upgrade == "websocket" and "upgrade" in tokens


def requested_protocols(request: web.BaseRequest) -> list[str]:
    """The client's subprotocols in its order of preference."""
    names = ",".join(request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, []))
    return [name.strip() for name in names.split(",") if name.strip()]


def choose_protocol(
    requested: list[str], supported: Mapping[str, ChannelProtocol]
) -> ChannelProtocol | None:
    """The first requested protocol we support; binary `channel.k8s.io` if none was named."""
    if not requested:
        return DEFAULT_PROTOCOL
    return next((supported[name] for name in requested if name in supported), None)


async def open_websocket(request: web.BaseRequest, protocol: str | None) -> web.WebSocketResponse:
    """Complete the handshake, answering with `protocol` (None: the client named none)."""
    ws = web.WebSocketResponse(
        protocols=(protocol,) if protocol else (), autoping=True, timeout=CLOSE_TIMEOUT
    )
    await ws.prepare(request)
    return ws


def refuse(requested: list[str], supported: Iterable[str]) -> web.HTTPException:
    """The answer to a client that names only protocols we do not speak."""
    return web.HTTPBadRequest(
        text=f"requested protocol(s) are not supported: {requested}; supports {list(supported)}"
    )


class ChannelConnection:
    """A WebSocket speaking one channel protocol; sends are serialized and chunked."""

    def __init__(self, ws: web.WebSocketResponse, protocol: ChannelProtocol) -> None:
        self.ws = ws
        self.protocol = protocol
        self._send_lock = asyncio.Lock()
        self.disconnected = asyncio.Event()

    async def send(self, channel: int, data: bytes) -> None:
        """Send `data` on `channel` (an empty message if `data` is empty)."""
        async with self._send_lock:
            for start in range(0, max(len(data), 1), MAX_MESSAGE_PAYLOAD):
                chunk = data[start : start + MAX_MESSAGE_PAYLOAD]
                await self._send_one(encode_message(self.protocol, channel, chunk))

    async def _send_one(self, message: bytes | str) -> None:
        if self.ws.closed:
            raise StreamClosed("the WebSocket")
        try:
            if isinstance(message, str):
                await self.ws.send_str(message)
            else:
                await self.ws.send_bytes(message)
        except ConnectionError as exc:
            raise StreamClosed("the WebSocket") from exc

    async def receive(self) -> ChannelData | ChannelClose | None:
        """The next decodable message; None once the client closed the WebSocket."""
        while True:
            message = await self.ws.receive()
            if message.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                decoded = decode_message(self.protocol, message.data)
                if decoded is not None:
                    return decoded
            elif message.type not in (WSMsgType.PING, WSMsgType.PONG):
                self.disconnected.set()
                return None

    def writer(self, channel: int) -> ChannelWriter:
        return ChannelWriter(self, channel)

    async def keepalive(self, interval: float) -> None:
        """Ping now and then: writing is how a vanished client shows, even while reading from
        it is paused. Pongs are not awaited (aiohttp's heartbeat would count a paused reader's
        missing pong as a dead client)."""
        while not self.ws.closed:
            await asyncio.sleep(interval)
            try:
                await self.ws.ping()
            except (ConnectionError, RuntimeError):
                return


class ChannelWriter:
    """An `OutputStream` on one channel. WebSocket channels cannot half-close, so `close`
    does nothing; the client sees the end when the connection closes."""

    def __init__(self, connection: ChannelConnection, channel: int) -> None:
        self._connection = connection
        self._channel = channel

    async def write(self, data: bytes) -> None:
        if data:
            await self._connection.send(self._channel, data)

    async def close(self) -> None:
        return None


# ----------------------------------------------------------------------------- exec / attach


async def serve_command(
    request: web.BaseRequest,
    backend: StreamingBackend,
    command: CommandRequest,
    settings: StreamingSettings,
) -> web.StreamResponse:
    """Serve an exec or attach over a WebSocket channel protocol."""
    requested = requested_protocols(request)
    protocol = choose_protocol(requested, REMOTECOMMAND_PROTOCOLS)
    if protocol is None:
        raise refuse(requested, REMOTECOMMAND_PROTOCOLS)
    ws = await open_websocket(request, protocol.name if requested else None)
    session = _CommandSession(ChannelConnection(ws, protocol), command)
    try:
        await session.run(backend, settings.keepalive_interval)
    finally:
        await ws.close()
    return ws


def _ready_channel(command: CommandRequest) -> int:
    if command.stdout:
        return STDOUT_CHANNEL
    return STDERR_CHANNEL if command.stderr else ERROR_CHANNEL


class _CommandSession:
    """The channels of one exec or attach."""

    def __init__(self, connection: ChannelConnection, command: CommandRequest) -> None:
        self._connection = connection
        self._command = command
        self._stdin = InboundBuffer() if command.stdin else None
        self._resize = ResizeEvents()
        self._resize_decoder = ResizeDecoder()
        self._streams = ExecStreams(
            stdin=self._stdin,
            stdout=connection.writer(STDOUT_CHANNEL) if command.stdout else None,
            stderr=connection.writer(STDERR_CHANNEL) if command.stderr else None,
        )

    async def run(self, backend: StreamingBackend, keepalive: float) -> None:
        # An empty message on the lowest channel the client reads tells it we are ready.
        await self._connection.send(_ready_channel(self._command), b"")
        async with background(self._read(), self._connection.keepalive(keepalive)):
            status = await run_while_connected(
                run_command(backend, self._command, self._streams, self._resize),
                self._connection.disconnected.wait(),
            )
        if status is not None:
            await self._write_status(status)

    async def _write_status(self, status: Status) -> None:
        protocol = self._connection.protocol
        payload = status.to_json() if protocol.json_status else status.to_text()
        if payload:
            with contextlib.suppress(StreamClosed):
                await self._connection.send(ERROR_CHANNEL, payload)

    async def _read(self) -> None:
        try:
            while (message := await self._connection.receive()) is not None:
                await self._dispatch(message)
        finally:
            if self._stdin is not None:
                self._stdin.feed_eof()
            self._resize.close()

    async def _dispatch(self, message: ChannelData | ChannelClose) -> None:
        if isinstance(message, ChannelClose):
            if message.channel == STDIN_CHANNEL and self._stdin is not None:
                self._stdin.feed_eof()
            return
        if message.channel == STDIN_CHANNEL and self._stdin is not None:
            await self._stdin.feed(message.data)
        elif message.channel == RESIZE_CHANNEL:
            for size in self._resize_decoder.feed(message.data):
                self._resize.push(size)


# ----------------------------------------------------------------------------- port-forward


def ports_from_query(request: web.BaseRequest) -> tuple[int, ...]:
    """The `port` query parameters (repeated or comma-separated); raises HTTPBadRequest."""
    ports = []
    for value in request.query.getall("port", []):
        for item in value.split(","):
            if not item.isdigit() or not 1 <= int(item) <= 65535:
                raise web.HTTPBadRequest(text=f"unable to parse {value!r} as a port")
            ports.append(int(item))
    return tuple(ports)


def choose_port_forward_protocol(requested: list[str]) -> str | None:
    """The first requested port-forward protocol we speak ("" if the client named none):
    a channel protocol, or `SPDY_TUNNEL_PROTOCOL`."""
    if not requested:
        return ""
    supported = (*PORTFORWARD_PROTOCOLS, SPDY_TUNNEL_PROTOCOL)
    return next((name for name in requested if name in supported), None)


async def serve_port_forward(
    request: web.BaseRequest,
    backend: StreamingBackend,
    forward: PortForwardRequest,
    protocol_name: str,
    settings: StreamingSettings,
) -> web.StreamResponse:
    """Serve a port-forward over the channel protocol `protocol_name` ("": none named)."""
    ports = forward.ports or ports_from_query(request)
    if not ports:
        raise web.HTTPBadRequest(text='query parameter "port" is required')
    protocol = PORTFORWARD_PROTOCOLS.get(protocol_name, DEFAULT_PROTOCOL)
    ws = await open_websocket(request, protocol_name or None)
    try:
        session = _PortForwardSession(ChannelConnection(ws, protocol), forward, ports)
        await session.run(backend, settings.keepalive_interval)
    finally:
        await ws.close()
    return ws


async def serve_port_forward_tunnel(
    request: web.BaseRequest,
    backend: StreamingBackend,
    forward: PortForwardRequest,
    settings: StreamingSettings,
) -> web.StreamResponse:
    """Serve a SPDY port-forward session tunnelled in a WebSocket's binary messages."""
    ws = await open_websocket(request, SPDY_TUNNEL_PROTOCOL)
    try:
        await run_port_forward(WebSocketTunnel(ws), backend, forward, settings)
    finally:
        await ws.close()
    return ws


class _PortForwardSession:
    """Channel 2n carries the data and 2n+1 the errors of the n-th port; each starts with the
    port as two little-endian bytes."""

    def __init__(
        self, connection: ChannelConnection, forward: PortForwardRequest, ports: tuple[int, ...]
    ) -> None:
        self._connection = connection
        self._forward = forward
        self._ports = ports
        self._inbound = [InboundBuffer() for _ in ports]

    async def run(self, backend: StreamingBackend, keepalive: float) -> None:
        for index, port in enumerate(self._ports):
            prefix = port.to_bytes(2, "little")
            await self._connection.send(2 * index, prefix)
            await self._connection.send(2 * index + 1, prefix)
        async with background(self._read(), self._connection.keepalive(keepalive)):
            await run_while_connected(
                self._forward_all(backend), self._connection.disconnected.wait()
            )

    async def _forward_all(self, backend: StreamingBackend) -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(len(self._ports)):
                group.create_task(self._forward_one(backend, index))

    async def _forward_one(self, backend: StreamingBackend, index: int) -> None:
        port = self._ports[index]
        data: OutputStream = self._connection.writer(2 * index)
        try:
            await backend.port_forward(
                self._forward.pod_sandbox_id, port, self._inbound[index], data
            )
        except StreamClosed:
            return
        except Exception as exc:  # the boundary where any backend failure must reach the client
            log.warning("Port-forward to %s:%d failed: %s", self._forward.pod_sandbox_id, port, exc)
            message = (
                f"error forwarding port {port} to pod {self._forward.pod_sandbox_id}, uid : {exc}"
            )
            with contextlib.suppress(StreamClosed):
                await self._connection.send(2 * index + 1, message.encode())

    async def _read(self) -> None:
        try:
            while (message := await self._connection.receive()) is not None:
                if isinstance(message, ChannelData) and message.channel % 2 == 0:
                    index = message.channel // 2
                    if index < len(self._inbound):
                        await self._inbound[index].feed(message.data)
        finally:
            for buffer in self._inbound:
                buffer.feed_eof()
