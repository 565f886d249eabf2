"""The streaming server's backend: exec, attach and port-forward against real containers.

`exec` runs `runc exec` (see `oci/exec.py`) and relays its pipes or its pty. `attach` talks
to the container's conmon over its attach socket: conmon sends each chunk of output as one
SOCK_SEQPACKET message whose first byte says which stream it is (2 stdout, 3 stderr), and
takes raw stdin; a shutdown of our write side closes the container's stdin when it was
created with stdin_once. `port_forward` connects to 127.0.0.1:<port> from inside the pod's
network namespace: the socket is made on a thread that has entered the netns, and a socket
stays in the namespace it was made in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from cryopod.containers.oci.exec import DRAIN_SECONDS, ExecProcess
from cryopod.containers.service import ContainerService
from cryopod.errors import FailedPrecondition, Unavailable
from cryopod.mounts import check_libc, libc
from cryopod.pods.model import NamespaceKind
from cryopod.pods.service import PodService
from cryopod.streaming.backend import ExecStreams, InputStream, OutputStream, TerminalSize
from cryopod.threads import run_in_own_thread

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# conmon's attach socket: one message per chunk, the first byte naming the pipe.
_ATTACH_PACKET = 8192 + 1
_ATTACH_STDOUT = 2
_ATTACH_STDERR = 3
_CLONE_NEWNET = 0x40000000
# Clients send the terminal's size as soon as the session is up: start the process with it.
_INITIAL_SIZE_WAIT = 0.25
# After the pod side of a forwarded connection closed, how long the client may still send.
_UPSTREAM_GRACE_SECONDS = 1.0


class ContainerStreams:
    """`StreamingBackend` over the container and pod services."""

    def __init__(self, containers: ContainerService, pods: PodService) -> None:
        self._containers = containers
        self._pods = pods

    # ---- exec

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> int:
        sizes = _SizeFeed(resize)
        try:
            initial = await sizes.first(_INITIAL_SIZE_WAIT) if tty else None
            process = await self._containers.start_exec(
                container_id,
                cmd,
                tty=tty,
                stdin=streams.stdin is not None,
                size=(initial.width, initial.height) if initial else None,
            )
            try:
                if process.pty is not None:
                    return await _relay_terminal(process, streams, sizes.rest())
                return await _relay_pipes(process, streams)
            finally:
                await process.close()
        finally:
            sizes.close()

    # ---- attach

    async def attach(
        self,
        container_id: str,
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> None:
        container, socket_path = self._containers.attach_target(container_id)
        if streams.stdin is not None and not container.config.stdin:
            raise FailedPrecondition(f"container {container.id} was not created with stdin")
        conn = _connect_seqpacket(socket_path)
        loop = asyncio.get_running_loop()
        side_tasks = []
        try:
            if streams.stdin is not None:
                side_tasks.append(asyncio.create_task(_attach_stdin(loop, conn, streams.stdin)))
            if tty:
                side_tasks.append(
                    asyncio.create_task(
                        _apply_resizes(
                            resize,
                            lambda size: self._containers.resize_terminal(
                                container.id, size.width, size.height
                            ),
                        )
                    )
                )
            await _attach_output(loop, conn, streams)
        finally:
            for task in side_tasks:
                task.cancel()
            await asyncio.gather(*side_tasks, return_exceptions=True)
            conn.close()
            await _close_outputs(streams)

    # ---- port-forward

    async def port_forward(
        self, pod_sandbox_id: str, port: int, inbound: InputStream, outbound: OutputStream
    ) -> None:
        sandbox = self._pods.get(pod_sandbox_id)
        netns = sandbox.namespace_paths.get(NamespaceKind.NETWORK)
        made: list[socket.socket] = []

        def connect() -> socket.socket:
            made.append(_connect_in_netns(netns, port))
            return made[0]

        def abandon(_succeeded: bool) -> None:  # the client left while we connected
            for conn in made:
                conn.close()

        conn = await run_in_own_thread(connect, name=f"portforward-{port}", abandon=abandon)
        reader, writer = await asyncio.open_connection(sock=conn)
        upstream = asyncio.create_task(_pump_to_writer(inbound, writer))
        try:
            while data := await reader.read(_CHUNK):
                await outbound.write(data)
            await outbound.close()
            # The pod closed: give the client a moment to finish sending (as containerd does),
            # but do not wait for it to close first: a WebSocket client cannot half-close and
            # learns of the end only when the session ends.
            await asyncio.wait({upstream}, timeout=_UPSTREAM_GRACE_SECONDS)
        finally:
            upstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await upstream
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


# ---- exec relays


class _SizeFeed:
    """The client's terminal sizes: the first one (if it comes soon) for the process to
    start with, then the rest as they come."""

    def __init__(self, sizes: AsyncIterator[TerminalSize]) -> None:
        self._sizes = sizes
        self._pending: asyncio.Future[TerminalSize | None] | None = None

    async def first(self, wait: float) -> TerminalSize | None:
        # Not cancelled on timeout (that would end the client's size stream): kept for rest().
        self._pending = asyncio.ensure_future(anext(self._sizes, None))
        done, _ = await asyncio.wait({self._pending}, timeout=wait)
        if not done:
            return None
        size, self._pending = self._pending.result(), None
        return size

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()

    async def rest(self) -> AsyncIterator[TerminalSize]:
        if self._pending is not None:
            size = await self._pending
            if size is None:
                return
            yield size
        async for size in self._sizes:
            yield size


async def _relay_pipes(process: ExecProcess, streams: ExecStreams) -> int:
    outputs = [
        asyncio.create_task(_pump_reader(process.stdout, streams.stdout)),
        asyncio.create_task(_pump_reader(process.stderr, streams.stderr)),
    ]
    feeder = None
    if streams.stdin is not None and process.stdin is not None:
        feeder = asyncio.create_task(_pump_to_writer(streams.stdin, process.stdin))
    try:
        exit_code = await process.wait()
        await _drain(outputs)
        return exit_code
    finally:
        for task in [*outputs, *([feeder] if feeder else [])]:
            task.cancel()
        await asyncio.gather(*outputs, *([feeder] if feeder else []), return_exceptions=True)
        await _close_outputs(streams)


async def _relay_terminal(
    process: ExecProcess, streams: ExecStreams, resize: AsyncIterator[TerminalSize]
) -> int:
    async def output() -> None:
        while data := await process.read_pty():
            if streams.stdout is not None:
                await streams.stdout.write(data)

    async def feed() -> None:
        assert streams.stdin is not None
        while data := await streams.stdin.read():
            await process.write_pty(data)

    side = [
        asyncio.create_task(
            _apply_resizes(resize, lambda size: process.resize(size.width, size.height))
        )
    ]
    if streams.stdin is not None:
        side.append(asyncio.create_task(feed()))
    reading = asyncio.create_task(output())
    try:
        exit_code = await process.wait()
        await _drain([reading])
        return exit_code
    finally:
        for task in [reading, *side]:
            task.cancel()
        await asyncio.gather(reading, *side, return_exceptions=True)
        await _close_outputs(streams)


async def _drain(tasks: list[asyncio.Task[None]]) -> None:
    """Let output pumps finish what the process left in its pipes, within a short bound."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await asyncio.gather(*tasks, return_exceptions=True)


async def _pump_reader(source: asyncio.StreamReader | None, sink: OutputStream | None) -> None:
    if source is None:
        return
    while data := await source.read(_CHUNK):
        if sink is not None:
            await sink.write(data)


async def _pump_to_writer(source: InputStream, sink: asyncio.StreamWriter) -> None:
    """Copy the client's bytes; their end closes our write side (EOF for the reader)."""
    while data := await source.read():
        sink.write(data)
        await sink.drain()
    if sink.can_write_eof():
        sink.write_eof()
    else:
        sink.close()


async def _apply_resizes(
    sizes: AsyncIterator[TerminalSize], apply: Callable[[TerminalSize], None]
) -> None:
    async for size in sizes:
        try:
            apply(size)
        except Exception as exc:  # a late resize of a finished process is not an error
            log.debug("terminal resize to %dx%d failed: %s", size.width, size.height, exc)


async def _close_outputs(streams: ExecStreams) -> None:
    for stream in (streams.stdout, streams.stderr):
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()


# ---- attach plumbing


def _connect_seqpacket(path: Path) -> socket.socket:
    """Connect to conmon's attach socket; through /proc/self/fd, as its path may be too long
    for a socket address (108 bytes)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        conn.connect(f"/proc/self/fd/{fd}")
    except OSError as exc:
        conn.close()
        raise Unavailable(f"cannot attach to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    conn.setblocking(False)
    return conn


async def _attach_output(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, streams: ExecStreams
) -> None:
    """Relay conmon's messages until it closes the socket (the container exited)."""
    while True:
        try:
            packet = await loop.sock_recv(conn, _ATTACH_PACKET)
        except ConnectionResetError:
            return
        if not packet:
            return
        target = {_ATTACH_STDOUT: streams.stdout, _ATTACH_STDERR: streams.stderr}.get(packet[0])
        if target is not None and len(packet) > 1:
            await target.write(packet[1:])


async def _attach_stdin(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, stdin: InputStream
) -> None:
    while data := await stdin.read(_ATTACH_PACKET - 1):
        await loop.sock_sendall(conn, data)
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)


# ---- port-forward plumbing


def _connect_in_netns(netns: str | None, port: int) -> socket.socket:
    """A TCP connection to localhost:`port`, made in `netns` (on a thread of its own)."""
    if netns:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            check_libc(libc().setns(fd, _CLONE_NEWNET), "setns", netns)
        finally:
            os.close(fd)
    errors = []
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        conn = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            conn.settimeout(10)
            conn.connect((address, port))
        except OSError as exc:
            conn.close()
            errors.append(f"{address}: {exc.strerror or exc}")
            if exc.errno not in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH):
                break
            continue
        conn.setblocking(False)
        return conn
    raise Unavailable(f"cannot connect to port {port} in the pod: {'; '.join(errors)}")


__all__ = ["ContainerStreams"]
