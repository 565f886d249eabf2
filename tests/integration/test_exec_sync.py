"""ExecSync through a running daemon: runc exec in real containers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon, insecure_registries_conf
from tests.integration.test_pods import (
    container_config,
    create,
    pod_config,
    run_pod,
    teardown,
    wait_for_state,
)
from tests.support.registry import PushedImages

OUTPUT_LIMIT = 1024 * 1024


def exec_sync(
    daemon: Daemon, container_id: str, cmd: list[str], timeout: int = 10
) -> cri.ExecSyncResponse:
    return daemon.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout), timeout=60
    )


@pytest.fixture
def running(
    make_daemon: object, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> Iterator[tuple[Daemon, str, str]]:
    """A daemon (ExecSync output capped at 1 MiB per stream) with one running container: uid 1000,
    no_new_privs, an env var of its own."""
    daemon: Daemon = make_daemon(  # type: ignore[operator]
        insecure_registries_conf(test_images.host),
        f"[runtime]\nexec_sync_output_limit = {2 * OUTPUT_LIMIT}\n",
    )
    image = test_images.ref("busybox")
    daemon.pull(image)
    pod = pod_config("execs", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, pod)
    try:
        ctr = container_config("app", image, "sleep 300")
        ctr.envs.append(cri.KeyValue(key="GREETING", value="hello from the config"))
        ctr.linux.security_context.run_as_user.value = 1000
        ctr.linux.security_context.no_new_privs = True
        ctr_id = create(daemon, pod_id, ctr, pod)
        daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr_id), timeout=30)
        yield daemon, pod_id, ctr_id
    finally:
        teardown(daemon, pod_id)


def test_streams_apart_and_exit_code(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    response = exec_sync(daemon, ctr, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (response.stdout, response.stderr, response.exit_code) == (b"out\n", b"err\n", 3)
    ok = exec_sync(daemon, ctr, ["true"])
    assert (ok.stdout, ok.stderr, ok.exit_code) == (b"", b"", 0)


def test_runs_as_the_container_does(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    response = exec_sync(
        daemon, ctr, ["sh", "-c", 'id -u; echo "$GREETING"; cat /proc/self/status']
    )
    lines = response.stdout.decode().splitlines()
    assert lines[0] == "1000"
    assert lines[1] == "hello from the config"
    status = dict(line.split(":", 1) for line in lines[2:] if ":" in line)
    assert status["NoNewPrivs"].strip() == "1"
    # The container's (non-root) capabilities: none effective for uid 1000.
    assert int(status["CapEff"].strip(), 16) == 0


def test_a_command_that_does_not_exist_is_an_exit_code(
    running: tuple[Daemon, str, str],
) -> None:
    daemon, _pod, ctr = running
    response = exec_sync(daemon, ctr, ["/no/such/program"])
    assert response.exit_code != 0
    assert b"no such file" in (response.stdout + response.stderr).lower()


def test_timeout_kills_the_command(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        exec_sync(daemon, ctr, ["sh", "-c", "echo started; sleep 77"], timeout=1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5
    left = exec_sync(daemon, ctr, ["ps", "-o", "args"]).stdout.decode()
    assert "sleep 77" not in left


def test_large_output_is_capped_without_deadlock(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    script = (
        "head -c 5000000 /dev/zero | tr '\\0' o & head -c 3000000 /dev/zero | tr '\\0' e >&2; wait"
    )
    response = exec_sync(daemon, ctr, ["sh", "-c", script], timeout=30)
    assert response.exit_code == 0
    assert response.stdout == b"o" * OUTPUT_LIMIT
    assert response.stderr == b"e" * OUTPUT_LIMIT


def test_twenty_concurrent_execs(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    results: dict[int, cri.ExecSyncResponse] = {}

    def one(index: int) -> None:
        results[index] = exec_sync(daemon, ctr, ["sh", "-c", f"echo {index}; exit {index % 7}"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(20))
    for index, response in results.items():
        assert (response.stdout, response.exit_code) == (f"{index}\n".encode(), index % 7)


def test_errors(running: tuple[Daemon, str, str]) -> None:
    daemon, _pod, ctr = running
    with pytest.raises(grpc.RpcError) as unknown:
        exec_sync(daemon, "0" * 64, ["true"])
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as empty:
        exec_sync(daemon, ctr, [])
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    daemon.runtime.StopContainer(cri.StopContainerRequest(container_id=ctr, timeout=0), timeout=30)
    wait_for_state(daemon, ctr, cri.CONTAINER_EXITED)
    with pytest.raises(grpc.RpcError) as stopped:
        exec_sync(daemon, ctr, ["true"])
    assert stopped.value.code() == grpc.StatusCode.FAILED_PRECONDITION
