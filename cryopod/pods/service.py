"""Pod sandboxes: run, stop, remove, look up; and recovery after a restart.

A sandbox is pinned namespaces (net, ipc, uts; none for the host's), the pod's /etc files and
/dev/shm, and, when the pod shares one PID namespace, a `catatonit -P` holder. There is no
infra container. Creation pushes an undo step after each piece, so a failure leaves nothing;
the row is written last, so a crash mid-creation leaves no half-recorded pod, and recovery
removes pieces on disk that no row owns. The store reserves a name while its sandbox is
being created, so a concurrent duplicate is refused at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from cryopod.containers.oci.spec import PodFiles as SpecPodFiles
from cryopod.containers.oci.spec import namespaced_sysctls
from cryopod.errors import CryopodError, FailedPrecondition, InvalidArgument, NotFound
from cryopod.ids import new_id
from cryopod.pods.files import PodFiles
from cryopod.pods.model import NamespaceKind, NamespaceMode, PodSandboxConfig, Sandbox, SandboxState
from cryopod.pods.namespaces import NamespacePinner, PidNamespaceHolder, is_pinned_namespace
from cryopod.pods.network import CNIManager, PodNetworkRequest, bandwidth_from_annotations
from cryopod.pods.store import SandboxStore
from cryopod.recovery import recovery_step

log = logging.getLogger(__name__)

# The pinner's kind names and the OCI ones the model uses.
PINNED_KINDS = {"net": NamespaceKind.NETWORK, "ipc": NamespaceKind.IPC, "uts": NamespaceKind.UTS}

StopContainers = Callable[[str], Awaitable[None]]
"""Stops (and with remove, removes) every container of a pod; given by the container side."""


@dataclass(frozen=True)
class InfraProcess:
    """A pod's infra process (catatonit or a pause container): pid and start time."""

    pid: int
    start_time: int


class InfraRunner(Protocol):
    """Runs a pause container per pod; given by the container side when configured."""

    async def start(self, sandbox: Sandbox, files: SpecPodFiles) -> InfraProcess: ...

    async def stop(self, sandbox: Sandbox) -> None: ...

    async def remove(self, sandbox: Sandbox) -> None: ...

    def is_running(self, sandbox: Sandbox) -> bool: ...

    def runtime_spec(self, sandbox: Sandbox) -> dict[str, Any] | None: ...


class PodService:
    """The lifecycle of pod sandboxes."""

    def __init__(
        self,
        *,
        store: SandboxStore,
        pinner: NamespacePinner,
        files: PodFiles,
        state_dir: Path,
        handlers: set[str],
        default_handler: str,
        infra: InfraRunner | None = None,
        run_infra: bool = False,
        network: CNIManager | None = None,
        describe: Callable[[Sandbox, SpecPodFiles], dict[str, Any]] | None = None,
    ) -> None:
        self._store = store
        self._pinner = pinner
        self._files = files
        self._state_dir = state_dir
        self._handlers = handlers
        self._default_handler = default_handler
        self._infra = infra
        # Pods of an earlier configuration may have one even when new pods get none.
        self._run_infra = run_infra and infra is not None
        self._network = network
        self._describe = describe
        self._checks: asyncio.Task[None] | None = None

    # --- queries --------------------------------------------------------------------------

    def get(self, sandbox_id: str) -> Sandbox:
        """The sandbox with this id or unique id prefix; NotFound otherwise."""
        sandbox = self.find(sandbox_id)
        if sandbox is None:
            raise NotFound(f"pod sandbox {sandbox_id!r} not found")
        return sandbox

    def find(self, sandbox_id: str) -> Sandbox | None:
        if not sandbox_id:
            raise InvalidArgument("a pod sandbox id is required")
        return self._store.find(sandbox_id)

    def all(self) -> list[Sandbox]:
        return self._store.select()

    @property
    def handlers(self) -> list[str]:
        """The runtime handlers pods may name, the default first."""
        return sorted(self._handlers, key=lambda name: (name != self._default_handler, name))

    def runtime_spec(self, sandbox: Sandbox) -> dict[str, Any] | None:
        """The infra container's OCI spec; for pods without one, the spec it would have."""
        if sandbox.infra_container and self._infra is not None:
            return self._infra.runtime_spec(sandbox)
        if self._describe is None:
            return None
        return self._describe(sandbox, self.spec_files(sandbox))

    def spec_files(self, sandbox: Sandbox) -> SpecPodFiles:
        """The pod's /etc files and /dev/shm, as its containers' specs mount them."""
        paths = self._files.paths(sandbox.id)
        options = sandbox.config.namespace_options
        return SpecPodFiles(
            hostname=None if options.host_network else str(paths.hostname),
            hosts=str(paths.hosts),
            resolv_conf=str(paths.resolv_conf),
            shm=None if options.host_ipc else str(self._files.shm_path(sandbox.id)),
        )

    # --- run ---------------------------------------------------------------------------------

    async def run(self, config: PodSandboxConfig, handler: str) -> Sandbox:
        """Create a READY sandbox; the pieces made so far are undone on any failure."""
        handler = handler or self._default_handler
        if handler not in self._handlers:
            configured = ", ".join(sorted(self._handlers))
            raise InvalidArgument(f"unknown runtime handler {handler!r} (configured: {configured})")
        sandbox = Sandbox(
            id=new_id(), config=config, created_ns=time.time_ns(), runtime_handler=handler
        )
        with self._store.reserving(config.metadata.unique_name):
            async with contextlib.AsyncExitStack() as undo:
                sandbox = await self._set_up(sandbox, undo)
                self._store.add(sandbox)
                undo.pop_all()
        log.info("pod sandbox %s (%s) is ready", sandbox.id, config.metadata.unique_name)
        return sandbox

    async def _set_up(self, sandbox: Sandbox, undo: contextlib.AsyncExitStack) -> Sandbox:
        config = sandbox.config
        options = config.namespace_options
        kinds = set()
        if not options.host_network:
            kinds |= {"net", "uts"}
        if not options.host_ipc:
            kinds.add("ipc")
        sysctls = namespaced_sysctls(
            config.linux.sysctls, host_network=options.host_network, host_ipc=options.host_ipc
        )
        hostname = config.hostname or config.metadata.name
        undo.push_async_callback(self._pinner.unpin, sandbox.id)
        pinned = await self._pinner.pin(sandbox.id, kinds, hostname=hostname, sysctls=sysctls)
        ip_addresses = await self._attach_network(sandbox, pinned.get("net"), undo)
        undo.callback(self._files.remove, sandbox.id)
        self._files.write(
            sandbox.id, hostname=hostname, dns=config.dns_config, ip_addresses=ip_addresses
        )
        if not options.host_ipc:
            self._files.mount_shm(sandbox.id)
        sandbox = replace(
            sandbox,
            namespace_paths={PINNED_KINDS[kind]: str(path) for kind, path in pinned.items()},
            ip_addresses=ip_addresses,
        )
        infra: InfraProcess | None = None
        if self._run_infra and self._infra is not None:
            undo.push_async_callback(self._infra.remove, sandbox)
            infra = await self._infra.start(sandbox, self.spec_files(sandbox))
        elif options.pid is NamespaceMode.POD:
            undo.push_async_callback(PidNamespaceHolder.release, self._state_dir, sandbox.id)
            holder = await PidNamespaceHolder.start(
                sandbox.id,
                state_dir=self._state_dir,
                join={kind: path for kind, path in pinned.items() if kind != "uts"},
            )
            infra = InfraProcess(holder.pid, holder.start_time)
        paths = dict(sandbox.namespace_paths)
        if infra is not None and options.pid is NamespaceMode.POD:
            paths[NamespaceKind.PID] = f"/proc/{infra.pid}/ns/pid"
        return replace(
            sandbox,
            state=SandboxState.READY,
            namespace_paths=paths,
            infra_pid=infra.pid if infra else None,
            infra_start_time=infra.start_time if infra else 0,
            infra_container=self._run_infra,
        )

    def check_infra(self, sandbox: Sandbox) -> None:
        """FailedPrecondition, and the pod NOTREADY, when its infra process has died.

        Its PID namespace went with it, and the pid that names that namespace may belong
        to another process by now: no container may join it. The kubelet then makes the
        pod anew, as it does when CRI-O reports the same.
        """
        if sandbox.infra_pid is None or self._infra_alive(sandbox):
            return
        self.infra_exited(sandbox.id)
        raise FailedPrecondition(f"pod sandbox {sandbox.id}: its infra process has exited")

    def infra_exited(self, sandbox_id: str) -> None:
        """The pod's infra process is gone (its exit file, or found dead): not ready."""
        sandbox = self._store.get(sandbox_id)
        if sandbox is not None and sandbox.state is SandboxState.READY:
            log.warning("pod sandbox %s: its infra process exited; not ready", sandbox_id)
            self._store.update(replace(sandbox, state=SandboxState.NOTREADY))

    def _infra_alive(self, sandbox: Sandbox) -> bool:
        if sandbox.infra_container:
            return self._infra is not None and self._infra.is_running(sandbox)
        assert sandbox.infra_pid is not None
        return PidNamespaceHolder.find(sandbox.infra_pid, sandbox.infra_start_time) is not None

    async def _attach_network(
        self, sandbox: Sandbox, netns: Path | None, undo: contextlib.AsyncExitStack
    ) -> tuple[str, ...]:
        """CNI ADD into the pod's pinned netns; its IPs, primary first (none for host network)."""
        if self._network is None or netns is None:
            return ()
        config = sandbox.config
        request = PodNetworkRequest(
            sandbox_id=sandbox.id,
            netns=str(netns),
            pod_name=config.metadata.name,
            pod_namespace=config.metadata.namespace,
            pod_uid=config.metadata.uid,
            port_mappings=tuple(config.port_mappings),
            dns=config.dns_config,
            bandwidth=bandwidth_from_annotations(config.annotations),
            cgroup_path=config.linux.cgroup_parent,
        )
        undo.push_async_callback(self._network.detach, sandbox.id, str(netns))
        attachment = await self._network.attach(request)
        return tuple(attachment.ips)

    async def _detach_network(self, sandbox: Sandbox) -> None:
        """CNI DEL (idempotent); while the netns is still pinned, so plugins can clean it."""
        if self._network is not None and not sandbox.config.namespace_options.host_network:
            await self._network.detach(
                sandbox.id, sandbox.namespace_paths.get(NamespaceKind.NETWORK, "")
            )

    # --- stop and remove ------------------------------------------------------------------

    async def stop(self, sandbox_id: str, stop_containers: StopContainers) -> None:
        """Stop every process of the pod; idempotent, and an unknown id is not an error."""
        sandbox = self.find(sandbox_id)
        if sandbox is None:
            log.info("pod sandbox %s is gone; nothing to stop", sandbox_id)
            return
        await stop_containers(sandbox.id)
        await self._stop_infra(sandbox)
        await self._detach_network(sandbox)
        if sandbox.state is not SandboxState.NOTREADY or sandbox.infra_pid is not None:
            self._store.update(replace(sandbox, state=SandboxState.NOTREADY, infra_pid=None))
            log.info("pod sandbox %s stopped", sandbox.id)

    async def remove(self, sandbox_id: str, remove_containers: StopContainers) -> None:
        """Remove the pod and all its containers; idempotent."""
        sandbox = self.find(sandbox_id)
        if sandbox is None:
            log.info("pod sandbox %s is gone; nothing to remove", sandbox_id)
            return
        await remove_containers(sandbox.id)
        await self._stop_infra(sandbox)
        if sandbox.infra_container and self._infra is not None:
            await self._infra.remove(sandbox)
        await self._detach_network(sandbox)
        await self._release(sandbox.id)
        self._store.delete(sandbox.id)
        log.info("pod sandbox %s removed", sandbox.id)

    async def _stop_infra(self, sandbox: Sandbox) -> None:
        if sandbox.infra_container and self._infra is not None:
            await self._infra.stop(sandbox)
        elif sandbox.infra_pid is not None:
            await PidNamespaceHolder.release(self._state_dir, sandbox.id)

    async def _release(self, sandbox_id: str) -> None:
        await self._pinner.unpin(sandbox_id)
        self._files.remove(sandbox_id)

    async def close(self) -> None:
        """At daemon stop: drop the namespace root's private mount once nothing is pinned."""
        if self._checks is not None:
            self._checks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checks
        if not self._pinner.list_pinned():
            await self._pinner.release_root()

    # --- recovery --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Reconcile the records with the host after a restart or a crash.

        Pieces no recorded sandbox owns (a crash cut its creation short: the row comes last)
        are removed: PID holders, pinned namespaces, pod files. A READY sandbox that lost a
        namespace or its PID holder (a reboot, a kill by hand) is NOTREADY now, so the
        kubelet makes it anew.
        """
        sandboxes = self._store.select()
        recorded = {sandbox.id for sandbox in sandboxes}
        for sandbox_id in PidNamespaceHolder.sandbox_ids(self._state_dir) - recorded:
            log.info("stopping the PID holder of pod sandbox %s, never recorded", sandbox_id)
            await recovery_step(
                PidNamespaceHolder.release(self._state_dir, sandbox_id),
                f"stopping the PID holder of {sandbox_id}",
            )
        if self._network is not None:
            # DEL pods that are gone while their netns may still be pinned.
            for sandbox_id in await self._network.gc(keep=recorded):
                log.info("pod sandbox %s was never recorded: removed from the network", sandbox_id)
        pinned = self._pinner.list_pinned()
        for sandbox_id in set(pinned) - recorded:
            log.info("removing namespaces of pod sandbox %s, never recorded", sandbox_id)
            await recovery_step(self._release(sandbox_id), f"releasing {sandbox_id}")
        for sandbox_id in set(self._files.sandbox_ids()) - recorded:
            log.info("removing files of pod sandbox %s, never recorded", sandbox_id)
            try:
                self._files.remove(sandbox_id)
            except CryopodError as exc:
                log.error("recovery: removing the files of %s failed: %s", sandbox_id, exc)
        ready = []
        for sandbox in sandboxes:
            if sandbox.state is not SandboxState.READY:
                continue
            if self._intact(sandbox, pinned):
                ready.append(sandbox)
            else:
                log.warning("pod sandbox %s lost a namespace or its PID holder", sandbox.id)
                self._store.update(replace(sandbox, state=SandboxState.NOTREADY))
        # A CHECK is a chain of plugin execs per pod: run them behind the serving daemon.
        self._checks = asyncio.create_task(self._check_networks(ready))

    async def _check_networks(self, sandboxes: list[Sandbox]) -> None:
        """CNI CHECK recovered pods; a failure is logged, not acted on.

        Some plugins fail CHECK for healthy pods (Debian's portmap on IPv4-only pods when
        ip6tables works), so a failed CHECK must not tear a running pod down.
        """
        network = self._network
        if network is None:
            return
        for sandbox in sandboxes:
            if sandbox.config.namespace_options.host_network:
                continue
            netns = sandbox.namespace_paths.get(NamespaceKind.NETWORK, "")
            try:
                await network.check(sandbox.id, netns)
            except CryopodError as exc:
                log.warning("pod sandbox %s: CNI CHECK failed: %s", sandbox.id, exc)

    def _intact(self, sandbox: Sandbox, pinned: dict[str, dict[str, Path]]) -> bool:
        """Whether every namespace the sandbox recorded still exists."""
        pinned_kinds = {
            PINNED_KINDS[kind]
            for kind, path in pinned.get(sandbox.id, {}).items()
            if is_pinned_namespace(path, kind)
        }
        if any(
            k not in pinned_kinds for k in sandbox.namespace_paths if k in PINNED_KINDS.values()
        ):
            return False
        return sandbox.infra_pid is None or self._infra_alive(sandbox)
