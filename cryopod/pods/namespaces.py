"""Pinned pod namespaces, and the PID 1 of pods that share one PID namespace.

`NamespacePinner` creates a pod's network, IPC and UTS namespaces and keeps them alive with
bind mounts at `<ns_root>/<kind>ns/<sandbox-id>` (CRI-O's layout), with no process left
behind. The work runs in-process on a thread of its own: unshare(2) the namespaces (they are
per thread), set the hostname, bring `lo` up, write the sysctls through /proc/sys (which shows
the calling thread's namespaces), bind-mount /proc/thread-self/ns/<kind>; the thread then ends
and the mounts are all that hold the namespaces. That takes about 1 ms; doing the same with
`unshare --net=F --ipc=F --uts=F` plus `nsenter ... ip`/`sysctl` costs 5-8 ms of fork/exec.

`<ns_root>` is a bind mount of itself with private propagation, made once, so the pinned
mounts do not propagate into other mount namespaces (which would keep a netns alive after
unpinning) and mounts made elsewhere do not show up here.

`PidNamespaceHolder` runs `catatonit -P` as PID 1 of a new PID namespace, in the pod's pinned
namespaces, detached from the daemon so it outlives a daemon restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import signal
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryopod.errors import (
    AlreadyExists,
    CryopodError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ResourceExhausted,
)
from cryopod.fds import wait_readable
from cryopod.ids import check_safe_id
from cryopod.mounts import (
    MS_BIND,
    MS_PRIVATE,
    MS_REC,
    check_libc,
    libc,
    mounted_at,
    sys_mount,
    sys_umount_all,
)
from cryopod.procs import kill_quietly, proc_stat, run_command, which
from cryopod.threads import run_in_own_thread

log = logging.getLogger(__name__)

NAMESPACE_KINDS = ("net", "ipc", "uts")
CLONE_FLAGS = {"net": 0x40000000, "ipc": 0x08000000, "uts": 0x04000000, "pid": 0x20000000}
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which CLONE_NEW* it is
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ_FLAGS = struct.Struct("16sH14x")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$")
_SYSCTL_PART = re.compile(r"^[A-Za-z0-9_.:@+-]+$")
_MAX_SYSCTL_VALUE = 4096
_SBIN_PATH = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# What the launcher's pid may be (comm names, 15 characters at most) before catatonit is up.
_LAUNCHER_NAMES = ("start-stop-daem", "nsenter", "unshare")


# --- validation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sysctl:
    """A validated namespaced sysctl: where it lives under /proc/sys and which ns owns it."""

    name: str
    value: str
    kind: str
    proc_path: str


def parse_sysctl(name: str, value: str) -> Sysctl:
    """Validate one sysctl; only namespaced ones are allowed. Raises InvalidArgument.

    Names are dotted (`net.ipv4.ip_forward`) or, as the kubelet allows, slash-separated when a
    part holds a dot (`net/ipv4/conf/eth0.100/forwarding`).
    """
    parts = name.split("/") if "/" in name else name.split(".")
    if any(p in ("", ".", "..") or not _SYSCTL_PART.match(p) for p in parts):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    kind = _sysctl_namespace(parts)
    if kind is None:
        raise InvalidArgument(
            f"sysctl {name!r} is not namespaced (allowed: net.*, kernel.shm*, kernel.msg*, "
            "kernel.sem*, fs.mqueue.*, kernel.domainname)"
        )
    if any(c in value for c in "\n\r\0") or len(value) > _MAX_SYSCTL_VALUE:
        raise InvalidArgument(f"invalid value for sysctl {name!r}: {value!r}")
    return Sysctl(name, value, kind, "/proc/sys/" + "/".join(parts))


def _sysctl_namespace(parts: list[str]) -> str | None:
    if parts[0] == "net" and len(parts) > 1:
        return "net"
    if parts[0] == "fs" and len(parts) > 2 and parts[1] == "mqueue":
        return "ipc"
    if parts[0] == "kernel" and len(parts) == 2:
        if parts[1].startswith(("shm", "msg", "sem")):
            return "ipc"
        if parts[1] == "domainname":
            return "uts"
    return None


def validate_sysctls(sysctls: Mapping[str, str], kinds: set[str]) -> list[Sysctl]:
    """Parse every sysctl and check the pod gets its own namespace for each."""
    parsed = [parse_sysctl(name, value) for name, value in sysctls.items()]
    for sysctl in parsed:
        if sysctl.kind not in kinds:
            raise InvalidArgument(
                f"sysctl {sysctl.name!r} needs the pod's own {sysctl.kind} namespace, "
                "but the pod uses the host's"
            )
    return parsed


def validate_hostname(hostname: str) -> None:
    if hostname and not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"invalid hostname {hostname!r}")


def is_pinned_namespace(path: Path, kind: str | None = None) -> bool:
    """Is `path` a live namespace (an nsfs bind mount), of `kind` if given?

    A pinned file whose mount went away (a crash, a reboot of /run) is a plain empty file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        nstype = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return False  # ENOTTY: not an nsfs file
    finally:
        os.close(fd)
    return kind is None or nstype == CLONE_FLAGS[kind]


# --- pinning --------------------------------------------------------------------------------


class NamespacePinner:
    """Pod namespaces pinned by bind mounts under `ns_root`."""

    def __init__(self, ns_root: Path) -> None:
        self.ns_root = ns_root
        self._root_private = False

    def path(self, kind: str, sandbox_id: str) -> Path:
        return self.ns_root / f"{kind}ns" / sandbox_id

    async def pin(
        self,
        sandbox_id: str,
        kinds: set[str],
        *,
        hostname: str,
        sysctls: Mapping[str, str] | None = None,
    ) -> dict[str, Path]:
        """Create and pin new namespaces of `kinds` ("net", "ipc", "uts") for a sandbox.

        The UTS namespace gets `hostname`, the netns a loopback that is up, and each sysctl is
        written in its namespace. Raises InvalidArgument for bad input (a sysctl the kernel
        refuses included), AlreadyExists when the sandbox is pinned already; a failure leaves
        no mount and no file.
        """
        check_safe_id("sandbox", sandbox_id)
        unknown = kinds - set(NAMESPACE_KINDS)
        if unknown:
            raise InvalidArgument(f"cannot pin namespaces of kind {sorted(unknown)}")
        validate_hostname(hostname)
        parsed = validate_sysctls(sysctls or {}, kinds)
        if not kinds:
            return {}
        self._ensure_private_root()
        files = {kind: self.path(kind, sandbox_id) for kind in sorted(kinds)}
        work = functools.partial(_pin_on_this_thread, sandbox_id, files, hostname, parsed)
        await run_in_own_thread(
            work,
            name=f"pin-{sandbox_id[:12]}",
            abandon=functools.partial(_unpin_abandoned, sandbox_id, list(files.values())),
        )
        return files

    async def unpin(self, sandbox_id: str) -> None:
        """Unmount and remove the sandbox's pinned namespaces; idempotent."""
        check_safe_id("sandbox", sandbox_id)
        _unpin_files(sandbox_id, [self.path(kind, sandbox_id) for kind in NAMESPACE_KINDS])

    def list_pinned(self) -> dict[str, dict[str, Path]]:
        """Every pin file on disk, live or stale (see `is_pinned_namespace`), by sandbox."""
        found: dict[str, dict[str, Path]] = {}
        for kind in NAMESPACE_KINDS:
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(self.ns_root / f"{kind}ns"):
                    found.setdefault(entry.name, {})[kind] = Path(entry.path)
        return found

    async def release_root(self) -> None:
        """Undo the private bind mount of `ns_root` (tests, uninstall); nothing may be pinned."""
        pinned = self.list_pinned()
        if pinned:
            raise FailedPrecondition(
                f"namespaces of {len(pinned)} sandbox(es) are still pinned under {self.ns_root}"
            )
        try:
            sys_umount_all(self.ns_root)
        except OSError as exc:
            raise Internal(f"unmounting {self.ns_root}: {exc}") from exc
        self._root_private = False

    def _ensure_private_root(self) -> None:
        """Make `ns_root` a private mount (a bind of itself unless it is a mount point)."""
        if self._root_private:
            return
        for kind in NAMESPACE_KINDS:
            (self.ns_root / f"{kind}ns").mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            if mounted_at(self.ns_root) is None:
                # Recursive, so pins under it from before a restart stay visible through it.
                sys_mount(self.ns_root, self.ns_root, None, MS_BIND | MS_REC)
            sys_mount("none", self.ns_root, None, MS_PRIVATE)
        except OSError as exc:
            raise Internal(f"making {self.ns_root} a private mount: {exc}") from exc
        self._root_private = True


def _pin_on_this_thread(
    sandbox_id: str, files: dict[str, Path], hostname: str, sysctls: list[Sysctl]
) -> None:
    """Unshare, configure and bind-mount; runs on a thread that ends right after."""
    flags = 0
    for kind in files:
        flags |= CLONE_FLAGS[kind]
    try:
        check_libc(libc().unshare(flags), "unshare")
        if "uts" in files and hostname:
            name = hostname.encode()
            check_libc(libc().sethostname(name, len(name)), "sethostname")
        if "net" in files:
            _loopback_up()
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceExhausted(f"no namespace left for sandbox {sandbox_id}: {exc}") from exc
        raise Internal(f"creating namespaces of sandbox {sandbox_id}: {exc}") from exc
    for sysctl in sysctls:
        _write_sysctl(sandbox_id, sysctl)
    _bind_all(sandbox_id, files)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = _IFREQ_FLAGS.pack(b"lo", 0)
        flags = _IFREQ_FLAGS.unpack(fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags | _IFF_UP))


def _write_sysctl(sandbox_id: str, sysctl: Sysctl) -> None:
    try:
        fd = os.open(sysctl.proc_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, sysctl.value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            reason = "is unknown or not namespaced in this kernel"
        else:
            reason = f"was refused: {exc.strerror}"
        raise InvalidArgument(
            f"sysctl {sysctl.name}={sysctl.value!r} of sandbox {sandbox_id} {reason}"
        ) from exc


def _bind_all(sandbox_id: str, files: dict[str, Path]) -> None:
    done: list[Path] = []
    try:
        for kind, path in files.items():
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDONLY | os.O_CLOEXEC, 0o444))
            except FileExistsError as exc:
                raise AlreadyExists(f"{kind} namespace of sandbox {sandbox_id} is pinned") from exc
            done.append(path)
            sys_mount(f"/proc/thread-self/ns/{kind}", path, None, MS_BIND)
    except BaseException as exc:
        _unpin_files(sandbox_id, done)
        if isinstance(exc, OSError):
            raise Internal(f"pinning namespaces of sandbox {sandbox_id}: {exc}") from exc
        raise


def _unpin_abandoned(sandbox_id: str, paths: list[Path], succeeded: bool) -> None:
    # A failed pin undid its own work; the files may be another pin's (AlreadyExists).
    if succeeded:
        _unpin_files(sandbox_id, paths)


def _unpin_files(sandbox_id: str, paths: list[Path]) -> None:
    for path in paths:
        try:
            sys_umount_all(path)
        except OSError as exc:
            # Keep the file: it is how recovery finds the mount to try again.
            raise Internal(f"unpinning {path} of sandbox {sandbox_id}: {exc}") from exc
        path.unlink(missing_ok=True)


# --- the shared PID namespace's PID 1 -------------------------------------------------------


@dataclass(frozen=True)
class PidNamespaceHolder:
    """`catatonit -P`, PID 1 of a pod's PID namespace; known by pid and start time.

    It runs as `start-stop-daemon --background` → `nsenter` (the pod's pinned namespaces) →
    `unshare --pid --fork --kill-child` → catatonit. start-stop-daemon double-forks, calls
    setsid and points stdio at /dev/null, so the holder is no child of the daemon and keeps
    none of its pipes. `unshare` stays as catatonit's parent; when it dies its child is killed.
    """

    pid: int
    start_time: int

    @property
    def ns_path(self) -> Path:
        """The PID namespace containers of the pod join."""
        return Path(f"/proc/{self.pid}/ns/pid")

    @classmethod
    async def start(
        cls,
        sandbox_id: str,
        *,
        state_dir: Path,
        join: Mapping[str, Path] | None = None,
        catatonit: str = "catatonit",
        timeout: float = 10.0,
    ) -> PidNamespaceHolder:
        """Start a holder in the namespaces `join` ({"net": path, ...}) of a sandbox.

        `state_dir` holds a transient pid file. Raises FailedPrecondition when a tool is
        missing, Internal when catatonit does not come up; a failure leaves no process.
        """
        check_safe_id("sandbox", sandbox_id)
        argv, catatonit_exe = _holder_argv(join or {}, catatonit)
        pid_file = _fresh_pid_file(state_dir, sandbox_id)
        try:
            async with asyncio.timeout(timeout):
                await run_command(_daemonized(argv, pid_file))
                holder = await _wait_for_catatonit(_read_pid(pid_file), catatonit_exe)
            # Recorded before the launcher's pid file goes: a crash never finds neither.
            _record_file(state_dir, sandbox_id).write_text(f"{holder.pid} {holder.start_time}\n")
        except BaseException as exc:
            _kill_launcher(pid_file)
            if isinstance(exc, CryopodError | asyncio.CancelledError):
                raise
            if isinstance(exc, TimeoutError):
                reason = f"catatonit did not come up within {timeout:g}s"
            else:
                reason = str(exc)
            raise Internal(f"starting the PID namespace of sandbox {sandbox_id}: {reason}") from exc
        finally:
            pid_file.unlink(missing_ok=True)
        log.debug("sandbox %s: catatonit pid %d holds its PID namespace", sandbox_id, holder.pid)
        return holder

    @classmethod
    async def release(cls, state_dir: Path, sandbox_id: str) -> None:
        """Stop the sandbox's holder, a half-started one included, and forget it; idempotent.

        Works from the files `start` leaves in `state_dir`, so it also finds a holder whose
        sandbox a crash kept from being recorded.
        """
        launcher_file = state_dir / f"{sandbox_id}.pidns.pid"
        with contextlib.suppress(OSError, ValueError):
            launcher = _read_pid(launcher_file)
            stat = proc_stat(launcher)
            if stat is not None and stat.comm in _LAUNCHER_NAMES:
                kill_quietly(launcher)
        launcher_file.unlink(missing_ok=True)
        record = _record_file(state_dir, sandbox_id)
        try:
            pid, start_time = (int(field) for field in record.read_text().split())
        except (OSError, ValueError):
            pass
        else:
            holder = cls.find(pid, start_time)
            if holder is not None:
                await holder.stop()
        record.unlink(missing_ok=True)

    @staticmethod
    def sandbox_ids(state_dir: Path) -> set[str]:
        """Sandboxes with a holder recorded or being started in `state_dir`."""
        if not state_dir.is_dir():
            return set()
        return {entry.name.partition(".")[0] for entry in state_dir.glob("*.pidns*")}

    @classmethod
    def find(cls, pid: int, start_time: int) -> PidNamespaceHolder | None:
        """The holder recorded as (pid, start time), if it still runs (after a restart)."""
        stat = proc_stat(pid)
        if stat is None or stat.comm != "catatonit" or stat.start_time != start_time:
            return None
        return cls(pid, start_time)

    def is_running(self) -> bool:
        return self.find(self.pid, self.start_time) is not None

    async def stop(self, timeout: float = 10.0) -> None:
        """Kill catatonit, which ends every process in its namespace; idempotent.

        Waits until it and its `unshare` parent have exited. Nothing needs reaping by us: the
        parent reaps catatonit, and init reaps the parent.
        """
        pidfds = _open_if_same(self.pid, self.start_time)
        if not pidfds:
            return
        try:
            signal.pidfd_send_signal(pidfds[0], signal.SIGKILL)
            async with asyncio.timeout(timeout):
                for fd in pidfds:
                    await wait_readable(fd)
        except ProcessLookupError:
            pass
        except TimeoutError as exc:
            raise Internal(f"catatonit pid {self.pid} did not exit after SIGKILL") from exc
        finally:
            for fd in pidfds:
                os.close(fd)


def _holder_argv(join: Mapping[str, Path], catatonit: str) -> tuple[list[str], str]:
    """[start-stop-daemon, first program, its args...] of the chain, and catatonit's path."""
    tools = {name: which(name, _SBIN_PATH) for name in ("start-stop-daemon", "nsenter", "unshare")}
    tools["catatonit"] = which(catatonit, _SBIN_PATH)
    missing = sorted(name for name, path in tools.items() if path is None)
    if missing:
        raise FailedPrecondition(f"cannot hold a pod PID namespace without {', '.join(missing)}")
    unknown = set(join) - set(NAMESPACE_KINDS)
    if unknown:
        raise InvalidArgument(f"cannot join namespaces of kind {sorted(unknown)}")
    chain = [str(tools["unshare"]), "--pid", "--fork", "--kill-child=SIGKILL", "--"]
    catatonit_exe = os.path.realpath(str(tools["catatonit"]))
    chain += [catatonit_exe, "-P"]
    if join:
        enter = [f"--{kind}={path}" for kind, path in sorted(join.items())]
        chain = [str(tools["nsenter"]), *enter, "--", *chain]
    return [str(tools["start-stop-daemon"]), *chain], catatonit_exe


def _fresh_pid_file(state_dir: Path, sandbox_id: str) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    pid_file = state_dir / f"{sandbox_id}.pidns.pid"
    pid_file.unlink(missing_ok=True)
    return pid_file


def _daemonized(argv: list[str], pid_file: Path) -> list[str]:
    """start-stop-daemon arguments that run argv[1:] in the background."""
    ssd, program, *args = argv
    return [
        ssd,
        "--start",
        "--quiet",
        "--background",
        "--make-pidfile",
        f"--pidfile={pid_file}",
        f"--startas={program}",
        "--",
        *args,
    ]


def _record_file(state_dir: Path, sandbox_id: str) -> Path:
    """Where a running holder's pid and start time are kept."""
    return state_dir / f"{sandbox_id}.pidns"


def _read_pid(pid_file: Path) -> int:
    return int(pid_file.read_text().strip())


def _kill_launcher(pid_file: Path) -> None:
    """Kill what start-stop-daemon launched, if it got that far; its child dies with it."""
    with contextlib.suppress(OSError, ValueError):
        kill_quietly(_read_pid(pid_file))


async def _wait_for_catatonit(launcher: int, catatonit: str) -> PidNamespaceHolder:
    """Find catatonit once the launcher has forked it and it has exec'd.

    start-stop-daemon returns as soon as its daemon runs; nothing signals when that daemon's
    child has exec'd, so look at /proc with short, growing pauses (usually ~3 ms in all).
    """
    delay = 0.0005
    while True:
        child = _only_child(launcher)
        if child is not None and _exe(child) == catatonit:
            stat = proc_stat(child)
            if stat is not None:
                return PidNamespaceHolder(child, stat.start_time)
        launcher_stat = proc_stat(launcher)
        if launcher_stat is None or launcher_stat.state in ("Z", "X"):
            raise Internal(f"the catatonit launcher (pid {launcher}) exited at once")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


def _only_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = f.read().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _open_if_same(pid: int, start_time: int) -> list[int]:
    """pidfds of catatonit and of its `unshare` parent, if pid still is our catatonit.

    The pidfd is opened before the start time is checked, so a reused pid cannot slip in.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return []
    stat = proc_stat(pid)
    same = stat is not None and stat.comm == "catatonit" and stat.start_time == start_time
    if stat is None or not same or stat.state in ("Z", "X"):
        os.close(fd)
        return []
    fds = [fd]
    parent = proc_stat(stat.parent)
    if parent is not None and parent.comm == "unshare":
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(stat.parent))
    return fds


__all__ = [
    "NAMESPACE_KINDS",
    "NamespacePinner",
    "PidNamespaceHolder",
    "Sysctl",
    "is_pinned_namespace",
    "parse_sysctl",
    "validate_sysctls",
]
