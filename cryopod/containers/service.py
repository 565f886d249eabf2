"""Containers: create, start, stop, remove, status, and their exits.

Create is a stack of undoable steps (rootfs mount, bundle, conmon + `runc create`), recorded
last. The daemon learns of exits from conmon's exit files (the ExitWatcher), never by holding
a child; a container's status is refreshed from its exit file whenever it is read, so a
container that exited while the daemon was down shows its exit code and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryopod.containers.model import (
    Container,
    ContainerConfig,
    ContainerState,
    ImageRuntimeConfig,
    ProcessUser,
)
from cryopod.containers.oci.exec import (
    ExecOutput,
    ExecProcess,
    exec_process_spec,
    run_to_completion,
)
from cryopod.containers.oci.runtime import OCIRuntime
from cryopod.containers.oci.spec import (
    HostFacts,
    SpecOptions,
    build_container_spec,
    container_resources,
    image_volume_sources,
)
from cryopod.containers.store import ContainerStore, container_unique_name
from cryopod.containers.users import resolve_container_user
from cryopod.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    ImageNotFound,
    InvalidArgument,
    NotFound,
)
from cryopod.ids import new_id
from cryopod.images.service import ImageService
from cryopod.pods.model import LinuxContainerResources, Sandbox, SandboxState
from cryopod.pods.service import PodService
from cryopod.recovery import recovery_step
from cryopod.storage.rootfs import RootfsManager

log = logging.getLogger(__name__)

DEFAULT_STOP_SIGNAL = signal.SIGTERM
# What a container that vanished without an exit status reports (as CRI-O does).
UNKNOWN_EXIT_CODE = 255


@dataclass(frozen=True)
class SpecSettings:
    """Host facts and options every container spec is built with."""

    host: HostFacts
    options: SpecOptions
    exec_output_limit: int = 15 * 1024 * 1024
    """Bytes of stdout and stderr together an ExecSync keeps (at most half each)."""


class ContainerService:
    """The lifecycle of containers."""

    def __init__(
        self,
        *,
        store: ContainerStore,
        pods: PodService,
        images: ImageService,
        rootfs: RootfsManager,
        runtimes: Mapping[str, OCIRuntime],
        bundle_root: Path,
        spec: SpecSettings,
    ) -> None:
        self._store = store
        self._pods = pods
        self._images = images
        self._rootfs = rootfs
        self._runtimes = runtimes
        self._bundle_root = bundle_root
        self._spec = spec

    # --- queries -------------------------------------------------------------------------

    def get(self, container_id: str) -> Container:
        """The container with this id or unique prefix, its state brought up to date."""
        container = self.find(container_id)
        if container is None:
            raise NotFound(f"container {container_id!r} not found")
        return container

    def find(self, container_id: str) -> Container | None:
        if not container_id:
            raise InvalidArgument("a container id is required")
        container = self._store.find(container_id)
        return self._refresh(container) if container is not None else None

    def all(self) -> list[Container]:
        # The exit watcher keeps states current (and replays missed exits at start); a
        # listing, which the kubelet asks for every second, need not re-read exit files.
        return self._store.select()

    def of_pod(self, pod_id: str) -> list[Container]:
        return [self._refresh(c) for c in self._store.select("sandbox_id = ?", (pod_id,))]

    def _runtime(self, container: Container) -> OCIRuntime:
        """The container's OCI runtime; FailedPrecondition when its handler is not offered
        any more (its binary is gone, or it left the configuration)."""
        runtime = self._runtime_or_none(container)
        if runtime is None:
            raise FailedPrecondition(
                f"container {container.id}: its runtime handler is not available on this host"
            )
        return runtime

    def _runtime_or_none(self, container: Container) -> OCIRuntime | None:
        handler = container.runtime_handler
        if not handler:  # recorded before containers kept their handler
            sandbox = self._pods.find(container.pod_id)
            handler = sandbox.runtime_handler if sandbox else ""
        return self._runtimes.get(handler)

    def _refresh(self, container: Container) -> Container:
        """Record an exit that happened since the container was last read."""
        if container.state not in (ContainerState.RUNNING, ContainerState.CREATED):
            return container
        runtime = self._runtime_or_none(container)
        info = runtime.read_exit(container.id) if runtime else None
        if info is None:
            return container
        exited = replace(
            container,
            state=ContainerState.EXITED,
            exit_code=info.exit_code,
            finished_ns=info.finished_at_ns,
            reason=exit_reason(info.exit_code, oom_killed=info.oom_killed),
            pid=None,
        )
        self._store.update(exited)
        return exited

    def on_exit(self, container_id: str) -> None:
        """ExitWatcher callback: record the exit now, not at the next read."""
        container = self._store.get(container_id)
        if container is not None:
            self._refresh(container)
        else:  # an infra container (it carries its sandbox's id), or one being created
            self._pods.infra_exited(container_id)

    # --- create ----------------------------------------------------------------------------

    async def create(self, pod_id: str, config: ContainerConfig) -> Container:
        sandbox = self._pods.get(pod_id)
        if sandbox.state is not SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {sandbox.id} is not ready")
        image = self._images.resolve(config.image.image)
        if image is None:
            raise ImageNotFound(config.image.image)
        container = Container(
            id=new_id(),
            pod_id=sandbox.id,
            runtime_handler=sandbox.runtime_handler,
            config=config,
            image_id=image.id,
            image_ref=image.repo_digests[0] if image.repo_digests else image.id,
            created_ns=time.time_ns(),
            log_path=self._log_path(sandbox, config),
        )
        name = container_unique_name(container)
        self._pods.check_infra(sandbox)
        with self._store.reserving(name):
            async with contextlib.AsyncExitStack() as undo:
                pid, user = await self._set_up(container, sandbox, image.layers, image.config, undo)
                # The pod may have been stopped or removed meanwhile: then undo it all.
                current = self._pods.find(sandbox.id)
                if current is None or current.state is not SandboxState.READY:
                    raise FailedPrecondition(f"pod sandbox {sandbox.id} stopped during create")
                container = replace(container, pid=pid, user=user)
                self._store.add(container)
                undo.pop_all()
        log.info("container %s (%s) created in pod %s", container.id, name, sandbox.id)
        return container

    @staticmethod
    def _log_path(sandbox: Sandbox, config: ContainerConfig) -> str:
        if not config.log_path:
            return ""
        if os.path.isabs(config.log_path):
            return config.log_path
        if not sandbox.config.log_directory:
            raise InvalidArgument("log_path is relative but the pod has no log_directory")
        return os.path.join(sandbox.config.log_directory, config.log_path)

    async def _set_up(
        self,
        container: Container,
        sandbox: Sandbox,
        layers: list[str],
        image_config: Mapping[str, Any],
        undo: contextlib.AsyncExitStack,
    ) -> tuple[int, ProcessUser]:
        """Mount, write the bundle, `runc create`: the init pid and who it runs as."""
        undo.push_async_callback(self._rootfs.remove, container.id)
        rootfs = await self._rootfs.mount(container.id, layers)
        bundle = self._bundle_root / container.id
        undo.callback(shutil.rmtree, bundle, True)
        image = ImageRuntimeConfig.from_image_config(image_config)
        user = resolve_container_user(rootfs, container.config.security_context, image.user)
        volume_dir = self._image_volumes(container.id, image)
        spec = build_container_spec(
            container_id=container.id,
            config=container.config,
            sandbox=sandbox,
            image=image,
            rootfs=str(rootfs),
            user=user,
            host=self._spec.host,
            options=self._spec.options,
            pod_files=self._pods.spec_files(sandbox),
            image_name=container.config.image.image,
            volume_dir=str(volume_dir),
        )
        write_bundle(bundle, spec)
        log_path = Path(container.log_path or bundle / "container.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        runtime = self._runtimes[sandbox.runtime_handler]
        undo.push_async_callback(runtime.delete, container.id)
        pid = await runtime.create(
            container.id,
            bundle,
            name=container_unique_name(container),
            log_path=log_path,
            stdin=container.config.stdin,
            stdin_once=container.config.stdin_once,
            tty=container.config.tty,
        )
        return pid, ProcessUser(user.uid, user.gid, user.additional_gids)

    # --- exec -------------------------------------------------------------------------------

    async def start_exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        *,
        tty: bool,
        stdin: bool,
        size: tuple[int, int] | None = None,
    ) -> ExecProcess:
        """Run `cmd` in the running container as the container's own process would run
        (in a terminal of `size`, (width, height), when `tty`)."""
        if not cmd:
            raise InvalidArgument("a command to run is required")
        container = self.get_running(container_id)
        spec = self.runtime_spec(container)
        if spec is None:
            raise FailedPrecondition(f"container {container.id} has no bundle (host restarted?)")
        process = exec_process_spec(spec, cmd, tty=tty, size=size)
        return await self._runtime(container).exec(container.id, process, stdin=stdin and not tty)

    async def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: float) -> ExecOutput:
        """Run `cmd` to completion; DeadlineExceeded (after killing it) past `timeout` s."""
        process = await self.start_exec(container_id, cmd, tty=False, stdin=False)
        try:
            return await run_to_completion(
                process, timeout=timeout, output_limit=self._spec.exec_output_limit // 2
            )
        except TimeoutError:
            raise DeadlineExceeded(
                f"command {list(cmd)!r} in container {container_id} timed out after {timeout:g}s"
            ) from None
        finally:
            await process.close()

    def attach_target(self, container_id: str) -> tuple[Container, Path]:
        """A running container and its conmon attach socket."""
        container = self.get_running(container_id)
        return container, self._runtime(container).attach_socket_path(container.id)

    def resize_terminal(self, container_id: str, width: int, height: int) -> None:
        container = self.get_running(container_id)
        self._runtime(container).resize_terminal(container.id, width, height)

    def get_running(self, container_id: str) -> Container:
        """The running container; NotFound, or FailedPrecondition when it is not running."""
        container = self.get(container_id)
        if container.state is not ContainerState.RUNNING:
            raise FailedPrecondition(
                f"container {container.id} is {container.state.name.lower()}, not running"
            )
        return container

    def runtime_spec(self, container: Container) -> dict[str, Any] | None:
        """The OCI spec the container was created with (verbose status)."""
        return read_bundle(self._bundle_root / container.id)

    def _image_volumes(self, container_id: str, image: ImageRuntimeConfig) -> Path:
        """Empty directories backing the image's declared volumes (CRI-O's `bind` mode).

        They live beside the container's writable layer, on disk (a tmpfs would count what
        is written against the container's memory), and go with it.
        """
        volume_dir = self._rootfs.container_dir(container_id) / "volumes"
        for source in image_volume_sources(image, str(volume_dir)).values():
            Path(source).mkdir(parents=True, exist_ok=True)
        return volume_dir

    # --- start, stop, remove -------------------------------------------------------------

    async def start(self, container_id: str) -> None:
        container = self.get(container_id)
        if container.state is not ContainerState.CREATED:
            raise FailedPrecondition(
                f"container {container.id} is {container.state.name.lower()}, not created"
            )
        await self._runtime(container).start(container.id)
        started = replace(container, state=ContainerState.RUNNING, started_ns=time.time_ns())
        self._store.update(started)
        self._refresh(started)  # it may have exited already

    async def stop(self, container_id: str, timeout: float) -> None:
        """Signal, wait `timeout` seconds, then kill; idempotent, unknown ids included."""
        container = self.find(container_id)
        if container is None or container.state is ContainerState.EXITED:
            return
        # The runtime treats an unknown or stopped container as stopped. With no grace period
        # it kills at once, and the stop signal is not even parsed: an image's odd StopSignal
        # cannot keep a pod from being stopped or removed.
        timeout = max(timeout, 0.0)
        stop_signal = self._stop_signal(container) if timeout > 0 else DEFAULT_STOP_SIGNAL
        runtime = self._runtime_or_none(container)
        if runtime is not None:
            await runtime.stop(container.id, timeout, stop_signal)
        stopped = self.find(container.id)
        if stopped is not None and stopped.state is not ContainerState.EXITED:
            # Its monitor is gone without an exit file (killed by hand): say so.
            self._record_lost_exit(stopped, exit_code=137)

    def stop_signal_name(self, container: Container) -> str:
        """The signal StopContainer sends: the config's, else the image's; "" for SIGTERM."""
        name = container.config.stop_signal
        if not name:
            image = self._images.resolve(container.image_id)
            name = ImageRuntimeConfig.from_image_config(image.config).stop_signal if image else ""
        return name

    def _stop_signal(self, container: Container) -> int:
        name = self.stop_signal_name(container)
        if not name:
            return DEFAULT_STOP_SIGNAL
        try:
            return parse_signal(name)
        except InvalidArgument as exc:
            # An image's odd StopSignal must not keep the pod Terminating: SIGTERM, as CRI-O.
            log.warning("container %s: %s; sending SIGTERM", container.id, exc)
            return DEFAULT_STOP_SIGNAL

    async def remove(self, container_id: str) -> None:
        """Stop if needed and remove everything of the container; idempotent."""
        container = self.find(container_id)
        if container is None:
            return
        await self.stop(container.id, 0)
        runtime = self._runtime_or_none(container)
        if runtime is not None:
            await runtime.delete(container.id)
        await self._rootfs.remove(container.id)
        shutil.rmtree(self._bundle_root / container.id, ignore_errors=True)
        self._store.delete(container.id)
        log.info("container %s removed", container.id)

    # --- recovery ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reconcile the records with what is on the host, after a restart or a crash.

        A container whose creation a crash cut short has files, a mount, perhaps a conmon
        and a runc container, but no row (the row is written last): all of it goes. A
        recorded container that is neither monitored nor has an exit file (its conmon was
        killed, or the host rebooted) is marked exited, as the peers do.
        """
        recorded = {container.id: container for container in self._store.select()}
        # Infra containers carry their sandbox's id.
        owned = recorded.keys() | {sandbox.id for sandbox in self._pods.all()}
        for name, runtime in self._runtimes.items():
            for container_id in set(runtime.container_ids()) - owned:
                log.info("container %s (%s) was never recorded: removing it", container_id, name)
                await recovery_step(runtime.discard(container_id), f"discarding {container_id}")
        on_disk = set(self._rootfs.container_ids())
        on_disk |= {p.name for p in self._bundle_dirs()}
        for container_id in on_disk - owned:
            log.info("removing the rootfs and bundle of container %s, never recorded", container_id)
            await recovery_step(self._rootfs.remove(container_id), f"removing {container_id}")
            shutil.rmtree(self._bundle_root / container_id, ignore_errors=True)
        await asyncio.to_thread(self._rootfs.remove_stale_work)
        for container in recorded.values():
            await recovery_step(
                self._settle_unmonitored(self._refresh(container)),
                f"recovering container {container.id}",
            )

    def _bundle_dirs(self) -> list[Path]:
        if not self._bundle_root.is_dir():
            return []
        return [p for p in self._bundle_root.iterdir() if p.is_dir()]

    async def _settle_unmonitored(self, container: Container) -> None:
        """A live container whose conmon is gone: kill what runs of it (nobody would log or
        reap it, and the kubelet will start a successor), and report it exited."""
        if container.state not in (ContainerState.CREATED, ContainerState.RUNNING):
            return
        runtime = self._runtime_or_none(container)
        if runtime is not None:
            if runtime.is_monitored(container.id):
                return
            await runtime.stop(container.id, 0)
        # Its conmon may have written the exit file just before it went.
        container = self._refresh(container)
        if container.state is ContainerState.EXITED:
            return
        log.warning("container %s lost its monitor with no exit status: exited", container.id)
        self._record_lost_exit(container, exit_code=UNKNOWN_EXIT_CODE)

    def _record_lost_exit(self, container: Container, *, exit_code: int) -> None:
        """Mark exited a container whose monitor is gone without writing its exit file."""
        self._store.update(
            replace(
                container,
                state=ContainerState.EXITED,
                finished_ns=time.time_ns(),
                exit_code=exit_code,
                reason="Error",
                message="the container's monitor is gone and left no exit status",
                pid=None,
            )
        )

    async def stop_all_of_pod(self, pod_id: str) -> None:
        for container in self.of_pod(pod_id):
            await self.stop(container.id, 0)

    async def remove_all_of_pod(self, pod_id: str) -> None:
        for container in self.of_pod(pod_id):
            await self.remove(container.id)

    # --- changes to a running container ---------------------------------------------------

    async def update_resources(self, container_id: str, resources: LinuxContainerResources) -> None:
        container = self.get(container_id)
        if container.state not in (ContainerState.CREATED, ContainerState.RUNNING):
            raise FailedPrecondition(f"container {container.id} is not running")
        oci = container_resources(
            resources, host=self._spec.host, pids_limit=self._spec.options.pids_limit
        )
        await self._runtime(container).update_resources(container.id, oci)
        linux = replace(container.config.linux, resources=resources)
        self._store.update(replace(container, config=replace(container.config, linux=linux)))

    async def reopen_log(self, container_id: str) -> None:
        container = self.get_running(container_id)
        await self._runtime(container).reopen_log(container.id)


def write_bundle(bundle: Path, spec: Mapping[str, Any]) -> None:
    """config.json, written whole or not at all."""
    bundle.mkdir(parents=True, exist_ok=True)
    temp = bundle / "config.json.tmp"
    temp.write_text(json.dumps(spec))
    os.replace(temp, bundle / "config.json")


def read_bundle(bundle: Path) -> dict[str, Any] | None:
    """The config.json of a bundle, or None when it is gone (a removed or lost container)."""
    try:
        spec: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return spec


_REALTIME_SIGNAL = re.compile(r"(RTMIN|RTMAX)(?:([+-])(\d+))?")


def parse_signal(name: str) -> int:
    """A signal given as "SIGTERM", "TERM" or "15", or real-time as "SIGRTMIN+3", "RTMAX-1"."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    text = text.removeprefix("SIG")
    realtime = _REALTIME_SIGNAL.fullmatch(text)
    if realtime is not None:
        low, high = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
        offset = int(realtime[3] or 0) * (-1 if realtime[2] == "-" else 1)
        number = (low if realtime[1] == "RTMIN" else high) + offset
        if low <= number <= high:
            return number
        raise InvalidArgument(f"stop signal {name!r} is outside SIGRTMIN..SIGRTMAX")
    try:
        return int(signal.Signals[f"SIG{text}"])
    except KeyError as exc:
        raise InvalidArgument(f"unknown stop signal {name!r}") from exc


def exit_reason(exit_code: int, *, oom_killed: bool) -> str:
    """ContainerStatus.reason as the kubelet reads it."""
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"
