"""A real `cryopod serve` per test, with its own root, runroot, socket and config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

from tests.support.leaks import session_cgroup_name, session_marker

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Daemon:
    """One cryopod daemon under test, and CRI clients to it."""

    base: Path
    config_path: Path
    registries_conf: Path
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.base / "daemon.log"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def runroot(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.base / "run" / "cryopod.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cryopod",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--root",
                    str(self.root),
                    "--runroot",
                    str(self.runroot),
                    "--listen",
                    str(self.socket),
                    "--log-level",
                    "debug",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        self.channel = grpc.insecure_channel(self.endpoint)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"cryopod exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.runtime.Version(cri.VersionRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cryopod did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the daemon with `sig` and answer its exit status."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def runtime(self) -> cri_grpc.RuntimeServiceStub:
        assert self.channel is not None
        return cri_grpc.RuntimeServiceStub(self.channel)

    @property
    def images(self) -> cri_grpc.ImageServiceStub:
        assert self.channel is not None
        return cri_grpc.ImageServiceStub(self.channel)

    def pull(self, image: str, auth: cri.AuthConfig | None = None, timeout: float = 120) -> str:
        request = cri.PullImageRequest(image=cri.ImageSpec(image=image), auth=auth)
        response: cri.PullImageResponse = self.images.PullImage(request, timeout=timeout)
        return response.image_ref

    def status(self, image: str, verbose: bool = False) -> cri.ImageStatusResponse:
        return self.images.ImageStatus(
            cri.ImageStatusRequest(image=cri.ImageSpec(image=image), verbose=verbose), timeout=10
        )

    def list_images(self) -> list[cri.Image]:
        return list(self.images.ListImages(cri.ListImagesRequest(), timeout=10).images)

    def remove(self, image: str) -> None:
        self.images.RemoveImage(
            cri.RemoveImageRequest(image=cri.ImageSpec(image=image)), timeout=30
        )

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the cryopod CLI against this daemon."""
        result = subprocess.run(
            [sys.executable, "-m", "cryopod", *args],
            env={**os.environ, "CONTAINER_RUNTIME_ENDPOINT": self.endpoint},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"cryopod {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result


def insecure_registries_conf(*hosts: str, extra: str = "") -> str:
    """registries.conf marking local test registries as plain-http."""
    entries = "".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n\n' for host in hosts)
    return entries + extra


@dataclass(frozen=True)
class TestNetwork:
    """The embedded default network of this session's daemons: its own bridge and subnet."""

    bridge: str
    subnet: str

    @property
    def gateway(self) -> str:
        return self.subnet.replace(".0.0/16", ".0.1")


@pytest.fixture(scope="session")
def test_network() -> Iterator[TestNetwork]:
    """A bridge name and subnet unlikely to clash with another session's; deleted at the end."""
    marker = session_marker()
    network = TestNetwork(
        bridge=f"cp{marker[:8]}", subnet=f"10.{100 + int(marker[:2], 16) % 150}.0.0/16"
    )
    yield network
    subprocess.run(["ip", "link", "del", network.bridge], capture_output=True)


@pytest.fixture
def make_daemon(tmp_path: Path, test_network: TestNetwork) -> Iterator[object]:
    """Factory: make_daemon(registries_conf_text, config_text="", network="") -> started Daemon.

    `config` continues the [image] table; `network` adds keys to the [network] table, whose
    defaults here are a CNI config dir of the daemon's own (empty: the embedded default
    network) on this session's bridge and subnet, with its own IPAM store.
    """
    daemons: list[Daemon] = []

    def factory(
        registries_conf: str = "", config: str = "", start: bool = True, network: str = ""
    ) -> Daemon:
        base = tmp_path / f"cryopod{len(daemons)}"
        base.mkdir()
        conf = base / "registries.conf"
        conf.write_text(registries_conf)
        config_path = base / "cryopod.conf"
        network_table = (
            f'[network]\nconfig_dirs = ["{base / "net.d"}"]\n'
            f'default_bridge = "{test_network.bridge}"\n'
            f'default_subnets = ["{test_network.subnet}"]\n'
            f'default_ipam_dir = "{base / "ipam"}"\n{network}\n'
        )
        config_path.write_text(
            f'{network_table}[image]\nregistries_conf = "{conf}"\n'
            f'auth_file = "{base / "auth.json"}"\n{config}'
        )
        daemon = Daemon(base=base, config_path=config_path, registries_conf=conf)
        daemons.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield factory
    for daemon in daemons:
        daemon.stop()


@pytest.fixture
def daemon(make_daemon: object, test_images: object) -> Daemon:
    """A daemon that may pull plainly from the session's test registry."""
    registry_host: str = test_images.host  # type: ignore[attr-defined]
    return make_daemon(insecure_registries_conf(registry_host))  # type: ignore[operator, no-any-return]


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    """A pod cgroup parent of this test's own, removed afterwards (as the kubelet would)."""
    parent = f"/{session_cgroup_name()}"
    yield parent
    for hierarchy in CGROUP_ROOT.iterdir():
        path = hierarchy / parent.lstrip("/")
        if path.is_dir():
            for leaf in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if leaf.is_dir():
                    os.rmdir(leaf)
            os.rmdir(path)
