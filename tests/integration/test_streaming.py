"""Exec, attach and port-forward through the daemon's streaming server into real containers.

The protocol clients are the ones written from the wire formats in test_streaming_server.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon
from tests.integration.test_pods import container_config, create, pod_config, run_pod, teardown
from tests.integration.test_streaming_server import (
    _ws_decode,
    spdy_exec,
    spdy_session,
    ws_session,
)
from tests.support.registry import PushedImages

TIMEOUT = 20


def wait_for_log(path: Path, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.05)


@pytest.fixture
def pod(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path, cgroup_parent: str
) -> Iterator[tuple[Daemon, str, cri.PodSandboxConfig, str]]:
    """A running pod: (daemon, pod id, its config, the busybox image)."""
    image = test_images.ref("busybox")
    daemon.pull(image)
    config = pod_config("streams", tmp_path / "logs", cgroup_parent)
    pod_id = run_pod(daemon, config)
    try:
        yield daemon, pod_id, config, image
    finally:
        teardown(daemon, pod_id)


def start_container(
    daemon: Daemon, pod_id: str, pod: cri.PodSandboxConfig, config: cri.ContainerConfig
) -> str:
    ctr = create(daemon, pod_id, config, pod)
    daemon.runtime.StartContainer(cri.StartContainerRequest(container_id=ctr), timeout=30)
    return ctr


@pytest.fixture
def sleeper(pod: tuple[Daemon, str, cri.PodSandboxConfig, str]) -> tuple[Daemon, str]:
    daemon, pod_id, config, image = pod
    return daemon, start_container(
        daemon, pod_id, config, container_config("sleeper", image, "sleep 300")
    )


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def exec_url(daemon: Daemon, ctr: str, cmd: list[str], *, tty: bool = False) -> str:
    response = daemon.runtime.Exec(
        cri.ExecRequest(
            container_id=ctr, cmd=cmd, tty=tty, stdin=True, stdout=True, stderr=not tty
        ),
        timeout=10,
    )
    return str(response.url)


async def test_exec_over_websocket_v5(
    sleeper: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    daemon, ctr = sleeper
    url = exec_url(daemon, ctr, ["sh", "-c", "cat; echo err >&2; exit 3"])
    outcome = await ws_session(
        http, url, ["v5.channel.k8s.io"], send=[(0, b"hello\n")], close_stdin=True
    )
    assert outcome.protocol == "v5.channel.k8s.io"
    assert (outcome.text(1), outcome.text(2)) == ("hello\n", "err\n")
    status = outcome.status()
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode"
    assert status["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}


async def test_exec_over_spdy_v4(sleeper: tuple[Daemon, str]) -> None:
    daemon, ctr = sleeper
    url = exec_url(daemon, ctr, ["sh", "-c", "tr a-z A-Z; id -u >&2"])
    async with spdy_session(url, ["v4.channel.k8s.io"]) as client:
        streams = await spdy_exec(client, stdin=b"shout\n")
    assert streams["stdout"] == b"SHOUT\n"
    assert streams["stderr"] == b"0\n"
    assert json.loads(streams["error"]) == {"metadata": {}, "status": "Success"}


async def test_tty_exec_sees_a_resize(
    sleeper: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    daemon, ctr = sleeper
    url = exec_url(daemon, ctr, ["sh"], tty=True)
    resize = json.dumps({"Width": 123, "Height": 45}).encode()
    outcome = await ws_session(
        http,
        url,
        ["v4.channel.k8s.io"],
        send=[(4, resize), (0, b"stty size; tty; exit 7\n")],
    )
    output = outcome.text(1)
    assert "45 123" in output
    assert "/dev/pts/" in output
    assert outcome.status()["details"] == {"causes": [{"reason": "ExitCode", "message": "7"}]}


async def test_attach_to_output_and_stdin(
    pod: tuple[Daemon, str, cri.PodSandboxConfig, str], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    daemon, pod_id, config, image = pod
    echo = container_config("echo", image, "echo ready; while read line; do echo got:$line; done")
    echo.stdin = True
    ctr = start_container(daemon, pod_id, config, echo)
    wait_for_log(tmp_path / "logs" / "echo" / "0.log", "ready")
    url = daemon.runtime.Attach(
        cri.AttachRequest(container_id=ctr, stdin=True, stdout=True, stderr=True), timeout=10
    ).url
    received = bytearray()
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
            await ws.send_bytes(b"\x00ping\n")
            async for message in ws:
                channel, data = _ws_decode(message)
                if channel == 1:
                    received += data
                if b"got:ping" in received:
                    break
    assert b"got:ping\n" in received
    # The container's own log has it too: attach shares conmon's view of the streams.
    wait_for_log(tmp_path / "logs" / "echo" / "0.log", "got:ping")


async def test_port_forward_to_a_server_in_the_pod(
    pod: tuple[Daemon, str, cri.PodSandboxConfig, str],
) -> None:
    daemon, pod_id, config, image = pod
    start_container(
        daemon, pod_id, config, container_config("server", image, "nc -ll -p 8080 -e cat")
    )
    url = daemon.runtime.PortForward(
        cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[8080]), timeout=10
    ).url
    async with spdy_session(url, ["portforward.k8s.io"]) as client:
        headers = {"port": "8080", "requestid": "0"}
        deadline = time.monotonic() + 10
        while True:  # until nc listens
            error = await client.open_stream({"streamtype": "error", **headers}, fin=True)
            data = await client.open_stream({"streamtype": "data", **headers})
            await client.send(data, b"through the pod's netns", fin=True)
            echoed = await data.read_all()
            if echoed or time.monotonic() > deadline:
                break
            await error.read_all()
            headers["requestid"] = str(int(headers["requestid"]) + 1)
            await asyncio.sleep(0.2)
    assert echoed == b"through the pod's netns"


async def test_streaming_errors(sleeper: tuple[Daemon, str], http: aiohttp.ClientSession) -> None:
    daemon, ctr = sleeper
    with pytest.raises(grpc.RpcError) as unknown:
        daemon.runtime.Exec(cri.ExecRequest(container_id="0" * 64, cmd=["true"]), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as no_pod:
        daemon.runtime.PortForward(cri.PortForwardRequest(pod_sandbox_id="0" * 64), timeout=10)
    assert no_pod.value.code() == grpc.StatusCode.NOT_FOUND
    url = exec_url(daemon, ctr, ["true"])
    await ws_session(http, url, ["v4.channel.k8s.io"])
    async with http.get(url) as reused:
        assert reused.status == 404


async def test_attach_to_a_terminal_follows_resizes(
    pod: tuple[Daemon, str, cri.PodSandboxConfig, str], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Resizes reach the container's terminal through conmon's control FIFO."""
    daemon, pod_id, config, image = pod
    script = "trap 'echo size: $(stty size)' WINCH; echo ready; while :; do sleep 0.1; done"
    term = container_config("term", image, script)
    term.tty = True
    term.stdin = True
    ctr = start_container(daemon, pod_id, config, term)
    wait_for_log(tmp_path / "logs" / "term" / "0.log", "ready")
    url = daemon.runtime.Attach(
        cri.AttachRequest(container_id=ctr, stdin=True, stdout=True, tty=True), timeout=10
    ).url
    received = bytearray()
    async with asyncio.timeout(TIMEOUT):
        async with http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws:
            await ws.send_bytes(b"\x04" + json.dumps({"Width": 111, "Height": 33}).encode())
            async for message in ws:
                channel, data = _ws_decode(message)
                if channel == 1:
                    received += data
                if b"size: 33 111" in received:
                    break
    assert b"size: 33 111" in received


async def test_twenty_concurrent_execs(
    sleeper: tuple[Daemon, str], http: aiohttp.ClientSession
) -> None:
    daemon, ctr = sleeper
    urls = [
        exec_url(daemon, ctr, ["sh", "-c", f"cat; echo {i} >&2; exit {i % 5}"]) for i in range(20)
    ]
    outcomes = await asyncio.gather(
        *(
            ws_session(
                http, url, ["v5.channel.k8s.io"], send=[(0, f"in{i}".encode())], close_stdin=True
            )
            for i, url in enumerate(urls)
        )
    )
    for i, outcome in enumerate(outcomes):
        assert (outcome.text(1), outcome.text(2)) == (f"in{i}", f"{i}\n")
        status = outcome.status()
        if i % 5:
            assert status["details"] == {"causes": [{"reason": "ExitCode", "message": str(i % 5)}]}
        else:
            assert status["status"] == "Success"
