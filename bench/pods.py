"""Pods to Running over CRI: cryopod against containerd, same client, same workload, same host.

N pods (default 105, as in the well-known "105 nginx pods to Running" comparison) of one
container each are started by C concurrent workers (default 8) the way the kubelet starts a
pod: RunPodSandbox, PodSandboxStatus, ImageStatus (the image is present: it was pulled before
the clock started), CreateContainer, StartContainer, then ContainerStatus until the container
is RUNNING. The container is busybox `sleep 3600`, idling like nginx would. Pod and container
configs carry what the kubelet sends: metadata, labels and annotations, a log directory, a
cgroupfs cgroup parent per pod, the default masked and read-only paths, seccomp Unconfined.

The figures: time from the start to the first and to the last pod Running, p50/p99 of every
phase, pods/s, the peak RSS of the runtime (daemon + per-container monitors: conmon for
cryopod, containerd-shim-runc-v2 for containerd, sampled together) and its CPU seconds. Then
every pod is torn down over CRI and the bench checks that nothing is left: no sandbox or
container listed, no monitor process, no mount under the runtime's directories, no netns, no
container cgroup. `--concurrency 1 --pods 10` gives the one-pod-at-a-time figure.

Networking is the same CNI chain for both runtimes: the
Debian plugins bridge + host-local + portmap, each runtime on a bridge and /16 of its own,
every pod with an IP on eth0, a veth and masquerade rules. containerd also runs the loopback
plugin per pod; cryopod brings lo up itself when it makes the netns.

Run from the repo root as root:  .venv/bin/python bench/pods.py [--pods 105] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import math
import os
import platform
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from cri_api.v1 import api_pb2 as cri

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.crihelp import (
    RUNTIMES,
    BenchError,
    Containerd,
    CRIClient,
    CryopodDaemon,
    Runtime,
    add_common_arguments,
    bench_workdir,
    check_common_arguments,
    chosen_runtimes,
    claim_session,
    install_signal_handlers,
    log,
    mounts_under,
    remove_tree,
)
from tests.support.imagebuild import File, LayoutBuilder, busybox_image, tar_layer
from tests.support.registry import Registry, push

MIB = 1 << 20
LABEL_WIDTH = 40
BUSYBOX_REPO = "bench/busybox"
PAUSE_REPO = "bench/pause"
PAUSE_TAG = "3.9"
CATATONIT = Path("/usr/bin/catatonit")
POD_NAMESPACE = "bench"
CONTAINER_NAME = "sleeper"
CONTAINER_COMMAND = ("/bin/sleep", "3600")
RUN_LABEL = "bench.cryopod.io/run"
NETWORK_NOTE = "CNI bridge + host-local + portmap for both runtimes (an IP and a veth per pod)"
# Each runtime's bridge network: bridge device and subnet.
BRIDGES = {"cryopod": ("cpbench0", "10.88.0.0/16"), "containerd": ("cdbench0", "10.89.0.0/16")}


def bridge_conflist(runtime: str, ipam_dir: Path) -> str:
    """The CNI network a runtime's pods join."""
    bridge, subnet = BRIDGES[runtime]
    config = {
        "cniVersion": "1.0.0",
        "name": f"bench-{runtime}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(config, indent=1) + "\n"


def delete_bridges() -> None:
    for bridge, _subnet in BRIDGES.values():
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


NETNS_DIR = Path("/run/netns")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CAP_SYS_RESOURCE = 24
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# What the kubelet sends for a container with the default procMount
# (k8s.io/kubernetes/pkg/securitycontext: defaultMaskedPaths, defaultReadonlyPaths).
DEFAULT_MASKED_PATHS = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
DEFAULT_READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)
# The service environment the kubelet gives every container of the default namespace.
SERVICE_ENV = (
    ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
    ("KUBERNETES_SERVICE_PORT", "443"),
    ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
    ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
    ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
    ("KUBERNETES_PORT_443_TCP_PORT", "443"),
    ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
)

# Phases of one pod start, in order; `running` is from StartContainer's answer to the first
# ContainerStatus that says RUNNING, `pod` the whole of it.
PHASES = ("runp", "podstatus", "imagestatus", "create", "start", "running", "pod")
PHASE_LABELS = {
    "runp": "RunPodSandbox",
    "podstatus": "PodSandboxStatus",
    "imagestatus": "ImageStatus",
    "create": "CreateContainer",
    "start": "StartContainer",
    "running": "start -> RUNNING seen",
    "pod": "pod start (runp -> Running)",
}

T = TypeVar("T")
R = TypeVar("R")


class Unsupported(BenchError):
    """The runtime answers UNIMPLEMENTED to a call the benchmark needs."""


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class BenchImages:
    """The images the registry serves: the workload's and the pause image."""

    host: str
    busybox: str
    pause: str


def pause_layer() -> bytes:
    """A pause image's only layer: static catatonit as /pause, which `-P` makes a pause process.

    Named `pause` as in the real image. The name matters too: the test suite's leak checker
    kills catatonit processes it cannot attribute to a session, and a container's processes
    do not carry the session marker in their environment.
    """
    return tar_layer([File("pause", CATATONIT.read_bytes(), mode=0o755)])


def build_and_push(workdir: Path, registry: Registry) -> BenchImages:
    layout_dir = workdir / "layout"
    layout = LayoutBuilder(layout_dir)
    busybox_image(layout, "busybox")
    # Like podman's pause image; containerd runs one per pod (its sandbox_image).
    layout.add_image(
        [(pause_layer(), "gzip")],
        config={"Entrypoint": ["/pause", "-P"], "StopSignal": "SIGINT"},
        ref_name="pause",
    )
    push(layout_dir, "busybox", registry, f"{BUSYBOX_REPO}:latest")
    push(layout_dir, "pause", registry, f"{PAUSE_REPO}:{PAUSE_TAG}")
    shutil.rmtree(layout_dir, ignore_errors=True)
    return BenchImages(
        host=registry.host,
        busybox=f"{registry.host}/{BUSYBOX_REPO}:latest",
        pause=f"{registry.host}/{PAUSE_REPO}:{PAUSE_TAG}",
    )


# ----------------------------------------------------------------------------- pod configs


@dataclass(frozen=True)
class PodPlan:
    """One pod to start: its identity and the kubelet-side directories it uses."""

    name: str
    uid: str
    log_dir: Path  # /var/log/pods/<namespace>_<name>_<uid>
    pod_dir: Path  # /var/lib/kubelet/pods/<uid>
    cgroup_parent: str  # cgroupfs: /kubepods-bench-<run>/pod<uid>
    run_label: str

    @property
    def termination_log(self) -> Path:
        return self.pod_dir / "containers" / CONTAINER_NAME / "termination-log"

    def prepare_dirs(self) -> None:
        """What the kubelet creates before it calls the runtime."""
        (self.log_dir / CONTAINER_NAME).mkdir(parents=True, exist_ok=True)
        self.termination_log.parent.mkdir(parents=True, exist_ok=True)
        self.termination_log.touch()


def make_plans(prefix: str, count: int, workdir: Path, cgroup_top: str, run: str) -> list[PodPlan]:
    plans = []
    for i in range(count):
        uid = str(uuid.uuid4())
        name = f"{prefix}-{i:04d}"
        plans.append(
            PodPlan(
                name=name,
                uid=uid,
                log_dir=workdir / "pods-logs" / f"{POD_NAMESPACE}_{name}_{uid}",
                pod_dir=workdir / "kubelet-pods" / uid,
                cgroup_parent=f"{cgroup_top}/pod{uid}",
                run_label=run,
            )
        )
    return plans


def namespace_options() -> Any:
    # Network and IPC per pod, PID per container: a pod spec with no sharing and no hostX.
    return cri.NamespaceOption(
        network=cri.NamespaceMode.POD,
        pid=cri.NamespaceMode.CONTAINER,
        ipc=cri.NamespaceMode.POD,
    )


def pod_labels(plan: PodPlan) -> dict[str, str]:
    return {
        "app": "bench",
        RUN_LABEL: plan.run_label,
        "io.kubernetes.pod.name": plan.name,
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.uid": plan.uid,
    }


def sandbox_config(plan: PodPlan) -> Any:
    """A PodSandboxConfig as the kubelet builds it for a plain pod (no host namespaces)."""
    return cri.PodSandboxConfig(
        metadata=cri.PodSandboxMetadata(
            name=plan.name, uid=plan.uid, namespace=POD_NAMESPACE, attempt=0
        ),
        hostname=plan.name,
        log_directory=str(plan.log_dir),
        dns_config=cri.DNSConfig(
            servers=["10.96.0.10"],
            searches=[
                f"{POD_NAMESPACE}.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
            ],
            options=["ndots:5"],
        ),
        labels=pod_labels(plan),
        annotations={
            "kubernetes.io/config.source": "api",
            "kubernetes.io/config.seen": "2026-01-01T00:00:00.000000000Z",
        },
        linux=cri.LinuxPodSandboxConfig(
            cgroup_parent=plan.cgroup_parent,
            security_context=cri.LinuxSandboxSecurityContext(
                namespace_options=namespace_options(),
                seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined),
            ),
        ),
    )


def container_config(plan: PodPlan, image_id: str, image_name: str) -> Any:
    """A ContainerConfig as the kubelet builds it; linux resources are left unset."""
    return cri.ContainerConfig(
        metadata=cri.ContainerMetadata(name=CONTAINER_NAME, attempt=0),
        image=cri.ImageSpec(image=image_id, user_specified_image=image_name),
        command=list(CONTAINER_COMMAND),
        envs=[cri.KeyValue(key=k, value=v) for k, v in SERVICE_ENV],
        mounts=[
            cri.Mount(
                container_path="/dev/termination-log",
                host_path=str(plan.termination_log),
            )
        ],
        labels={
            "io.kubernetes.container.name": CONTAINER_NAME,
            "io.kubernetes.pod.name": plan.name,
            "io.kubernetes.pod.namespace": POD_NAMESPACE,
            "io.kubernetes.pod.uid": plan.uid,
            RUN_LABEL: plan.run_label,
        },
        annotations={
            "io.kubernetes.container.hash": "5f2b3c4d",
            "io.kubernetes.container.restartCount": "0",
            "io.kubernetes.container.terminationMessagePath": "/dev/termination-log",
            "io.kubernetes.container.terminationMessagePolicy": "File",
            "io.kubernetes.pod.terminationGracePeriod": "30",
        },
        log_path=f"{CONTAINER_NAME}/0.log",
        linux=cri.LinuxContainerConfig(
            security_context=cri.LinuxContainerSecurityContext(
                namespace_options=namespace_options(),
                masked_paths=list(DEFAULT_MASKED_PATHS),
                readonly_paths=list(DEFAULT_READONLY_PATHS),
                seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.Unconfined),
            ),
        ),
    )


# ----------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class ProcessRule:
    """Which processes count as the runtime's own besides the daemon."""

    kind: str  # "monitors" or "helpers"
    comms: tuple[str, ...]  # /proc/PID/comm starts with one of these
    needles: tuple[str, ...]  # and the command line contains all of these


def process_rules(runtime: Runtime) -> list[ProcessRule]:
    if isinstance(runtime, CryopodDaemon):
        return [
            ProcessRule("monitors", ("conmon",), (str(runtime.runroot),)),
            ProcessRule(
                "helpers", ("python",), ("cryopod.storage.unpack_worker", str(runtime.root))
            ),
        ]
    if isinstance(runtime, Containerd):
        # comm is cut to 15 characters: containerd-shim-runc-v2 shows as containerd-shim.
        return [ProcessRule("monitors", ("containerd-shim",), (str(runtime.socket),))]
    return []


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return None


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    ticks: int  # utime + stime + cutime + cstime
    rss: int  # bytes


def proc_stat(pid: int) -> ProcStat | None:
    stat = _read(f"/proc/{pid}/stat")
    statm = _read(f"/proc/{pid}/statm")
    if stat is None or statm is None:
        return None
    # Fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17).
    rest = stat.rpartition(")")[2].split()
    try:
        ticks = sum(int(rest[i]) for i in (11, 12, 13, 14))
        return ProcStat(ppid=int(rest[1]), ticks=ticks, rss=int(statm.split()[1]) * PAGE_SIZE)
    except (IndexError, ValueError):
        return None


def proc_kb_field(pid: int, path: str, key: str) -> int:
    """A `Key:   123 kB` field of /proc/PID/status or smaps_rollup, in bytes (0 if gone)."""
    text = _read(f"/proc/{pid}/{path}") or ""
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


class ProcessFinder:
    """Finds the runtime's processes quickly enough to run several times a second.

    Every scan reads each process's comm; the command line only of candidates whose verdict
    is not known yet (a pid is judged again when its comm changes, e.g. after an exec).
    """

    def __init__(self, daemon_pid: int, rules: Sequence[ProcessRule]) -> None:
        self.daemon_pid = daemon_pid
        self.rules = list(rules)
        self._verdicts: dict[tuple[int, str], str | None] = {}

    def scan(self) -> dict[int, str]:
        found = {self.daemon_pid: "daemon"}
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in (me, self.daemon_pid):
                continue
            comm = _read(f"/proc/{pid}/comm")
            if comm is None:
                continue
            comm = comm.strip()
            key = (pid, comm)
            if key not in self._verdicts:
                self._verdicts[key] = self._judge(pid, comm)
            kind = self._verdicts[key]
            if kind is not None:
                found[pid] = kind
        return found

    def _judge(self, pid: int, comm: str) -> str | None:
        rules = [r for r in self.rules if comm.startswith(r.comms)]
        if not rules:
            return None
        cmdline = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
        for rule in rules:
            if all(n in cmdline for n in rule.needles):
                return rule.kind
        return None


@dataclass
class Usage:
    """Memory and CPU of the runtime's processes over one phase."""

    samples: int = 0
    peak_rss: int = 0
    peak_rss_by_kind: dict[str, int] = field(default_factory=dict)
    end_rss_by_kind: dict[str, int] = field(default_factory=dict)
    end_pss_by_kind: dict[str, int] = field(default_factory=dict)
    end_counts: dict[str, int] = field(default_factory=dict)
    daemon_hwm: int = 0
    cpu_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        def mib(d: dict[str, int]) -> dict[str, float]:
            return {k: round(v / MIB, 2) for k, v in sorted(d.items())}

        return {
            "samples": self.samples,
            "peak_rss_mib": round(self.peak_rss / MIB, 2),
            "peak_rss_by_kind_mib": mib(self.peak_rss_by_kind),
            "end_rss_by_kind_mib": mib(self.end_rss_by_kind),
            "end_pss_by_kind_mib": mib(self.end_pss_by_kind),
            "end_process_counts": dict(sorted(self.end_counts.items())),
            "daemon_peak_rss_mib": round(self.daemon_hwm / MIB, 2),
            "cpu_seconds": round(self.cpu_seconds, 3),
        }


class UsageSampler:
    """Samples RSS and CPU ticks of the daemon and its monitors and helpers in a thread.

    CPU: utime+stime+cutime+cstime of the daemon (so children it reaped, like `runc start`
    or the shim's start process, count) and of every monitor and helper (whose cumulative
    fields hold the `runc create` they reaped). A monitor or helper that went away between
    samples keeps its last reading unless the daemon was its parent: then the daemon's
    cutime/cstime has it already.
    """

    def __init__(self, runtime: Runtime, interval: float) -> None:
        if runtime.pid is None:
            raise BenchError(f"{runtime.name} is not running")
        self.daemon_pid = runtime.pid
        self.finder = ProcessFinder(runtime.pid, process_rules(runtime))
        self.interval = interval
        self.usage = Usage()
        self._last: dict[int, tuple[ProcStat, str]] = {}
        self._gone_ticks = 0
        self._start_ticks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="usage-sampler", daemon=True)
        self._lock = threading.Lock()

    def _sample(self) -> tuple[int, dict[str, int], dict[int, str]]:
        """Answers (cumulative ticks, rss by kind, the processes seen)."""
        with self._lock:
            found = self.finder.scan()
            current: dict[int, tuple[ProcStat, str]] = {}
            for pid, kind in found.items():
                stat = proc_stat(pid)
                if stat is not None:
                    current[pid] = (stat, kind)
            for pid, (stat, kind) in self._last.items():
                if pid not in current and kind != "daemon" and stat.ppid != self.daemon_pid:
                    self._gone_ticks += stat.ticks
            self._last = current
            ticks = self._gone_ticks + sum(s.ticks for s, _ in current.values())
            rss: dict[str, int] = {"daemon": 0, "monitors": 0, "helpers": 0}
            for stat, kind in current.values():
                rss[kind] = rss.get(kind, 0) + stat.rss
            total = sum(rss.values())
            self.usage.samples += 1
            if total > self.usage.peak_rss:
                self.usage.peak_rss = total
                self.usage.peak_rss_by_kind = dict(rss)
            return ticks, rss, {pid: kind for pid, (_, kind) in current.items()}

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._start_ticks = self._sample()[0]
        self._thread.start()

    def stop(self) -> Usage:
        """Stop sampling; the final sample gives the end figures."""
        self._stop.set()
        self._thread.join()
        ticks, rss, seen = self._sample()
        usage = self.usage
        usage.cpu_seconds = (ticks - self._start_ticks) / CLOCK_TICKS
        usage.end_rss_by_kind = rss
        pss: dict[str, int] = {}
        counts: dict[str, int] = {}
        for pid, kind in seen.items():
            pss[kind] = pss.get(kind, 0) + proc_kb_field(pid, "smaps_rollup", "Pss")
            counts[kind] = counts.get(kind, 0) + 1
        usage.end_pss_by_kind = pss
        usage.end_counts = counts
        usage.daemon_hwm = proc_kb_field(self.daemon_pid, "status", "VmHWM")
        return usage


# ----------------------------------------------------------------------------- cgroups, netns


def cgroup_mounts() -> list[Path]:
    """Mount points of the cgroup hierarchies (v1 controllers and the v2 unified one)."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fstype = post.split(" ", 1)[0]
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(pre.split(" ")[4]))
    return sorted(set(found))


def cgroup_dirs(relative: str) -> list[Path]:
    """The directories of cgroup `relative` in every hierarchy, deepest first."""
    dirs: list[Path] = []
    for mount in cgroup_mounts():
        top = mount / relative.lstrip("/")
        if top.is_dir():
            dirs += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(set(dirs), key=lambda p: len(p.parts), reverse=True)


def cgroup_processes(relative: str) -> set[int]:
    pids: set[int] = set()
    for d in cgroup_dirs(relative):
        text = _read(str(d / "cgroup.procs")) or ""
        pids.update(int(p) for p in text.split())
    return pids


def kill_cgroup(relative: str) -> list[str]:
    """SIGKILL every process in cgroup `relative` and below; answers what was killed."""
    notes = []
    for pid in sorted(cgroup_processes(relative)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            notes.append(f"killed process {pid} in the run's cgroups")
    return notes


def remove_cgroup(relative: str, wait: float = 10.0) -> list[str]:
    """rmdir cgroup `relative` and its children everywhere; answers what would not go."""
    deadline = time.monotonic() + wait
    while True:
        left = []
        for d in cgroup_dirs(relative):
            try:
                d.rmdir()
            except OSError as exc:
                left.append(f"cgroup {d}: {exc.strerror}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)  # killed processes take a moment to leave their cgroup


def netns_names() -> set[str]:
    try:
        return set(os.listdir(NETNS_DIR))
    except OSError:
        return set()


# ----------------------------------------------------------------------------- running pods


@dataclass
class PodResult:
    """One started pod: its ids and phase durations (seconds); times are from the start."""

    name: str
    sandbox_id: str = ""
    container_id: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    started_at: float = 0.0
    running_at: float = 0.0


class PodLedger:
    """Ids of every sandbox and container made, so teardown finds them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sandboxes: dict[str, str] = {}  # pod name -> sandbox id
        self.containers: dict[str, str] = {}  # pod name -> container id

    def add_sandbox(self, name: str, sandbox_id: str) -> None:
        with self._lock:
            self.sandboxes[name] = sandbox_id

    def add_container(self, name: str, container_id: str) -> None:
        with self._lock:
            self.containers[name] = container_id

    def pods(self) -> list[tuple[str, str, str]]:
        """(name, sandbox id, container id or "") of every pod made."""
        with self._lock:
            return [(n, s, self.containers.get(n, "")) for n, s in self.sandboxes.items()]

    def forget(self, name: str) -> None:
        with self._lock:
            self.sandboxes.pop(name, None)
            self.containers.pop(name, None)


def rpc_name(exc: grpc.RpcError) -> str:
    code = exc.code()
    return str(code.name if code is not None else "UNKNOWN")


def call(what: str, fn: Callable[[], T]) -> T:
    """Run one CRI call; UNIMPLEMENTED becomes `Unsupported`, other errors `BenchError`."""
    try:
        return fn()
    except grpc.RpcError as exc:
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if rpc_name(exc) == "UNIMPLEMENTED":
            raise Unsupported(f"{what} answered UNIMPLEMENTED: {details}") from None
        raise BenchError(f"{what} failed: {rpc_name(exc)}: {details}") from None


@dataclass(frozen=True)
class PodWork:
    """Everything a worker needs to start pods on one runtime."""

    client: CRIClient
    image: str  # what the pod spec names; the kubelet resolves it with ImageStatus
    ledger: PodLedger
    rpc_timeout: float
    poll_interval: float
    running_timeout: float


def start_pod(work: PodWork, plan: PodPlan, t0: float) -> PodResult:
    """One pod, as the kubelet's SyncPod does it; answers its phase durations."""
    client, timeout = work.client, work.rpc_timeout
    result = PodResult(name=plan.name)
    plan.prepare_dirs()
    config = sandbox_config(plan)
    marks = [time.perf_counter()]
    result.started_at = marks[0] - t0

    sandbox_id = call("RunPodSandbox", lambda: client.run_pod_sandbox(config, timeout=timeout))
    work.ledger.add_sandbox(plan.name, sandbox_id)
    result.sandbox_id = sandbox_id
    marks.append(time.perf_counter())

    call("PodSandboxStatus", lambda: client.pod_sandbox_status(sandbox_id, timeout=timeout))
    marks.append(time.perf_counter())

    image = call("ImageStatus", lambda: client.image_status(work.image, timeout=timeout))
    if image is None:
        raise BenchError(f"ImageStatus: {work.image} is not present")
    marks.append(time.perf_counter())

    ctr_config = container_config(plan, str(image.id), work.image)
    container_id = call(
        "CreateContainer",
        lambda: client.create_container(sandbox_id, ctr_config, config, timeout=timeout),
    )
    work.ledger.add_container(plan.name, container_id)
    result.container_id = container_id
    marks.append(time.perf_counter())

    call("StartContainer", lambda: client.start_container(container_id, timeout=timeout))
    marks.append(time.perf_counter())

    deadline = marks[-1] + work.running_timeout
    while True:
        status = call(
            "ContainerStatus", lambda: client.container_status(container_id, timeout=timeout)
        )
        if status.state == cri.ContainerState.CONTAINER_RUNNING:
            break
        if status.state == cri.ContainerState.CONTAINER_EXITED:
            raise BenchError(
                f"{plan.name}: container {container_id} exited with {status.exit_code} "
                f"({status.reason}: {status.message}) instead of running"
            )
        if time.perf_counter() > deadline:
            raise BenchError(f"{plan.name}: container {container_id} not RUNNING in time")
        time.sleep(work.poll_interval)
    marks.append(time.perf_counter())

    result.running_at = marks[-1] - t0
    for name, (a, b) in zip(PHASES, itertools.pairwise(marks), strict=False):
        result.phases[name] = b - a
    result.phases["pod"] = marks[-1] - marks[0]
    return result


def run_concurrently(
    items: Sequence[T],
    fn: Callable[[T, float], R],
    concurrency: int,
    *,
    fail_fast: bool = True,
    on_interrupt_wait: float = 60.0,
) -> tuple[list[R], list[tuple[T, BaseException]], float]:
    """`fn(item, t0)` for every item on `concurrency` threads; all start together at `t0`.

    Answers (results in completion order, failures, t0). With `fail_fast` the first failure
    stops the workers from taking new items. Ctrl-C stops them too, waits for calls in flight
    (up to `on_interrupt_wait` s, a second Ctrl-C cuts that short) and re-raises.
    """
    todo: queue.SimpleQueue[T] = queue.SimpleQueue()
    for item in items:
        todo.put(item)
    results: list[R] = []
    failures: list[tuple[T, BaseException]] = []
    lock = threading.Lock()
    go = threading.Event()
    stop = threading.Event()
    t0 = 0.0

    def worker() -> None:
        go.wait()
        while not stop.is_set():
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                out = fn(item, t0)
            except BaseException as exc:  # reported to the caller
                with lock:
                    failures.append((item, exc))
                if fail_fast:
                    stop.set()
                continue
            with lock:
                results.append(out)

    threads = [
        threading.Thread(target=worker, name=f"pod-worker-{i}", daemon=True)
        for i in range(max(1, min(concurrency, len(items))))
    ]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    go.set()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.2)
    except KeyboardInterrupt:
        stop.set()
        log("interrupted: waiting for the calls in flight (Ctrl-C again to stop waiting)")
        with contextlib.suppress(KeyboardInterrupt):
            deadline = time.monotonic() + on_interrupt_wait
            for thread in threads:
                while thread.is_alive() and time.monotonic() < deadline:
                    thread.join(0.2)
        raise
    return results, failures, t0


def first_failure(failures: list[tuple[T, BaseException]]) -> BaseException:
    """The failure to report: an UNIMPLEMENTED answer over anything it caused."""
    for _item, exc in failures:
        if isinstance(exc, Unsupported):
            return exc
    return failures[0][1]


def teardown_pod(work: PodWork, pod: tuple[str, str, str], grace: int) -> None:
    """StopContainer, RemoveContainer, StopPodSandbox, RemovePodSandbox: the kubelet's order."""
    name, sandbox_id, container_id = pod
    client, timeout = work.client, work.rpc_timeout
    if container_id:
        call(
            "StopContainer",
            lambda: client.stop_container(container_id, grace=grace, timeout=timeout),
        )
        call("RemoveContainer", lambda: client.remove_container(container_id, timeout=timeout))
    call("StopPodSandbox", lambda: client.stop_pod_sandbox(sandbox_id, timeout=timeout))
    call("RemovePodSandbox", lambda: client.remove_pod_sandbox(sandbox_id, timeout=timeout))
    work.ledger.forget(name)


def teardown_all(work: PodWork, run_label: str, concurrency: int, grace: int) -> float:
    """Tear down every pod of this run (ledger plus whatever the runtime lists with our
    label); answers the seconds it took. Raises if a pod would not go."""
    started = time.perf_counter()
    pods = {sandbox_id: (name, sandbox_id, cid) for name, sandbox_id, cid in work.ledger.pods()}
    labels = {RUN_LABEL: run_label}
    with contextlib.suppress(BenchError):  # a runtime without the List calls: ledger only
        listed = call("ListPodSandbox", lambda: work.client.list_pod_sandboxes(labels))
        for sandbox in listed:
            pods.setdefault(sandbox.id, (f"listed-{sandbox.id[:12]}", sandbox.id, ""))
        for container in call("ListContainers", lambda: work.client.list_containers(labels)):
            name, sandbox_id, cid = pods.get(
                container.pod_sandbox_id, ("", container.pod_sandbox_id, "")
            )
            if not cid:
                pods[sandbox_id] = (name or f"listed-{sandbox_id[:12]}", sandbox_id, container.id)
    if not pods:
        return 0.0
    _results, failures, _t0 = run_concurrently(
        list(pods.values()),
        lambda pod, _t0: teardown_pod(work, pod, grace),
        concurrency,
        fail_fast=False,
    )
    if failures:
        pod, exc = failures[0]
        raise BenchError(f"teardown of {len(failures)} pods failed; {pod[0]}: {exc}")
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- one runtime


@dataclass
class RuntimeRun:
    """What one runtime did: figures, or why there are none."""

    runtime: str
    version: str = ""
    status: str = "ok"  # ok, skipped, failed
    message: str = ""
    network_ready: str = ""
    pods: list[PodResult] = field(default_factory=list)
    usage: Usage | None = None
    teardown_seconds: float = 0.0
    leaks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok" and bool(self.pods)

    def phase(self, name: str) -> list[float]:
        return [p.phases[name] for p in self.pods if name in p.phases]

    @property
    def first_running(self) -> float:
        return min(p.running_at for p in self.pods)

    @property
    def last_running(self) -> float:
        return max(p.running_at for p in self.pods)

    @property
    def pods_per_second(self) -> float:
        return len(self.pods) / self.last_running if self.last_running else float("nan")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "runtime": self.runtime,
            "version": self.version,
            "status": self.status,
            "message": self.message,
            "network_ready": self.network_ready,
        }
        if self.ok:
            out |= {
                "pods_running": len(self.pods),
                "first_running_s": round(self.first_running, 4),
                "last_running_s": round(self.last_running, 4),
                "pods_per_s": round(self.pods_per_second, 2),
                "phases_ms": {
                    name: {
                        "p50": round(percentile(self.phase(name), 50) * 1000, 2),
                        "p99": round(percentile(self.phase(name), 99) * 1000, 2),
                        "max": round(max(self.phase(name)) * 1000, 2),
                    }
                    for name in PHASES
                },
                "per_pod_ms": {
                    name: [round(v * 1000, 2) for v in self.phase(name)] for name in PHASES
                },
                "teardown_s": round(self.teardown_seconds, 3),
            }
        if self.usage is not None:
            out["usage"] = self.usage.as_json()
        out["leaks"] = self.leaks
        out["notes"] = self.notes
        return out


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def has_sys_resource() -> bool:
    """Whether we may lower oom_score_adj (CAP_SYS_RESOURCE in the effective set)."""
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def make_runtime(name: str, base: Path, images: BenchImages, args: argparse.Namespace) -> Runtime:
    if name == "cryopod":
        net_d = base / "net.d"
        net_d.mkdir(parents=True, exist_ok=True)
        (net_d / "10-bench.conflist").write_text(bridge_conflist(name, base / "ipam"))
        return CryopodDaemon(
            base,
            insecure_registries=[images.host],
            pause_image=images.pause,
            log_level=args.log_level,
            extra_config=f'[network]\nconfig_dirs = ["{net_d}"]\n',
        )
    return Containerd(
        base,
        insecure_registries=[images.host],
        sandbox_image=images.pause,
        cni_config=bridge_conflist(name, base / "ipam"),
        netns_under_state=True,
        systemd_cgroup=False,
        restrict_oom_score_adj=not has_sys_resource(),
        log_level=args.log_level,
    )


def check_clean(
    runtime: Runtime,
    client: CRIClient,
    run_label: str,
    cgroup_top: str,
    netns_before: set[str],
    mounts_before: set[str],
) -> list[str]:
    """What the runtime left behind after the teardown, while it still runs.

    Mounts the daemon had before the timed pods (after the warm-up: its own, like cryopod's
    private bind of the pinned-namespace root) are not the pods' and do not count.
    """
    leaks: list[str] = []
    labels = {RUN_LABEL: run_label}
    with contextlib.suppress(BenchError):
        leaks += [
            f"sandbox {s.id} still listed ({cri.PodSandboxState.Name(s.state)})"
            for s in call("ListPodSandbox", lambda: client.list_pod_sandboxes(labels))
        ]
        leaks += [
            f"container {c.id} still listed ({cri.ContainerState.Name(c.state)})"
            for c in call("ListContainers", lambda: client.list_containers(labels))
        ]
    # containerd's shims exit a moment after the task is deleted; give monitors some time.
    deadline = time.monotonic() + 10.0
    while runtime.monitors() and time.monotonic() < deadline:
        time.sleep(0.1)
    leaks += [f"monitor process {pid} still running" for pid in runtime.monitors()]
    leaks += [f"container process {pid} still running" for pid in cgroup_processes(cgroup_top)]
    leaks += [f"mount {t}" for t in mounts_under(runtime.base) if t not in mounts_before]
    leaks += [f"netns {NETNS_DIR / n}" for n in sorted(netns_names() - netns_before)]
    # The pod cgroups (pod<uid>) are the kubelet's to remove, and so ours; a container
    # cgroup left in one is the runtime's leak.
    for mount in cgroup_mounts():
        top = mount / cgroup_top.lstrip("/")
        for d, _, _ in os.walk(top) if top.is_dir() else ():
            if len(Path(d).relative_to(top).parts) >= 2:
                leaks.append(f"container cgroup {d}")
    return leaks


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM only log while the last cleanup runs: it must not stop half-way."""

    def hold(signum: int, _frame: Any) -> None:
        log(f"{signal.Signals(signum).name} ignored: cleaning up, nearly done")

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def force_cleanup(runtime: Runtime, cgroup_top: str) -> list[str]:
    """Undo whatever is left, whatever state things are in; answers what had to be done."""
    notes = kill_cgroup(cgroup_top)
    try:
        notes += runtime.cleanup()
    except BenchError as exc:
        notes.append(str(exc))
    notes += kill_cgroup(cgroup_top)
    notes += remove_cgroup(cgroup_top)
    return notes


def run_runtime(
    name: str, workdir: Path, images: BenchImages, args: argparse.Namespace
) -> RuntimeRun:
    """Start the runtime on a fresh root, pull, warm up, time the pods, tear down, check."""
    result = RuntimeRun(runtime=name)
    base = workdir / name
    runtime = make_runtime(name, base, images, args)
    run_label = uuid.uuid4().hex[:12]
    cgroup_top = f"{args.cgroup_parent}-{run_label}"
    netns_before = netns_names()
    mounts_before: set[str] = set()
    work: PodWork | None = None
    torn_down = False
    try:
        client = runtime.start()
        version = client.version()
        result.version = f"{version.runtime_name} {version.runtime_version}"
        with contextlib.suppress(grpc.RpcError):
            for cond in client.status().status.conditions:
                if cond.type == "NetworkReady":
                    result.network_ready = str(cond.status) + (
                        f" ({cond.reason})" if cond.reason else ""
                    )
        log(f"{name}: {result.version} up; pulling images")
        for image in (images.busybox, images.pause):
            call(f"PullImage {image}", functools.partial(client.pull, image, args.rpc_timeout))
        work = PodWork(
            client=client,
            image=images.busybox,
            ledger=PodLedger(),
            rpc_timeout=args.rpc_timeout,
            poll_interval=args.poll_interval,
            running_timeout=args.rpc_timeout,
        )
        pod_work = work
        if args.warmup:
            warm = make_plans("warmup", args.warmup, workdir / name, cgroup_top, run_label)
            _res, failures, _t0 = run_concurrently(
                warm, lambda plan, t0: start_pod(pod_work, plan, t0), args.concurrency
            )
            if failures:
                raise first_failure(failures)
            teardown_all(work, run_label, args.concurrency, args.stop_timeout)
            log(f"{name}: {args.warmup} warm-up pod(s) started and removed")
        mounts_before = set(mounts_under(base))

        plans = make_plans("pod", args.pods, workdir / name, cgroup_top, run_label)
        sampler = UsageSampler(runtime, args.sample_interval)
        sampler.start()
        try:
            pods, failures, _t0 = run_concurrently(
                plans, lambda plan, t0: start_pod(pod_work, plan, t0), args.concurrency
            )
        finally:
            result.usage = sampler.stop()
        if failures:
            raise first_failure(failures)
        result.pods = pods
        log(
            f"{name}: {len(pods)} pods Running after {result.last_running:.3f}s "
            f"(first after {result.first_running:.3f}s)"
        )
        result.teardown_seconds = teardown_all(work, run_label, args.concurrency, args.stop_timeout)
        torn_down = True
        log(f"{name}: {len(pods)} pods removed in {result.teardown_seconds:.3f}s")
        result.leaks = check_clean(
            runtime, client, run_label, cgroup_top, netns_before, mounts_before
        )
        return result
    except Unsupported as exc:
        result.status = "skipped"
        result.message = str(exc)
        log(f"{name}: skipped: {exc}")
        return result
    except BenchError as exc:
        result.status = "failed"
        result.message = str(exc)
        log(f"{name}: failed: {exc}\n--- {runtime.log_path} (tail):\n{runtime.log_tail()}")
        return result
    finally:
        problems: list[str] = []
        if work is not None and not torn_down and runtime.proc is not None:
            log(f"{name}: tearing down the pods over CRI (Ctrl-C again to force)")
            try:
                teardown_all(work, run_label, args.concurrency, args.stop_timeout)
            except (BenchError, KeyboardInterrupt) as exc:
                problems.append(f"CRI teardown incomplete: {exc or 'interrupted'}")
        with signals_deferred():
            code = runtime.stop()
            if code not in (None, 0, -signal.SIGTERM):
                problems.append(f"{name} exited with status {code} on SIGTERM")
            # A daemon-level mount that outlives the daemon is by design (like /run/netns);
            # the bench unmounts it and says so, but it is no pod's leak.
            kept = [t for t in mounts_under(base) if t in mounts_before]
            result.notes += [f"mount {t} stays after the daemon exits (daemon-level)" for t in kept]
            problems += [
                n
                for n in force_cleanup(runtime, cgroup_top)
                if n.removeprefix("unmounted ") not in kept
            ]
            if result.status == "ok":
                result.leaks += problems
            else:
                result.notes += problems
            for note in problems:
                log(f"{name} cleanup: {note}")
            if not args.keep:
                remove_tree(base)


# ----------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def fmt_ms(values: Sequence[float]) -> str:
    return f"{percentile(values, 50) * 1000:.1f} / {percentile(values, 99) * 1000:.1f}"


def runc_version() -> str:
    try:
        out = subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "runc ?"
    return out.splitlines()[0] if out else "runc ?"


def header_lines(images: BenchImages, args: argparse.Namespace) -> list[str]:
    mode = "one pod at a time" if args.concurrency == 1 else f"{args.concurrency} workers"
    return [
        f"pods: {args.pods} pods x 1 container ({images.busybox}, "
        f"`{' '.join(CONTAINER_COMMAND)}`), {mode}, image present, "
        f"{args.warmup} warm-up pod(s) first",
        f"networking: {NETWORK_NOTE}",
        f"host: {os.cpu_count()} CPUs, Linux {platform.release()}, {runc_version()}; "
        "cgroupfs driver",
        "cryopod runs no infra container; containerd runs a pause container per pod "
        "(catatonit -P as /pause) under one containerd-shim-runc-v2 per pod",
        "containerd also runs the loopback plugin per pod"
        + ("" if has_sys_resource() else "; restrict_oom_score_adj (no CAP_SYS_RESOURCE)"),
    ]


def print_table(runs: dict[str, RuntimeRun], images: BenchImages, args: argparse.Namespace) -> None:
    for line in header_lines(images, args):
        print(line)
    names = list(runs)
    both = all(n in runs and runs[n].ok for n in RUNTIMES)
    width = 16
    head = f"{'':<{LABEL_WIDTH}}" + "".join(f"{n:>{width}}" for n in names)
    if both:
        head += f"{'cryopod/containerd':>{width + 4}}"
    print()
    print(head)
    print("-" * len(head))

    def row(
        label: str,
        value: Callable[[RuntimeRun], str],
        rat: float | None = None,
        always: bool = False,
    ) -> None:
        cells = "".join(
            f"{value(runs[n]) if runs[n].ok or always else '-':>{width}}" for n in names
        )
        tail = f"{rat:>{width + 3}.2f}x" if both and rat is not None else ""
        print(f"{label:<{LABEL_WIDTH}}{cells}{tail}")

    def both_ratio(fn: Callable[[RuntimeRun], float]) -> float | None:
        if not both:
            return None
        return ratio(fn(runs["cryopod"]), fn(runs["containerd"]))

    def usage(r: RuntimeRun) -> Usage:
        assert r.usage is not None
        return r.usage

    row("version", lambda r: r.version.split(" ", 1)[-1][: width - 1] or "-", always=True)
    row("first pod Running (s)", lambda r: f"{r.first_running:.3f}")
    row(
        "last pod Running (s)",
        lambda r: f"{r.last_running:.3f}",
        both_ratio(lambda r: r.last_running),
    )
    row("pods/s", lambda r: f"{r.pods_per_second:.1f}", both_ratio(lambda r: r.pods_per_second))

    def phase_cell(phase: str) -> Callable[[RuntimeRun], str]:
        return lambda r: fmt_ms(r.phase(phase))

    for phase in PHASES:
        row(f"{PHASE_LABELS[phase]} p50/p99 ms", phase_cell(phase))
    row(
        "peak RSS daemon+monitors (MiB)",
        lambda r: f"{usage(r).peak_rss / MIB:.1f}",
        both_ratio(lambda r: usage(r).peak_rss),
    )
    row(
        "  daemon peak RSS (MiB)",
        lambda r: f"{usage(r).daemon_hwm / MIB:.1f}",
        both_ratio(lambda r: usage(r).daemon_hwm),
    )
    row(
        "  monitor RSS per pod (MiB)",
        lambda r: f"{usage(r).end_rss_by_kind.get('monitors', 0) / MIB / len(r.pods):.2f}",
        both_ratio(lambda r: usage(r).end_rss_by_kind.get("monitors", 0)),
    )
    row(
        "  PSS all Running (MiB)",
        lambda r: f"{sum(usage(r).end_pss_by_kind.values()) / MIB:.1f}",
        both_ratio(lambda r: sum(usage(r).end_pss_by_kind.values())),
    )
    row("  monitor processes", lambda r: str(usage(r).end_counts.get("monitors", 0)))
    row(
        "CPU s, daemon+monitors",
        lambda r: f"{usage(r).cpu_seconds:.2f}",
        both_ratio(lambda r: usage(r).cpu_seconds),
    )
    row("teardown (s)", lambda r: f"{r.teardown_seconds:.2f}")
    row("left behind", lambda r: "nothing" if not r.leaks else f"{len(r.leaks)} items")
    print()
    for name, run in runs.items():
        if run.status != "ok":
            print(f"{name}: {run.status}: {run.message}")
        for leak in run.leaks:
            print(f"{name}: left behind: {leak}")
        for note in run.notes:
            print(f"{name}: note: {note}")
    if args.concurrency == 1:
        figures = ", ".join(
            f"{n} {percentile(r.phase('pod'), 50) * 1000:.1f} ms" for n, r in runs.items() if r.ok
        )
        print(f"one pod at a time, RunPodSandbox -> Running, median: {figures}")


def report_json(
    runs: dict[str, RuntimeRun], images: BenchImages, args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "pods",
        "pods": args.pods,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "network": NETWORK_NOTE,
        "image": images.busybox,
        "command": list(CONTAINER_COMMAND),
        "pause_image": images.pause,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "runc": runc_version()},
        "results": {name: run.as_json() for name, run in runs.items()},
    }
    if all(n in runs and runs[n].ok for n in RUNTIMES):
        ours, theirs = runs["cryopod"], runs["containerd"]
        assert ours.usage is not None and theirs.usage is not None
        out["ratios_cryopod_over_containerd"] = {
            "last_running": round(ratio(ours.last_running, theirs.last_running), 3),
            "peak_rss": round(ratio(ours.usage.peak_rss, theirs.usage.peak_rss), 3),
            "cpu_seconds": round(ratio(ours.usage.cpu_seconds, theirs.usage.cpu_seconds), 3),
        }
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=105, help="pods to start (default 105)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent workers (1: one pod at a time)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed pods started first")
    parser.add_argument(
        "--stop-timeout",
        type=int,
        default=0,
        help="StopContainer grace seconds (sleep as PID 1 ignores SIGTERM; default 0: SIGKILL)",
    )
    parser.add_argument("--rpc-timeout", type=float, default=240.0, help="deadline of each call")
    parser.add_argument(
        "--poll-interval", type=float, default=0.005, help="ContainerStatus poll interval (s)"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=0.1, help="RSS/CPU sampling interval (s)"
    )
    parser.add_argument(
        "--cgroup-parent",
        default="/kubepods-bench",
        help="cgroupfs parent of the pod cgroups; a run id is appended",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.pods < 1 or args.concurrency < 1 or args.warmup < 0:
        parser.error("--pods and --concurrency must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; running pods needs root")
    install_signal_handlers()
    claim_session()
    names = chosen_runtimes(no_cryopod=args.no_cryopod, no_containerd=args.no_containerd)
    if not names:
        log("nothing to benchmark")
        return 1
    try:
        with bench_workdir("podbench-", args.workdir, keep=args.keep) as workdir:
            registry = Registry(workdir / "registry")
            try:
                registry.start()
                log(f"registry at {registry.url}, workdir {workdir}")
                images = build_and_push(workdir, registry)
                runs = {name: run_runtime(name, workdir, images, args) for name in names}
            finally:
                registry.stop()
                delete_bridges()
            if args.json:
                print(json.dumps(report_json(runs, images, args), indent=2))
            else:
                print_table(runs, images, args)
            bad = [r for r in runs.values() if r.status == "failed" or r.leaks]
            return 1 if bad else 0
    except KeyboardInterrupt:
        log("interrupted; cleaned up")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
