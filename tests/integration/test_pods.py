"""Pods and containers through a running daemon: real runc, conmon, overlayfs."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon
from tests.support.registry import PushedImages


def pod_config(name: str, logs: Path, cgroup_parent: str) -> cri.PodSandboxConfig:
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(name=name, namespace="default", uid=f"uid-{name}"),
        hostname=name,
        log_directory=str(logs),
        linux=cri.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )


def container_config(name: str, image: str, script: str) -> cri.ContainerConfig:
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=name),
        image=cri.ImageSpec(image=image),
        command=["/bin/sh", "-c", script],
        log_path=f"{name}/0.log",
    )


def wait_for_state(
    daemon: Daemon, container_id: str, state: int, timeout: float = 10
) -> cri.ContainerStatus:
    deadline = time.monotonic() + timeout
    while True:
        status = daemon.runtime.ContainerStatus(
            cri.ContainerStatusRequest(container_id=container_id), timeout=5
        ).status
        if status.state == state or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def run_pod(daemon: Daemon, config: cri.PodSandboxConfig, handler: str = "") -> str:
    response = daemon.runtime.RunPodSandbox(
        cri.RunPodSandboxRequest(config=config, runtime_handler=handler), timeout=30
    )
    return str(response.pod_sandbox_id)


def create(
    daemon: Daemon, pod_id: str, config: cri.ContainerConfig, pod: cri.PodSandboxConfig
) -> str:
    response = daemon.runtime.CreateContainer(
        cri.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod),
        timeout=30,
    )
    return str(response.container_id)


def teardown(daemon: Daemon, pod_id: str) -> None:
    daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
    daemon.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)


def test_pod_and_container_lifecycle(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("web", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod)
    [listed] = daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items
    assert listed.id == pod_id and listed.state == cri.SANDBOX_READY
    assert listed.metadata.name == "web"

    ctr = container_config("app", image, "echo hello; printf partial; sleep 30")
    ctr_id = create(daemon, pod_id, ctr, pod)
    created = wait_for_state(daemon, ctr_id, cri.CONTAINER_CREATED)
    assert created.state == cri.CONTAINER_CREATED
    verbose = daemon.runtime.ContainerStatus(
        cri.ContainerStatusRequest(container_id=ctr_id, verbose=True), timeout=5
    )
    info = json.loads(verbose.info["info"])
    assert info["runtimeSpec"]["process"]["args"] == ctr.command
    assert info["pid"] > 0 and info["sandboxID"] == pod_id
    handlers = daemon.runtime.Status(cri.StatusRequest(), timeout=5).runtime_handlers
    assert [h.name for h in handlers][:2] == ["", "runc"]
    pod_info = json.loads(
        daemon.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=5
        ).info["info"]
    )
    assert pod_info["config"]["metadata"]["name"] == "web"
    # No infra container runs; the spec says which namespaces the pod's containers join.
    namespaces = {n["type"]: n.get("path") for n in pod_info["runtimeSpec"]["linux"]["namespaces"]}
    assert namespaces["network"] == pod_info["namespaces"]["network"]
    assert namespaces["network"].startswith(str(daemon.runroot))
    assert created.image_ref and created.image.image

    daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_id), timeout=30)
    running = wait_for_state(daemon, ctr_id, cri.CONTAINER_RUNNING)
    assert running.state == cri.CONTAINER_RUNNING and running.started_at > 0

    log = tmp_path / "logs" / "app" / "0.log"
    deadline = time.monotonic() + 5
    while (
        "partial" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    lines = log.read_text().splitlines()
    assert re.match(r"^\S+ stdout F hello$", lines[0])
    assert re.match(r"^\S+ stdout P partial$", lines[1])

    started = time.monotonic()
    daemon.runtime.StopContainer(
        cri.StopContainerRequest(container_id=ctr_id, timeout=1), timeout=30
    )
    assert time.monotonic() - started < 3
    stopped = wait_for_state(daemon, ctr_id, cri.CONTAINER_EXITED)
    assert stopped.state == cri.CONTAINER_EXITED
    assert stopped.exit_code in (137, 143) and stopped.finished_at >= stopped.started_at

    daemon.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id), timeout=30)
    daemon.runtime.RemoveContainer(cri.RemoveContainerRequest(container_id=ctr_id), timeout=30)
    assert (
        list(daemon.runtime.ListContainers(cri.ListContainersRequest(), timeout=5).containers) == []
    )
    teardown(daemon, pod_id)
    teardown(daemon, pod_id)  # idempotent
    assert list(daemon.runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=5).items) == []


def test_exit_codes_and_reasons(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("jobs", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod)
    try:
        failing = create(daemon, pod_id, container_config("fail", image, "exit 3"), pod)
        passing = create(daemon, pod_id, container_config("pass", image, "true"), pod)
        for ctr_id in (failing, passing):
            daemon.runtime.StartContainer(
                cri.StartContainerRequest(container_id=ctr_id), timeout=30
            )
        failed = wait_for_state(daemon, failing, cri.CONTAINER_EXITED)
        assert (failed.exit_code, failed.reason) == (3, "Error")
        passed = wait_for_state(daemon, passing, cri.CONTAINER_EXITED)
        assert (passed.exit_code, passed.reason) == (0, "Completed")
    finally:
        teardown(daemon, pod_id)


def test_errors_carry_the_right_codes(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> None:
    def code(call: object, request: object) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)  # type: ignore[operator]
        return caught.value.code()  # type: ignore[no-any-return]

    rt = daemon.runtime
    missing = "0" * 64
    assert (
        code(rt.PodSandboxStatus, cri.PodSandboxStatusRequest(pod_sandbox_id=missing))
        == grpc.StatusCode.NOT_FOUND
    )
    assert (
        code(rt.ContainerStatus, cri.ContainerStatusRequest(container_id=missing))
        == grpc.StatusCode.NOT_FOUND
    )
    rt.StopContainer(cri.StopContainerRequest(container_id=missing), timeout=5)
    rt.RemoveContainer(cri.RemoveContainerRequest(container_id=missing), timeout=5)
    rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=missing), timeout=5)
    rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=missing), timeout=5)

    pod = pod_config("errs", tmp_path / "logs", cgroup_parent)
    bad_handler = cri.RunPodSandboxRequest(config=pod, runtime_handler="no-such-runtime")
    assert code(rt.RunPodSandbox, bad_handler) == grpc.StatusCode.INVALID_ARGUMENT
    pod_id = run_pod(daemon, pod)
    try:
        again = cri.RunPodSandboxRequest(config=pod)
        assert code(rt.RunPodSandbox, again) == grpc.StatusCode.ALREADY_EXISTS
        no_image = cri.CreateContainerRequest(
            pod_sandbox_id=pod_id,
            config=container_config("x", "example.invalid/none:1", "true"),
            sandbox_config=pod,
        )
        assert code(rt.CreateContainer, no_image) == grpc.StatusCode.NOT_FOUND
        image = test_images.ref("busybox")
        daemon.pull(image)
        create(daemon, pod_id, container_config("dup", image, "sleep 5"), pod)
        dup = cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=container_config("dup", image, "true"), sandbox_config=pod
        )
        assert code(rt.CreateContainer, dup) == grpc.StatusCode.ALREADY_EXISTS
    finally:
        teardown(daemon, pod_id)
