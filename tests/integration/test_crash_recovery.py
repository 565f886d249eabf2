"""Daemon crashes and restarts with pods and containers: nothing disturbed, nothing orphaned."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from cryopod import cgroups
from tests.integration.conftest import CGROUP_ROOT, Daemon, insecure_registries_conf
from tests.integration.test_pods import (
    container_config,
    create,
    pod_config,
    run_pod,
    teardown,
    wait_for_state,
)
from tests.support.leaks import session_cgroup_name
from tests.support.registry import PushedImages


def start(daemon: Daemon, container_id: str) -> None:
    daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id), timeout=30)


def container_pid(daemon: Daemon, container_id: str) -> int:
    response = daemon.runtime.ContainerStatus(
        cri.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=5
    )
    return int(json.loads(response.info["info"])["pid"])


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat: tells a process from a later one with the same pid."""
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def list_containers(daemon: Daemon) -> dict[str, cri.Container]:
    response = daemon.runtime.ListContainers(cri.ListContainersRequest(), timeout=5)
    return {c.id: c for c in response.containers}


def list_pods(daemon: Daemon) -> dict[str, cri.PodSandbox]:
    response = daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5)
    return {p.id: p for p in response.items}


def wait_for_file_text(path: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.05)


def leftovers(daemon: Daemon) -> dict[str, list[str]]:
    """What is on disk under the daemon's runroot and root for containers and pods."""
    places = {
        "persist": daemon.runroot / "persist",
        "bundles": daemon.runroot / "containers",
        "layers": daemon.root / "containers",
        "pods": daemon.runroot / "pods",
        "pod-state": daemon.runroot / "pods-state",
        "netns": daemon.runroot / "ns" / "netns",
        "ipcns": daemon.runroot / "ns" / "ipcns",
        "utsns": daemon.runroot / "ns" / "utsns",
        "exits": daemon.runroot / "exits",
    }
    found: dict[str, list[str]] = {}
    for name, top in places.items():
        if top.is_dir():
            entries = sorted(str(p.relative_to(top)) for p in top.rglob("*") if not p.is_dir())
            entries += sorted(p.name for p in top.iterdir() if p.is_dir() and name != "persist")
            if name == "persist":
                entries += sorted(str(p.relative_to(top)) for p in top.glob("*/*") if p.is_dir())
            if entries:
                found[name] = entries
    return found


def test_kill9_leaves_running_containers_alone(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    image = test_images.ref("busybox")
    daemon.pull(image)
    logs = tmp_path / "logs"
    pod = pod_config("survivor", logs, cgroup_parent)
    shared = pod_config("shared-pid", logs, cgroup_parent)
    shared.linux.security_context.namespace_options.pid = cri.POD
    pod_id = run_pod(daemon, pod)
    shared_id = run_pod(daemon, shared)
    try:
        ticker = create(
            daemon,
            pod_id,
            container_config(
                "ticker",
                image,
                "trap 'exit 0' TERM; i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            ),
            pod,
        )
        quitter = create(daemon, pod_id, container_config("quitter", image, "sleep 3; exit 7"), pod)
        idle = create(daemon, pod_id, container_config("idle", image, "sleep 30"), pod)
        sharer = create(daemon, shared_id, container_config("sharer", image, "sleep 300"), shared)
        for ctr in (ticker, quitter, sharer):
            start(daemon, ctr)
        ticker_pid = container_pid(daemon, ticker)
        ticker_started = process_start_time(ticker_pid)
        sharer_pid = container_pid(daemon, sharer)
        wait_for_file_text(logs / "ticker" / "0.log", "tick 1")

        daemon.kill9()
        killed_at = time.time_ns()
        # While the daemon is down the quitter exits and the ticker keeps logging.
        time.sleep(4)
        ticks_while_down = (logs / "ticker" / "0.log").read_text().count("tick")
        daemon.start()

        pods = list_pods(daemon)
        assert {pods[pod_id].state, pods[shared_id].state} == {cri.SANDBOX_READY}
        listed = list_containers(daemon)
        assert listed[ticker].state == cri.CONTAINER_RUNNING
        assert listed[sharer].state == cri.CONTAINER_RUNNING
        assert listed[idle].state == cri.CONTAINER_CREATED
        assert listed[quitter].state == cri.CONTAINER_EXITED

        # The very same process, never restarted, still writing through the same conmon.
        assert process_start_time(ticker_pid) == ticker_started
        assert Path(f"/proc/{sharer_pid}").exists()
        wait_for_file_text(logs / "ticker" / "0.log", f"tick {ticks_while_down + 2}")

        exited = daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=quitter), timeout=5
        ).status
        assert (exited.exit_code, exited.reason) == (7, "Error")
        assert killed_at < exited.finished_at < time.time_ns()

        # The restarted daemon drives them as before.
        daemon.runtime.StopContainer(
            cri.StopContainerRequest(container_id=ticker, timeout=5), timeout=30
        )
        # Its TERM trap ran: the signal reached the process the first daemon started.
        assert wait_for_state(daemon, ticker, cri.CONTAINER_EXITED).exit_code == 0
        start(daemon, idle)
        assert wait_for_state(daemon, idle, cri.CONTAINER_RUNNING).state == cri.CONTAINER_RUNNING
    finally:
        teardown(daemon, pod_id)
        teardown(daemon, shared_id)
    assert leftovers(daemon) == {}


def test_container_whose_monitor_died_is_reported_exited(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("orphaned", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod)
    try:
        ctr = create(daemon, pod_id, container_config("app", image, "sleep 300"), pod)
        start(daemon, ctr)
        pid = container_pid(daemon, ctr)
        daemon.kill9()
        # conmon and the container both killed by hand: no exit file is ever written.
        [persist] = (daemon.runroot / "persist").glob(f"*/{ctr}")
        conmon_pid = int((persist / "conmon.pid").read_text())
        os.kill(conmon_pid, 9)
        os.kill(pid, 9)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.start()
        status = daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=ctr), timeout=5
        ).status
        assert status.state == cri.CONTAINER_EXITED
        assert status.exit_code == 255 and "monitor" in status.message
    finally:
        teardown(daemon, pod_id)
    assert leftovers(daemon) == {}


SLOW_RUNTIME = """#!/bin/sh
# runc, except that `create` first says so and then hangs: a crash window to aim at.
for arg in "$@"; do
  if [ "$arg" = create ]; then
    touch {marker}
    sleep 60
  fi
done
exec {runc} "$@"
"""


def test_crash_in_the_middle_of_create_container_leaves_nothing(
    make_daemon: object, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    wrapper, marker = slow_runtime(tmp_path)
    daemon: Daemon = make_daemon(  # type: ignore[operator]
        insecure_registries_conf(test_images.host),
        f'[runtime.handlers.slow]\nruntime_path = "{wrapper}"\n',
    )
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("crashy", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod, handler="slow")
    try:
        errors: list[grpc.StatusCode] = []

        def create_in_background() -> None:
            try:
                create(daemon, pod_id, container_config("app", image, "sleep 300"), pod)
            except grpc.RpcError as exc:
                errors.append(exc.code())

        creator = threading.Thread(target=create_in_background)
        creator.start()
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, "runc create was never reached"
            time.sleep(0.02)
        [persist] = (daemon.runroot / "persist" / "slow").iterdir()
        orphan = persist.name
        assert (daemon.runroot / "containers" / orphan / "rootfs").is_dir()
        daemon.kill9()
        creator.join(30)
        # The client sees its call cut off (by its own channel's close, or by the socket).
        assert len(errors) == 1
        assert errors[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert (daemon.runroot / "persist" / "slow" / orphan).is_dir()

        daemon.start()
        assert list_containers(daemon) == {}
        assert not (daemon.runroot / "persist" / "slow" / orphan).exists()
        assert not (daemon.runroot / "containers" / orphan).exists()
        assert not (daemon.root / "containers" / orphan).exists()
        mounts = Path("/proc/self/mountinfo").read_text()
        assert orphan not in mounts
        # The pod itself was recorded and is still usable.
        assert list_pods(daemon)[pod_id].state == cri.SANDBOX_READY
    finally:
        teardown(daemon, pod_id)
    assert leftovers(daemon) == {}


def test_kill9_during_a_burst_of_pod_and_container_creation(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    """Crash at an arbitrary point of many concurrent creations: after a restart every
    pod and container listed is whole, and removing them leaves nothing at all."""
    image = test_images.ref("busybox")
    daemon.pull(image)
    logs = tmp_path / "logs"
    stop = threading.Event()

    def worker(index: int) -> None:
        for round_ in range(100):
            if stop.is_set():
                return
            pod = pod_config(f"burst-{index}-{round_}", logs, cgroup_parent)
            if round_ % 2:
                pod.linux.security_context.namespace_options.pid = cri.POD
            try:
                pod_id = run_pod(daemon, pod)
                ctr = create(daemon, pod_id, container_config("app", image, "sleep 300"), pod)
                start(daemon, ctr)
            except grpc.RpcError:
                return

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in workers:
        thread.start()
    time.sleep(1.5)
    daemon.kill9()
    stop.set()
    for thread in workers:
        thread.join(30)

    daemon.start()
    pods = list_pods(daemon)
    containers = list_containers(daemon)
    assert pods, "no pod was created before the crash"
    for container in containers.values():
        assert container.pod_sandbox_id in pods
        assert container.state in (cri.CONTAINER_CREATED, cri.CONTAINER_RUNNING)
    for pod_id in pods:
        teardown(daemon, pod_id)
    assert list_containers(daemon) == {}
    assert leftovers(daemon) == {}


def slow_runtime(tmp_path: Path) -> tuple[Path, Path]:
    """A runc wrapper that hangs in `create`, and the file it touches when it gets there."""
    runc = shutil.which("runc")
    assert runc is not None
    marker = tmp_path / "creating"
    wrapper = tmp_path / "slow-runc"
    wrapper.write_text(SLOW_RUNTIME.format(marker=marker, runc=runc))
    wrapper.chmod(0o755)
    return wrapper, marker


def infra_daemon(make_daemon: object, test_images: PushedImages, extra: str = "") -> Daemon:
    config = (
        f'pause_image = "{test_images.ref("pause")}"\n[runtime]\ninfra_container = true\n{extra}'
    )
    return make_daemon(insecure_registries_conf(test_images.host), config)  # type: ignore[operator, no-any-return]


def test_infra_containers_hold_the_pod(
    make_daemon: object, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    daemon = infra_daemon(make_daemon, test_images)
    image = test_images.ref("busybox")
    daemon.pull(image)
    logs = tmp_path / "logs"
    pod = pod_config("paused", logs, cgroup_parent)
    pod.linux.security_context.namespace_options.pid = cri.POD
    # The pause image is pulled on demand by the first pod.
    pod_id = run_pod(daemon, pod)
    try:
        status = daemon.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=5
        )
        info = json.loads(status.info["info"])
        infra_pid = int(info["pid"])
        assert info["runtimeSpec"]["process"]["args"] == ["/bin/sleep", "2147483647"]
        cmdline = Path(f"/proc/{infra_pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:2] == [b"/bin/sleep", b"2147483647"]
        app = container_config("app", image, "cat /proc/1/cmdline")
        app.linux.security_context.namespace_options.pid = cri.POD
        ctr = create(daemon, pod_id, app, pod)
        start(daemon, ctr)
        assert wait_for_state(daemon, ctr, cri.CONTAINER_EXITED).exit_code == 0
        # PID 1 of the shared PID namespace is the pause process.
        wait_for_file_text(logs / "app" / "0.log", "/bin/sleep")

        daemon.restart()
        assert list_pods(daemon)[pod_id].state == cri.SANDBOX_READY
        daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        assert not Path(f"/proc/{infra_pid}").exists()
        assert list_pods(daemon)[pod_id].state == cri.SANDBOX_NOTREADY
    finally:
        teardown(daemon, pod_id)
    assert leftovers(daemon) == {}


def test_crash_in_the_middle_of_run_pod_sandbox_leaves_nothing(
    make_daemon: object, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    wrapper, marker = slow_runtime(tmp_path)
    daemon = infra_daemon(
        make_daemon, test_images, f'[runtime.handlers.slow]\nruntime_path = "{wrapper}"\n'
    )
    daemon.pull(test_images.ref("pause"))
    pod = pod_config("half-made", tmp_path / "logs", cgroup_parent)
    pod.linux.security_context.namespace_options.pid = cri.POD
    outcome: list[object] = []

    def run_in_background() -> None:
        try:
            outcome.append(run_pod(daemon, pod, handler="slow"))
        except grpc.RpcError as exc:
            outcome.append(exc.code())

    runner = threading.Thread(target=run_in_background)
    runner.start()
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, "runc create was never reached"
        time.sleep(0.02)
    # Namespaces are pinned, the pod's files written, the pause container half made.
    assert leftovers(daemon).keys() >= {"netns", "pods", "persist"}
    daemon.kill9()
    runner.join(30)
    assert outcome and outcome[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)

    daemon.start()
    assert list_pods(daemon) == {}
    assert leftovers(daemon) == {}
    # The same pod can now be made for real (with the normal runtime).
    pod_id = run_pod(daemon, pod)
    teardown(daemon, pod_id)
    assert leftovers(daemon) == {}


def test_killing_the_daemons_cgroup_spares_the_containers(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    """What `systemctl restart` does by default: SIGKILL to every process in the daemon's
    cgroup. The monitors live beside their containers, so the containers keep running."""
    image = test_images.ref("busybox")
    daemon.pull(image)
    assert daemon.proc is not None
    daemon_cgroups = []
    name = session_cgroup_name()
    for directory in cgroups.cgroup_dirs_of(daemon.proc.pid).values():
        # /sys/fs/cgroup itself on a v2 host, /sys/fs/cgroup/<hierarchy> on v1 and hybrid ones
        hierarchy_root = CGROUP_ROOT if cgroups.is_unified() else Path(*directory.parts[:5])
        if directory.parts[:4] != ("/", "sys", "fs", "cgroup") or "cpuset" in str(hierarchy_root):
            continue
        leaf = hierarchy_root / name
        leaf.mkdir()
        daemon_cgroups.append(leaf)
        (leaf / "cgroup.procs").write_text(str(daemon.proc.pid))
    pod = pod_config("steady", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod)
    try:
        ctr = create(daemon, pod_id, container_config("app", image, "sleep 300"), pod)
        start(daemon, ctr)
        pid = container_pid(daemon, ctr)
        started = process_start_time(pid)
        # systemd finds a unit's processes in its own hierarchy (name=systemd on v1 and
        # hybrid hosts, the v2 tree on unified ones) and kills them all.
        tracked = [leaf for leaf in daemon_cgroups if leaf.parent.name in ("systemd", "unified")]
        tracked = tracked or [leaf for leaf in daemon_cgroups if leaf.parent == CGROUP_ROOT]
        assert tracked
        victims = {int(p) for leaf in tracked for p in (leaf / "cgroup.procs").read_text().split()}
        assert daemon.proc.pid in victims
        for victim in victims:
            os.kill(victim, 9)
        daemon.stop()  # reaps it
        daemon.start()
        assert list_containers(daemon)[ctr].state == cri.CONTAINER_RUNNING
        assert process_start_time(pid) == started
    finally:
        teardown(daemon, pod_id)
        for leaf in daemon_cgroups:
            deadline = time.monotonic() + 5
            while (leaf / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
                time.sleep(0.05)
            leaf.rmdir()


def test_a_pod_whose_pid_holder_died_is_not_ready_and_takes_no_container(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    """Its PID namespace is gone and its pid may be another process's by now."""
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("orphan-pid", tmp_path / "logs", cgroup_parent)
    pod.linux.security_context.namespace_options.pid = cri.POD
    pod_id = run_pod(daemon, pod)
    try:
        status = daemon.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=5
        )
        holder = int(json.loads(status.info["info"])["pid"])
        os.kill(holder, 9)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{holder}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        ctr = container_config("late", image, "true")
        ctr.linux.security_context.namespace_options.pid = cri.POD
        with pytest.raises(grpc.RpcError) as caught:
            create(daemon, pod_id, ctr, pod)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert list_pods(daemon)[pod_id].state == cri.SANDBOX_NOTREADY
        assert list_containers(daemon) == {}
    finally:
        teardown(daemon, pod_id)
    assert leftovers(daemon) == {}
