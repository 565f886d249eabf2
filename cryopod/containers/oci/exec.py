"""Processes run in a running container with `runc exec`: ExecSync, and the streams of Exec.

The daemon runs `runc exec --process <json>` itself rather than through conmon: the exec'd
process lives as long as the request that asked for it, so a monitor that outlives the
daemon buys nothing, and the pipes (or a pty of ours that runc relays the container's
terminal to) go straight to the caller. The process spec is the container's own `process`
with the new args, so the exec runs with the container's user, groups, env, cwd,
capabilities and no_new_privs; runc applies the container's seccomp filter, namespaces and
cgroups itself.
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
import struct
import termios
import tty
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryopod.errors import FailedPrecondition
from cryopod.fds import wait_readable, wait_writable
from cryopod.procs import kill_and_reap, spawn, which

log = logging.getLogger(__name__)

_READ_CHUNK = 64 * 1024
_KILL_WAIT = 5.0
DRAIN_SECONDS = 2.0
"""After the process exited, how long its output may still come (a background child of it
may hold the pipes open for ever)."""
_SBIN_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class ExecOutput:
    """What ExecSync answers: the exit code, and the output kept of each stream."""

    exit_code: int
    stdout: bytes
    stderr: bytes


def exec_process_spec(
    container_spec: Mapping[str, Any],
    cmd: Sequence[str],
    *,
    tty: bool,
    size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The container's process, running `cmd` instead (with or without a terminal of
    `size`, (width, height), when known)."""
    process = dict(container_spec["process"])
    process["args"] = list(cmd)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    if tty and size is not None:
        process["consoleSize"] = {"width": size[0], "height": size[1]}
    return process


class ExecProcess:
    """One `runc exec`: its stdio as pipes, or as a pty when it has a terminal."""

    def __init__(self, proc: asyncio.subprocess.Process, work_dir: Path, pty: int | None) -> None:
        self._proc = proc
        self._work_dir = work_dir
        self.pty = pty
        """The pty master (terminal mode): stdin is written to it, stdout read from it."""
        self._output_seen = False

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
                size = process.get("consoleSize") or {}
                return await cls._start_with_terminal(
                    argv, container_id, work_dir, (size.get("width", 0), size.get("height", 0))
                )
            proc = await spawn([*argv, container_id], stdin=stdin)
            return cls(proc, work_dir, None)
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise

    @classmethod
    async def _start_with_terminal(
        cls, argv: list[str], container_id: str, work_dir: Path, size: tuple[int, int]
    ) -> ExecProcess:
        """runc makes the container's pty and relays it to its own stdio, which is a pty of
        ours; resizing ours sends runc SIGWINCH (it is the foreground of that terminal, by
        `setsid --ctty`), and runc resizes the container's to match.

        (runc's console socket would hand over the container's pty directly, but only for a
        detached exec, whose exit status nobody but a subreaper parent could collect.)
        """
        setsid = which("setsid", _SBIN_PATH)
        if setsid is None:
            raise FailedPrecondition("a terminal exec needs setsid (util-linux)")
        master, slave = os.openpty()
        # Raw from the start: runc sets it raw too, but input may arrive before it does.
        tty.setraw(slave)
        # runc sizes the container's terminal from ours when it starts.
        _set_size(master, *size)
        try:
            proc = await spawn([setsid, "--ctty", *argv, "--tty", container_id], terminal=slave)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(proc, work_dir, master)

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
        data = await _read_fd(self.pty)
        if data and not self._output_seen:
            self._output_seen = True
            # The process runs, so runc listens for SIGWINCH now: a size set while it was
            # starting may have been missed (its first look at the size can come too early).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGWINCH)
        return data

    async def write_pty(self, data: bytes) -> None:
        assert self.pty is not None
        await _write_fd(self.pty, data)

    def resize(self, width: int, height: int) -> None:
        """Set the terminal's size; the process gets SIGWINCH."""
        if self.pty is not None:
            _set_size(self.pty, width, height)

    # ---- lifetime

    async def wait(self) -> int:
        """The exit code (128 + signal when a signal ended it).

        runc, a subreaper for what it exec'd, returns only once the process and every
        background child it left have exited.
        """
        return await self._proc.wait()

    async def kill(self) -> None:
        """SIGKILL the exec'd process (killing runc alone would orphan it), then reap runc.

        Only while runc still runs: once runc has reaped the process, its pid may be
        someone else's. Without a pid file yet, runc is still starting the process and
        takes it along when killed (its parent-death signal).
        """
        if self._proc.returncode is not None:
            return
        try:
            pid = int((self._work_dir / "pid").read_text())
        except (OSError, ValueError):
            await kill_and_reap(self._proc)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(_KILL_WAIT):
                await self._proc.wait()
        except TimeoutError:
            await kill_and_reap(self._proc)

    async def close(self) -> None:
        """Kill what still runs, close the pty and pipes, remove the work files; idempotent."""
        await self.kill()
        # A background child of the process may hold the pipes: ours are closed regardless.
        transport = getattr(self._proc, "_transport", None)
        if transport is not None:
            transport.close()
        if self.pty is not None:
            os.close(self.pty)
            self.pty = None
        shutil.rmtree(self._work_dir, ignore_errors=True)


def _set_size(pty: int, width: int, height: int) -> None:
    if width > 0 and height > 0:
        fcntl.ioctl(pty, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))


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

    A background child that keeps the pipes open does not hold the answer up past a short
    drain (exec probes would time out). Raises TimeoutError, after killing the process,
    when it outlives `timeout` seconds (0: no limit).
    """
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = bytearray(), bytearray()
    readers = [
        asyncio.create_task(_read_capped(process.stdout, stdout, output_limit)),
        asyncio.create_task(_read_capped(process.stderr, stderr, output_limit)),
    ]
    try:
        async with asyncio.timeout(timeout or None):
            exit_code = await process.wait()
        await asyncio.wait(readers, timeout=DRAIN_SECONDS)
    except TimeoutError:
        await process.kill()
        raise
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return ExecOutput(exit_code, bytes(stdout), bytes(stderr))


async def _read_capped(stream: asyncio.StreamReader, kept: bytearray, limit: int) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]


async def _read_fd(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            await wait_readable(fd)
        except OSError:  # EIO: the last holder of the terminal's other side is gone
            return b""


async def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await wait_writable(fd)


__all__ = ["ExecOutput", "ExecProcess", "exec_process_spec", "run_to_completion"]
