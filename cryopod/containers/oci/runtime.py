"""The OCI runtime adapter: runtime handlers, and runc driven under conmon.

`OCIRuntime` is the interface the container and pod services use (a fake fits it in unit
tests); `ConmonRuntime` implements it with conmon → `runc create`, `runc start/kill/delete/
update/state`. This module is the only place that reads runc's error messages.

Per container it keeps `<persist_root>/<id>/`: conmon's pid file, `exit` and `oom` files, and
our `runtime.json` (bundle, log path, memory cgroup) so any later call, also after a daemon
restart, finds what it needs without asking runc.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import secrets
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from asyncinotify import Inotify, Mask

from cryopod import cgroups
from cryopod.containers.oci import conmon
from cryopod.containers.oci.exec import ExecProcess
from cryopod.errors import (
    CommandFailed,
    CommandTimeout,
    OCIRuntimeCreateFailed,
    OCIRuntimeError,
    OCIRuntimeTimeout,
    RuntimeContainerNotFound,
    RuntimeContainerNotRunning,
)
from cryopod.fds import wait_readable
from cryopod.procs import CommandResult, kill_quietly, proc_stat, run_command, run_with_fds

log = logging.getLogger(__name__)

_METADATA_FILE = "runtime.json"
_MONITOR_CGROUPS_FILE = "monitor-cgroups"
# How long a SIGKILLed container (and its conmon) may take to be gone before we give up.
_KILL_GRACE = 10.0
_REOPEN_LOG_TIMEOUT = 5.0
_UNKNOWN = Path("/nonexistent")  # bundle or log path of a container we hold no metadata for


@dataclass(frozen=True)
class RuntimeHandler:
    """A configured OCI runtime (a RuntimeClass handler): which binary, state root, monitor."""

    name: str
    runtime_path: str
    runtime_root: str
    monitor_path: str = "/usr/bin/conmon"
    allowed_annotations: tuple[str, ...] = ()


class RuntimeStatus(enum.StrEnum):
    """Container states as the OCI runtime reports them."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    STOPPED = "stopped"


@dataclass(frozen=True)
class RuntimeState:
    """`runc state`: status, init pid (0 once stopped), bundle."""

    status: RuntimeStatus
    pid: int
    bundle: Path


@dataclass(frozen=True)
class ExitInfo:
    """How a container ended, from conmon's exit file (mtime = when) and its oom file."""

    exit_code: int
    finished_at_ns: int
    oom_killed: bool


@runtime_checkable
class OCIRuntime(Protocol):
    """What the services need from an OCI runtime; one instance per runtime handler."""

    @property
    def handler(self) -> RuntimeHandler: ...

    async def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        name: str,
        log_path: Path,
        stdin: bool = False,
        stdin_once: bool = False,
        tty: bool = False,
        log_size_max: int = -1,
    ) -> int: ...

    async def start(self, container_id: str) -> None: ...

    async def state(self, container_id: str) -> RuntimeState: ...

    async def kill(self, container_id: str, sig: int) -> None: ...

    async def stop(
        self, container_id: str, timeout: float, stop_signal: int = signal.SIGTERM
    ) -> None: ...

    async def delete(self, container_id: str) -> None: ...

    async def update_resources(self, container_id: str, resources: Mapping[str, Any]) -> None: ...

    async def reopen_log(self, container_id: str) -> None: ...

    def read_exit(self, container_id: str) -> ExitInfo | None: ...

    async def exec(
        self, container_id: str, process: Mapping[str, Any], *, stdin: bool = False
    ) -> ExecProcess: ...

    def container_ids(self) -> list[str]: ...

    def is_monitored(self, container_id: str) -> bool: ...

    async def discard(self, container_id: str) -> None: ...

    def attach_socket_path(self, container_id: str) -> Path: ...

    def resize_terminal(self, container_id: str, width: int, height: int) -> None: ...


@dataclass(frozen=True)
class _Metadata:
    """What create learned that later calls need (kept in the persist dir as JSON)."""

    bundle: Path
    log_path: Path
    pid: int
    memory_cgroup: Path | None

    def to_json(self) -> str:
        return json.dumps(
            {
                "bundle": str(self.bundle),
                "log_path": str(self.log_path),
                "pid": self.pid,
                "memory_cgroup": str(self.memory_cgroup) if self.memory_cgroup else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Metadata:
        obj = json.loads(text)
        cgroup = obj.get("memory_cgroup")
        return cls(
            bundle=Path(obj["bundle"]),
            log_path=Path(obj["log_path"]),
            pid=int(obj["pid"]),
            memory_cgroup=Path(cgroup) if cgroup else None,
        )


class ConmonRuntime:
    """`OCIRuntime` with runc (or any runc-compatible runtime) under conmon.

    `exits_dir` is shared by all containers (the `ExitWatcher` watches it); `persist_root`
    holds one directory per container; `attach_root` is conmon's socket dir.
    """

    def __init__(
        self,
        handler: RuntimeHandler,
        *,
        exits_dir: Path,
        persist_root: Path,
        attach_root: Path,
        create_timeout: float = 60.0,
        command_timeout: float = 60.0,
        sync_logs: bool = True,
        monitor_cgroups: bool = True,
    ) -> None:
        self._handler = handler
        self.exits_dir = exits_dir
        self.persist_root = persist_root
        self.attach_root = attach_root
        self.create_timeout = create_timeout
        self.command_timeout = command_timeout
        self.sync_logs = sync_logs
        # cgroupfs only: under systemd the monitor belongs in a scope of its own.
        self.monitor_cgroups = monitor_cgroups

    @property
    def handler(self) -> RuntimeHandler:
        return self._handler

    def _paths(self, container_id: str, bundle: Path, log_path: Path) -> conmon.ConmonPaths:
        return conmon.ConmonPaths(
            container_id=container_id,
            bundle=bundle,
            persist_dir=self.persist_root / container_id,
            exits_dir=self.exits_dir,
            attach_root=self.attach_root,
            log_path=log_path,
        )

    def attach_socket_path(self, container_id: str) -> Path:
        """conmon's attach socket, through its short symlink in the socket dir."""
        return self.attach_root / container_id / "attach"

    def resize_terminal(self, container_id: str, width: int, height: int) -> None:
        """Resize the container's terminal (conmon's control FIFO); it gets SIGWINCH."""
        metadata = self._metadata(container_id)
        if metadata is None:
            raise RuntimeContainerNotFound(container_id)
        paths = self._paths(container_id, metadata.bundle, metadata.log_path)
        try:
            conmon.send_control(paths.ctl_fifo, conmon.CTL_WINDOW_RESIZE, height, width)
        except OSError as exc:
            raise RuntimeContainerNotRunning(container_id, "resize the terminal of") from exc

    # ---- create

    async def create(
        self,
        container_id: str,
        bundle: Path,
        *,
        name: str,
        log_path: Path,
        stdin: bool = False,
        stdin_once: bool = False,
        tty: bool = False,
        log_size_max: int = -1,
    ) -> int:
        """Start conmon, which runs `runc create`; returns the container's init pid.

        On any failure (or cancellation) nothing is left: no runc container, no conmon, no
        files of ours or conmon's, no log file that did not exist before.
        """
        paths = self._paths(container_id, bundle, log_path)
        log_existed = self._prepare_create(paths)
        argv = conmon.create_argv(
            monitor_path=self._handler.monitor_path,
            runtime_path=self._handler.runtime_path,
            runtime_root=self._handler.runtime_root,
            name=name,
            paths=paths,
            stdio=conmon.StdioOptions(stdin=stdin, stdin_once=stdin_once, tty=tty),
            log_size_max=log_size_max,
            sync_logs=self.sync_logs,
        )
        # conmon runs in its own task so that a cancelled create lets it finish answering
        # first: undoing it halfway could leave a container that runc is still making.
        run = asyncio.create_task(self._run_conmon(container_id, argv, paths))
        try:
            pid = await asyncio.shield(run)
            # cgroupfs writes can take milliseconds (RCU): off the event loop.
            memory_cgroup = await asyncio.to_thread(self._place_monitor, paths, pid)
            metadata = _Metadata(bundle, log_path, pid, memory_cgroup)
            _write_atomically(paths.persist_dir / _METADATA_FILE, metadata.to_json())
        except BaseException:
            # Shielded: a cancelled create must still leave nothing behind.
            await asyncio.shield(self._discard_failed_create(run, paths, log_existed))
            raise
        return pid

    def _place_monitor(self, paths: conmon.ConmonPaths, container_pid: int) -> Path | None:
        """Move conmon out of the daemon's cgroups into leaves beside its container's;
        answers the container's memory cgroup.

        Then a restart that kills the daemon's cgroup spares the monitors, and the pod's
        cgroup accounts for them, as with CRI-O's conmon_cgroup = "pod". The leaves are
        recorded before they are made, so no crash leaves one nobody knows of.
        """
        dirs = cgroups.cgroup_dirs_of(container_pid)
        memory_cgroup = cgroups.memory_cgroup(dirs)
        if not self.monitor_cgroups:
            return memory_cgroup
        try:
            monitor = int(paths.conmon_pidfile.read_text())
        except (OSError, ValueError):
            return memory_cgroup
        leaves = cgroups.leaves_beside(dirs, cgroups.MONITOR_CGROUP_PREFIX + paths.container_id)
        _write_atomically(
            paths.persist_dir / _MONITOR_CGROUPS_FILE, "".join(f"{p}\n" for p in leaves.values())
        )
        cgroups.move_into(monitor, leaves)
        return memory_cgroup

    def _prepare_create(self, paths: conmon.ConmonPaths) -> bool:
        """Make the directories conmon writes to; tells whether the log file exists already.

        Plain stats and mkdirs on runroot: cheaper inline than a hop to a thread.
        """
        for directory in (self.exits_dir, self.persist_root, self.attach_root):
            directory.mkdir(parents=True, exist_ok=True)
        try:
            paths.persist_dir.mkdir()
        except FileExistsError:
            raise OCIRuntimeCreateFailed(
                paths.container_id,
                f"{paths.persist_dir} exists: the id is in use (delete it first)",
            ) from None
        return paths.log_path.exists()

    async def _run_conmon(
        self, container_id: str, argv: list[str], paths: conmon.ConmonPaths
    ) -> int:
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            env = {**os.environ, conmon.SYNC_PIPE_ENV: str(write_fd)}
            # cwd = persist dir: conmon also drops an `oom` file in its working directory.
            result = await run_with_fds(
                argv,
                pass_fds=[write_fd],
                env=env,
                cwd=str(paths.persist_dir),
                timeout=self.create_timeout,
                check=False,
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        if result.returncode != 0:
            os.close(read_fd)
            raise OCIRuntimeCreateFailed(container_id, _conmon_failure(result))
        try:
            async with asyncio.timeout(self.create_timeout):
                answer = await conmon.read_sync_answer(read_fd)
        except TimeoutError as exc:
            raise OCIRuntimeTimeout(
                container_id, "conmon did not report runc create's result", self.create_timeout
            ) from exc
        if not answer.ok:
            raise OCIRuntimeCreateFailed(container_id, conmon.runtime_message(answer.message))
        return answer.pid

    async def _discard_failed_create(
        self, run: asyncio.Task[int], paths: conmon.ConmonPaths, log_existed: bool
    ) -> None:
        """Undo a create that failed or was cancelled, once conmon has had its say."""
        # Its outcome was (or is being) reported already; here it only has to be over.
        with contextlib.suppress(Exception):
            await run
        await self._tear_down_unfinished(paths, remove_log=not log_existed)

    async def _tear_down_unfinished(self, paths: conmon.ConmonPaths, *, remove_log: bool) -> None:
        """Kill conmon and whatever it started, force-delete the runc container, drop files."""
        cid = paths.container_id
        monitor = _open_conmon(paths.conmon_pidfile, cid)
        if monitor is not None:
            with monitor:
                # Its children first: a runtime still busy creating must not finish the job.
                for pid in _descendants(monitor.pid):
                    kill_quietly(pid)
                with contextlib.suppress(ProcessLookupError):
                    monitor.send_signal(signal.SIGKILL)
                await monitor.wait(_KILL_GRACE)
        with contextlib.suppress(OCIRuntimeError, RuntimeContainerNotFound, CommandTimeout):
            await self._runc("delete", "--force", cid, container_id=cid)
        self._remove_leftovers(paths, remove_log=remove_log)

    def _remove_leftovers(self, paths: conmon.ConmonPaths, *, remove_log: bool = False) -> None:
        """Drop the files and monitor cgroups of a container whose conmon has exited."""
        with contextlib.suppress(FileNotFoundError):
            recorded = (paths.persist_dir / _MONITOR_CGROUPS_FILE).read_text().split()
            cgroups.remove_leaves([Path(leaf) for leaf in recorded])
        leftovers = [paths.persist_dir, paths.attach_link, paths.exit_file]
        if paths.bundle != _UNKNOWN:
            leftovers += paths.bundle_files
        if remove_log and paths.log_path != _UNKNOWN:
            leftovers.append(paths.log_path)
        conmon.remove_paths(leftovers)

    # ---- lifecycle

    async def start(self, container_id: str) -> None:
        """`runc start`: run the user process of a created container."""
        await self._runc("start", container_id, container_id=container_id)

    async def state(self, container_id: str) -> RuntimeState:
        """`runc state`; RuntimeContainerNotFound when runc has no such container."""
        result = await self._runc("state", container_id, container_id=container_id)
        obj = json.loads(result.stdout)
        return RuntimeState(
            status=RuntimeStatus(obj["status"]),
            pid=int(obj.get("pid") or 0),
            bundle=Path(obj["bundle"]),
        )

    async def kill(self, container_id: str, sig: int) -> None:
        """Send `sig` to the container's init process (`runc kill`).

        RuntimeContainerNotRunning when it has exited, RuntimeContainerNotFound when unknown.
        """
        if self._signal_init_directly(container_id, sig):
            return
        await self._runc("kill", container_id, str(int(sig)), container_id=container_id)

    async def stop(
        self, container_id: str, timeout: float, stop_signal: int = signal.SIGTERM
    ) -> None:
        """Signal, wait up to `timeout` seconds for the exit, then SIGKILL; 0 kills at once.

        Returns once conmon has recorded the exit. Stopping a stopped (or unknown) container
        is not an error.
        """
        paths = self._paths_of(container_id)
        if paths.exit_file.exists():
            return
        monitor = _open_conmon(paths.conmon_pidfile, container_id)
        if monitor is None:
            # No conmon: fall back on the init process itself, if runc still has one.
            monitor = await self._open_init_process(container_id)
            if monitor is None:
                return
        with monitor:
            if timeout > 0:
                if not await self._signal(container_id, stop_signal):
                    await monitor.wait(_KILL_GRACE)
                    return
                if await monitor.wait(timeout):
                    return
                log.info(
                    "container %s outlived its %gs stop timeout: SIGKILL", container_id, timeout
                )
            await self._signal(container_id, signal.SIGKILL)
            if not await monitor.wait(_KILL_GRACE):
                raise OCIRuntimeTimeout(container_id, "did not die after SIGKILL", _KILL_GRACE)

    def _signal_init_directly(self, container_id: str, sig: int) -> bool:
        """Signal the init process through a pidfd, sparing a runc exec (~5 ms of a stop).

        Only when it provably is the container's init: a child of this container's live
        conmon (its parent and subreaper, so the pid cannot have been reused). False means
        it could not be done this way; ask runc.
        """
        metadata = self._metadata(container_id)
        if metadata is None or metadata.pid <= 0:
            return False
        monitor = _open_conmon(self.persist_root / container_id / "conmon.pid", container_id)
        if monitor is None:
            return False
        with monitor:
            try:
                init = _ProcessWatch(metadata.pid)
            except ProcessLookupError:
                return False
            with init:
                if _parent_pid(metadata.pid) != monitor.pid:
                    return False
                try:
                    init.send_signal(sig)
                except ProcessLookupError:
                    return False
        return True

    async def _signal(self, container_id: str, sig: int) -> bool:
        """`kill`, telling whether the signal was delivered (False: already exited)."""
        try:
            await self.kill(container_id, sig)
        except (RuntimeContainerNotRunning, RuntimeContainerNotFound):
            return False
        return True

    async def _open_init_process(self, container_id: str) -> _ProcessWatch | None:
        try:
            current = await self.state(container_id)
        except RuntimeContainerNotFound:
            return None
        if current.status == RuntimeStatus.STOPPED or current.pid <= 0:
            return None
        try:
            return _ProcessWatch(current.pid)
        except ProcessLookupError:
            return None

    async def delete(self, container_id: str) -> None:
        """Remove the container from runc and drop its files; idempotent.

        Meant for a stopped container (`runc delete`, cheap). A created one is killed by
        runc delete itself, a running one is force-deleted as a fallback; either way this
        waits for its conmon to record the exit, so no exit file appears afterwards.
        """
        paths = self._paths_of(container_id)
        monitor = _open_conmon(paths.conmon_pidfile, container_id)
        try:
            try:
                await self._runc("delete", container_id, container_id=container_id)
            except RuntimeContainerNotFound:
                pass
            except OCIRuntimeError:
                with contextlib.suppress(RuntimeContainerNotFound):
                    await self._runc("delete", "--force", container_id, container_id=container_id)
            if monitor is not None and not await monitor.wait(_KILL_GRACE):
                log.warning("conmon of container %s outlived its container", container_id)
        finally:
            if monitor is not None:
                monitor.close()
        self._remove_leftovers(paths)

    def _paths_of(self, container_id: str) -> conmon.ConmonPaths:
        """The container's paths; bundle and log are `_UNKNOWN` without its metadata."""
        metadata = self._metadata(container_id)
        if metadata is None:
            return self._paths(container_id, _UNKNOWN, _UNKNOWN)
        return self._paths(container_id, metadata.bundle, metadata.log_path)

    def _metadata(self, container_id: str) -> _Metadata | None:
        path = self.persist_root / container_id / _METADATA_FILE
        try:
            return _Metadata.from_json(path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None

    # ---- resources, logs, exits

    async def update_resources(self, container_id: str, resources: Mapping[str, Any]) -> None:
        """`runc update --resources -` with an OCI `linux.resources` object."""
        await self._runc(
            "update",
            "--resources",
            "-",
            container_id,
            container_id=container_id,
            stdin=json.dumps(dict(resources)).encode(),
        )

    async def reopen_log(self, container_id: str) -> None:
        """Have conmon reopen its log file (after rotation); returns once the file exists.

        RuntimeContainerNotRunning when no conmon is there to do it (no file is created then).
        """
        metadata = self._metadata(container_id)
        if metadata is None:
            raise RuntimeContainerNotFound(container_id)
        paths = self._paths(container_id, metadata.bundle, metadata.log_path)
        log_path = metadata.log_path
        with Inotify() as inotify:
            # Watch before asking, so the file's creation cannot slip past.
            try:
                inotify.add_watch(log_path.parent, Mask.CREATE | Mask.MOVED_TO | Mask.ONLYDIR)
            except OSError as exc:
                raise OCIRuntimeError(
                    container_id, "reopen the log of", f"{log_path.parent}: {exc.strerror}"
                ) from exc
            try:
                conmon.send_control(paths.ctl_fifo, conmon.CTL_REOPEN_LOGS)
            except OSError as exc:
                raise RuntimeContainerNotRunning(container_id, "reopen the log of") from exc
            try:
                async with asyncio.timeout(_REOPEN_LOG_TIMEOUT):
                    while not log_path.exists():
                        await inotify.get()
            except TimeoutError as exc:
                raise OCIRuntimeTimeout(
                    container_id, f"conmon did not reopen {log_path}", _REOPEN_LOG_TIMEOUT
                ) from exc

    # ---- exec

    async def exec(
        self, container_id: str, process: Mapping[str, Any], *, stdin: bool = False
    ) -> ExecProcess:
        """Run `process` (an OCI process spec) in the running container with `runc exec`."""
        return await ExecProcess.start(
            runtime_argv=[
                self._handler.runtime_path,
                *conmon.runtime_global_args(self._handler.runtime_root),
            ],
            container_id=container_id,
            process=process,
            stdin=stdin,
            work_dir=self.persist_root / container_id / f"exec-{secrets.token_hex(6)}",
        )

    # ---- recovery

    def container_ids(self) -> list[str]:
        """Containers this runtime keeps files for: created, or being created, through it."""
        try:
            return sorted(entry.name for entry in self.persist_root.iterdir() if entry.is_dir())
        except FileNotFoundError:
            return []

    def is_monitored(self, container_id: str) -> bool:
        """Whether the container's conmon still runs."""
        monitor = _open_conmon(self.persist_root / container_id / "conmon.pid", container_id)
        if monitor is None:
            return False
        monitor.close()
        return True

    async def discard(self, container_id: str) -> None:
        """Remove every trace of a container whose creation was never recorded (a crash).

        Unlike `delete` this does not trust the container to be in any state: its conmon,
        anything conmon started and the runc container are killed. The log is kept.
        """
        await self._tear_down_unfinished(self._paths_of(container_id), remove_log=False)

    def read_exit(self, container_id: str) -> ExitInfo | None:
        """Exit code and time once conmon has recorded the exit, else None."""
        exit_file = self.exits_dir / container_id
        try:
            text = exit_file.read_text().strip()
            finished_at_ns = exit_file.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        try:
            exit_code = int(text)
        except ValueError:
            log.warning("exit file %s holds %r, not an exit code", exit_file, text[:50])
            exit_code = -1
        return ExitInfo(exit_code, finished_at_ns, self._oom_killed(container_id))

    def _oom_killed(self, container_id: str) -> bool:
        if (self.persist_root / container_id / "oom").exists():
            return True
        # conmon may quit on the exit before it handles the OOM event; the cgroup's own
        # counter (there until runc delete) says it too.
        metadata = self._metadata(container_id)
        if metadata is None or metadata.memory_cgroup is None:
            return False
        return cgroups.oom_kills(metadata.memory_cgroup) > 0

    # ---- runc

    async def _runc(
        self, *args: str, container_id: str, stdin: bytes | None = None
    ) -> CommandResult:
        """Run a runc subcommand; its stderr becomes a typed error here and only here."""
        argv = [
            self._handler.runtime_path,
            *conmon.runtime_global_args(self._handler.runtime_root),
            *args,
        ]
        try:
            return await run_command(argv, stdin=stdin, timeout=self.command_timeout)
        except CommandFailed as exc:
            raise _runc_error(container_id, args[0], exc) from exc


class _ProcessWatch:
    """A pidfd on a process that is not our child: tells when it exits, without polling.

    One `wait` at a time (the event loop keeps one reader per fd).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd = os.pidfd_open(pid)

    def __enter__(self) -> _ProcessWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def send_signal(self, sig: int) -> None:
        signal.pidfd_send_signal(self._fd, sig)

    async def wait(self, timeout: float) -> bool:
        """True once the process has exited, False if it still runs after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                await wait_readable(self._fd)
        except TimeoutError:
            return False
        return True


def _open_conmon(pidfile: Path, container_id: str) -> _ProcessWatch | None:
    """A watch on the container's conmon, or None when it is gone (or the pid was reused)."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        watch = _ProcessWatch(pid)
    except ProcessLookupError:
        return None
    # Checked after pinning the process: is it still the conmon of this container?
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    if not argv or os.path.basename(argv[0]) != b"conmon" or container_id.encode() not in argv:
        watch.close()
        return None
    return watch


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, children before grandchildren (one pass over /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            children.setdefault(_parent_pid(int(entry.name)), []).append(int(entry.name))
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue += children.get(child, [])
    return found


def _parent_pid(pid: int) -> int:
    """The parent of `pid` (0 when it is gone)."""
    stat = proc_stat(pid)
    return stat.parent if stat else 0


def _runc_error(container_id: str, operation: str, exc: CommandFailed) -> Exception:
    message = conmon.runtime_message(exc.stderr)
    if "does not exist" in message:
        return RuntimeContainerNotFound(container_id)
    if "not running" in message or "has stopped" in message:
        return RuntimeContainerNotRunning(container_id, operation)
    return OCIRuntimeError(container_id, operation, message)


def _conmon_failure(result: CommandResult) -> str:
    text = result.stderr.decode(errors="replace").strip() or result.stdout.decode(errors="replace")
    return f"conmon exited with {result.returncode}: {text.strip() or 'no output'}"


def _write_atomically(path: Path, text: str) -> None:
    # Lives under runroot (tmpfs, gone at reboot): rename for atomicity, no fsync needed.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
