"""Exec, attach and port-forward over SPDY/3.1 (the kubelet's "httpstream" protocols).

Handshake: the client names its protocols in `X-Stream-Protocol-Version` headers (required),
in order of preference; the first the server speaks is echoed back in the 101 answer (none in
common: 403 listing ours in `X-Accepted-Stream-Protocol-Versions`). The request must carry
`Connection: Upgrade` and `Upgrade: SPDY/3.1`.

Remotecommand (`v5.channel.k8s.io` ... `channel.k8s.io`): the client opens one stream per
channel, named by its `streamType` header (error, stdin, stdout, stderr and, for a TTY from v3
on, resize). v4 and v5 (identical over SPDY) put a JSON Status on the error stream.

Port-forward (`portforward.k8s.io`): per forwarded connection the client opens an error and a
data stream, both with `port` and `requestID` headers; the pair completes within the stream
creation timeout or the error stream says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web

from cryopod.errors import StreamClosed
from cryopod.streaming.backend import ExecStreams, StreamingBackend
from cryopod.streaming.model import PortForwardRequest
from cryopod.streaming.remotecommand import CommandRequest, run_command
from cryopod.streaming.sessions import (
    background,
    close_quietly,
    run_while_connected,
    write_quietly,
)
from cryopod.streaming.settings import StreamingSettings
from cryopod.streaming.spdy.frames import Headers, header_value
from cryopod.streaming.spdy.session import ByteTransport, SpdySession, SpdyStream
from cryopod.streaming.status import Status
from cryopod.streaming.terminal import ResizeDecoder, ResizeEvents
from cryopod.streaming.upgrade import UpgradedConnection

log = logging.getLogger(__name__)

PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_PROTOCOLS_HEADER = "X-Accepted-Stream-Protocol-Versions"
SPDY_UPGRADE = "SPDY/3.1"

V1_PROTOCOL = "channel.k8s.io"
REMOTECOMMAND_PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    V1_PROTOCOL,
)
_JSON_STATUS_PROTOCOLS = frozenset(REMOTECOMMAND_PROTOCOLS[:2])
_RESIZE_PROTOCOLS = frozenset(REMOTECOMMAND_PROTOCOLS[:3])
PORTFORWARD_PROTOCOLS = ("portforward.k8s.io",)

STREAM_ERROR = "error"
STREAM_STDIN = "stdin"
STREAM_STDOUT = "stdout"
STREAM_STDERR = "stderr"
STREAM_RESIZE = "resize"
STREAM_DATA = "data"


def negotiate(request: web.BaseRequest, supported: tuple[str, ...]) -> str:
    """The protocol to speak; raises the HTTP error the kubelet answers with."""
    offered = [
        name.strip()
        for line in request.headers.getall(PROTOCOL_HEADER, [])
        for name in line.split(",")
        if name.strip()
    ]
    if not offered:
        raise web.HTTPBadRequest(text=f"unable to upgrade: {PROTOCOL_HEADER} is required")
    chosen = next((name for name in offered if name in supported), None)
    if chosen is None:
        raise web.HTTPForbidden(
            headers=[(ACCEPTED_PROTOCOLS_HEADER, name) for name in supported],
            text=(
                "unable to upgrade: unable to negotiate protocol: "
                f"client supports {offered}, server accepts {list(supported)}"
            ),
        )
    return chosen


def check_upgrade(request: web.BaseRequest) -> None:
    connection = request.headers.get(hdrs.CONNECTION, "").lower()
    upgrade = request.headers.get(hdrs.UPGRADE, "").lower()
    if "upgrade" not in connection or SPDY_UPGRADE.lower() not in upgrade:
        raise web.HTTPBadRequest(
            text="unable to upgrade: missing upgrade headers in request (need Connection: "
            f"Upgrade and Upgrade: {SPDY_UPGRADE})"
        )


async def upgrade(
    request: web.BaseRequest, supported: tuple[str, ...]
) -> tuple[web.StreamResponse, str, UpgradedConnection]:
    """Negotiate, check the upgrade headers and switch the connection to SPDY."""
    protocol = negotiate(request, supported)
    check_upgrade(request)
    headers = {
        hdrs.CONNECTION: hdrs.UPGRADE,
        hdrs.UPGRADE: SPDY_UPGRADE,
        PROTOCOL_HEADER: protocol,
    }
    response, connection = await UpgradedConnection.accept(request, headers)
    return response, protocol, connection


# ----------------------------------------------------------------------------- exec / attach


async def serve_command(
    request: web.BaseRequest,
    backend: StreamingBackend,
    command: CommandRequest,
    settings: StreamingSettings,
) -> web.StreamResponse:
    """Serve an exec or attach over SPDY."""
    response, protocol, connection = await upgrade(request, REMOTECOMMAND_PROTOCOLS)
    async with SpdySession(connection, ping_interval=settings.keepalive_interval) as session:
        streams = await _collect_streams(
            session, command, protocol, settings.stream_creation_timeout
        )
        if streams is not None:
            await _CommandStreams(streams, protocol).run(backend, command, session)
    return response


def _expected_streams(command: CommandRequest, protocol: str) -> set[str]:
    wanted = {
        STREAM_ERROR: True,
        STREAM_STDIN: command.stdin,
        STREAM_STDOUT: command.stdout,
        STREAM_STDERR: command.stderr,
        STREAM_RESIZE: command.tty and protocol in _RESIZE_PROTOCOLS,
    }
    return {name for name, needed in wanted.items() if needed}


async def _collect_streams(
    session: SpdySession, command: CommandRequest, protocol: str, timeout: float
) -> dict[str, SpdyStream] | None:
    """Wait for the streams the request calls for; None if the client does not open them."""
    expected = _expected_streams(command, protocol)
    streams: dict[str, SpdyStream] = {}
    try:
        async with asyncio.timeout(timeout):
            while not expected <= streams.keys():
                stream = await session.accept()
                if stream is None:
                    return None
                kind = stream.header("streamtype")
                if kind in expected:
                    streams[kind] = stream
                else:
                    log.info("Ignoring SPDY stream of unexpected type %r", kind)
    except TimeoutError:
        log.warning(
            "Client did not create streams %s in %gs", sorted(expected - streams.keys()), timeout
        )
        return None
    return streams


class _CommandStreams:
    """The SPDY streams of one exec or attach."""

    def __init__(self, streams: dict[str, SpdyStream], protocol: str) -> None:
        self._streams = streams
        self._protocol = protocol
        self._resize = ResizeEvents()

    async def run(
        self, backend: StreamingBackend, command: CommandRequest, session: SpdySession
    ) -> None:
        stdin, stdout, stderr = (
            self._streams.get(k) for k in (STREAM_STDIN, STREAM_STDOUT, STREAM_STDERR)
        )
        if stdin is not None and self._protocol == V1_PROTOCOL:
            await close_quietly(stdin)  # v1 servers close their half of stdin at once
        async with background(self._read_resizes()):
            status = await run_while_connected(
                run_command(backend, command, ExecStreams(stdin, stdout, stderr), self._resize),
                session.wait_closed(),
            )
        if status is not None:
            await self._finish(status)

    async def _finish(self, status: Status) -> None:
        """End the output streams, then put the status on the error stream and end it."""
        await close_quietly(self._streams.get(STREAM_STDOUT), self._streams.get(STREAM_STDERR))
        error = self._streams[STREAM_ERROR]
        json_status = self._protocol in _JSON_STATUS_PROTOCOLS
        await write_quietly(error, status.to_json() if json_status else status.to_text())
        await close_quietly(error)

    async def _read_resizes(self) -> None:
        stream = self._streams.get(STREAM_RESIZE)
        decoder = ResizeDecoder()
        try:
            while stream is not None and (data := await stream.read()):
                for size in decoder.feed(data):
                    self._resize.push(size)
        finally:
            self._resize.close()


# ----------------------------------------------------------------------------- port-forward


async def serve_port_forward(
    request: web.BaseRequest,
    backend: StreamingBackend,
    forward: PortForwardRequest,
    settings: StreamingSettings,
) -> web.StreamResponse:
    """Serve a port-forward over SPDY."""
    response, _protocol, connection = await upgrade(request, PORTFORWARD_PROTOCOLS)
    await run_port_forward(connection, backend, forward, settings)
    return response


async def run_port_forward(
    transport: ByteTransport,
    backend: StreamingBackend,
    forward: PortForwardRequest,
    settings: StreamingSettings,
) -> None:
    """Serve port-forward stream pairs on a SPDY connection until the client closes it."""
    session = SpdySession(
        transport, admit=admit_port_forward_stream, ping_interval=settings.keepalive_interval
    )
    async with session:
        timeout = settings.stream_creation_timeout
        await _PortForwardStreams(session, backend, forward, timeout).serve()


def admit_port_forward_stream(headers: Headers) -> str | None:
    """Why a port-forward stream is refused, or None: it needs a port and a known type."""
    port = header_value(headers, "port")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"invalid port header {port!r}"
    kind = header_value(headers, "streamtype")
    if kind not in (STREAM_ERROR, STREAM_DATA):
        return f"invalid stream type {kind!r}"
    return None


@dataclass
class _StreamPair:
    request_id: str
    data: SpdyStream | None = None
    error: SpdyStream | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, stream: SpdyStream) -> str | None:
        """Take `stream`; the error message if the pair has one of its type already."""
        kind = stream.header("streamtype")
        if getattr(self, kind) is not None:
            return f"{kind} stream already assigned"
        setattr(self, kind, stream)
        if self.data is not None and self.error is not None:
            self.complete.set()
        return None


class _PortForwardStreams:
    """Pairs data and error streams by request id and runs one forward per pair."""

    def __init__(
        self,
        session: SpdySession,
        backend: StreamingBackend,
        forward: PortForwardRequest,
        creation_timeout: float,
    ) -> None:
        self._session = session
        self._backend = backend
        self._forward = forward
        self._creation_timeout = creation_timeout
        self._pairs: dict[str, _StreamPair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as group:
            while (stream := await self._session.accept()) is not None:
                self._add(stream, group)
            # The client sent GOAWAY: running forwards go on until it closes the connection.
            await self._session.wait_closed()
            for task in self._tasks:
                task.cancel()

    def _add(self, stream: SpdyStream, group: asyncio.TaskGroup) -> None:
        request_id = _request_id(stream)
        pair = self._pairs.get(request_id)
        if pair is None:
            pair = self._pairs[request_id] = _StreamPair(request_id)
            self._spawn(group, self._watch(pair))
        problem = pair.add(stream)
        if problem is not None:
            message = f"error processing stream for request {request_id}: {problem}"
            self._spawn(group, write_quietly(pair.error, message.encode()))
        elif pair.complete.is_set():
            self._spawn(group, self._run_forward(pair))

    def _spawn(self, group: asyncio.TaskGroup, work: Coroutine[Any, Any, None]) -> None:
        task = group.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, pair: _StreamPair) -> None:
        """Drop a pair whose second stream does not come in time, telling the client."""
        try:
            async with asyncio.timeout(self._creation_timeout):
                await pair.complete.wait()
        except TimeoutError:
            message = f"(request={pair.request_id}) timed out waiting for streams"
            await write_quietly(pair.error, message.encode())
            await close_quietly(pair.error, pair.data)
        finally:
            if self._pairs.get(pair.request_id) is pair and not pair.complete.is_set():
                del self._pairs[pair.request_id]

    async def _run_forward(self, pair: _StreamPair) -> None:
        self._pairs.pop(pair.request_id, None)
        data, error = pair.data, pair.error
        assert data is not None and error is not None
        port = int(data.header("port"))
        try:
            await self._backend.port_forward(self._forward.pod_sandbox_id, port, data, data)
        except StreamClosed:
            pass
        except Exception as exc:  # the boundary where any backend failure must reach the client
            log.warning("Port-forward to %s:%d failed: %s", self._forward.pod_sandbox_id, port, exc)
            message = (
                f"error forwarding port {port} to pod {self._forward.pod_sandbox_id}, uid : {exc}"
            )
            await write_quietly(error, message.encode())
        finally:
            await close_quietly(data, error)


def _request_id(stream: SpdyStream) -> str:
    """The pair a stream belongs to; clients without `requestID` open data right after error."""
    request_id = stream.header("requestid")
    if request_id:
        return request_id
    offset = 2 if stream.header("streamtype") == STREAM_DATA else 0
    return str(stream.stream_id - offset)
