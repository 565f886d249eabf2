"""Pinned pod namespaces, the shared-PID holder and the pod's /etc files and /dev/shm, against
the real kernel (root): namespaces are inspected from outside with nsenter."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from cryopod.errors import AlreadyExists, InvalidArgument
from cryopod.mounts import mounted_at, read_mountinfo
from cryopod.pods.files import HOSTS_HEADER, PodFiles
from cryopod.pods.model import DNSConfig
from cryopod.pods.namespaces import (
    NAMESPACE_KINDS,
    NamespacePinner,
    PidNamespaceHolder,
    is_pinned_namespace,
)
from tests.support import require_tools

PORT_SYSCTL = "net.ipv4.ip_unprivileged_port_start"
PORT_SYSCTL_PATH = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
ALL_KINDS = set(NAMESPACE_KINDS)


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


def read(path: str | Path) -> str:
    with open(path) as f:
        return f.read().strip()


def parent_pid(pid: int) -> int:
    return int(read(f"/proc/{pid}/stat").rpartition(")")[2].split()[1])


def start_in_pid_namespace(ns_path: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["nsenter", f"--pid={ns_path}", "--", "sleep", "60"])


def mounts_under(path: Path) -> list[str]:
    """Mount points strictly below `path`."""
    prefix = str(path.resolve()) + "/"
    return [m.target for m in read_mountinfo() if m.target.startswith(prefix)]


def pin_files(ns_root: Path) -> list[Path]:
    return [p for kind in NAMESPACE_KINDS for p in (ns_root / f"{kind}ns").glob("*")]


def assert_nothing_pinned(pinner: NamespacePinner) -> None:
    assert mounts_under(pinner.ns_root) == []
    assert pin_files(pinner.ns_root) == []
    assert pinner.list_pinned() == {}


@pytest.fixture
async def pinner(tmp_path: Path) -> AsyncIterator[NamespacePinner]:
    require_tools("nsenter", "ip", "mount")
    pinner = NamespacePinner(tmp_path / "ns")
    yield pinner
    for sandbox_id in pinner.list_pinned():
        await pinner.unpin(sandbox_id)
    await pinner.release_root()
    assert mounted_at(pinner.ns_root) is None


# --- pinning --------------------------------------------------------------------------------


async def test_pin_configures_each_namespace(pinner: NamespacePinner) -> None:
    outside = read(PORT_SYSCTL_PATH)
    wanted = "1" if outside == "0" else "0"

    files = await pinner.pin("pod1", ALL_KINDS, hostname="pod-one", sysctls={PORT_SYSCTL: wanted})

    assert files == {kind: pinner.path(kind, "pod1") for kind in NAMESPACE_KINDS}
    links = run("nsenter", f"--net={files['net']}", "ip", "-o", "link").splitlines()
    assert len(links) == 1 and links[0].split(":")[1].strip() == "lo"
    assert ",UP" in links[0]
    assert run("nsenter", f"--uts={files['uts']}", "hostname").strip() == "pod-one"
    inside = run("nsenter", f"--net={files['net']}", "cat", str(PORT_SYSCTL_PATH)).strip()
    assert inside == wanted
    assert read(PORT_SYSCTL_PATH) == outside
    for kind, path in files.items():
        assert is_pinned_namespace(path, kind)
        assert os.stat(path).st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino
    assert not is_pinned_namespace(files["net"], "uts")
    assert pinner.list_pinned() == {"pod1": files}
    root_mount = mounted_at(pinner.ns_root)
    assert root_mount is not None
    assert not any(tag.startswith("shared:") for tag in root_mount.propagation)

    await pinner.unpin("pod1")

    assert_nothing_pinned(pinner)
    await pinner.unpin("pod1")  # idempotent


async def test_ipc_sysctl_and_subset_of_kinds(pinner: NamespacePinner) -> None:
    files = await pinner.pin("pod2", {"ipc"}, hostname="ignored", sysctls={"kernel.shmmni": "333"})

    assert set(files) == {"ipc"}
    assert run("nsenter", f"--ipc={files['ipc']}", "cat", "/proc/sys/kernel/shmmni").strip() == (
        "333"
    )
    assert read("/proc/sys/kernel/shmmni") != "333"
    await pinner.unpin("pod2")
    assert_nothing_pinned(pinner)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kernel.panic", "1"),  # not namespaced
        ("vm.swappiness", "1"),
        ("net/../../etc", "1"),
        ("net.ipv4..ip_forward", "1"),
        (PORT_SYSCTL, "0\nkernel.panic=1"),
        (PORT_SYSCTL, "not-a-number"),  # refused by the kernel, inside the new netns
        ("net.ipv4.no_such_setting", "1"),
        ("net.core.rmem_max", "1000000"),  # a net.* sysctl that is not per netns
    ],
)
async def test_bad_sysctl_leaves_nothing(pinner: NamespacePinner, name: str, value: str) -> None:
    with pytest.raises(InvalidArgument):
        await pinner.pin("bad", ALL_KINDS, hostname="pod", sysctls={name: value})
    assert_nothing_pinned(pinner)


async def test_net_sysctl_needs_own_netns(pinner: NamespacePinner) -> None:
    with pytest.raises(InvalidArgument, match="host's"):
        await pinner.pin("hostnet", {"ipc", "uts"}, hostname="pod", sysctls={PORT_SYSCTL: "0"})
    assert_nothing_pinned(pinner)


@pytest.mark.parametrize("sandbox_id", ["../escape", "a/b", "", ".hidden"])
async def test_bad_ids_and_hostnames(pinner: NamespacePinner, sandbox_id: str) -> None:
    with pytest.raises(InvalidArgument):
        await pinner.pin(sandbox_id, ALL_KINDS, hostname="pod")
    with pytest.raises(InvalidArgument):
        await pinner.pin("ok", ALL_KINDS, hostname="bad host\n")
    assert_nothing_pinned(pinner)


async def test_pin_twice_is_refused_and_keeps_the_first(pinner: NamespacePinner) -> None:
    first = await pinner.pin("twice", ALL_KINDS, hostname="first")
    with pytest.raises(AlreadyExists):
        await pinner.pin("twice", ALL_KINDS, hostname="second")
    assert all(is_pinned_namespace(path, kind) for kind, path in first.items())
    assert run("nsenter", f"--uts={first['uts']}", "hostname").strip() == "first"
    await pinner.unpin("twice")
    assert_nothing_pinned(pinner)


async def test_stale_pin_file_is_told_apart_and_removed(pinner: NamespacePinner) -> None:
    await pinner.pin("live", {"net"}, hostname="")
    stale = pinner.path("net", "crashed")
    stale.touch()

    pinned = pinner.list_pinned()
    assert set(pinned) == {"live", "crashed"}
    assert is_pinned_namespace(pinned["live"]["net"], "net")
    assert not is_pinned_namespace(stale)

    await pinner.unpin("crashed")
    await pinner.unpin("live")
    assert_nothing_pinned(pinner)


async def test_cancelled_pin_leaves_nothing(pinner: NamespacePinner) -> None:
    task = asyncio.create_task(pinner.pin("cancelled", ALL_KINDS, hostname="pod"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The pinning thread runs on, and undoes its work when it finishes.
    for thread in threading.enumerate():
        if thread.name == "pin-cancelled":
            thread.join(timeout=10)
    assert_nothing_pinned(pinner)


async def test_fifty_concurrent_pins_and_unpins(pinner: NamespacePinner) -> None:
    ids = [f"pod{i:02d}" for i in range(50)]
    sysctls = {PORT_SYSCTL: "0"}

    async def cycle(sandbox_id: str) -> None:
        files = await pinner.pin(sandbox_id, ALL_KINDS, hostname=sandbox_id, sysctls=sysctls)
        assert is_pinned_namespace(files["net"], "net")
        await pinner.unpin(sandbox_id)

    await asyncio.gather(*(cycle(i) for i in ids))
    assert_nothing_pinned(pinner)


# --- the shared PID namespace ---------------------------------------------------------------


@pytest.fixture
def holders() -> Iterator[list[PidNamespaceHolder]]:
    """Holders a test started; stopped at the end even when the test fails."""
    started: list[PidNamespaceHolder] = []
    yield started
    for holder in started:
        if holder.is_running():
            os.kill(holder.pid, 9)


async def test_pid_namespace_holder(
    pinner: NamespacePinner, tmp_path: Path, holders: list[PidNamespaceHolder]
) -> None:
    require_tools("catatonit", "start-stop-daemon", "unshare", "nsenter")
    files = await pinner.pin("pidpod", ALL_KINDS, hostname="pidpod")
    holder = await PidNamespaceHolder.start("pidpod", state_dir=tmp_path / "state", join=files)
    holders.append(holder)

    assert holder.is_running()
    assert os.stat(holder.ns_path).st_ino != os.stat("/proc/self/ns/pid").st_ino
    for kind, path in files.items():  # it lives in the pod's other namespaces
        assert os.stat(f"/proc/{holder.pid}/ns/{kind}").st_ino == os.stat(path).st_ino
    assert parent_pid(holder.pid) != os.getpid()  # not our child: survives the daemon
    # The launcher's pid file was transient; the record of the holder stays for recovery.
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["pidpod.pidns"]
    assert PidNamespaceHolder.sandbox_ids(tmp_path / "state") == {"pidpod"}
    pid1 = run(
        "nsenter", f"--pid={holder.ns_path}", "--",
        "unshare", "--mount", "--mount-proc", "cat", "/proc/1/comm",
    )  # fmt: skip
    assert pid1.strip() == "catatonit"
    assert PidNamespaceHolder.find(holder.pid, holder.start_time) == holder
    assert PidNamespaceHolder.find(holder.pid, holder.start_time + 1) is None

    # A process of the pod: stopping the holder must end it too.
    member = start_in_pid_namespace(holder.ns_path)
    try:
        await asyncio.sleep(0.1)
        await holder.stop()
        assert member.wait(timeout=10) != 0
    finally:
        if member.poll() is None:
            member.kill()
            member.wait()

    assert not holder.is_running()
    assert PidNamespaceHolder.find(holder.pid, holder.start_time) is None
    await holder.stop()  # idempotent
    await PidNamespaceHolder.release(tmp_path / "state", "pidpod")
    assert not list((tmp_path / "state").iterdir())
    await pinner.unpin("pidpod")


async def test_release_finds_the_holder_from_its_record(
    pinner: NamespacePinner, tmp_path: Path, holders: list[PidNamespaceHolder]
) -> None:
    """After a daemon crash only the state dir knows the holder: release stops it."""
    require_tools("catatonit", "start-stop-daemon", "unshare", "nsenter")
    files = await pinner.pin("lost", ALL_KINDS, hostname="lost")
    holder = await PidNamespaceHolder.start("lost", state_dir=tmp_path / "state", join=files)
    holders.append(holder)
    await PidNamespaceHolder.release(tmp_path / "state", "lost")
    assert not holder.is_running()
    assert PidNamespaceHolder.sandbox_ids(tmp_path / "state") == set()
    await PidNamespaceHolder.release(tmp_path / "state", "lost")  # idempotent
    await pinner.unpin("lost")


async def test_pid_namespace_holder_without_pod_namespaces(
    tmp_path: Path, holders: list[PidNamespaceHolder]
) -> None:
    require_tools("catatonit", "start-stop-daemon", "unshare")
    holder = await PidNamespaceHolder.start("hostns", state_dir=tmp_path)
    holders.append(holder)
    assert os.stat(f"/proc/{holder.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    await holder.stop()
    assert not holder.is_running()


# --- the pod's /etc files and /dev/shm ------------------------------------------------------


def test_pod_files_with_dns(tmp_path: Path) -> None:
    files = PodFiles(tmp_path / "run")
    dns = DNSConfig(
        servers=("10.96.0.10", "fd00::a"),
        searches=("default.svc.cluster.local", "svc.cluster.local"),
        options=("ndots:5", "edns0"),
    )

    paths = files.write("pod1", hostname="web-0", dns=dns, ip_addresses=("10.88.0.5",))

    assert paths.hostname.read_text() == "web-0\n"
    assert paths.hosts.read_text() == HOSTS_HEADER + "10.88.0.5\tweb-0\n"
    assert paths.resolv_conf.read_text() == (
        "search default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5 edns0\n"
    )
    files.write_hosts("pod1", hostname="web-0", ip_addresses=("10.88.0.6",))
    assert paths.hosts.read_text().endswith("10.88.0.6\tweb-0\n")
    files.remove("pod1")
    assert not files.pod_dir("pod1").exists()
    files.remove("pod1")  # idempotent


def test_pod_files_copy_host_resolv_conf(tmp_path: Path) -> None:
    host = tmp_path / "host-resolv.conf"
    host.write_text("nameserver 192.0.2.1\n")
    files = PodFiles(tmp_path / "run", host_resolv_conf=host)

    paths = files.write("pod2", hostname="", dns=DNSConfig())

    assert paths.resolv_conf.read_text() == "nameserver 192.0.2.1\n"
    assert paths.hosts.read_text() == HOSTS_HEADER
    files.remove("pod2")


@pytest.mark.parametrize(
    "dns",
    [
        DNSConfig(servers=("not-an-ip",)),
        DNSConfig(servers=("10.0.0.1\nnameserver 1.1.1.1",)),
        DNSConfig(searches=("bad domain",)),
        DNSConfig(options=("ndots:5\nsearch evil",)),
    ],
)
def test_bad_dns_config_writes_nothing(tmp_path: Path, dns: DNSConfig) -> None:
    files = PodFiles(tmp_path / "run")
    with pytest.raises(InvalidArgument):
        files.write("pod3", hostname="pod", dns=dns)
    assert not files.pod_dir("pod3").exists()


def test_pod_shm(tmp_path: Path) -> None:
    files = PodFiles(tmp_path / "run", shm_size=8 << 20)

    path = files.mount_shm("pod4")
    try:
        entry = mounted_at(path)
        assert entry is not None and entry.fstype == "tmpfs"
        assert {"nosuid", "nodev", "noexec", "size=8192k"} <= entry.options
        assert stat.S_IMODE(path.stat().st_mode) == 0o1777
        assert files.mount_shm("pod4") == path  # idempotent
        assert len([m for m in read_mountinfo() if m.target == str(path.resolve())]) == 1
        files.write("pod4", hostname="pod", dns=None)
    finally:
        files.remove("pod4")
    assert mounted_at(path) is None
    assert not files.pod_dir("pod4").exists()
