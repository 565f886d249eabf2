"""Client subcommands for people at a terminal: exec, attach and port-forward.

`exec` and `attach` ask the daemon for a streaming URL (CRI Exec or Attach) and speak the
WebSocket channel protocol there, `v5.channel.k8s.io` or else `v4.channel.k8s.io`: every
binary message starts with its channel, 0 stdin, 1 stdout, 2 stderr, 3 the closing
`metav1.Status` (JSON), 4 terminal sizes (`{"Width":W,"Height":H}`); in v5 the message
[255, 0] closes stdin. With `-t` the local terminal is put in raw mode while the session runs
and its size follows SIGWINCH.

`port-forward` listens locally and, as streaming URLs are single-use, asks for a URL and opens
a `v4.channel.k8s.io` WebSocket per accepted connection: channel 0 carries the data and 1 the
errors, each starting with the port as two little-endian bytes.

As in crictl, the streaming server's certificate is not verified: the URL comes from the
daemon over its socket and the single-use token in it is the credential.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import grpc
from cri_api.v1 import api_pb2 as cri

from cryopod.cli.client import Body, Client, add_client_flags, describe_rpc_error, run
from cryopod.cli.images import Subcommands
from cryopod.cli.runtime import CLIENT_TIMEOUT_SECONDS, resolve_container_id, resolve_pod_id
from cryopod.errors import CryopodError, FailedPrecondition, InvalidArgument, Unavailable

V5_PROTOCOL = "v5.channel.k8s.io"
V4_PROTOCOL = "v4.channel.k8s.io"
COMMAND_PROTOCOLS = (V5_PROTOCOL, V4_PROTOCOL)
PORT_FORWARD_PROTOCOL = V4_PROTOCOL

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
CLOSE_SIGNAL = 255
PORT_DATA, PORT_ERROR = 0, 1
PORT_PREFIX_BYTES = 2

READ_SIZE = 32 * 1024
INPUT_BACKLOG = 8
"""Chunks of local input read ahead of the WebSocket."""
LINGER_SECONDS = 1.0
"""After a forwarded connection's local side ended, how long the pod may stay silent before
the WebSocket is closed (the channel protocol cannot half-close; socat and containerd wait
the same second)."""
CONNECT_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30)
ENDING_SIGNALS = (signal.SIGHUP, signal.SIGTERM)
"""Signals that end a session cleanly, so that a raw terminal is restored."""

CONTAINER_HELP = "container id or a unique prefix of it"

WebSocket: TypeAlias = "aiohttp.ClientWebSocketResponse[bool]"


# --- frames and statuses --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One channel message."""

    channel: int
    data: bytes


def encode_frame(channel: int, data: bytes) -> bytes:
    return bytes((channel,)) + data


def decode_frame(message: bytes) -> Frame | None:
    """The channel and payload of a binary message; None for an empty one."""
    return Frame(message[0], message[1:]) if message else None


def close_frame(channel: int) -> bytes:
    """The v5 signal that the client will not write to `channel` again."""
    return bytes((CLOSE_SIGNAL, channel))


def resize_frame(width: int, height: int) -> bytes:
    size = json.dumps({"Width": width, "Height": height}, separators=(",", ":"))
    return encode_frame(RESIZE, size.encode())


@dataclass(frozen=True)
class Outcome:
    """How a session ends for the CLI: its exit code, and an error to print ("" for none)."""

    code: int
    message: str = ""


def outcome_of(status: bytes) -> Outcome:
    """What the error channel's Status means: Success 0, NonZeroExitCode its code, else 1."""
    if not status.strip():
        return Outcome(1, "the session ended before the command's exit status arrived")
    try:
        document = json.loads(status)
    except ValueError:
        return Outcome(1, status.decode(errors="replace").strip())
    if not isinstance(document, dict):
        return Outcome(1, f"unexpected status: {status.decode(errors='replace')}")
    if document.get("status") == "Success":
        return Outcome(0)
    code = exit_code_cause(document)
    if document.get("reason") == "NonZeroExitCode" and code is not None:
        return Outcome(code)
    return Outcome(1, str(document.get("message") or "the command failed"))


def exit_code_cause(document: dict[str, Any]) -> int | None:
    """The code of a Status's `ExitCode` cause, if it has a valid one."""
    details = document.get("details")
    causes = details.get("causes") if isinstance(details, dict) else None
    for cause in causes if isinstance(causes, list) else []:
        if isinstance(cause, dict) and cause.get("reason") == "ExitCode":
            with contextlib.suppress(TypeError, ValueError):
                return int(cause.get("message", "")) & 0xFF
    return None


# --- port-forward arguments and framing -----------------------------------------------------------


@dataclass(frozen=True)
class PortMapping:
    """`LOCAL:REMOTE`; local port 0 means any free port."""

    local: int
    remote: int


def _port(text: str, *, allow_zero: bool) -> int:
    if not text.isdigit() or not (0 if allow_zero else 1) <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}")
    return int(text)


def parse_port_mapping(text: str) -> PortMapping:
    """`LOCAL:REMOTE`, `REMOTE` (the same port locally) or `:REMOTE` (any free local port)."""
    local, colon, remote = text.rpartition(":")
    if not colon:
        local = remote
    remote_port = _port(remote, allow_zero=False)
    return PortMapping(_port(local, allow_zero=True) if local else 0, remote_port)


def parse_addresses(text: str) -> list[str]:
    """`--address`: one or more comma-separated addresses."""
    addresses = [item.strip() for item in text.split(",") if item.strip()]
    if not addresses:
        raise argparse.ArgumentTypeError("no address given")
    return addresses


def with_port_query(url: str, port: int) -> str:
    """`url` with its `port` query parameter set to `port`."""
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query) if key != "port"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("port", str(port))])))


class PortChannels:
    """Splits a port-forward WebSocket's messages into data and error bytes, dropping the
    port prefix each channel starts with (wherever the messages split it)."""

    def __init__(self) -> None:
        self._skip = {PORT_DATA: PORT_PREFIX_BYTES, PORT_ERROR: PORT_PREFIX_BYTES}

    def feed(self, frame: Frame) -> Frame | None:
        """The payload of `frame` past the prefix; None for channels of other ports."""
        skip = self._skip.get(frame.channel)
        if skip is None:
            return None
        self._skip[frame.channel] = max(0, skip - len(frame.data))
        return Frame(frame.channel, frame.data[skip:])


def host_port(address: Any) -> str:
    """`host:port` of a socket address, IPv6 hosts in brackets as kubectl prints them."""
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- the local side -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalStreams:
    """The local ends of a session."""

    stdout: BinaryIO
    stderr: BinaryIO
    stdin: int | None = None
    """The descriptor to send as stdin; None: no stdin."""
    tty: bool = False
    """The remote process has a terminal (its stderr is merged into stdout)."""
    size_fd: int | None = None
    """A local terminal whose size the remote one follows."""
    raw_fd: int | None = None
    """A local terminal to put in raw mode while the session runs."""


def local_streams(*, interactive: bool, tty: bool) -> LocalStreams:
    """The process's own stdio, as `-i` and `-t` ask (raw mode only for a terminal's input)."""
    stdin = sys.stdin.fileno() if interactive else None
    terminals = [fd for fd in (stdin, sys.stdout.fileno()) if fd is not None and os.isatty(fd)]
    return LocalStreams(
        stdout=sys.stdout.buffer,
        stderr=sys.stderr.buffer,
        stdin=stdin,
        tty=tty,
        size_fd=terminals[0] if tty and terminals else None,
        raw_fd=stdin if tty and stdin is not None and os.isatty(stdin) else None,
    )


@contextlib.contextmanager
def raw_terminal(fd: int | None) -> Iterator[None]:
    """Terminal `fd` in raw mode for the block, restored however it ends (None: nothing)."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class InputReader:
    """Reads a descriptor on a daemon thread and hands the chunks to the event loop.

    Blocking reads leave the descriptor's flags alone (a terminal shares them with the shell)
    and work for every kind of file; the thread never keeps the process alive.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._room = threading.Semaphore(INPUT_BACKLOG)
        threading.Thread(target=self._run, name=f"input-{fd}", daemon=True).start()

    async def read(self) -> bytes:
        """The next chunk; b"" at the end of the input."""
        data = await self._chunks.get()
        self._room.release()
        return data

    def _run(self) -> None:
        while True:
            self._room.acquire()
            try:
                data = os.read(self._fd, READ_SIZE)
            except OSError:  # EIO: the terminal went away
                data = b""
            try:
                self._loop.call_soon_threadsafe(self._chunks.put_nowait, data)
            except RuntimeError:  # the loop is closed: nobody reads any more
                return
            if not data:
                return


# --- exec and attach sessions ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_websocket(
    http: aiohttp.ClientSession, url: str, protocols: Sequence[str]
) -> AsyncIterator[WebSocket]:
    """A WebSocket to a streaming URL, failures as `Unavailable` (without the token)."""
    try:
        ws = await http.ws_connect(url, protocols=protocols, ssl=False)
    except aiohttp.WSServerHandshakeError as error:
        raise Unavailable(
            f"the streaming server refused the session: {error.status} {error.message}"
        ) from None
    except aiohttp.ClientError as error:
        raise Unavailable(f"cannot reach the streaming server: {error}") from None
    try:
        yield ws
    finally:
        await ws.close()


class CommandSession:
    """The channels of one exec or attach, between a WebSocket and the local streams."""

    def __init__(self, ws: WebSocket, local: LocalStreams) -> None:
        self._ws = ws
        self._local = local
        self._outputs = {STDOUT: local.stdout, STDERR: local.stderr}
        self._status = bytearray()

    async def run(self) -> Outcome:
        """Copy until the server closes the session; what its Status says."""
        if self._ws.protocol not in COMMAND_PROTOCOLS:
            raise Unavailable(f"the streaming server speaks none of {list(COMMAND_PROTOCOLS)}")
        side = []
        if self._local.stdin is not None:
            side.append(asyncio.create_task(self._send_input(InputReader(self._local.stdin))))
        if self._local.tty and self._local.size_fd is not None:
            side.append(asyncio.create_task(self._follow_size(self._local.size_fd)))
        try:
            await self._receive()
        finally:
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
        return outcome_of(bytes(self._status))

    async def _receive(self) -> None:
        async for message in self._ws:
            if message.type is aiohttp.WSMsgType.ERROR:
                raise Unavailable(f"the streaming session failed: {self._ws.exception()}")
            if message.type is aiohttp.WSMsgType.BINARY:
                frame = decode_frame(message.data)
                if frame is not None:
                    self._deliver(frame)

    def _deliver(self, frame: Frame) -> None:
        if frame.channel == ERROR:
            self._status += frame.data
        elif (output := self._outputs.get(frame.channel)) is not None and frame.data:
            output.write(frame.data)
            output.flush()

    async def _send_input(self, reader: InputReader) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read():
                await self._ws.send_bytes(encode_frame(STDIN, data))
            if self._ws.protocol == V5_PROTOCOL:
                await self._ws.send_bytes(close_frame(STDIN))

    async def _follow_size(self, fd: int) -> None:
        """Send the terminal's size now and after every SIGWINCH."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        loop.add_signal_handler(signal.SIGWINCH, changed.set)
        try:
            with contextlib.suppress(ConnectionError):
                while True:
                    size = os.get_terminal_size(fd)
                    await self._ws.send_bytes(resize_frame(size.columns, size.lines))
                    await changed.wait()
                    changed.clear()
        finally:
            loop.remove_signal_handler(signal.SIGWINCH)


@contextlib.contextmanager
def signals_cancel_task(signals: Sequence[signal.Signals]) -> Iterator[list[int]]:
    """While in the block, `signals` cancel the current task; the list collects them."""
    received: list[int] = []
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop(signum: int) -> None:
        received.append(signum)
        task.cancel()

    for signum in signals:
        loop.add_signal_handler(signum, stop, signum)
    try:
        yield received
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the exit-time flush into a closed pipe is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


async def stream_command(url: str, local: LocalStreams, timeout: float | None = None) -> Outcome:
    """Run an exec or attach session at `url`; a raw terminal is restored before returning.

    SIGHUP and SIGTERM end the session with 128 + the signal, `timeout` seconds with 1, and
    a closed pipe on stdout (`| head`) with 128 + SIGPIPE, as if the signal had killed us.
    """
    with signals_cancel_task(ENDING_SIGNALS) as received:
        try:
            async with asyncio.timeout(timeout):
                return await _run_session(url, local)
        except TimeoutError:
            if timeout is None:
                raise
            return Outcome(1, f"the session did not end within {timeout:g} seconds")
        except BrokenPipeError:
            quiet_stdout()
            return Outcome(128 + signal.SIGPIPE)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not received or task is None:
                raise
            task.uncancel()
            return Outcome(128 + received[0])


async def _run_session(url: str, local: LocalStreams) -> Outcome:
    async with aiohttp.ClientSession(timeout=CONNECT_TIMEOUT) as http:
        with raw_terminal(local.raw_fd):
            async with open_websocket(http, url, COMMAND_PROTOCOLS) as ws:
                return await CommandSession(ws, local).run()


def finish(outcome: Outcome) -> int:
    """Print the outcome's error, if any, and answer its exit code."""
    if outcome.message:
        print(f"cryopod: {outcome.message}", file=sys.stderr)
    return outcome.code


def command_of(words: Sequence[str]) -> list[str]:
    """The command to run: the words after the container, a leading `--` dropped."""
    command = list(words[1:] if words and words[0] == "--" else words)
    if not command:
        raise InvalidArgument("exec: name the command to run after the container")
    return command


async def exec_sync(client: Client, container_id: str, cmd: list[str], timeout: float) -> int:
    """ExecSync: print the command's stdout and stderr, answer its exit code."""
    seconds = math.ceil(timeout)
    response = await client.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=seconds),
        timeout=seconds + CLIENT_TIMEOUT_SECONDS if seconds else None,
    )
    for stream, data in ((sys.stdout, response.stdout), (sys.stderr, response.stderr)):
        stream.buffer.write(data)
        stream.flush()
    code: int = response.exit_code
    return code


async def exec_command(client: Client, args: argparse.Namespace) -> int:
    cmd = command_of(args.cmd)
    container_id = await resolve_container_id(client, args.container)
    if args.sync:
        return await exec_sync(client, container_id, cmd, args.exec_timeout)
    local = local_streams(interactive=args.interactive, tty=args.tty)
    request = cri.ExecRequest(
        container_id=container_id,
        cmd=cmd,
        tty=local.tty,
        stdin=local.stdin is not None,
        stdout=True,
        stderr=not local.tty,
    )
    response = await client.runtime.Exec(request, timeout=client.timeout)
    return finish(await stream_command(response.url, local, args.exec_timeout or None))


async def attach_command(client: Client, args: argparse.Namespace) -> int:
    container_id = await resolve_container_id(client, args.container)
    local = local_streams(interactive=args.interactive, tty=args.tty)
    request = cri.AttachRequest(
        container_id=container_id,
        stdin=local.stdin is not None,
        tty=local.tty,
        stdout=True,
        stderr=not local.tty,
    )
    response = await client.runtime.Attach(request, timeout=client.timeout)
    return finish(await stream_command(response.url, local))


# --- port-forward ---------------------------------------------------------------------------------


class Relay:
    """Copies between one local connection and a port-forward WebSocket."""

    def __init__(
        self,
        ws: WebSocket,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._ws = ws
        self._reader = reader
        self._writer = writer
        self._linger = linger
        self._channels = PortChannels()
        self._error = bytearray()
        self._last_data = time.monotonic()

    async def run(self) -> str:
        """Copy both ways until the pod side ends, or the local side did and the pod is quiet;
        the pod side's error text ("" for none)."""
        downstream = asyncio.create_task(self._downstream())
        upstream = asyncio.create_task(self._upstream())
        try:
            await asyncio.wait((downstream, upstream), return_when=asyncio.FIRST_COMPLETED)
            await self._wait_while_answering(downstream)
        finally:
            for task in (downstream, upstream):
                task.cancel()
            await asyncio.gather(downstream, upstream, return_exceptions=True)
        return self._error.decode(errors="replace").strip()

    async def _upstream(self) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await self._reader.read(READ_SIZE):
                await self._ws.send_bytes(encode_frame(PORT_DATA, data))

    async def _downstream(self) -> None:
        with contextlib.suppress(ConnectionError):
            async for message in self._ws:
                if message.type is not aiohttp.WSMsgType.BINARY:
                    continue
                frame = decode_frame(message.data)
                payload = self._channels.feed(frame) if frame is not None else None
                if payload is not None:
                    await self._deliver(payload)
            if self._writer.can_write_eof():
                self._writer.write_eof()

    async def _deliver(self, payload: Frame) -> None:
        if payload.channel == PORT_ERROR:
            self._error += payload.data
        elif payload.data:
            self._last_data = time.monotonic()
            self._writer.write(payload.data)
            await self._writer.drain()

    async def _wait_while_answering(self, downstream: asyncio.Task[None]) -> None:
        """Keep the pod side's answer coming until it is `linger` seconds quiet."""
        self._last_data = time.monotonic()
        while not downstream.done():
            quiet = time.monotonic() - self._last_data
            if quiet >= self._linger:
                return
            await asyncio.wait((downstream,), timeout=self._linger - quiet)


class Forwarder:
    """Local listeners for one pod: every connection gets a fresh URL and WebSocket.

    Use as `async with Forwarder(...) as forwarder:`; leaving closes the listeners and ends
    the connections still open.
    """

    def __init__(self, client: Client, http: aiohttp.ClientSession, pod_id: str) -> None:
        self._client = client
        self._http = http
        self._pod_id = pod_id
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for server in self._servers:
            server.close()
        for task in self._connections:
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def listen(self, address: str, mapping: PortMapping) -> None:
        """Listen for `mapping` on `address`, printing where each socket forwards."""

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._handle(mapping.remote, reader, writer))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

        try:
            server = await asyncio.start_server(accept, address, mapping.local)
        except OSError as error:
            raise FailedPrecondition(
                f"unable to listen on {address} port {mapping.local}: {error.strerror or error}"
            ) from None
        self._servers.append(server)
        for sock in server.sockets:
            print(f"Forwarding from {host_port(sock.getsockname())} -> {mapping.remote}")
        sys.stdout.flush()

    async def _handle(
        self, remote: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        local = writer.get_extra_info("sockname")[1]
        print(f"Handling connection for {local}", flush=True)
        try:
            error = await self._forward(remote, reader, writer)
        except grpc.RpcError as rpc_error:
            error = ": ".join(describe_rpc_error(rpc_error, self._client.endpoint))
        except CryopodError as failure:
            error = failure.message
        except OSError as failure:
            error = str(failure)
        finally:
            writer.close()
        if error:
            print(
                f"cryopod: an error occurred forwarding {local} -> {remote}: {error}",
                file=sys.stderr,
                flush=True,
            )

    async def _forward(
        self, remote: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str:
        request = cri.PortForwardRequest(pod_sandbox_id=self._pod_id, port=[remote])
        response = await self._client.runtime.PortForward(request, timeout=self._client.timeout)
        url = with_port_query(response.url, remote)
        async with open_websocket(self._http, url, (PORT_FORWARD_PROTOCOL,)) as ws:
            return await Relay(ws, reader, writer).run()


async def port_forward_command(client: Client, args: argparse.Namespace) -> int:
    pod_id = await resolve_pod_id(client, args.pod)
    # A wrong pod fails here, not at the first connection.
    await client.runtime.PodSandboxStatus(
        cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=client.timeout
    )
    async with (
        aiohttp.ClientSession(timeout=CONNECT_TIMEOUT) as http,
        Forwarder(client, http, pod_id) as forwarder,
    ):
        for address in args.address:
            for mapping in args.ports:
                await forwarder.listen(address, mapping)
        await asyncio.Event().wait()  # until Ctrl-C
    return 0


# --- registration ---------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("cannot be negative")
    return value


def _command(body: Body) -> Callable[[argparse.Namespace], int]:
    return lambda args: run(args, body)


def _stream_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-i", "--interactive", action="store_true", help="send stdin to the container"
    )
    parser.add_argument(
        "-t", "--tty", action="store_true", help="use a terminal (raw mode when stdin is one)"
    )


def _register_exec(commands: Subcommands) -> None:
    # exec's `--timeout` is the command's, as in crictl; requests get the client default.
    exec_ = commands.add_parser(
        "exec", help="run a command in a running container", conflict_handler="resolve"
    )
    add_client_flags(exec_, default_timeout=CLIENT_TIMEOUT_SECONDS)
    _stream_flags(exec_)
    exec_.add_argument(
        "-s", "--sync", action="store_true", help="run with ExecSync: no stdin, no terminal"
    )
    exec_.add_argument(
        "--timeout",
        dest="exec_timeout",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="end the command after this long, 0 for no limit (default 0)",
    )
    exec_.add_argument("container", metavar="CONTAINER-ID", help=CONTAINER_HELP)
    exec_.add_argument(
        "cmd", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]", help="what to run"
    )
    exec_.set_defaults(func=_exec_handler, timeout=CLIENT_TIMEOUT_SECONDS)


def _exec_handler(args: argparse.Namespace) -> int:
    command_of(args.cmd)  # a missing command fails before connecting
    if args.sync and (args.interactive or args.tty):
        raise InvalidArgument("exec: --sync cannot be used with -i or -t")
    return run(args, exec_command)


def register(commands: Subcommands) -> None:
    """Add exec, attach and port-forward to the `cryopod` parser."""
    _register_exec(commands)

    attach = commands.add_parser("attach", help="attach to a running container")
    add_client_flags(attach, default_timeout=CLIENT_TIMEOUT_SECONDS)
    _stream_flags(attach)
    attach.add_argument("container", metavar="CONTAINER-ID", help=CONTAINER_HELP)
    attach.set_defaults(func=_command(attach_command))

    forward = commands.add_parser(
        "port-forward", help="forward local ports to a pod (until Ctrl-C)"
    )
    add_client_flags(forward, default_timeout=CLIENT_TIMEOUT_SECONDS)
    forward.add_argument(
        "--address",
        type=parse_addresses,
        default=["127.0.0.1"],
        metavar="ADDRESS[,ADDRESS...]",
        help="local addresses to listen on (default 127.0.0.1)",
    )
    forward.add_argument("pod", metavar="POD-ID", help="pod id or a unique prefix of it")
    forward.add_argument(
        "ports",
        nargs="+",
        type=parse_port_mapping,
        metavar="[LOCAL]:REMOTE",
        help="LOCAL:REMOTE, REMOTE (same port locally) or :REMOTE (any free local port)",
    )
    forward.set_defaults(func=_command(port_forward_command))
