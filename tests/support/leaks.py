"""Find what a test left behind on the host: mounts, netns, processes, runc containers, cgroups.

`LeakChecker.snapshot()` records the watched host state; `find()` compares a snapshot with
earlier ones and returns the `Leaks` that are new in it; `cleanup()` removes them best-effort
so one leaky test does not pollute the next.

Other test sessions may run on the same host at the same time. Their resources are told apart
and never reported or touched: a resource is foreign when it names another pytest base temp
dir (`.../pytest-of-<user>/pytest-<n>/`); for a process, when its environment carries another
session's SESSION_ENV marker (which daemons and conmon inherit), or its root, working
directory or cgroup names another session; for a cgroup, when its name carries another
session's tag (see `session_cgroup_name`) or a process of another session lives in it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SESSION_ENV = "CRYOPOD_TEST_SESSION"
WATCHED_PROCESS_NAMES = ("conmon", "runc", "crun", "catatonit", "docker-registry")
RUNTIME_STATE_ROOTS = (Path("/run/runc"), Path("/run/crun"))
NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
MARKER = "cryopod"

_PYTEST_TMP = re.compile(r"pytest-of-[^/\s]+/pytest-\d+")
_SESSION_CGROUP = re.compile(r"cryopod-test-([0-9a-f]{8})-[0-9a-f]+")

# Processes started on purpose by long-lived fixtures (the test registries).
_expected_pids: set[int] = set()


def expect_process(pid: int) -> None:
    """Declare `pid` a process a fixture keeps on purpose; it is never reported."""
    _expected_pids.add(pid)


def forget_process(pid: int) -> None:
    _expected_pids.discard(pid)


def session_marker() -> str:
    """This session's marker, set in the environment so the daemons under test inherit it."""
    marker = os.environ.get(SESSION_ENV)
    if not marker:
        marker = uuid.uuid4().hex
        os.environ[SESSION_ENV] = marker
    return marker


def session_cgroup_name() -> str:
    """A cgroup name for a test: tagged with this session, so other sessions leave it alone."""
    return f"cryopod-test-{session_marker()[:8]}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Mount:
    mount_id: int
    target: str
    fstype: str
    source: str
    options: str

    def __str__(self) -> str:
        return f"mount {self.target} ({self.fstype} from {self.source})"


@dataclass(frozen=True)
class Process:
    pid: int
    starttime: int
    name: str
    cmdline: str

    def __str__(self) -> str:
        return f"process {self.pid} {self.name}: {self.cmdline[:200]}"


@dataclass
class Snapshot:
    mounts: set[Mount] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    processes: set[Process] = field(default_factory=set)
    runtime_containers: set[str] = field(default_factory=set)  # "<state root>/<id>"
    cgroups: set[str] = field(default_factory=set)


@dataclass
class Leaks:
    mounts: list[Mount] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    runtime_containers: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.mounts or self.netns or self.processes or self.runtime_containers or self.cgroups
        )

    def lines(self) -> list[str]:
        out = [str(m) for m in self.mounts]
        out += [f"network namespace {NETNS_DIR / name}" for name in self.netns]
        out += [str(p) for p in self.processes]
        out += [f"runtime container {c}" for c in self.runtime_containers]
        out += [f"cgroup {c}" for c in self.cgroups]
        return out

    def describe(self) -> str:
        return "\n".join(f"  - {line}" for line in self.lines())


# ----------------------------------------------------------------------------- reading state


def _unescape(field_text: str) -> str:
    # /proc/*/mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def read_mounts(pid: str = "self") -> list[Mount]:
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            lf = left.split(" ")
            rf = right.split(" ")
            if len(lf) < 6 or len(rf) < 3:
                continue
            mounts.append(
                Mount(
                    mount_id=int(lf[0]),
                    target=_unescape(lf[4]),
                    fstype=rf[0],
                    source=_unescape(rf[1]),
                    options=f"{lf[5]},{rf[2]}",
                )
            )
    return mounts


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


def read_process(pid: int) -> Process | None:
    stat = _read_text(f"/proc/{pid}/stat")
    if stat is None:
        return None
    head, _, tail = stat.rpartition(")")
    name = head.partition("(")[2]
    fields = tail.split()
    try:
        if fields[0] in ("Z", "X"):  # dead: holds nothing, only its parent can reap it
            return None
        starttime = int(fields[19])  # field 22 of stat, counted after the comm
    except (IndexError, ValueError):
        return None
    cmdline = (_read_text(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
    return Process(pid=pid, starttime=starttime, name=name, cmdline=cmdline)


def _process_env_marker(pid: int) -> str | None:
    env = _read_text(f"/proc/{pid}/environ")
    if not env:
        return None
    prefix = f"{SESSION_ENV}="
    for item in env.split("\0"):
        if item.startswith(prefix):
            return item[len(prefix) :]
    return None


def _is_daemon_under_test(cmdline: str) -> bool:
    """`cryopod serve`, or one of its unpacking workers (which must die with it)."""
    argv = cmdline.split()
    if "cryopod.storage.unpack_worker" in argv:
        return True
    if "serve" not in argv:
        return False
    if argv and os.path.basename(argv[0]) == "cryopod":
        return True
    return any(a == "-m" and b == "cryopod" for a, b in itertools.pairwise(argv))


def _ancestors() -> set[int]:
    pids = set()
    pid = os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = _read_text(f"/proc/{pid}/stat")
        if stat is None:
            break
        try:
            pid = int(stat.rpartition(")")[2].split()[1])
        except (IndexError, ValueError):
            break
    return pids


def _cgroup_hierarchies() -> list[Path]:
    if (CGROUP_ROOT / "cgroup.controllers").exists():  # unified (v2) only
        return [CGROUP_ROOT]
    roots = []
    with contextlib.suppress(OSError):
        for entry in sorted(CGROUP_ROOT.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                roots.append(entry)
    return roots


# ----------------------------------------------------------------------------- the checker


class LeakChecker:
    """Snapshots and compares the host state integration tests must leave as they found it.

    `own_paths` are this session's temp dirs (only mounts naming them are watched);
    `marker` is this session's SESSION_ENV value.
    """

    def __init__(self, own_paths: Sequence[Path] = (), marker: str | None = None) -> None:
        self.own_paths = [str(Path(p).resolve()) for p in own_paths]
        self.marker = marker or session_marker()
        self._own_tags = {m.group(0) for p in self.own_paths for m in _PYTEST_TMP.finditer(p)}
        self._skip_pids = _ancestors()
        self.baseline: Snapshot | None = None

    # ---- attribution

    def _foreign_text(self, text: str) -> bool:
        """Does `text` name another test session's temp dir (and none of ours)?"""
        if any(p in text for p in self.own_paths):
            return False
        tags = {m.group(0) for m in _PYTEST_TMP.finditer(text)}
        return bool(tags) and not (tags & self._own_tags)

    def _foreign_process(self, proc: Process) -> bool:
        """Not ours unless it carries our marker, or (a container process, which carries
        none) its command line, root, cwd or cgroup names this session's paths or tag."""
        marker = _process_env_marker(proc.pid)
        if marker is not None:
            return marker != self.marker
        places = [proc.cmdline, _read_text(f"/proc/{proc.pid}/cgroup") or ""]
        for link in ("root", "cwd"):
            with contextlib.suppress(OSError):
                places.append(os.readlink(f"/proc/{proc.pid}/{link}"))
        text = " ".join(places)
        ours = any(p in text for p in self.own_paths) or self.marker[:8] in set(
            _SESSION_CGROUP.findall(text)
        )
        return not ours

    def _foreign_cgroup_tag(self, text: str) -> bool:
        """Does `text` name a cgroup of another session (and none of ours)?"""
        tags = set(_SESSION_CGROUP.findall(text))
        return bool(tags) and self.marker[:8] not in tags

    def _foreign_cgroup(self, path: Path) -> bool:
        """Is this cgroup tagged by another session, or does one of its processes live here?"""
        if self._foreign_cgroup_tag(str(path)):
            return True
        if _SESSION_CGROUP.search(str(path)):
            return False  # ours
        for pid in _pids_in(path):
            proc = read_process(pid)
            if proc is not None and self._foreign_process(proc):
                return True
        return False

    def _watched_mount(self, mount: Mount) -> bool:
        """Mounts of this session: every test works under the session's temp dirs."""
        text = f"{mount.target} {mount.source} {mount.options}"
        return any(p in text for p in self.own_paths)

    # ---- snapshots

    def snapshot(self) -> Snapshot:
        snap = Snapshot()
        snap.mounts = {m for m in read_mounts() if self._watched_mount(m)}
        with contextlib.suppress(OSError):
            snap.netns = set(os.listdir(NETNS_DIR))
        snap.processes = self._watched_processes()
        snap.runtime_containers = self._runtime_containers()
        snap.cgroups = self._cgroups()
        return snap

    def _watched_processes(self) -> set[Process]:
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in self._skip_pids:
                continue
            comm = _read_text(f"/proc/{pid}/comm")
            if comm is None:
                continue
            comm = comm.strip()
            watched = comm in WATCHED_PROCESS_NAMES or comm.startswith(("runc:", "crun:"))
            if not watched and (comm.startswith("python") or comm == "cryopod"):
                cmdline = (_read_text(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
                watched = _is_daemon_under_test(cmdline)
            if not watched:
                continue
            proc = read_process(pid)
            if proc is not None and not self._foreign_process(proc):
                found.add(proc)
        return found

    def _runtime_containers(self) -> set[str]:
        found = set()
        for root in RUNTIME_STATE_ROOTS:
            try:
                names = os.listdir(root)
            except OSError:
                continue
            for name in names:
                state = _read_text(str(root / name / "state.json")) or ""
                if not self._foreign_text(state):
                    found.add(str(root / name))
        return found

    def _cgroups(self) -> set[str]:
        found = set()
        for hierarchy in _cgroup_hierarchies():
            for top, dirs, _files in os.walk(hierarchy):
                rel = os.path.relpath(top, hierarchy)
                if MARKER in rel and not self._foreign_cgroup(Path(top)):
                    found.add(top)
                # nested hierarchies (v1 "unified") are walked on their own
                dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(top, d))]
        return found

    # ---- comparing

    def find(self, current: Snapshot, *earlier: Snapshot) -> Leaks:
        """What `current` holds that none of the `earlier` snapshots did."""

        def known(attr: str) -> set[object]:
            seen: set[object] = set()
            for snap in earlier:
                seen |= getattr(snap, attr)
            return seen

        leaks = Leaks()
        known_mounts = known("mounts")
        leaks.mounts = sorted(
            (m for m in current.mounts if m not in known_mounts),
            key=lambda m: m.mount_id,
        )
        leaks.netns = sorted(current.netns - known("netns"))
        known_procs = known("processes")
        leaks.processes = sorted(
            (p for p in current.processes if p not in known_procs and p.pid not in _expected_pids),
            key=lambda p: p.pid,
        )
        leaks.runtime_containers = sorted(current.runtime_containers - known("runtime_containers"))
        leaks.cgroups = sorted(current.cgroups - known("cgroups"))
        return leaks

    def settle(self, *earlier: Snapshot, timeout: float = 5.0) -> Leaks:
        """`find` on fresh snapshots until nothing leaks or `timeout` passes.

        Monitors exit a moment after the container they watch is removed; a short grace
        period keeps that from being reported.
        """
        deadline = time.monotonic() + timeout
        while True:
            leaks = self.find(self.snapshot(), *earlier)
            if not leaks or time.monotonic() >= deadline:
                return leaks
            time.sleep(0.1)

    # ---- cleaning up

    def cleanup(self, leaks: Leaks) -> list[str]:
        """Remove leaked resources, best-effort; returns what could not be removed."""
        errors: list[str] = []
        for path in leaks.runtime_containers:
            root, _, cid = path.rpartition("/")
            binary = "crun" if root.endswith("/crun") else "runc"
            res = _run([binary, "--root", root, "delete", "--force", cid])
            if res and Path(path).exists():
                errors.append(f"{binary} delete {cid}: {res}")
        for proc in leaks.processes:
            current = read_process(proc.pid)
            if current is None or current.starttime != proc.starttime:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
                os.waitpid(proc.pid, os.WNOHANG)
        for name in leaks.netns:
            res = _run(["ip", "netns", "delete", name])
            if res and (NETNS_DIR / name).exists():
                errors.append(f"ip netns delete {name}: {res}")
        live = {m.mount_id for m in read_mounts()}
        for mount in sorted(leaks.mounts, key=lambda m: m.target.count("/"), reverse=True):
            if mount.mount_id not in live:
                continue
            res = _run(["umount", "-l", mount.target])
            if res:
                errors.append(f"umount {mount.target}: {res}")
        for cgroup in sorted(leaks.cgroups, key=lambda c: c.count("/"), reverse=True):
            errors += _remove_cgroup(Path(cgroup))
        return errors


def _run(argv: list[str]) -> str:
    """Run a cleanup command; '' on success, else what it said."""
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if res.returncode == 0 else (res.stderr.strip() or f"exit {res.returncode}")


def _remove_cgroup(path: Path) -> list[str]:
    if not path.exists():
        return []
    dirs = sorted(
        (p for p in [path, *path.rglob("*")] if p.is_dir()),
        key=lambda p: len(p.parts),
        reverse=True,
    )
    errors = []
    for d in dirs:
        for _attempt in range(20):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                _kill_cgroup_members(d)
                time.sleep(0.05)
        else:
            errors.append(f"rmdir {d}: still busy")
    return errors


def _kill_cgroup_members(path: Path) -> None:
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        with contextlib.suppress(OSError):
            kill_file.write_text("1")
        return
    for pid in _pids_in(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pids_in(path: Path) -> Iterable[int]:
    text = _read_text(str(path / "cgroup.procs")) or ""
    return [int(x) for x in text.split() if x.isdigit()]
