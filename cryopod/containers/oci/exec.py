"""Processes run in a running container with `runc exec`: ExecSync, and the streams of Exec.

The daemon runs `runc exec --process <json>` itself rather than through conmon: the exec'd
process lives as long as the request that asked for it, so a monitor that outlives the
daemon buys nothing, and the pipes (or the pty runc hands over on its console socket) go
straight to the caller. The process spec is the container's own `process` with the new
args, so the exec runs with the container's user, groups, env, cwd, capabilities and
no_new_privs; runc applies the container's seccomp filter, namespaces and cgroups itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import struct
import tempfile
import termios
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryopod.procs import kill_and_reap, spawn

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_CONSOLE_TIMEOUT = 10.0


@dataclass(frozen=True)
class ExecOutput:
    """What ExecSync answers: the exit code, and the output kept of each stream."""

    exit_code: int
    stdout: bytes
    stderr: bytes


def exec_process_spec(
    container_spec: Mapping[str, Any], cmd: Sequence[str], *, tty: bool
) -> dict[str, Any]:
    """The container's process, running `cmd` instead (with or without a terminal)."""
    process = dict(container_spec["process"])
    process["args"] = list(cmd)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return process


class ExecProcess:
    """One `runc exec`: its stdio as pipes, or as a pty when it has a terminal."""

    def __init__(self, proc: asyncio.subprocess.Process, work_dir: Path, pty: int | None) -> None:
        self._proc = proc
        self._work_dir = work_dir
        self.pty = pty
        """The pty master (terminal mode): stdin is written to it, stdout read from it."""

    @classmethod
    async def start(
        cls,
        *,
        runtime_argv: Sequence[str],
        container_id: str,
        process: Mapping[str, Any],
        stdin: bool,
        work_dir: Path,
    ) -> ExecProcess:
        """`runc exec` the process; `runtime_argv` is runc and its global options."""
        process_file = _write_process_file(work_dir, process)
        try:
            argv = [
                *runtime_argv,
                "exec",
                "--process",
                str(process_file),
                "--pid-file",
                str(work_dir / "pid"),
            ]
            if process.get("terminal"):
                return await cls._start_with_terminal(argv, container_id, work_dir)
            proc = await spawn([*argv, container_id], stdin=stdin)
            return cls(proc, work_dir, None)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise

    @classmethod
    async def _start_with_terminal(
        cls, argv: list[str], container_id: str, work_dir: Path
    ) -> ExecProcess:
        # A socket path must fit in 108 bytes; runroot paths can be longer, /tmp's are not.
        socket_dir = Path(tempfile.mkdtemp(prefix="cryopod-console-"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            path = socket_dir / "sock"
            listener.bind(str(path))
            listener.listen(1)
            listener.setblocking(False)
            proc = await spawn(
                [*argv, "--tty", "--console-socket", str(path), container_id],
                stdout=False,
            )
            try:
                async with asyncio.timeout(_CONSOLE_TIMEOUT):
                    pty = await _receive_pty(listener, proc)
            except BaseException:
                await kill_and_reap(proc)
                raise
        finally:
            listener.close()
            shutil.rmtree(socket_dir, ignore_errors=True)
        return cls(proc, work_dir, pty)

    # ---- streams

    @property
    def stdin(self) -> asyncio.StreamWriter | None:
        return self._proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader | None:
        return self._proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader | None:
        return self._proc.stderr

    async def read_pty(self) -> bytes:
        """Output from the terminal; b"" once the process side has closed it."""
        assert self.pty is not None
        return await _read_fd(self.pty)

    async def write_pty(self, data: bytes) -> None:
        assert self.pty is not None
        await _write_fd(self.pty, data)

    def resize(self, width: int, height: int) -> None:
        """Set the terminal's size; the process gets SIGWINCH."""
        if self.pty is not None and width > 0 and height > 0:
            fcntl.ioctl(self.pty, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    # ---- lifetime

    async def wait(self) -> int:
        """The exit code (128 + signal when a signal ended it)."""
        return await self._proc.wait()

    async def kill(self) -> None:
        """SIGKILL the exec'd process (killing runc alone would orphan it), then reap runc."""
        with contextlib.suppress(OSError, ValueError):
            pid = int((self._work_dir / "pid").read_text())
            os.kill(pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(5):
                await self._proc.wait()
        except TimeoutError:
            await kill_and_reap(self._proc)

    async def close(self) -> None:
        """Kill what still runs, close the pty, remove the work files; idempotent."""
        if self._proc.returncode is None:
            await self.kill()
        if self.pty is not None:
            os.close(self.pty)
            self.pty = None
        shutil.rmtree(self._work_dir, ignore_errors=True)


def _write_process_file(work_dir: Path, process: Mapping[str, Any]) -> Path:
    """process.json in a fresh work dir (a small write on runroot's tmpfs: done inline)."""
    work_dir.mkdir(parents=True)
    path = work_dir / "process.json"
    path.write_text(json.dumps(dict(process)))
    return path


async def run_to_completion(
    process: ExecProcess, *, timeout: float, output_limit: int
) -> ExecOutput:
    """Collect stdout and stderr apart (each kept up to `output_limit` bytes, the rest
    read and dropped so the process never blocks on a full pipe) until it exits.

    Raises TimeoutError, after killing it, when it outlives `timeout` seconds (0: no limit).
    """
    assert process.stdout is not None and process.stderr is not None
    try:
        async with asyncio.timeout(timeout or None):
            stdout, stderr, exit_code = await asyncio.gather(
                _read_capped(process.stdout, output_limit),
                _read_capped(process.stderr, output_limit),
                process.wait(),
            )
    except TimeoutError:
        await process.kill()
        raise
    return ExecOutput(exit_code, stdout, stderr)


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


async def _receive_pty(listener: socket.socket, proc: asyncio.subprocess.Process) -> int:
    """Accept runc's connection on the console socket and take the pty master it sends."""
    loop = asyncio.get_running_loop()
    accept = asyncio.ensure_future(loop.sock_accept(listener))
    exited = asyncio.ensure_future(proc.wait())
    done, _ = await asyncio.wait({accept, exited}, return_when=asyncio.FIRST_COMPLETED)
    if accept not in done:
        accept.cancel()
        raise OSError(f"runc exec exited with {proc.returncode} before handing over a terminal")
    exited.cancel()
    connection, _ = accept.result()
    with connection:
        connection.setblocking(True)
        connection.settimeout(_CONSOLE_TIMEOUT)
        _msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, connection, 4096, 1)
    if not fds:
        raise OSError("runc sent no terminal on the console socket")
    os.set_blocking(fds[0], False)
    return fds[0]


async def _read_fd(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            await _ready(fd, writing=False)
        except OSError:  # EIO: the last holder of the terminal's other side is gone
            return b""


async def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await _ready(fd, writing=True)


async def _ready(fd: int, *, writing: bool) -> None:
    """Wait until `fd` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


__all__ = ["ExecOutput", "ExecProcess", "exec_process_spec", "run_to_completion"]
