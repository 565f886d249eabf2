"""`cryopod exec`, `attach` and `port-forward`: flags, channel frames, Status to exit code, and
the client sessions against cryopod's own streaming server with a fake backend."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import io
import json
import os
import signal
import struct
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp
import pytest

from cryopod.cli import build_parser, main
from cryopod.cli.streams import (
    Frame,
    LocalStreams,
    Outcome,
    PortChannels,
    PortMapping,
    Relay,
    close_frame,
    command_of,
    decode_frame,
    encode_frame,
    host_port,
    open_websocket,
    outcome_of,
    parse_port_mapping,
    raw_terminal,
    resize_frame,
    stream_command,
    with_port_query,
)
from cryopod.errors import InvalidArgument
from cryopod.streaming import (
    ExecRequest,
    ExecStreams,
    InputStream,
    OutputStream,
    PortForwardRequest,
    StreamingServer,
    TerminalSize,
)

TIMEOUT = 10.0


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# --- flags ----------------------------------------------------------------------------------------


def test_exec_flags_and_command() -> None:
    args = parse("exec", "-it", "abc", "sh", "-c", "echo x; exit 3")
    assert (args.interactive, args.tty, args.sync) == (True, True, False)
    assert args.container == "abc"
    assert command_of(args.cmd) == ["sh", "-c", "echo x; exit 3"]
    # Options after the container belong to the command.
    assert command_of(parse("exec", "abc", "ls", "-l", "--timeout", "3").cmd) == [
        "ls",
        "-l",
        "--timeout",
        "3",
    ]
    assert command_of(parse("exec", "abc", "--", "ls", "-l").cmd) == ["ls", "-l"]


def test_exec_timeout_is_the_commands_and_requests_keep_the_default() -> None:
    args = parse("exec", "--sync", "--timeout", "5", "abc", "true")
    assert args.sync and args.exec_timeout == 5.0
    assert args.timeout == 30.0
    assert parse("exec", "-s", "abc", "true").exec_timeout == 0.0


def test_exec_needs_a_command_and_sync_excludes_streams(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(InvalidArgument):
        command_of([])
    with pytest.raises(InvalidArgument):
        command_of(["--"])
    assert main(["exec", "abc"]) == 1
    assert "name the command" in capsys.readouterr().err
    assert main(["exec", "--sync", "-i", "abc", "true"]) == 1
    assert "--sync cannot be used with -i or -t" in capsys.readouterr().err


def test_attach_flags() -> None:
    args = parse("attach", "-i", "-t", "abc")
    assert (args.interactive, args.tty, args.container) == (True, True, "abc")
    assert not parse("attach", "abc").interactive


def test_port_forward_flags() -> None:
    args = parse("port-forward", "--address", "127.0.0.1,::1", "pod", "8080", "5000:80", ":443")
    assert args.pod == "pod"
    assert args.address == ["127.0.0.1", "::1"]
    assert args.ports == [PortMapping(8080, 8080), PortMapping(5000, 80), PortMapping(0, 443)]
    assert parse("port-forward", "pod", "80").address == ["127.0.0.1"]


@pytest.mark.parametrize("text", ["", "0", "x", "70000", "1:0", "a:80", "1:2:3", "-1:80", "80:"])
def test_bad_port_mappings(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_port_mapping(text)


def test_bad_port_mapping_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("port-forward", "pod", "70000")
    assert exited.value.code == 2
    assert "invalid port" in capsys.readouterr().err


def test_port_query_and_addresses() -> None:
    assert with_port_query("http://h:1/portforward/tok", 80) == "http://h:1/portforward/tok?port=80"
    assert with_port_query("http://h:1/p?port=1&x=y", 80) == "http://h:1/p?x=y&port=80"
    assert host_port(("127.0.0.1", 80)) == "127.0.0.1:80"
    assert host_port(("::1", 80, 0, 0)) == "[::1]:80"


# --- frames and statuses --------------------------------------------------------------------------


def test_frames() -> None:
    assert encode_frame(0, b"hi") == b"\x00hi"
    assert decode_frame(b"\x02err") == Frame(2, b"err")
    assert decode_frame(b"\x01") == Frame(1, b"")
    assert decode_frame(b"") is None
    assert close_frame(0) == b"\xff\x00"
    assert resize_frame(120, 40) == b'\x04{"Width":120,"Height":40}'


def status(**fields: object) -> bytes:
    return json.dumps({"metadata": {}, **fields}).encode()


def exit_status(code: str) -> bytes:
    return status(
        status="Failure",
        message=f"command terminated with non-zero exit code: exited with {code}",
        reason="NonZeroExitCode",
        details={"causes": [{"reason": "ExitCode", "message": code}]},
    )


def test_status_to_exit_code() -> None:
    assert outcome_of(status(status="Success")) == Outcome(0)
    assert outcome_of(exit_status("3")) == Outcome(3)
    assert outcome_of(exit_status("137")) == Outcome(137)
    internal = status(
        status="Failure",
        message="Internal error occurred: error executing command in container: boom",
        reason="InternalError",
        code=500,
        details={"causes": [{"message": "boom"}]},
    )
    assert outcome_of(internal) == Outcome(
        1, "Internal error occurred: error executing command in container: boom"
    )


def test_unusual_statuses_are_failures() -> None:
    assert outcome_of(b"").code == 1
    assert "before the command's exit status" in outcome_of(b"").message
    assert outcome_of(b"plain text error") == Outcome(1, "plain text error")
    assert outcome_of(b"[1]").code == 1
    assert outcome_of(exit_status("x")) == Outcome(
        1, "command terminated with non-zero exit code: exited with x"
    )
    no_message = status(status="Failure", reason="NonZeroExitCode")
    assert outcome_of(no_message) == Outcome(1, "the command failed")


def test_port_channels_drop_each_prefix_wherever_it_splits() -> None:
    channels = PortChannels()
    assert channels.feed(Frame(0, b"\x90")) == Frame(0, b"")
    assert channels.feed(Frame(0, b"\x1fda")) == Frame(0, b"da")
    assert channels.feed(Frame(0, b"ta")) == Frame(0, b"ta")
    assert channels.feed(Frame(1, b"\x90\x1fno route")) == Frame(1, b"no route")
    assert channels.feed(Frame(2, b"\x91\x1f")) is None


# --- the terminal ---------------------------------------------------------------------------------


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    yield master, slave
    os.close(master)
    os.close(slave)


def set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def test_raw_terminal_is_restored_even_after_errors(pty_pair: tuple[int, int]) -> None:
    _, slave = pty_pair
    before = termios.tcgetattr(slave)
    with pytest.raises(RuntimeError), raw_terminal(slave):
        lflag = termios.tcgetattr(slave)[3]
        assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)
        raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before
    with raw_terminal(None):
        pass


# --- sessions against the streaming server --------------------------------------------------------


class FakeBackend:
    """`split` writes both outputs and exits with its argument, `cat` echoes stdin, `sizes N`
    prints the first N terminal sizes; port-forward connects to 127.0.0.1:<port>."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.sized = asyncio.Event()

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> int:
        program, *args = cmd
        assert streams.stdout is not None
        self.started.set()
        if program == "split":
            assert streams.stderr is not None
            await streams.stdout.write(b"to stdout\n")
            await streams.stderr.write(b"to stderr\n")
            return int(args[0])
        if program == "cat":
            await copy(streams.stdin, streams.stdout)
            return 0
        if program == "sizes":
            count = int(args[0])
            async for size in resize:
                await streams.stdout.write(f"{size.height} {size.width}\n".encode())
                self.sized.set()
                count -= 1
                if not count:
                    break
            return 0
        raise RuntimeError(f"no such command {program!r}")

    async def attach(
        self,
        container_id: str,
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> None:
        raise NotImplementedError

    async def port_forward(
        self, pod_sandbox_id: str, port: int, inbound: InputStream, outbound: OutputStream
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            upstream = asyncio.create_task(copy_to_writer(inbound, writer))
            while data := await reader.read(65536):
                await outbound.write(data)
            await upstream
        finally:
            writer.close()


async def copy(source: InputStream | None, sink: OutputStream) -> None:
    assert source is not None
    while data := await source.read():
        await sink.write(data)


async def copy_to_writer(source: InputStream, writer: asyncio.StreamWriter) -> None:
    while data := await source.read():
        writer.write(data)
        await writer.drain()
    writer.write_eof()


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def server(backend: FakeBackend) -> AsyncIterator[StreamingServer]:
    async with StreamingServer(backend) as running:
        yield running


def exec_url(server: StreamingServer, *cmd: str, stdin: bool = False, tty: bool = False) -> str:
    return server.exec_url(
        ExecRequest(container_id="c1", cmd=cmd, stdin=stdin, stdout=True, stderr=not tty, tty=tty)
    )


def buffers(
    *, stdin: int | None = None, tty: bool = False, size_fd: int | None = None
) -> LocalStreams:
    """Local streams writing to memory."""
    return LocalStreams(
        stdout=io.BytesIO(), stderr=io.BytesIO(), stdin=stdin, tty=tty, size_fd=size_fd
    )


def output(stream: object) -> bytes:
    assert isinstance(stream, io.BytesIO)
    return stream.getvalue()


async def test_exec_keeps_outputs_apart_and_answers_the_exit_code(
    server: StreamingServer,
) -> None:
    local = buffers()
    async with asyncio.timeout(TIMEOUT):
        outcome = await stream_command(exec_url(server, "split", "3"), local)
    assert outcome == Outcome(3)
    assert output(local.stdout) == b"to stdout\n"
    assert output(local.stderr) == b"to stderr\n"


async def test_exec_sends_stdin_and_closes_it(server: StreamingServer) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"hello\n" * 10000)
    os.close(write_end)
    local = buffers(stdin=read_end)
    try:
        async with asyncio.timeout(TIMEOUT):
            outcome = await stream_command(exec_url(server, "cat", stdin=True), local)
    finally:
        os.close(read_end)
    assert outcome == Outcome(0)
    assert output(local.stdout) == b"hello\n" * 10000


async def test_tty_exec_sends_the_size_and_follows_sigwinch(
    server: StreamingServer, backend: FakeBackend, pty_pair: tuple[int, int]
) -> None:
    _, slave = pty_pair
    set_size(slave, 40, 120)
    local = buffers(tty=True, size_fd=slave)
    session = asyncio.create_task(
        stream_command(exec_url(server, "sizes", "2", tty=True), local, timeout=TIMEOUT)
    )
    async with asyncio.timeout(TIMEOUT):
        await backend.sized.wait()  # the SIGWINCH handler is in place
        set_size(slave, 50, 132)
        os.kill(os.getpid(), signal.SIGWINCH)
        assert await session == Outcome(0)
    assert output(local.stdout) == b"40 120\n50 132\n"


async def test_a_used_url_is_refused(server: StreamingServer) -> None:
    url = exec_url(server, "split", "0")
    async with asyncio.timeout(TIMEOUT):
        assert (await stream_command(url, buffers())).code == 0
        with pytest.raises(Exception, match="refused the session: 404"):
            await stream_command(url, buffers())


async def test_sigterm_ends_the_session(server: StreamingServer, backend: FakeBackend) -> None:
    read_end, write_end = os.pipe()
    session = asyncio.create_task(
        stream_command(exec_url(server, "cat", stdin=True), buffers(stdin=read_end))
    )
    try:
        async with asyncio.timeout(TIMEOUT):
            await backend.started.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            assert await session == Outcome(128 + signal.SIGTERM)
    finally:
        os.close(write_end)
        os.close(read_end)


async def test_exec_timeout(server: StreamingServer) -> None:
    read_end, write_end = os.pipe()
    try:
        async with asyncio.timeout(TIMEOUT):
            outcome = await stream_command(
                exec_url(server, "cat", stdin=True), buffers(stdin=read_end), timeout=0.2
            )
    finally:
        os.close(write_end)
        os.close(read_end)
    assert outcome == Outcome(1, "the session did not end within 0.2 seconds")


# --- port-forward relay ---------------------------------------------------------------------------


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@dataclass
class RelayListener:
    """A local listener relaying each connection to a port through the streaming server."""

    port: int
    errors: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    """The error text of every relayed connection, in the order they ended."""


RelayFactory = Callable[[int], Awaitable[RelayListener]]


@pytest.fixture
async def relay_to(server: StreamingServer) -> AsyncIterator[RelayFactory]:
    listeners: list[asyncio.Server] = []
    async with aiohttp.ClientSession() as http:

        async def start(port: int) -> RelayListener:
            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                request = PortForwardRequest(pod_sandbox_id="p", ports=(port,))
                url = with_port_query(server.port_forward_url(request), port)
                try:
                    async with open_websocket(http, url, ("v4.channel.k8s.io",)) as ws:
                        relayed.errors.put_nowait(await Relay(ws, reader, writer, linger=0.2).run())
                finally:
                    writer.close()

            listener = await asyncio.start_server(handle, "127.0.0.1", 0)
            listeners.append(listener)
            relayed = RelayListener(listener.sockets[0].getsockname()[1])
            return relayed

        yield start
        for listener in listeners:
            listener.close()


async def test_relay_copies_both_ways_and_waits_for_the_answer(
    relay_to: RelayFactory, echo_port: int
) -> None:
    relay = await relay_to(echo_port)
    async with asyncio.timeout(TIMEOUT):
        for text in (b"first\n", b"second\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(text)
            writer.write_eof()  # half-closed: the answer must still come
            assert await reader.read() == text
            writer.close()
        assert [await relay.errors.get(), await relay.errors.get()] == ["", ""]


async def test_relay_reports_the_pod_sides_error(relay_to: RelayFactory) -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    closed_port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    relay = await relay_to(closed_port)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        assert await reader.read() == b""
        writer.close()
        error = await relay.errors.get()
    assert f"error forwarding port {closed_port} to pod p" in error
