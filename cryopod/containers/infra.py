"""Infra (pause) containers, for pods configured to have one (`runtime.infra_container`).

An infra container holds nothing the pinned namespaces do not already hold; it exists for
operators and tools that expect one process per pod. It joins the pod's pinned network,
IPC and UTS namespaces and, unless the pod uses the host's, creates the PID namespace that
a pod sharing PIDs gives its containers. Its id is the sandbox's id, as with CRI-O, so the
container side's recovery can tell it from an orphan by the sandbox's row.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryopod.containers.model import ImageRuntimeConfig
from cryopod.containers.oci.runtime import OCIRuntime
from cryopod.containers.oci.spec import PodFiles, build_sandbox_spec
from cryopod.containers.service import SpecSettings, read_bundle, write_bundle
from cryopod.pods.model import Sandbox
from cryopod.pods.service import InfraProcess
from cryopod.procs import proc_stat
from cryopod.storage.rootfs import RootfsManager

if TYPE_CHECKING:
    from collections.abc import Mapping

    from cryopod.images.service import ImageService
    from cryopod.images.store import Image

log = logging.getLogger(__name__)


class InfraContainers:
    """Start, stop and remove the pause container of a sandbox."""

    def __init__(
        self,
        *,
        images: ImageService,
        rootfs: RootfsManager,
        runtimes: Mapping[str, OCIRuntime],
        bundle_root: Path,
        spec: SpecSettings,
        pause_image: str,
    ) -> None:
        self._images = images
        self._rootfs = rootfs
        self._runtimes = runtimes
        self._bundle_root = bundle_root
        self._spec = spec
        self._pause_image = pause_image

    async def start(self, sandbox: Sandbox, files: PodFiles) -> InfraProcess:
        """Create and start the pause container; a failure leaves nothing."""
        image = await self._image()
        runtime = self._runtimes[sandbox.runtime_handler]
        bundle = self._bundle_root / sandbox.id
        async with contextlib.AsyncExitStack() as undo:
            undo.push_async_callback(self._rootfs.remove, sandbox.id)
            rootfs = await self._rootfs.mount(sandbox.id, image.layers)
            undo.callback(shutil.rmtree, bundle, True)
            spec = build_sandbox_spec(
                sandbox=sandbox,
                image=ImageRuntimeConfig.from_image_config(image.config),
                rootfs=str(rootfs),
                host=self._spec.host,
                options=self._spec.options,
                pod_files=files,
                image_name=self._pause_image,
            )
            write_bundle(bundle, spec)
            undo.push_async_callback(runtime.delete, sandbox.id)
            pid = await runtime.create(
                sandbox.id,
                bundle,
                name=f"k8s_POD_{sandbox.name}",
                log_path=bundle / "infra.log",
            )
            await runtime.start(sandbox.id)
            undo.pop_all()
        log.debug("sandbox %s: infra container pid %d", sandbox.id, pid)
        stat = proc_stat(pid)
        return InfraProcess(pid, stat.start_time if stat else 0)

    async def _image(self) -> Image:
        image = self._images.resolve(self._pause_image)
        if image is None:
            log.info("pulling the pause image %s", self._pause_image)
            image = await self._images.pull(self._pause_image, None)
        return image

    async def stop(self, sandbox: Sandbox) -> None:
        """Kill the pause container at once (it has nothing to save); idempotent."""
        await self._runtimes[sandbox.runtime_handler].stop(sandbox.id, 0)

    async def remove(self, sandbox: Sandbox) -> None:
        """Delete the pause container, its rootfs and bundle; idempotent."""
        runtime = self._runtimes[sandbox.runtime_handler]
        await runtime.stop(sandbox.id, 0)
        await runtime.delete(sandbox.id)
        await self._rootfs.remove(sandbox.id)
        shutil.rmtree(self._bundle_root / sandbox.id, ignore_errors=True)

    def runtime_spec(self, sandbox: Sandbox) -> dict[str, Any] | None:
        return read_bundle(self._bundle_root / sandbox.id)

    def is_running(self, sandbox: Sandbox) -> bool:
        runtime = self._runtimes.get(sandbox.runtime_handler)
        if runtime is None:
            return False
        return runtime.is_monitored(sandbox.id) and runtime.read_exit(sandbox.id) is None


def describe_sandbox(sandbox: Sandbox, files: PodFiles, *, spec: SpecSettings) -> dict[str, Any]:
    """The OCI spec an infra container of this pod would run with (no image, no rootfs).

    For the verbose PodSandboxStatus of pods without one: it shows the namespaces the pod's
    containers join, its cgroup path, sysctls and mounts, as CRI-O's does.
    """
    return build_sandbox_spec(
        sandbox=sandbox,
        image=ImageRuntimeConfig(entrypoint=("/pause",)),  # what a pause image runs
        rootfs="",
        host=spec.host,
        options=spec.options,
        pod_files=files,
    )
