"""The OCI runtime adapter against real runc and conmon, and the exit watcher.

Each test builds OCI bundles by hand (a busybox rootfs, a minimal config.json) under its own
tmp_path, with its own runc root and a cgroup parent `cryopod-test-<session>-<random>` that the
`oci` fixture removes afterwards, along with any container a failing test left.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cryopod import cgroups
from cryopod.containers.oci.exits import ExitWatcher
from cryopod.containers.oci.runtime import (
    ConmonRuntime,
    OCIRuntime,
    RuntimeHandler,
    RuntimeStatus,
)
from cryopod.errors import (
    OCIRuntimeCreateFailed,
    RuntimeContainerNotFound,
    RuntimeContainerNotRunning,
)
from tests.support import find_binary, require_tools
from tests.support.leaks import session_cgroup_name

CGROUP_ROOT = Path("/sys/fs/cgroup")
CRI_LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(?:Z|[+-]\d\d:\d\d) (stdout|stderr) ([PF]) (.*)$"
)
WAIT = 10.0  # seconds any single expected event may take on a slow CI machine


# ----------------------------------------------------------------------------- helpers


def _cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def _cgroup_hierarchies() -> list[Path]:
    if _cgroup_v2():
        return [CGROUP_ROOT]
    return [p for p in sorted(CGROUP_ROOT.iterdir()) if p.is_dir() and not p.is_symlink()]


def _memory_cgroup(cgroup_path: str) -> Path:
    base = CGROUP_ROOT if _cgroup_v2() else CGROUP_ROOT / "memory"
    return base / cgroup_path.lstrip("/")


def _read_memory_limit(cgroup: Path) -> int:
    if _cgroup_v2():
        return int((cgroup / "memory.max").read_text())
    return int((cgroup / "memory.limit_in_bytes").read_text())


def _remove_cgroup_tree(top: Path) -> None:
    if not top.exists():
        return
    for current, dirs, _files in os.walk(top, topdown=False):
        for name in dirs:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(os.path.join(current, name))
    with contextlib.suppress(FileNotFoundError):
        top.rmdir()


def _conmon_pids(container_id: str) -> list[int]:
    """Live (not zombie) conmon processes monitoring `container_id`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        state = stat.rpartition(")")[2].split()[0]
        if state != "Z" and argv and argv[0].endswith(b"conmon") and container_id.encode() in argv:
            pids.append(int(entry))
    return pids


def _busybox_rootfs(rootfs: Path) -> None:
    (rootfs / "bin").mkdir(parents=True)
    for directory in ("proc", "dev", "sys", "tmp"):
        (rootfs / directory).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "sleep", "echo", "printf", "tail", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")


def _config(args: list[str], rootfs: Path, cgroup_path: str, resources: dict[str, Any]) -> Any:
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": "oci-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"],
            },
        ],
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
            "cgroupsPath": cgroup_path,
            "resources": resources,
        },
    }


@dataclass
class OCIEnv:
    """A runtime with its own runc root and directories, and bundles made to order."""

    base: Path
    runtime: ConmonRuntime
    cgroup_parent: str
    rootfs: Path
    created: list[str] = field(default_factory=list)

    @property
    def runc_root(self) -> Path:
        return Path(self.runtime.handler.runtime_root)

    def cgroup_path(self, container_id: str) -> str:
        return f"/{self.cgroup_parent}/{container_id}"

    def bundle(
        self, args: list[str], resources: dict[str, Any] | None = None
    ) -> tuple[str, Path, Path]:
        """A fresh (container id, bundle, log path) running `args`."""
        container_id = secrets.token_hex(32)
        bundle = self.base / "bundles" / container_id[:12]
        bundle.mkdir(parents=True)
        config = _config(args, self.rootfs, self.cgroup_path(container_id), resources or {})
        (bundle / "config.json").write_text(json.dumps(config))
        self.created.append(container_id)
        return container_id, bundle, self.base / "logs" / f"{container_id[:12]}.log"

    async def create(
        self, args: list[str], resources: dict[str, Any] | None = None
    ) -> tuple[str, Path, Path]:
        container_id, bundle, log_path = self.bundle(args, resources)
        await self.runtime.create(container_id, bundle, name=container_id[:12], log_path=log_path)
        return container_id, bundle, log_path

    async def run(
        self, args: list[str], resources: dict[str, Any] | None = None
    ) -> tuple[str, Path]:
        """Create and start; returns the id and the log path."""
        container_id, _bundle, log_path = await self.create(args, resources)
        await self.runtime.start(container_id)
        return container_id, log_path

    def runc_list(self) -> list[str]:
        out = subprocess.run(
            ["runc", "--root", str(self.runc_root), "list", "--format", "json"],
            capture_output=True,
            check=True,
        ).stdout
        return [c["id"] for c in json.loads(out or b"null") or []]

    def cleanup(self) -> None:
        for container_id in self.created:
            subprocess.run(
                ["runc", "--root", str(self.runc_root), "delete", "--force", container_id],
                capture_output=True,
            )
            for pid in _conmon_pids(container_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        for hierarchy in _cgroup_hierarchies():
            _remove_cgroup_tree(hierarchy / self.cgroup_parent)


def _log_lines(log_path: Path) -> list[tuple[str, str, str]]:
    """(stream, P|F, text) of each CRI log line; asserts every line is well-formed."""
    lines = []
    for line in log_path.read_text().splitlines():
        match = CRI_LOG_LINE.match(line)
        assert match, f"not a CRI log line: {line!r}"
        stream, tag, text = match.groups()
        lines.append((stream, tag, text))
    return lines


async def _until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    """Wait for a condition outside our control (a file's contents) with a short poll."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _log_has(log_path: Path, text: str) -> bool:
    return log_path.exists() and text in log_path.read_text()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def oci(tmp_path: Path) -> Iterator[OCIEnv]:
    require_tools("runc", "conmon", files=("/bin/busybox",))
    runc = find_binary("runc")
    conmon = find_binary("conmon")
    assert runc is not None and conmon is not None
    handler = RuntimeHandler(
        name="runc",
        runtime_path=runc,
        runtime_root=str(tmp_path / "runc"),
        monitor_path=conmon,
    )
    runtime = ConmonRuntime(
        handler,
        exits_dir=tmp_path / "exits",
        persist_root=tmp_path / "persist",
        attach_root=tmp_path / "attach",
    )
    (tmp_path / "logs").mkdir()
    rootfs = tmp_path / "rootfs"
    _busybox_rootfs(rootfs)
    env = OCIEnv(
        base=tmp_path,
        runtime=runtime,
        cgroup_parent=session_cgroup_name(),
        rootfs=rootfs,
    )
    try:
        yield env
    finally:
        env.cleanup()


@pytest.fixture
async def watcher(oci: OCIEnv) -> AsyncIterator[ExitWatcher]:
    async with ExitWatcher(oci.runtime.exits_dir) as exit_watcher:
        yield exit_watcher


# ----------------------------------------------------------------------------- lifecycle


async def test_fits_the_protocol(oci: OCIEnv) -> None:
    assert isinstance(oci.runtime, OCIRuntime)


async def test_create_start_logs_and_exit_code(oci: OCIEnv, watcher: ExitWatcher) -> None:
    seen: list[str] = []
    watcher.add_callback(seen.append)
    container_id, bundle, log_path = await oci.create(
        ["sh", "-c", "echo hello; printf part; sleep 1; echo; echo bye >&2; exit 3"]
    )
    state = await oci.runtime.state(container_id)
    assert state.status == RuntimeStatus.CREATED
    assert state.pid > 0
    assert state.bundle == bundle
    assert oci.runtime.read_exit(container_id) is None

    await oci.runtime.start(container_id)
    assert (await oci.runtime.state(container_id)).status == RuntimeStatus.RUNNING
    await _until(lambda: _log_has(log_path, "part"), "the partial line")
    assert _log_lines(log_path) == [("stdout", "F", "hello"), ("stdout", "P", "part")]

    async with asyncio.timeout(WAIT):
        await watcher.wait(container_id)
    assert seen == [container_id]
    exit_info = oci.runtime.read_exit(container_id)
    assert exit_info is not None
    assert exit_info.exit_code == 3
    assert not exit_info.oom_killed
    assert abs(exit_info.finished_at_ns - time.time_ns()) < 30 * 10**9
    assert (await oci.runtime.state(container_id)).status == RuntimeStatus.STOPPED
    lines = _log_lines(log_path)
    assert ("stdout", "F", "") in lines
    assert ("stderr", "F", "bye") in lines

    await oci.runtime.delete(container_id)
    with pytest.raises(RuntimeContainerNotFound):
        await oci.runtime.state(container_id)
    assert not (oci.runtime.persist_root / container_id).exists()
    assert not watcher.has_exited(container_id)
    await oci.runtime.delete(container_id)  # idempotent
    assert oci.runc_list() == []


async def test_stop_escalates_to_sigkill_after_timeout(oci: OCIEnv) -> None:
    container_id, log_path = await oci.run(["sh", "-c", 'trap "" TERM; echo ready; sleep 100'])
    await _until(lambda: _log_has(log_path, "ready"), "the TERM trap to be set")
    started = time.monotonic()
    await oci.runtime.stop(container_id, timeout=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    exit_info = oci.runtime.read_exit(container_id)
    assert exit_info is not None and exit_info.exit_code == 137
    await oci.runtime.stop(container_id, timeout=1.0)  # idempotent, and at once
    assert time.monotonic() - started - elapsed < 0.5
    await oci.runtime.delete(container_id)
    assert _conmon_pids(container_id) == []


async def test_stop_with_a_handled_signal_exits_gracefully(oci: OCIEnv) -> None:
    container_id, log_path = await oci.run(
        ["sh", "-c", 'trap "exit 0" TERM; echo ready; while true; do sleep 0.05; done']
    )
    await _until(lambda: _log_has(log_path, "ready"), "the TERM trap to be set")
    started = time.monotonic()
    await oci.runtime.stop(container_id, timeout=10.0)
    assert time.monotonic() - started < 5.0
    exit_info = oci.runtime.read_exit(container_id)
    assert exit_info is not None and exit_info.exit_code == 0
    await oci.runtime.delete(container_id)


async def test_stop_with_timeout_zero_kills_at_once(oci: OCIEnv) -> None:
    container_id, _log = await oci.run(["sleep", "100"])
    started = time.monotonic()
    await oci.runtime.stop(container_id, timeout=0)
    assert time.monotonic() - started < 1.0
    exit_info = oci.runtime.read_exit(container_id)
    assert exit_info is not None and exit_info.exit_code == 137
    await oci.runtime.delete(container_id)
    await oci.runtime.delete(container_id)
    await oci.runtime.stop(container_id, timeout=0)  # stopping a deleted container: no error
    assert oci.runc_list() == []


async def test_delete_of_a_running_container_forces_it(oci: OCIEnv) -> None:
    container_id, _log = await oci.run(["sleep", "100"])
    await oci.runtime.delete(container_id)
    assert oci.runc_list() == []
    assert _conmon_pids(container_id) == []
    assert not (oci.runtime.exits_dir / container_id).exists()


async def test_a_created_container_can_be_stopped_and_deleted(oci: OCIEnv) -> None:
    container_id, _bundle, _log = await oci.create(["sleep", "100"])
    await oci.runtime.stop(container_id, timeout=0)
    await oci.runtime.delete(container_id)
    assert oci.runc_list() == []


async def test_delete_of_a_created_container_leaves_no_exit_file(oci: OCIEnv) -> None:
    container_id, _bundle, _log = await oci.create(["sleep", "100"])
    await oci.runtime.delete(container_id)
    assert oci.runc_list() == []
    assert _conmon_pids(container_id) == []
    assert list(oci.runtime.exits_dir.iterdir()) == []


async def test_unknown_ids(oci: OCIEnv) -> None:
    unknown = secrets.token_hex(32)
    with pytest.raises(RuntimeContainerNotFound) as excinfo:
        await oci.runtime.state(unknown)
    assert excinfo.value.container_id == unknown
    with pytest.raises(RuntimeContainerNotFound):
        await oci.runtime.start(unknown)
    with pytest.raises(RuntimeContainerNotFound):
        await oci.runtime.kill(unknown, 15)
    with pytest.raises(RuntimeContainerNotFound):
        await oci.runtime.reopen_log(unknown)
    await oci.runtime.stop(unknown, timeout=1.0)
    await oci.runtime.delete(unknown)
    assert oci.runtime.read_exit(unknown) is None


async def test_kill_of_an_exited_container_is_not_running(
    oci: OCIEnv, watcher: ExitWatcher
) -> None:
    container_id, _log = await oci.run(["sh", "-c", "exit 0"])
    async with asyncio.timeout(WAIT):
        await watcher.wait(container_id)
    with pytest.raises(RuntimeContainerNotRunning):
        await oci.runtime.kill(container_id, 15)
    await oci.runtime.delete(container_id)


# ----------------------------------------------------------------------------- failures


async def test_create_failure_reports_runc_and_leaves_nothing(oci: OCIEnv) -> None:
    container_id, bundle, log_path = oci.bundle(["/nonexistent-binary"])
    with pytest.raises(OCIRuntimeCreateFailed) as excinfo:
        await oci.runtime.create(container_id, bundle, name="broken", log_path=log_path)
    error = excinfo.value
    assert error.container_id == container_id
    assert "/nonexistent-binary" in error.runtime_message
    assert "no such file or directory" in error.runtime_message
    assert "time=" not in error.message  # runc's message, not its log line

    assert oci.runc_list() == []
    assert _conmon_pids(container_id) == []
    for hierarchy in _cgroup_hierarchies():
        assert not (hierarchy / oci.cgroup_parent / container_id).exists(), hierarchy
    assert not (oci.runtime.persist_root / container_id).exists()
    assert not (oci.runtime.attach_root / container_id).exists()
    assert not log_path.exists()
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json"]

    # The id is free again.
    (bundle / "config.json").write_text(
        json.dumps(_config(["sh", "-c", "exit 0"], oci.rootfs, oci.cgroup_path(container_id), {}))
    )
    await oci.runtime.create(container_id, bundle, name="fixed", log_path=log_path)
    await oci.runtime.delete(container_id)


async def test_create_with_a_bad_bundle_fails_cleanly(oci: OCIEnv) -> None:
    container_id = secrets.token_hex(32)
    missing = oci.base / "no-such-bundle"
    with pytest.raises(OCIRuntimeCreateFailed):
        await oci.runtime.create(container_id, missing, name="x", log_path=oci.base / "x.log")
    assert oci.runc_list() == []
    assert _conmon_pids(container_id) == []
    assert not (oci.runtime.persist_root / container_id).exists()


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.015, 0.03])
async def test_a_cancelled_create_leaves_nothing(oci: OCIEnv, delay: float) -> None:
    container_id, bundle, log_path = oci.bundle(["sleep", "100"])
    create = asyncio.create_task(
        oci.runtime.create(container_id, bundle, name="cancelled", log_path=log_path)
    )
    await asyncio.sleep(delay)
    create.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await create
    if create.cancelled():
        assert not log_path.exists()
    else:  # it won the race: then it must have worked (and its log stays, as after any run)
        await oci.runtime.delete(container_id)
    assert oci.runc_list() == []
    assert _conmon_pids(container_id) == []
    assert not (oci.runtime.persist_root / container_id).exists()
    for hierarchy in _cgroup_hierarchies():
        assert not (hierarchy / oci.cgroup_parent / container_id).exists(), hierarchy


async def test_oom_kill_is_reported(oci: OCIEnv, watcher: ExitWatcher) -> None:
    limit = 8 * 1024 * 1024
    memory: dict[str, Any] = {"limit": limit}
    if not _cgroup_v2() and (_memory_cgroup("/") / "memory.memsw.limit_in_bytes").exists():
        memory["swap"] = limit  # v1: memory+swap, so the process cannot escape into swap
    container_id, _log = await oci.run(
        ["sh", "-c", "x=a; while true; do x=$x$x; done"], {"memory": memory}
    )
    async with asyncio.timeout(WAIT):
        await watcher.wait(container_id)
    exit_info = oci.runtime.read_exit(container_id)
    assert exit_info is not None
    assert exit_info.exit_code == 137
    assert exit_info.oom_killed
    await oci.runtime.delete(container_id)


async def test_update_resources_changes_the_cgroup(oci: OCIEnv) -> None:
    container_id, _log = await oci.run(["sleep", "100"], {"memory": {"limit": 64 * 1024 * 1024}})
    cgroup = _memory_cgroup(oci.cgroup_path(container_id))
    assert _read_memory_limit(cgroup) == 64 * 1024 * 1024
    await oci.runtime.update_resources(container_id, {"memory": {"limit": 32 * 1024 * 1024}})
    assert _read_memory_limit(cgroup) == 32 * 1024 * 1024
    with pytest.raises(RuntimeContainerNotFound):
        await oci.runtime.update_resources(secrets.token_hex(32), {"memory": {"limit": 1 << 25}})
    await oci.runtime.stop(container_id, timeout=0)
    await oci.runtime.delete(container_id)


async def test_reopen_log_after_rotation(oci: OCIEnv) -> None:
    container_id, log_path = await oci.run(
        ["sh", "-c", "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.02; done"]
    )
    await _until(lambda: _log_has(log_path, "line1\n"), "the first lines")
    rotated = log_path.with_name(log_path.name + ".1")
    log_path.rename(rotated)
    await oci.runtime.reopen_log(container_id)
    assert log_path.exists()
    await _until(lambda: _log_has(log_path, "line"), "lines in the new file")
    assert all(tag == "F" for _stream, tag, _text in _log_lines(log_path))
    await oci.runtime.stop(container_id, timeout=0)

    # With no conmon left to reopen it, no new file may appear.
    log_path.rename(log_path.with_name(log_path.name + ".2"))
    with pytest.raises(RuntimeContainerNotRunning):
        await oci.runtime.reopen_log(container_id)
    assert not log_path.exists()
    await oci.runtime.delete(container_id)


# ----------------------------------------------------------------------------- exit watcher


async def test_watcher_sees_exit_files_written_before_it_started(tmp_path: Path) -> None:
    exits = tmp_path / "exits"
    exits.mkdir()
    (exits / "early").write_text("0")
    async with ExitWatcher(exits) as exit_watcher:
        async with asyncio.timeout(1):
            await exit_watcher.wait("early")
        replayed: list[str] = []
        exit_watcher.add_callback(replayed.append, replay=True)
        assert replayed == ["early"]


async def test_watcher_wakes_waiters_on_rename_and_ignores_temp_files(tmp_path: Path) -> None:
    exits = tmp_path / "exits"
    async with ExitWatcher(exits) as exit_watcher:
        seen: list[str] = []
        remove = exit_watcher.add_callback(seen.append)
        first = asyncio.create_task(exit_watcher.wait("ctr"))
        second = asyncio.create_task(exit_watcher.wait("ctr"))
        await asyncio.sleep(0.05)
        assert not first.done()
        (exits / "ctr.AB12CD").write_text("1")  # conmon's temp file: not an exit yet
        await asyncio.sleep(0.05)
        assert not first.done()
        (exits / "ctr.AB12CD").rename(exits / "ctr")
        async with asyncio.timeout(1):
            await asyncio.gather(first, second)
        assert seen == ["ctr"]
        remove()
        (exits / "other").write_text("0")
        async with asyncio.timeout(1):
            await exit_watcher.wait("other")
        assert seen == ["ctr"]


async def test_a_cancelled_wait_leaves_no_waiter_behind(tmp_path: Path) -> None:
    async with ExitWatcher(tmp_path / "exits") as exit_watcher:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await exit_watcher.wait("never")
        assert exit_watcher._waiters == {}


async def test_conmon_lives_beside_its_container_not_in_our_cgroup(oci: OCIEnv) -> None:
    """A restart that kills the daemon's cgroup (systemd's default) must spare conmon."""
    container_id, _bundle, _log = await oci.create(["sleep", "100"])
    conmon_pid = int((oci.runtime.persist_root / container_id / "conmon.pid").read_text())
    init_pid = (await oci.runtime.state(container_id)).pid
    container_dirs = cgroups.cgroup_dirs_of(init_pid)
    conmon_dirs = cgroups.cgroup_dirs_of(conmon_pid)
    ours = cgroups.cgroup_dirs_of(os.getpid())
    leaf = f"{cgroups.MONITOR_CGROUP_PREFIX}{container_id}"
    assert "memory" in container_dirs or "" in container_dirs
    moved = {
        controllers
        for controllers in container_dirs
        if cgroups.MONITOR_CONTROLLERS.intersection(controllers.split(",") if controllers else [""])
    }
    # The hierarchies systemd tracks units by, and those that account use to the pod.
    assert moved >= {"memory", "pids"} or "" in moved
    for controllers in moved:
        directory = container_dirs[controllers]
        assert conmon_dirs[controllers] == directory.parent / leaf, controllers
        assert conmon_dirs[controllers] != ours.get(controllers)
    await oci.runtime.stop(container_id, 0)
    await oci.runtime.delete(container_id)
    assert not any((d.parent / leaf).exists() for d in container_dirs.values())
