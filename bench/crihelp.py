"""Shared machinery of the benchmarks: the runtimes under test and one CRI client for both.

`CryopodDaemon` runs `python -m cryopod serve` and `Containerd` runs `containerd` with its CRI
plugin, each with its own root, state directory, socket and config under a directory the caller
gives, so a benchmark never touches the host's runtimes. `CRIClient` speaks CRI v1 to either
over its unix socket; the same client code drives both runtimes, so the figures compare the
runtimes and not two clients.

Cleanup is explicit and checked: `stop()` sends SIGTERM, waits, then SIGKILLs; `Containerd`
also kills shims that name its socket and unmounts whatever is left under its directory.
`install_signal_handlers` turns SIGTERM and SIGHUP into KeyboardInterrupt so `finally` blocks
run on every way out.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import grpc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests.support` and `cryopod` import from the repo root
    sys.path.insert(0, str(REPO))

from cri_api.v1 import api_pb2 as cri  # noqa: E402
from cri_api.v1 import api_pb2_grpc as cri_grpc  # noqa: E402

# The variable the test suite's leak checker uses to tell sessions apart (tests/support/leaks.py).
SESSION_ENV = "CRYOPOD_TEST_SESSION"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


class BenchError(RuntimeError):
    """A runtime would not start, stop or clean up as a benchmark needs."""


def claim_session() -> str:
    """Mark every process this benchmark starts as belonging to a session of its own.

    A test run on the same host then sees our daemons and registry as another session's and
    leaves them alone instead of reporting (and killing) them as leaks.
    """
    marker = f"bench-{uuid.uuid4().hex}"
    os.environ[SESSION_ENV] = marker
    return marker


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP end the benchmark like Ctrl-C does: through every `finally`."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)


def log(message: str) -> None:
    """Progress goes to stderr so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- mounts, processes


def _unescape_mount_field(text: str) -> str:
    # /proc/*/mountinfo escapes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first."""
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            target = _unescape_mount_field(fields[4])
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return sorted(set(found), key=lambda t: t.count("/"), reverse=True)


def unmount_under(path: Path) -> list[str]:
    """Unmount everything at or below `path`; answers what was unmounted."""
    done = []
    for target in mounts_under(path):
        result = subprocess.run(["umount", target], capture_output=True, text=True)
        if result.returncode != 0:
            result = subprocess.run(["umount", "-l", target], capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchError(f"cannot unmount {target}: {result.stderr.strip()}")
        done.append(target)
    return done


def processes_naming(
    text: str, *, names: Sequence[str] = (), also: Sequence[str] = ()
) -> list[int]:
    """Pids of processes whose command line contains `text` (and whose comm is in `names`).

    `also` are further strings the command line must contain, all of them.
    """
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if text in cmdline and (not names or comm in names) and all(a in cmdline for a in also):
            found.append(int(entry))
    return found


def remove_tree(path: Path) -> None:
    """Remove a benchmark directory, unmounting anything left in it first."""
    if not path.exists():
        return
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise BenchError(f"could not remove {path}")


# ----------------------------------------------------------------------------- CRI client


class CRIClient:
    """A synchronous CRI v1 client on a unix socket; the same code for every runtime."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        )
        self.runtime = cri_grpc.RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.images = cri_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def version(self, timeout: float = 5.0) -> Any:
        return self.runtime.Version(cri.VersionRequest(), timeout=timeout)

    def wait_ready(self, timeout: float, alive: Callable[[], bool] = lambda: True) -> Any:
        """Poll Version until it answers; raise if `alive()` turns false or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not alive():
                raise BenchError(f"runtime behind {self.socket_path} exited while starting")
            try:
                return self.version(timeout=1.0)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    # The socket is up but serves no CRI: the plugin failed to load.
                    raise BenchError(f"{self.socket_path} serves no CRI v1: {exc}") from None
                if time.monotonic() > deadline:
                    raise BenchError(
                        f"no CRI answer on {self.socket_path} after {timeout}s: {exc}"
                    ) from None
                time.sleep(0.05)

    def pull(self, image: str, timeout: float = 600.0) -> str:
        """PullImage; answers the image ref the runtime reports."""
        request = cri.PullImageRequest(image=cri.ImageSpec(image=image))
        response = self.images.PullImage(request, timeout=timeout)
        return str(response.image_ref)

    def image_status(self, image: str, timeout: float = 10.0) -> Any:
        """The CRI `Image` for `image`, or None when the runtime does not have it."""
        request = cri.ImageStatusRequest(image=cri.ImageSpec(image=image))
        response = self.images.ImageStatus(request, timeout=timeout)
        return response.image if response.HasField("image") else None

    def list_images(self, timeout: float = 10.0) -> list[Any]:
        return list(self.images.ListImages(cri.ListImagesRequest(), timeout=timeout).images)

    def remove_image(self, image: str, timeout: float = 60.0) -> None:
        self.images.RemoveImage(
            cri.RemoveImageRequest(image=cri.ImageSpec(image=image)), timeout=timeout
        )

    # RuntimeService: pods and containers, as the kubelet calls them

    def status(self, verbose: bool = False, timeout: float = 10.0) -> Any:
        return self.runtime.Status(cri.StatusRequest(verbose=verbose), timeout=timeout)

    def run_pod_sandbox(
        self, config: Any, runtime_handler: str = "", timeout: float = 240.0
    ) -> str:
        """RunPodSandbox; answers the sandbox id."""
        request = cri.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return str(self.runtime.RunPodSandbox(request, timeout=timeout).pod_sandbox_id)

    def pod_sandbox_status(
        self, sandbox_id: str, verbose: bool = False, timeout: float = 10.0
    ) -> Any:
        request = cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        return self.runtime.PodSandboxStatus(request, timeout=timeout)

    def stop_pod_sandbox(self, sandbox_id: str, timeout: float = 120.0) -> None:
        request = cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id)
        self.runtime.StopPodSandbox(request, timeout=timeout)

    def remove_pod_sandbox(self, sandbox_id: str, timeout: float = 120.0) -> None:
        request = cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id)
        self.runtime.RemovePodSandbox(request, timeout=timeout)

    def list_pod_sandboxes(
        self, labels: dict[str, str] | None = None, timeout: float = 10.0
    ) -> list[Any]:
        """ListPodSandbox, filtered by a label selector when `labels` is given."""
        request = cri.ListPodSandboxRequest(
            filter=cri.PodSandboxFilter(label_selector=labels or {})
        )
        return list(self.runtime.ListPodSandbox(request, timeout=timeout).items)

    def create_container(
        self, sandbox_id: str, config: Any, sandbox_config: Any, timeout: float = 240.0
    ) -> str:
        """CreateContainer; answers the container id."""
        request = cri.CreateContainerRequest(
            pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config
        )
        return str(self.runtime.CreateContainer(request, timeout=timeout).container_id)

    def start_container(self, container_id: str, timeout: float = 120.0) -> None:
        request = cri.StartContainerRequest(container_id=container_id)
        self.runtime.StartContainer(request, timeout=timeout)

    def container_status(
        self, container_id: str, verbose: bool = False, timeout: float = 10.0
    ) -> Any:
        """The CRI `ContainerStatus` (state, pid in verbose info, exit code, ...)."""
        request = cri.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self.runtime.ContainerStatus(request, timeout=timeout).status

    def stop_container(self, container_id: str, grace: int = 0, timeout: float = 120.0) -> None:
        """StopContainer with `grace` seconds between the stop signal and SIGKILL."""
        request = cri.StopContainerRequest(container_id=container_id, timeout=grace)
        self.runtime.StopContainer(request, timeout=timeout + grace)

    def remove_container(self, container_id: str, timeout: float = 120.0) -> None:
        request = cri.RemoveContainerRequest(container_id=container_id)
        self.runtime.RemoveContainer(request, timeout=timeout)

    def list_containers(
        self, labels: dict[str, str] | None = None, timeout: float = 10.0
    ) -> list[Any]:
        """ListContainers, filtered by a label selector when `labels` is given."""
        request = cri.ListContainersRequest(filter=cri.ContainerFilter(label_selector=labels or {}))
        return list(self.runtime.ListContainers(request, timeout=timeout).containers)


# ----------------------------------------------------------------------------- runtimes


class Runtime:
    """A runtime daemon in its own process group, with its log in `base`."""

    name = "runtime"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.log_path = base / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: CRIClient | None = None

    @property
    def socket(self) -> Path:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write config files and create directories before the process starts."""

    def start(self, timeout: float = START_TIMEOUT) -> CRIClient:
        if self.proc is not None:
            raise BenchError(f"{self.name} already started")
        self.base.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                # Own session: a Ctrl-C in the terminal reaches only the benchmark, which then
                # stops the runtime itself, in order.
                start_new_session=True,
            )
        self.client = CRIClient(self.socket)
        proc = self.proc
        try:
            self.client.wait_ready(timeout, alive=lambda: proc.poll() is None)
        except BaseException as exc:
            self.stop()
            if isinstance(exc, BenchError):
                raise BenchError(f"{exc}\n--- {self.log_path}:\n{self.log_tail()}") from None
            raise
        return self.client

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, wait, SIGKILL; idempotent. Answers the exit status."""
        if self.client is not None:
            self.client.close()
            self.client = None
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} ignored SIGTERM for {timeout}s; killing it")
            proc.kill()
            code = proc.wait(timeout=timeout)
        return code

    def layer_count(self) -> int:
        """Unpacked layers the runtime holds on disk."""
        raise NotImplementedError

    def monitors(self) -> list[int]:
        """Per-container monitor processes of this runtime (conmon, containerd shims)."""
        return []

    def helpers(self) -> list[int]:
        """Other processes working for the daemon that count as its own (unpack workers)."""
        return []

    def cleanup(self) -> list[str]:
        """Stop the runtime and undo what it left behind; answers what had to be undone."""
        self.stop()
        return [f"unmounted {t}" for t in unmount_under(self.base)]

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Runtime:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class CryopodDaemon(Runtime):
    """`python -m cryopod serve` with root, runroot, socket and config under `base`."""

    name = "cryopod"

    def __init__(
        self,
        base: Path,
        *,
        insecure_registries: Sequence[str] = (),
        extra_config: str = "",
        pause_image: str | None = None,
        log_level: str = "info",
        python: str = sys.executable,
    ) -> None:
        super().__init__(base)
        self.insecure_registries = tuple(insecure_registries)
        self.extra_config = extra_config
        self.pause_image = pause_image
        self.log_level = log_level
        self.python = python

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def runroot(self) -> Path:
        return self.base / "run"

    @property
    def socket(self) -> Path:
        return self.runroot / "cryopod.sock"

    @property
    def config_path(self) -> Path:
        return self.base / "cryopod.conf"

    @property
    def registries_conf(self) -> Path:
        return self.base / "registries.conf"

    def prepare(self) -> None:
        self.registries_conf.write_text(
            "".join(
                f'[[registry]]\nlocation = "{host}"\ninsecure = true\n\n'
                for host in self.insecure_registries
            )
        )
        self.config_path.write_text(
            "[image]\n"
            f'registries_conf = "{self.registries_conf}"\n'
            f'auth_file = "{self.base / "auth.json"}"\n'
            + (f"pause_image = {_toml_str(self.pause_image)}\n" if self.pause_image else "")
            + self.extra_config
        )

    def argv(self) -> list[str]:
        return [
            self.python,
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
            self.log_level,
        ]

    def layer_count(self) -> int:
        """Unpacked layers in the store (`layers/<chain-id>/diff`)."""
        layers = self.root / "layers"
        if not layers.is_dir():
            return 0
        return sum(1 for d in layers.iterdir() if (d / "diff").is_dir())

    def monitors(self) -> list[int]:
        """conmon processes of this daemon's containers (their paths are under the runroot)."""
        return processes_naming(str(self.runroot), names=("conmon",))

    def helpers(self) -> list[int]:
        """Unpack worker processes working on this daemon's root."""
        return processes_naming(str(self.root), also=("cryopod.storage.unpack_worker",))

    def cleanup(self) -> list[str]:
        """Stop the daemon, kill conmons left behind, unmount; answers what had to be done.

        conmon outlives the daemon by design, so after a benchmark that failed half-way its
        monitors would stay; their containers are the caller's to kill (they live in the
        caller's cgroups).
        """
        self.stop()
        notes = []
        for pid in self.monitors():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            notes.append(f"killed leftover conmon {pid}")
        notes += [f"unmounted {t}" for t in unmount_under(self.base)]
        return notes


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# Plugins a CRI image and pod benchmark never needs; the CRI plugin does not depend on them.
# (io.containerd.runtime.v1.linux looks unneeded but the tasks service, hence CRI, requires it.)
CONTAINERD_DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
)


class Containerd(Runtime):
    """containerd with its CRI plugin, root, state, socket and registry config under `base`.

    `registry_mode` picks how plain-http registries are declared: "hosts" writes
    `certs.d/<host>/hosts.toml` and points the CRI plugin's `registry.config_path` at it (the
    way containerd documents since 1.5); "mirrors" uses the deprecated
    `registry.mirrors."<host>".endpoint = ["http://<host>"]`. runc's state goes under `base`
    too (`runtimes.runc.options.Root`), so pod benchmarks leave nothing in /run/containerd.

    For pods: `sandbox_image` is the pause image the CRI plugin runs as each pod's infra
    container; `cni_config` (a conflist as JSON text) is written to `cni_conf_dir`;
    `netns_under_state` pins pod network namespaces under `state` rather than /run/netns;
    `systemd_cgroup` picks runc's cgroup driver (cgroupfs when false);
    `restrict_oom_score_adj` caps containers' oom_score_adj at containerd's own, which a host
    without CAP_SYS_RESOURCE needs (runc fails to set the sandbox's -998 otherwise).
    """

    name = "containerd"

    def __init__(
        self,
        base: Path,
        *,
        insecure_registries: Sequence[str] = (),
        registry_mode: str = "hosts",
        cni_conf_dir: Path | None = None,
        cni_bin_dir: str = "/usr/lib/cni",
        disable_cgroup: bool = False,
        sandbox_image: str | None = None,
        cni_config: str | None = None,
        netns_under_state: bool = False,
        systemd_cgroup: bool = False,
        restrict_oom_score_adj: bool = False,
        log_level: str = "info",
        extra_toml: str = "",
        binary: str = "containerd",
    ) -> None:
        super().__init__(base)
        if registry_mode not in ("hosts", "mirrors"):
            raise ValueError(f"unknown registry mode {registry_mode!r}")
        self.insecure_registries = tuple(insecure_registries)
        self.registry_mode = registry_mode
        self.cni_conf_dir = cni_conf_dir or base / "cni" / "net.d"
        self.cni_bin_dir = cni_bin_dir
        self.disable_cgroup = disable_cgroup
        self.sandbox_image = sandbox_image
        self.cni_config = cni_config
        self.netns_under_state = netns_under_state
        self.systemd_cgroup = systemd_cgroup
        self.restrict_oom_score_adj = restrict_oom_score_adj
        self.log_level = log_level
        self.extra_toml = extra_toml
        self.binary = binary

    @staticmethod
    def available(binary: str = "containerd") -> bool:
        return shutil.which(binary) is not None

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def config_path(self) -> Path:
        return self.base / "config.toml"

    @property
    def certs_dir(self) -> Path:
        return self.base / "certs.d"

    @property
    def snapshots_dir(self) -> Path:
        return self.root / "io.containerd.snapshotter.v1.overlayfs" / "snapshots"

    def config_text(self) -> str:
        cri_plugin = '[plugins."io.containerd.grpc.v1.cri"]'
        disabled = ", ".join(_toml_str(p) for p in CONTAINERD_DISABLED_PLUGINS)
        lines = [
            "version = 2",
            f"root = {_toml_str(str(self.root))}",
            f"state = {_toml_str(str(self.state))}",
            f"temp = {_toml_str(str(self.base / 'tmp'))}",
            f"disabled_plugins = [{disabled}]",
            "",
            "[grpc]",
            f"  address = {_toml_str(str(self.socket))}",
            "",
            "[ttrpc]",
            f"  address = {_toml_str(str(self.socket) + '.ttrpc')}",
            "",
            "[debug]",
            f"  level = {_toml_str(self.log_level)}",
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f"  path = {_toml_str(str(self.base / 'opt'))}",
            "",
            cri_plugin,
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "  disable_apparmor = true",
            f"  disable_cgroup = {'true' if self.disable_cgroup else 'false'}",
            *([f"  sandbox_image = {_toml_str(self.sandbox_image)}"] if self.sandbox_image else []),
            *(["  netns_mounts_under_state_dir = true"] if self.netns_under_state else []),
            *(["  restrict_oom_score_adj = true"] if self.restrict_oom_score_adj else []),
            "",
            f"{cri_plugin[:-1]}.cni]",
            f"  bin_dir = {_toml_str(self.cni_bin_dir)}",
            f"  conf_dir = {_toml_str(str(self.cni_conf_dir))}",
            "",
            f"{cri_plugin[:-1]}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            "",
            f"{cri_plugin[:-1]}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            "",
            f"{cri_plugin[:-1]}.containerd.runtimes.runc.options]",
            f"  Root = {_toml_str(str(self.state / 'runc'))}",
            f"  SystemdCgroup = {'true' if self.systemd_cgroup else 'false'}",
            "",
        ]
        if self.registry_mode == "hosts":
            lines += [
                f"{cri_plugin[:-1]}.registry]",
                f"  config_path = {_toml_str(str(self.certs_dir))}",
                "",
            ]
        else:
            for host in self.insecure_registries:
                lines += [
                    f'{cri_plugin[:-1]}.registry.mirrors."{host}"]',
                    f"  endpoint = [{_toml_str('http://' + host)}]",
                    "",
                ]
        return "\n".join(lines) + self.extra_toml + "\n"

    def prepare(self) -> None:
        for d in (self.root, self.state, self.base / "tmp", self.base / "opt", self.cni_conf_dir):
            d.mkdir(parents=True, exist_ok=True)
        if self.registry_mode == "hosts":
            for host in self.insecure_registries:
                host_dir = self.certs_dir / host
                host_dir.mkdir(parents=True, exist_ok=True)
                (host_dir / "hosts.toml").write_text(
                    f"server = {_toml_str('http://' + host)}\n\n"
                    f'[host."http://{host}"]\n'
                    '  capabilities = ["pull", "resolve"]\n'
                    "  skip_verify = true\n"
                )
        if self.cni_config is not None:
            (self.cni_conf_dir / "10-bench.conflist").write_text(self.cni_config)
        self.config_path.write_text(self.config_text())

    def argv(self) -> list[str]:
        return [self.binary, "--config", str(self.config_path)]

    def layer_count(self) -> int:
        """Snapshots in the overlayfs snapshotter (one per unpacked layer)."""
        if not self.snapshots_dir.is_dir():
            return 0
        return sum(1 for d in self.snapshots_dir.iterdir() if d.is_dir())

    def shims(self) -> list[int]:
        """Shim processes serving this containerd (they name its socket on their command line)."""
        return processes_naming(
            str(self.socket), names=("containerd-shim", "containerd-shim-runc-v2")
        )

    def monitors(self) -> list[int]:
        return self.shims()

    def cleanup(self) -> list[str]:
        """Stop containerd, kill its shims, unmount what is left; answers what had to be done."""
        self.stop()
        notes = []
        for pid in self.shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            notes.append(f"killed leftover shim {pid}")
        notes += [f"unmounted {t}" for t in unmount_under(self.base)]
        return notes


RUNTIMES = ("cryopod", "containerd")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes: which runtimes, output, log level, temp dir."""
    parser.add_argument("--no-containerd", action="store_true", help="benchmark cryopod only")
    parser.add_argument("--no-cryopod", action="store_true", help="benchmark containerd only")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--log-level", default="info", help="log level of both runtimes")
    parser.add_argument("--workdir", type=Path, help="parent of the temp dir (default $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (debugging)")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.no_cryopod and args.no_containerd:
        parser.error("nothing to benchmark")


def chosen_runtimes(*, no_cryopod: bool, no_containerd: bool) -> list[str]:
    """The runtimes a benchmark compares: cryopod and, where installed, containerd."""
    names = [n for n in RUNTIMES if not (n == "cryopod" and no_cryopod)]
    if "containerd" in names and (no_containerd or not Containerd.available()):
        if not no_containerd:
            log("containerd not found; benchmarking cryopod only")
        names.remove("containerd")
    return names


@contextlib.contextmanager
def bench_workdir(prefix: str, parent: Path | None, *, keep: bool) -> Iterator[Path]:
    """A temp dir for one benchmark run, removed afterwards unless `keep`."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    # No "cryopod" in the name: the test suite's leak checker watches paths that contain it.
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield workdir
    finally:
        if keep:
            log(f"kept {workdir}")
        else:
            remove_tree(workdir)
