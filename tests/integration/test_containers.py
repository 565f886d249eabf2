"""Container features through a running daemon, checked from inside the container or the host's
cgroup files: users and groups, command/args/env merging, read-only root, capabilities, masked
paths, resource limits, OOM kills, stop signals and timeouts, resource updates, log reopening,
and many pods at once. Real runc, conmon and overlayfs; every assertion can fail.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon, insecure_registries_conf
from tests.integration.test_pods import create, pod_config, run_pod, teardown, wait_for_state
from tests.support import imagebuild as ib
from tests.support.registry import PushedImages, Registry, push

CGROUP_ROOT = Path("/sys/fs/cgroup")
MiB = 1024 * 1024
EXIT_WAIT = 20.0
LOG_WAIT = 10.0
END = "__end__"
# Kernel capability numbers (linux/capability.h), written out so that the tests do not share
# a table with the code under test.
CAP_BITS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
}
# CRI-O's default set, which cryopod documents as its own default.
DEFAULT_CAPS = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
)
_LOG_LINE = re.compile(r"^(\S+) (stdout|stderr) ([PF]) ?(.*)$")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def busybox(daemon: Daemon, test_images: PushedImages) -> str:
    image = test_images.ref("busybox")
    daemon.pull(image)
    return image


@pytest.fixture
def configured(daemon: Daemon, test_images: PushedImages) -> str:
    """busybox with Entrypoint, Cmd, Env, WorkingDir, User app, StopSignal SIGUSR1, /data."""
    image = test_images.ref("configured")
    daemon.pull(image)
    return image


# Images this module builds on top of the busybox layer: name -> runtime config.
EXTRA_IMAGES: dict[str, dict[str, Any]] = {
    "user-group": {**ib.BUSYBOX_CONFIG, "User": "app:staff"},
    "user-numeric": {**ib.BUSYBOX_CONFIG, "User": "4321:4242"},
    "user-bad-group": {**ib.BUSYBOX_CONFIG, "User": "app:no-such-group"},
    "rt-stop-signal": {
        **ib.BUSYBOX_CONFIG,
        "Entrypoint": ["/bin/sh", "-c"],
        "Cmd": ["sleep 600"],
        "StopSignal": "SIGRTMIN+3",
    },
}


@pytest.fixture(scope="module")
def extra_images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """EXTRA_IMAGES pushed to the session's registry; name -> reference."""
    layout = ib.LayoutBuilder(tmp_path_factory.mktemp("extra-images") / "layout")
    refs = {}
    for name, config in EXTRA_IMAGES.items():
        layout.add_image([(ib.busybox_layer(), "gzip")], config=config, ref_name=name)
        push(layout.root, name, registry, f"containers-{name}:latest")
        refs[name] = f"{registry.host}/containers-{name}:latest"
    return refs


def pulled(daemon: Daemon, extra_images: dict[str, str], name: str) -> str:
    daemon.pull(extra_images[name])
    return extra_images[name]


@contextlib.contextmanager
def running_pod(
    daemon: Daemon, name: str, logs: Path, parent: str
) -> Iterator[tuple[str, cri.PodSandboxConfig]]:
    """A ready pod, stopped and removed (with its containers) however the block ends."""
    pod = pod_config(name, logs, parent)
    pod_id = run_pod(daemon, pod)
    try:
        yield pod_id, pod
    finally:
        teardown(daemon, pod_id)


def container(
    name: str,
    image: str,
    *,
    script: str | None = None,
    command: Sequence[str] = (),
    args: Sequence[str] = (),
    envs: dict[str, str] | None = None,
    security: cri.LinuxContainerSecurityContext | None = None,
    resources: cri.LinuxContainerResources | None = None,
    mounts: Sequence[cri.Mount] = (),
    stop_signal: cri.Signal.ValueType = cri.RUNTIME_DEFAULT,
    working_dir: str = "",
) -> cri.ContainerConfig:
    """A container config; `script` is shorthand for `command: [/bin/sh, -c, script]`."""
    if script is not None:
        command = ["/bin/sh", "-c", script]
    linux = cri.LinuxContainerConfig()
    if security is not None:
        linux.security_context.CopyFrom(security)
    if resources is not None:
        linux.resources.CopyFrom(resources)
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=image),
        command=list(command),
        args=list(args),
        envs=[cri.KeyValue(key=k, value=v) for k, v in (envs or {}).items()],
        mounts=list(mounts),
        log_path=f"{name}/0.log",
        working_dir=working_dir,
        linux=linux,
        stop_signal=stop_signal,
    )


def log_file(logs: Path, name: str) -> Path:
    return logs / name / "0.log"


def log_text(path: Path) -> str:
    """The container's output from a CRI log file: partial lines joined, streams merged."""
    if not path.exists():
        return ""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        assert match, f"not a CRI log line in {path}: {line!r}"
        out.append(match.group(4) + ("\n" if match.group(3) == "F" else ""))
    return "".join(out)


def contains(text: str) -> Callable[[str], bool]:
    return lambda output: text in output


def wait_for_log(path: Path, predicate: Callable[[str], bool], timeout: float = LOG_WAIT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = log_text(path)
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never matched; it holds:\n{text}")
        time.sleep(0.05)


def start(daemon: Daemon, ctr_id: str) -> None:
    daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_id), timeout=30)


def start_running(
    daemon: Daemon, pod_id: str, pod: cri.PodSandboxConfig, config: cri.ContainerConfig
) -> str:
    ctr_id = create(daemon, pod_id, config, pod)
    start(daemon, ctr_id)
    status = wait_for_state(daemon, ctr_id, cri.CONTAINER_RUNNING)
    assert status.state == cri.CONTAINER_RUNNING, status
    return ctr_id


def run_to_exit(
    daemon: Daemon,
    pod_id: str,
    pod: cri.PodSandboxConfig,
    config: cri.ContainerConfig,
    *,
    until: str | None = END,
) -> tuple[cri.ContainerStatus, str]:
    """Create and start a container, wait for its exit; its status and output.

    `until`: a line the output ends with, so the log is read only once conmon wrote it all.
    """
    ctr_id = create(daemon, pod_id, config, pod)
    start(daemon, ctr_id)
    status = wait_for_state(daemon, ctr_id, cri.CONTAINER_EXITED, timeout=EXIT_WAIT)
    assert status.state == cri.CONTAINER_EXITED, f"{config.metadata.name}: {status}"
    path = Path(pod.log_directory) / config.log_path
    if until is None:
        return status, log_text(path)
    return status, wait_for_log(path, lambda text: f"{until}\n" in text)


def rpc_error(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    return caught.value


def stop(daemon: Daemon, ctr_id: str, timeout: int) -> float:
    """StopContainer; how long it took."""
    started = time.monotonic()
    daemon.runtime.StopContainer(
        cri.StopContainerRequest(container_id=ctr_id, timeout=timeout), timeout=timeout + 30
    )
    return time.monotonic() - started


def verbose_info(daemon: Daemon, ctr_id: str) -> dict[str, Any]:
    response = daemon.runtime.ContainerStatus(
        cri.ContainerStatusRequest(container_id=ctr_id, verbose=True), timeout=10
    )
    info: dict[str, Any] = json.loads(response.info["info"])
    return info


# ----------------------------------------------------------------------------- cgroups


def cgroup_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def v1_hierarchy(controller: str) -> Path:
    """Where the v1 hierarchy with `controller` is mounted (cpu may share one with cpuacct)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _source, options = tail.split()[:3]
        if fstype == "cgroup" and controller in options.split(","):
            return Path(fields.split()[4])
    raise AssertionError(f"no cgroup v1 hierarchy has the {controller} controller")


def cgroup_dir(controller: str, path: str) -> Path:
    base = CGROUP_ROOT if cgroup_v2() else v1_hierarchy(controller)
    return base / path.lstrip("/")


def process_cgroup(pid: int, controller: str) -> str:
    """The cgroup of `pid` in the hierarchy that has `controller` (v2: its one cgroup)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if cgroup_v2() and controllers == "":
            return path
        if not cgroup_v2() and controller in controllers.split(","):
            return path
    raise AssertionError(f"process {pid} has no {controller} cgroup")


def container_cgroup(parent: str, ctr_id: str) -> str:
    """Where the cgroupfs driver puts a container: `<cgroup_parent>/cryopod-<id>`."""
    return f"{parent.rstrip('/')}/cryopod-{ctr_id}"


def memory_limit(path: str) -> int:
    if cgroup_v2():
        return int((cgroup_dir("memory", path) / "memory.max").read_text())
    return int((cgroup_dir("memory", path) / "memory.limit_in_bytes").read_text())


def cpu_quota_period(path: str) -> tuple[int, int]:
    if cgroup_v2():
        quota, period = (cgroup_dir("cpu", path) / "cpu.max").read_text().split()
        return (-1 if quota == "max" else int(quota)), int(period)
    cpu = cgroup_dir("cpu", path)
    return int((cpu / "cpu.cfs_quota_us").read_text()), int((cpu / "cpu.cfs_period_us").read_text())


def cpu_weight_or_shares(path: str) -> int:
    if cgroup_v2():
        return int((cgroup_dir("cpu", path) / "cpu.weight").read_text())
    return int((cgroup_dir("cpu", path) / "cpu.shares").read_text())


def shares_as_read_back(shares: int) -> set[int]:
    """What the cgroup may show for `shares`: itself on v1; on v2 the weight runc converts it
    to, linearly (runc < 1.3) or on the log scale of runc >= 1.3 and crun >= 1.23.
    """
    if not cgroup_v2():
        return {shares}
    linear = 1 + ((shares - 2) * 9999) // 262142
    exponent = (math.log2(shares) ** 2 + 125 * math.log2(shares)) / 612.0 - 7.0 / 34.0
    return {linear, math.ceil(10**exponent)}


def cpuset_cpus(path: str) -> str:
    return (cgroup_dir("cpuset", path) / "cpuset.cpus").read_text().strip()


# A shell line that prints the memory limit as the container itself sees it.
INSIDE_MEMORY_LIMIT = (
    "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
)


# ----------------------------------------------------------------------------- users


_ID = re.compile(r"uid=(\d+)\S* gid=(\d+)\S*(?: groups=(\S+))?")


def parse_id(output: str) -> tuple[int, int, set[int]]:
    """uid, gid and groups from busybox `id` output in the container's log."""
    match = _ID.search(output)
    assert match, f"no `id` output in {output!r}"
    groups = {int(g.split("(")[0]) for g in (match.group(3) or "").split(",") if g}
    return int(match.group(1)), int(match.group(2)), groups


def status_groups(output: str) -> set[int]:
    """The supplementary groups the kernel holds for the process (/proc/self/status)."""
    match = re.search(r"^Groups:\s*(.*)$", output, re.MULTILINE)
    assert match, f"no Groups line in {output!r}"
    return {int(g) for g in match.group(1).split()}


USER_SCRIPT = f"id; grep '^Groups:' /proc/self/status; echo home=$HOME; echo {END}"


def test_user_and_groups_resolved_through_the_image_files(
    daemon: Daemon, busybox: str, configured: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    with running_pod(daemon, "users", logs, cgroup_parent) as (pod_id, pod):
        # A name: uid, primary gid and home from /etc/passwd, memberships from /etc/group.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "by-name",
                busybox,
                script=USER_SCRIPT,
                security=cri.LinuxContainerSecurityContext(run_as_username="app"),
            ),
        )
        assert parse_id(out)[:2] == (1000, 1000), out
        assert status_groups(out) == {1000, 50}, out
        assert "home=/home/app" in out

        # A uid with run_as_group and supplemental groups: the group replaces the primary one,
        # and the user's /etc/group memberships (staff) join the requested groups.
        by_uid, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "by-uid",
                busybox,
                script=USER_SCRIPT,
                security=cri.LinuxContainerSecurityContext(
                    run_as_user=cri.Int64Value(value=1000),
                    run_as_group=cri.Int64Value(value=4000),
                    supplemental_groups=[4242, 4343],
                ),
            ),
        )
        uid, gid, groups = parse_id(out)
        assert (uid, gid) == (1000, 4000), out
        assert status_groups(out) == {4000, 50, 4242, 4343} == groups, out
        # ContainerStatus.user says the same as the process.
        reported = by_uid.user.linux
        assert (reported.uid, reported.gid) == (1000, 4000)
        assert set(reported.supplemental_groups) == groups

        # A uid /etc/passwd does not know: gid 0, HOME=/.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "unknown-uid",
                busybox,
                script=USER_SCRIPT,
                security=cri.LinuxContainerSecurityContext(run_as_user=cri.Int64Value(value=4321)),
            ),
        )
        assert parse_id(out)[:2] == (4321, 0), out
        assert "home=/\n" in out

        # run_as_user 0 overrides the image's `User: app`.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "root-over-image",
                configured,
                script=USER_SCRIPT,
                security=cri.LinuxContainerSecurityContext(run_as_user=cri.Int64Value(value=0)),
            ),
        )
        assert parse_id(out)[:2] == (0, 0), out

        # No user in the request: the image's `User: app` applies.
        _, out = run_to_exit(
            daemon, pod_id, pod, container("image-user", configured, script=USER_SCRIPT)
        )
        assert parse_id(out)[:2] == (1000, 1000), out
        assert status_groups(out) == {1000, 50}, out


def test_image_user_with_a_group(
    daemon: Daemon, extra_images: dict[str, str], tmp_path: Path, cgroup_parent: str
) -> None:
    user_group = pulled(daemon, extra_images, "user-group")
    numeric = pulled(daemon, extra_images, "user-numeric")
    bad_group = pulled(daemon, extra_images, "user-bad-group")
    with running_pod(daemon, "imageuser", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        # `User: app:staff`: the named group is the primary one.
        _, out = run_to_exit(
            daemon, pod_id, pod, container("named", user_group, script=USER_SCRIPT)
        )
        assert parse_id(out)[:2] == (1000, 50), out
        assert status_groups(out) == {50}, out
        assert "home=/home/app" in out

        # `User: 4321:4242`: ids that neither file knows are used as they are.
        _, out = run_to_exit(daemon, pod_id, pod, container("ids", numeric, script=USER_SCRIPT))
        assert parse_id(out)[:2] == (4321, 4242), out
        assert status_groups(out) == {4242}, out

        # run_as_group replaces the image's group.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "regrouped",
                user_group,
                script=USER_SCRIPT,
                security=cri.LinuxContainerSecurityContext(run_as_group=cri.Int64Value(value=4000)),
            ),
        )
        assert parse_id(out)[:2] == (1000, 4000), out

        # A group name /etc/group lacks is the image's mistake, said clearly.
        error = rpc_error(
            daemon.runtime.CreateContainer,
            cri.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                config=container("bad", bad_group, script="id"),
                sandbox_config=pod,
            ),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-group" in (error.details() or "")


def test_an_unknown_username_is_invalid_argument_and_leaves_nothing(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    with running_pod(daemon, "nouser", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        bad = container(
            "who",
            busybox,
            script="id",
            security=cri.LinuxContainerSecurityContext(run_as_username="no-such-user"),
        )
        error = rpc_error(
            daemon.runtime.CreateContainer,
            cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=bad, sandbox_config=pod),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no-such-user" in (error.details() or "")
        listed = daemon.runtime.ListContainers(cri.ListContainersRequest(), timeout=5).containers
        assert list(listed) == []
        # The failed create released the name.
        good = container("who", busybox, script=f"id; echo {END}")
        _, out = run_to_exit(daemon, pod_id, pod, good)
        assert parse_id(out)[:2] == (0, 0)


# ----------------------------------------------------------------------------- args and env


def test_command_args_and_env_merge_with_the_image(
    daemon: Daemon, configured: str, tmp_path: Path, cgroup_parent: str
) -> None:
    """The image: Entrypoint [/bin/sh, -c], Cmd [echo $GREETING], GREETING and EMPTY set."""
    with running_pod(daemon, "merge", tmp_path / "logs", cgroup_parent) as (pod_id, pod):

        def output(config: cri.ContainerConfig) -> str:
            status, out = run_to_exit(daemon, pod_id, pod, config, until=None)
            assert status.exit_code == 0, (status, out)
            return wait_for_log(
                Path(pod.log_directory) / config.log_path, lambda text: text.endswith("\n")
            )

        # Neither: Entrypoint + Cmd, with the image's Env.
        assert output(container("neither", configured)) == "hello from the image\n"
        # Args only: they replace Cmd and keep the Entrypoint.
        assert (
            output(container("args", configured, args=["echo args:$GREETING:$(pwd)"]))
            == "args:hello from the image:/home/app\n"
        )
        # Command only: replaces the Entrypoint and drops the Cmd (else "echo $GREETING" would
        # be printed too).
        assert output(container("command", configured, command=["/bin/echo", "cmd"])) == "cmd\n"
        # Both: command + args, nothing of the image's.
        assert (
            output(container("both", configured, command=["/bin/echo"], args=["a", "b c"]))
            == "a b c\n"
        )
        # working_dir replaces the image's WorkingDir.
        assert output(container("cwd", configured, args=["pwd"], working_dir="/tmp")) == "/tmp\n"
        # Envs override the image's by name and add new ones; the image's others stay.
        env_out = output(
            container(
                "env",
                configured,
                args=['echo "$GREETING|$EXTRA|${EMPTY-unset}|$PATH|$HOME|$HOSTNAME"'],
                envs={"GREETING": "overridden", "EXTRA": "x=y"},
            )
        )
        assert env_out == (
            "overridden|x=y||/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            "|/home/app|merge\n"
        )


# ----------------------------------------------------------------------------- read-only root


def test_readonly_rootfs_refuses_writes_but_mounts_stay_writable(
    daemon: Daemon, busybox: str, configured: str, tmp_path: Path, cgroup_parent: str
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    ro = cri.LinuxContainerSecurityContext(readonly_rootfs=True)
    try_writes = (
        "for p in /rootfile /tmp/f /etc/hosts /dev/shm/f /mnt/vol/f; do "
        "if echo x 2>/dev/null >$p; then echo $p=ok; else echo $p=refused; fi; done; "
        f"echo {END}"
    )
    mount = cri.Mount(container_path="/mnt/vol", host_path=str(volume))
    with running_pod(daemon, "ro", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container("ro", busybox, script=try_writes, security=ro, mounts=[mount]),
        )
        # No tmpfs on /tmp: a read-only root means read-only /tmp (as with CRI-O and
        # containerd); /etc/hosts follows the root. /dev/shm and a CRI mount stay writable.
        assert "/rootfile=refused" in out
        assert "/tmp/f=refused" in out
        assert "/etc/hosts=refused" in out
        assert "/dev/shm/f=ok" in out
        assert "/mnt/vol/f=ok" in out
        assert (volume / "f").read_text() == "x\n"

        # The same writes with a writable root succeed.
        _, out = run_to_exit(
            daemon, pod_id, pod, container("rw", busybox, script=try_writes, mounts=[mount])
        )
        assert "/rootfile=ok" in out and "/tmp/f=ok" in out and "/etc/hosts=ok" in out

        # An image's declared volume (/data) is writable on a read-only root.
        volume_status, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "volume",
                configured,
                script=f"echo x >/data/f && echo data=ok; echo {END}",
                security=cri.LinuxContainerSecurityContext(
                    readonly_rootfs=True, run_as_user=cri.Int64Value(value=0)
                ),
            ),
        )
        assert "data=ok" in out
        # It is a directory on disk beside the container's writable layer, not a tmpfs.
        backing = daemon.root / "containers" / volume_status.id / "volumes" / "data" / "f"
        assert backing.read_text() == "x\n"


# ----------------------------------------------------------------------------- capabilities


def cap_mask(names: Sequence[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << CAP_BITS[name]
    return mask


def capability_sets(output: str) -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb as printed from /proc/self/status."""
    return {
        key: int(value, 16) for key, value in re.findall(r"^(Cap\w+):\s*([0-9a-f]+)$", output, re.M)
    }


def host_bounding_set(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return capability_sets(text)["CapBnd"]


def test_capability_sets_read_from_inside(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    assert daemon.proc is not None
    host = host_bounding_set(daemon.proc.pid)
    default = cap_mask(DEFAULT_CAPS)
    cases: dict[str, tuple[cri.LinuxContainerSecurityContext, int]] = {
        "default": (cri.LinuxContainerSecurityContext(), default),
        # The kubelet's spelling (no CAP_ prefix) and ours both work.
        "add-drop": (
            cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(
                    add_capabilities=["NET_ADMIN", "CAP_SYS_TIME"],
                    drop_capabilities=["KILL", "CAP_CHOWN"],
                )
            ),
            (default | cap_mask(["CAP_NET_ADMIN", "CAP_SYS_TIME"]))
            & ~cap_mask(["CAP_KILL", "CAP_CHOWN"]),
        ),
        "drop-all-add-one": (
            cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(
                    drop_capabilities=["ALL"], add_capabilities=["NET_BIND_SERVICE"]
                )
            ),
            cap_mask(["CAP_NET_BIND_SERVICE"]),
        ),
        "drop-all": (
            cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(drop_capabilities=["ALL"])
            ),
            0,
        ),
        # Everything the host can give: what it lacks (CAP_SYS_RESOURCE on some hosts) is left
        # out rather than failing the container.
        "add-all": (
            cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(add_capabilities=["ALL"])
            ),
            host,
        ),
        "privileged": (cri.LinuxContainerSecurityContext(privileged=True), host),
        # Asked for by name, a capability the host lacks is left out too.
        "add-sys-resource": (
            cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(add_capabilities=["SYS_RESOURCE"])
            ),
            (default | cap_mask(["CAP_SYS_RESOURCE"])) & host,
        ),
    }
    script = f"grep -E '^(Cap|NoNewPrivs)' /proc/self/status; echo {END}"
    with running_pod(daemon, "caps", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        for name, (security, expected) in cases.items():
            status, out = run_to_exit(
                daemon, pod_id, pod, container(name, busybox, script=script, security=security)
            )
            assert status.exit_code == 0, (name, status)
            sets = capability_sets(out)
            got = {key: sets[key] for key in ("CapEff", "CapPrm", "CapBnd")}
            assert got == dict.fromkeys(got, expected), (
                f"{name}: expected {expected:#x}, got { {k: hex(v) for k, v in got.items()} }"
            )
            assert sets["CapAmb"] == 0 and sets["CapInh"] == 0, (name, sets)
            assert re.search(r"^NoNewPrivs:\s*0$", out, re.M), (name, out)

        # no_new_privs reaches the process.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "no-new-privs",
                busybox,
                script=script,
                security=cri.LinuxContainerSecurityContext(no_new_privs=True),
            ),
        )
        assert re.search(r"^NoNewPrivs:\s*1$", out, re.M), out

    # An unknown capability is the client's mistake.
    with running_pod(daemon, "badcap", tmp_path / "logs2", cgroup_parent) as (pod_id, pod):
        bad = container(
            "bad",
            busybox,
            script="true",
            security=cri.LinuxContainerSecurityContext(
                capabilities=cri.Capability(add_capabilities=["CAP_FLY"])
            ),
        )
        error = rpc_error(
            daemon.runtime.CreateContainer,
            cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=bad, sandbox_config=pod),
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "CAP_FLY" in (error.details() or "")


# ----------------------------------------------------------------------------- masked paths


PATHS_SCRIPT = (
    "for p in /proc/timer_list /proc/keys; do "
    'echo "$p $(stat -c %F:%t:%T $p) $(cat $p | wc -c)"; done; '
    'echo "firmware $(ls -A /sys/firmware | wc -l)"; '
    "grep -q ' /proc/sys ro,' /proc/self/mountinfo && echo procsys=ro-mount; "
    "if echo cryopod.test 2>/dev/null >/proc/sys/kernel/domainname; "
    "then echo domainname=$(cat /proc/sys/kernel/domainname); else echo domainname=refused; fi; "
    f"echo {END}"
)


def masked_report(output: str) -> dict[str, tuple[str, int]]:
    """path -> (stat type:major:minor, bytes read) for the probed /proc files."""
    report = {}
    for path in ("/proc/timer_list", "/proc/keys"):
        match = re.search(rf"^{re.escape(path)} (.+) +(\d+)$", output, re.M)
        assert match, f"no line for {path} in {output!r}"
        report[path] = (match.group(1), int(match.group(2)))
    return report


def test_masked_and_readonly_paths_and_privileged_lifts_them(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    host_firmware = len(list(Path("/sys/firmware").iterdir()))
    assert host_firmware > 0, "the host's /sys/firmware is empty: masking cannot be told apart"
    masked = "character special file:1:3"  # /dev/null bound over the file
    with running_pod(daemon, "masked", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        _, out = run_to_exit(daemon, pod_id, pod, container("plain", busybox, script=PATHS_SCRIPT))
        report = masked_report(out)
        assert report["/proc/timer_list"] == (masked, 0), out
        assert report["/proc/keys"] == (masked, 0), out
        assert "firmware 0" in out
        assert "procsys=ro-mount" in out
        assert "domainname=refused" in out

        # Privileged: no masks, /proc/sys writable (the pod's own UTS namespace).
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "privileged",
                busybox,
                script=PATHS_SCRIPT,
                security=cri.LinuxContainerSecurityContext(privileged=True),
            ),
        )
        report = masked_report(out)
        assert report["/proc/timer_list"][0].startswith("regular"), out
        assert report["/proc/timer_list"][1] > 0, out
        assert f"firmware {host_firmware}" in out
        assert "procsys=ro-mount" not in out
        assert "domainname=cryopod.test" in out

        # The kubelet's own lists replace the defaults.
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "custom",
                busybox,
                script=PATHS_SCRIPT,
                security=cri.LinuxContainerSecurityContext(
                    masked_paths=["/proc/keys"], readonly_paths=["/proc/sys"]
                ),
            ),
        )
        report = masked_report(out)
        assert report["/proc/keys"] == (masked, 0), out
        assert report["/proc/timer_list"][1] > 0, out
        assert f"firmware {host_firmware}" in out
        assert "procsys=ro-mount" in out


# ----------------------------------------------------------------------------- cgroups


def test_memory_and_cpu_limits_read_back_from_the_cgroup(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    resources = cri.LinuxContainerResources(
        memory_limit_in_bytes=96 * MiB,
        cpu_shares=512,
        cpu_quota=50_000,
        cpu_period=100_000,
        cpuset_cpus="0",
        cpuset_mems="0",
        oom_score_adj=500,
    )
    script = (
        "echo oom=$(cat /proc/self/oom_score_adj); "
        f"echo mem=$({INSIDE_MEMORY_LIMIT}); "
        "grep Cpus_allowed_list /proc/self/status; "
        f"echo {END}; sleep 60"
    )
    logs = tmp_path / "logs"
    with running_pod(daemon, "limits", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(
            daemon, pod_id, pod, container("limited", busybox, script=script, resources=resources)
        )
        out = wait_for_log(log_file(logs, "limited"), lambda text: END in text)
        assert "oom=500\n" in out
        assert f"mem={96 * MiB}\n" in out
        assert re.search(r"^Cpus_allowed_list:\s*0$", out, re.M), out

        path = container_cgroup(cgroup_parent, ctr_id)
        pid = int(verbose_info(daemon, ctr_id)["pid"])
        for controller in ("memory", "cpu", "cpuset"):
            assert process_cgroup(pid, controller) == path, controller
        assert memory_limit(path) == 96 * MiB
        assert cpu_quota_period(path) == (50_000, 100_000)
        assert cpu_weight_or_shares(path) in shares_as_read_back(512)
        assert cpuset_cpus(path) == "0"

        status = daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=ctr_id), timeout=10
        ).status
        assert status.resources.linux.memory_limit_in_bytes == 96 * MiB
        assert status.resources.linux.cpu_quota == 50_000

        # The kubelet asks -997 for Guaranteed pods. Lowering the score needs CAP_SYS_RESOURCE:
        # without it (some hosts drop it from the bounding set) 0 is the best runc can set,
        # and the container must still run.
        assert daemon.proc is not None
        daemon_caps = capability_sets(Path(f"/proc/{daemon.proc.pid}/status").read_text())
        can_lower = bool(daemon_caps["CapEff"] & cap_mask(["CAP_SYS_RESOURCE"]))
        _, out = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "guaranteed",
                busybox,
                script=f"echo oom=$(cat /proc/self/oom_score_adj); echo {END}",
                resources=cri.LinuxContainerResources(oom_score_adj=-997),
            ),
        )
        assert f"oom={-997 if can_lower else 0}\n" in out


def test_verbose_status_carries_the_pid_and_the_runtime_spec(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    marker = uuid.uuid4().hex
    with running_pod(daemon, "verbose", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(
            daemon,
            pod_id,
            pod,
            container(
                "spec",
                busybox,
                script="sleep 60",
                envs={"MARKER": marker},
                resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB),
            ),
        )
        info = verbose_info(daemon, ctr_id)
        pid = int(info["pid"])

        # That pid is this container's process (once runc's init has exec'd it).
        def environ() -> list[bytes]:
            return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

        deadline = time.monotonic() + LOG_WAIT
        while f"MARKER={marker}".encode() not in environ() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert f"MARKER={marker}".encode() in environ()
        spec = info["runtimeSpec"]
        assert spec["process"]["args"] == ["/bin/sh", "-c", "sleep 60"]
        assert spec["linux"]["cgroupsPath"] == container_cgroup(cgroup_parent, ctr_id)
        assert spec["linux"]["resources"]["memory"]["limit"] == 64 * MiB


def test_oom_kill_is_reported_as_oomkilled(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    resources = cri.LinuxContainerResources(memory_limit_in_bytes=16 * MiB)
    with running_pod(daemon, "oom", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        status, _ = run_to_exit(
            daemon,
            pod_id,
            pod,
            container(
                "hog",
                busybox,
                script="echo start; x=a; while true; do x=$x$x; done",
                resources=resources,
            ),
            until=None,
        )
        assert (status.exit_code, status.reason) == (137, "OOMKilled"), status
        # Exit code 137 alone (as after any SIGKILL) is not an OOM kill.
        status, _ = run_to_exit(
            daemon,
            pod_id,
            pod,
            container("killed", busybox, script="exit 137", resources=resources),
            until=None,
        )
        assert (status.exit_code, status.reason) == (137, "Error"), status


def test_update_container_resources_changes_the_running_cgroup(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    script = f"while true; do echo mem=$({INSIDE_MEMORY_LIMIT}); sleep 0.1; done"
    with running_pod(daemon, "update", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(
            daemon,
            pod_id,
            pod,
            container(
                "elastic",
                busybox,
                script=script,
                resources=cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB),
            ),
        )
        path = container_cgroup(cgroup_parent, ctr_id)
        assert memory_limit(path) == 64 * MiB

        def update(resources: cri.LinuxContainerResources) -> None:
            daemon.runtime.UpdateContainerResources(
                cri.UpdateContainerResourcesRequest(container_id=ctr_id, linux=resources),
                timeout=30,
            )

        update(
            cri.LinuxContainerResources(
                memory_limit_in_bytes=32 * MiB, cpu_quota=20_000, cpu_period=100_000
            )
        )
        assert memory_limit(path) == 32 * MiB
        assert cpu_quota_period(path) == (20_000, 100_000)
        wait_for_log(log_file(logs, "elastic"), lambda text: f"mem={32 * MiB}\n" in text)
        # Raising it again (on v1 memory+swap has to move first).
        update(cri.LinuxContainerResources(memory_limit_in_bytes=128 * MiB))
        assert memory_limit(path) == 128 * MiB
        wait_for_log(log_file(logs, "elastic"), lambda text: f"mem={128 * MiB}\n" in text)
        status = daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=ctr_id), timeout=10
        ).status
        assert status.resources.linux.memory_limit_in_bytes == 128 * MiB

        bad = cri.UpdateContainerResourcesRequest(
            container_id=ctr_id, linux=cri.LinuxContainerResources(cpu_shares=1)
        )
        error = rpc_error(daemon.runtime.UpdateContainerResources, bad)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert memory_limit(path) == 128 * MiB

        unknown = cri.UpdateContainerResourcesRequest(
            container_id="0" * 64, linux=cri.LinuxContainerResources(memory_limit_in_bytes=64 * MiB)
        )
        assert rpc_error(daemon.runtime.UpdateContainerResources, unknown).code() == (
            grpc.StatusCode.NOT_FOUND
        )


# ----------------------------------------------------------------------------- stopping


def test_stop_timeout_escalates_to_sigkill(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    script = "trap 'echo got TERM' TERM; echo ready; while true; do sleep 0.1; done"
    with running_pod(daemon, "stubborn", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(daemon, pod_id, pod, container("stubborn", busybox, script=script))
        wait_for_log(log_file(logs, "stubborn"), lambda text: "ready\n" in text)
        elapsed = stop(daemon, ctr_id, timeout=2)
        assert 2 <= elapsed < 12, elapsed
        status = wait_for_state(daemon, ctr_id, cri.CONTAINER_EXITED)
        assert (status.state, status.exit_code) == (cri.CONTAINER_EXITED, 137), status
        assert status.reason == "Error"
        # SIGTERM came first, and was survived.
        assert "got TERM\n" in wait_for_log(
            log_file(logs, "stubborn"), lambda text: "got TERM" in text
        )
        assert (status.finished_at - status.started_at) / 1e9 >= 2


def test_the_image_stop_signal_is_used_unless_the_config_names_one(
    daemon: Daemon, configured: str, tmp_path: Path, cgroup_parent: str
) -> None:
    """The configured image has StopSignal SIGUSR1 and Entrypoint [/bin/sh, -c]."""
    logs = tmp_path / "logs"
    script = (
        "trap 'echo got USR1; exit 42' USR1; trap 'echo got TERM; exit 43' TERM; "
        "echo ready; while true; do sleep 0.1; done"
    )
    with running_pod(daemon, "signals", logs, cgroup_parent) as (pod_id, pod):
        from_image = start_running(
            daemon, pod_id, pod, container("from-image", configured, args=[script])
        )
        from_config = start_running(
            daemon,
            pod_id,
            pod,
            container("from-config", configured, args=[script], stop_signal=cri.SIGTERM),
        )
        for name in ("from-image", "from-config"):
            wait_for_log(log_file(logs, name), lambda text: "ready\n" in text)

        assert stop(daemon, from_image, timeout=20) < 10
        status = wait_for_state(daemon, from_image, cri.CONTAINER_EXITED)
        assert status.exit_code == 42, status
        assert "got USR1" in log_text(log_file(logs, "from-image"))

        assert stop(daemon, from_config, timeout=20) < 10
        status = wait_for_state(daemon, from_config, cri.CONTAINER_EXITED)
        assert status.exit_code == 43, status
        assert "got TERM" in log_text(log_file(logs, "from-config"))


def test_a_realtime_image_stop_signal_is_understood(
    daemon: Daemon, extra_images: dict[str, str], tmp_path: Path, cgroup_parent: str
) -> None:
    """`StopSignal: SIGRTMIN+3` (systemd images use it) is signal 37 with glibc's SIGRTMIN."""
    image = pulled(daemon, extra_images, "rt-stop-signal")
    logs = tmp_path / "logs"
    number = int(signal.SIGRTMIN) + 3
    script = (
        f"trap 'echo got RTMIN+3; exit 44' {number}; echo ready; while true; do sleep 0.1; done"
    )
    with running_pod(daemon, "rtsignal", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(daemon, pod_id, pod, container("rt", image, args=[script]))
        wait_for_log(log_file(logs, "rt"), contains("ready\n"))
        assert stop(daemon, ctr_id, timeout=20) < 10
        status = wait_for_state(daemon, ctr_id, cri.CONTAINER_EXITED)
        assert status.exit_code == 44, status
        assert "got RTMIN+3" in log_text(log_file(logs, "rt"))


def test_status_reports_the_effective_stop_signal(
    daemon: Daemon, configured: str, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    """ContainerStatus.stop_signal: the config's, else the image's, else RUNTIME_DEFAULT."""
    with running_pod(daemon, "sigstatus", tmp_path / "logs", cgroup_parent) as (pod_id, pod):
        cases = {
            "image": (container("image", configured, args=["true"]), cri.SIGUSR1),
            "config": (
                container("config", configured, args=["true"], stop_signal=cri.SIGQUIT),
                cri.SIGQUIT,
            ),
            "none": (container("none", busybox, script="true"), cri.RUNTIME_DEFAULT),
        }
        for name, (config, expected) in cases.items():
            ctr_id = create(daemon, pod_id, config, pod)
            status = daemon.runtime.ContainerStatus(
                cri.ContainerStatusRequest(container_id=ctr_id), timeout=10
            ).status
            assert status.stop_signal == expected, (
                f"{name}: {cri.Signal.Name(status.stop_signal)}, "
                f"expected {cri.Signal.Name(expected)}"
            )


# ----------------------------------------------------------------------------- logs


def test_reopen_container_log_after_rotation(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    script = "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.05; done"
    with running_pod(daemon, "rotate", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(daemon, pod_id, pod, container("chatty", busybox, script=script))
        current = log_file(logs, "chatty")
        wait_for_log(current, lambda text: "line3\n" in text)
        rotated = current.with_name("0.log.1")
        current.rename(rotated)
        daemon.runtime.ReopenContainerLog(
            cri.ReopenContainerLogRequest(container_id=ctr_id), timeout=30
        )
        assert current.exists()
        fresh = wait_for_log(current, lambda text: text.count("\n") >= 3)
        old = log_text(rotated)
        time.sleep(0.3)
        assert log_text(rotated) == old, "the rotated file still grows after the reopen"

        def numbers(text: str) -> list[int]:
            return [int(n) for n in re.findall(r"^line(\d+)$", text, re.M)]

        # Nothing lost or repeated across the two files.
        old_numbers, new_numbers = numbers(old), numbers(fresh)
        assert old_numbers and new_numbers
        assert new_numbers[0] == old_numbers[-1] + 1, (old_numbers[-3:], new_numbers[:3])

        stop(daemon, ctr_id, timeout=0)
        error = rpc_error(
            daemon.runtime.ReopenContainerLog, cri.ReopenContainerLogRequest(container_id=ctr_id)
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


# ----------------------------------------------------------------------------- daemon config


def test_daemon_config_sets_default_capabilities_and_pids_limit(
    make_daemon: Callable[..., Daemon],
    test_images: PushedImages,
    tmp_path: Path,
    cgroup_parent: str,
) -> None:
    daemon = make_daemon(
        insecure_registries_conf(test_images.host),
        config='[runtime]\npids_limit = 40\ndefault_capabilities = ["CHOWN", "NET_RAW"]\n',
    )
    image = test_images.ref("busybox")
    daemon.pull(image)
    logs = tmp_path / "logs"
    script = (
        "grep ^CapEff /proc/self/status; "
        "echo pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || "
        "cat /sys/fs/cgroup/pids/pids.max); "
        f"echo {END}; "
        # More processes than the limit: the forks beyond it fail (which ends the subshell;
        # `exec` needs no fork).
        "(for i in $(seq 60); do sleep 2 & done) 2>/dev/null; exec sleep 60"
    )
    with running_pod(daemon, "config", logs, cgroup_parent) as (pod_id, pod):
        ctr_id = start_running(daemon, pod_id, pod, container("limited", image, script=script))
        out = wait_for_log(log_file(logs, "limited"), contains(f"{END}\n"))
        assert capability_sets(out)["CapEff"] == cap_mask(["CAP_CHOWN", "CAP_NET_RAW"]), out
        assert "pids=40\n" in out
        path = container_cgroup(cgroup_parent, ctr_id)
        pids_dir = cgroup_dir("pids", path)
        assert (pids_dir / "pids.max").read_text().strip() == "40"

        def refused_forks() -> int:
            events = (pids_dir / "pids.events").read_text().split()
            return int(events[events.index("max") + 1])

        deadline = time.monotonic() + LOG_WAIT
        while refused_forks() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert refused_forks() > 0, "no fork was refused by the pids limit"


# ----------------------------------------------------------------------------- many pods


def test_fifty_pods_created_and_removed_concurrently(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    count = 50
    logs = tmp_path / "logs"
    created: list[str] = []
    lock = threading.Lock()

    def bring_up(index: int) -> str:
        # Each pod has a cgroup parent of its own under the test's, as the kubelet gives it.
        pod = pod_config(f"pod-{index}", logs / str(index), f"{cgroup_parent}/pod{index}")
        pod_id = run_pod(daemon, pod)
        with lock:
            created.append(pod_id)
        ctr_id = create(
            daemon, pod_id, container("app", busybox, script=f"echo up-{index}; sleep 600"), pod
        )
        start(daemon, ctr_id)
        status = wait_for_state(daemon, ctr_id, cri.CONTAINER_RUNNING, timeout=60)
        assert status.state == cri.CONTAINER_RUNNING, status
        return ctr_id

    try:
        with ThreadPoolExecutor(max_workers=count) as pool:
            ctr_ids = list(pool.map(bring_up, range(count)))
        assert len(set(ctr_ids)) == count
        pods = daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items
        assert len(pods) == count and all(p.state == cri.SANDBOX_READY for p in pods)
        running = daemon.runtime.ListContainers(
            cri.ListContainersRequest(
                filter=cri.ContainerFilter(
                    state=cri.ContainerStateValue(state=cri.CONTAINER_RUNNING)
                )
            ),
            timeout=10,
        ).containers
        assert {c.id for c in running} == set(ctr_ids)
        for index in range(count):
            marker = f"up-{index}\n"
            wait_for_log(log_file(logs / str(index), "app"), contains(marker))
    finally:
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda pod_id: teardown(daemon, pod_id), created))
    assert list(daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items) == []
    listed = daemon.runtime.ListContainers(cri.ListContainersRequest(), timeout=10).containers
    assert list(listed) == []
