"""The one seam through which cryopod runs helper binaries.

Everything that execs a program goes through `run_command`, so arguments are logged the same
way, nothing runs through a shell, timeouts kill the child, and failures become typed errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryopod.errors import CommandFailed, CommandTimeout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """What a finished helper left behind."""

    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_command(
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
) -> CommandResult:
    """Run `argv`, feed it `stdin`, collect its output.

    Raises CommandFailed on a non-zero exit when `check`, CommandTimeout (after killing and
    reaping the child) when it outlives `timeout` seconds.
    """
    args = [str(a) for a in argv]
    log.debug("exec %s", " ".join(args))
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        close_fds=True,
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate(stdin)
    except TimeoutError as exc:
        await _kill_and_reap(proc)
        raise CommandTimeout(args, timeout or 0.0) from exc
    except BaseException:
        await _kill_and_reap(proc)
        raise
    result = CommandResult(args, proc.returncode or 0, stdout, stderr)
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, stderr.decode(errors="replace"))
    return result


async def _kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        # Shielded so a cancelled caller still leaves no zombie behind.
        await asyncio.shield(proc.wait())


def which(name: str, search_path: Sequence[str] = ()) -> str | None:
    """First executable `name` in `search_path`, then in $PATH."""
    dirs = [*search_path, *os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(":")]
    for directory in dirs:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


async def run_with_fds(
    argv: Sequence[str],
    *,
    pass_fds: Sequence[int],
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    check: bool = True,
) -> CommandResult:
    """Like `run_command`, but hand the open descriptors `pass_fds` to the child.

    For helpers that talk over inherited pipes (conmon's `_OCI_SYNCPIPE`): the fds keep
    their numbers in the child. Output is collected until the child and everything that
    kept its stdout/stderr exit, so it suits programs that daemonize and detach their stdio.
    """
    args = [str(a) for a in argv]
    log.debug("exec %s (fds %s)", " ".join(args), ",".join(map(str, pass_fds)))
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        close_fds=True,
        pass_fds=tuple(pass_fds),
    )
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await proc.communicate()
    except TimeoutError as exc:
        await _kill_and_reap(proc)
        raise CommandTimeout(args, timeout or 0.0) from exc
    except BaseException:
        await _kill_and_reap(proc)
        raise
    result = CommandResult(args, proc.returncode or 0, stdout, stderr)
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, stderr.decode(errors="replace"))
    return result


async def spawn(
    argv: Sequence[str],
    *,
    stdin: bool = False,
    stdout: bool = True,
    stderr: bool = True,
    terminal: int | None = None,
    env: Mapping[str, str] | None = None,
) -> asyncio.subprocess.Process:
    """Start `argv` with pipes for the streams asked for (the others on /dev/null), or with
    all three on `terminal` (a pty's slave side).

    For long-lived helpers whose streams the caller relays (`runc exec`); the caller owns
    the process and must wait for it (`kill_and_reap` on the way out).
    """
    args = [str(a) for a in argv]
    log.debug("spawn %s", " ".join(args))
    pipe, null = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        *args,
        stdin=terminal if terminal is not None else pipe if stdin else null,
        stdout=terminal if terminal is not None else pipe if stdout else null,
        stderr=terminal if terminal is not None else pipe if stderr else null,
        env=dict(env) if env is not None else None,
        close_fds=True,
    )


async def kill_and_reap(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL a spawned process if it still runs, and reap it."""
    await _kill_and_reap(proc)


def kill_quietly(pid: int) -> None:
    """SIGKILL `pid`; a process that is gone already is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class ProcStat:
    """What /proc/<pid>/stat says of a process that cryopod needs."""

    comm: str
    state: str
    """R, S, D, Z (zombie), X (dead), ..."""
    parent: int
    start_time: int
    """Clock ticks after boot: with the pid, names one process (pids are reused)."""


def proc_stat(pid: int) -> ProcStat | None:
    """The process's stat line, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    head, _, tail = text.rpartition(")")  # the command name may hold spaces and parens
    fields = tail.split()
    try:
        return ProcStat(head.partition("(")[2], fields[0], int(fields[1]), int(fields[19]))
    except (IndexError, ValueError):
        return None
