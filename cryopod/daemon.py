"""`cryopod serve`: build the parts from the configuration, serve CRI, shut down in order.

This is the only place that constructs stores, services and servers; everything below gets
what it needs passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2_grpc as cri_grpc

from cryopod.config import Config
from cryopod.containers.infra import InfraContainers, describe_sandbox
from cryopod.containers.oci.exits import ExitWatcher
from cryopod.containers.oci.runtime import ConmonRuntime, OCIRuntime, RuntimeHandler
from cryopod.containers.oci.spec import CgroupDriver, SpecOptions, probe_host_facts
from cryopod.containers.service import ContainerService, SpecSettings
from cryopod.containers.store import container_store
from cryopod.containers.streams import ContainerStreams
from cryopod.errors import ConfigError
from cryopod.images.auth import AuthFile
from cryopod.images.install import Installer
from cryopod.images.progress import ProgressHub
from cryopod.images.pull import Puller, PullSettings
from cryopod.images.registries import RegistriesConfig
from cryopod.images.service import ImageService
from cryopod.images.store import ImageStore
from cryopod.pods.files import PodFiles
from cryopod.pods.namespaces import NamespacePinner
from cryopod.pods.network import CNIManager, CNISettings, EmbeddedNetwork
from cryopod.pods.service import PodService
from cryopod.pods.store import sandbox_store
from cryopod.procs import which
from cryopod.server.extras import ImageExtras
from cryopod.server.images import ImageServicer
from cryopod.server.interceptor import ErrorMappingInterceptor
from cryopod.server.runtime import RuntimeServicer
from cryopod.state.db import Database
from cryopod.storage.blobs import ContentStore
from cryopod.storage.layers import LayerStore
from cryopod.storage.rootfs import RootfsManager
from cryopod.streaming import StreamingServer, StreamingSettings

log = logging.getLogger(__name__)

# The kubelet lists every container in one message; CRI-O's and containerd's 16 MiB default
# is a known source of "message larger than max" on busy nodes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SHUTDOWN_GRACE_SECONDS = 5.0


@dataclass
class Runtime:
    """The running parts of the daemon, for orderly shutdown."""

    db: Database
    installer: Installer
    puller: Puller
    images: ImageService
    progress: ProgressHub
    pods: PodService
    containers: ContainerService
    network: CNIManager
    exits: ExitWatcher
    streaming: StreamingServer


def make_directories(config: Config) -> None:
    for path in (config.root, config.runroot):
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o711)


def build_runtime(config: Config) -> Runtime:
    """Construct the domain parts (no sockets, no recovery yet)."""
    make_directories(config)
    root = Path(config.root)
    db = Database(config.database_path)
    store = ImageStore(db)
    content = ContentStore(root)
    layers = LayerStore(root)
    registries = RegistriesConfig.load(config.image.registries_conf)
    progress = ProgressHub()
    installer = Installer(
        content=content,
        layers=layers,
        images=store,
        max_concurrent_downloads=config.image.max_concurrent_downloads,
    )
    puller = Puller(
        installer=installer,
        registries=registries,
        auth_file=AuthFile.load(config.image.auth_file),
        progress=progress,
        settings=PullSettings(
            progress_timeout=config.image.pull_progress_timeout,
            connect_timeout=config.image.connect_timeout,
        ),
    )
    images = ImageService(
        root=root,
        store=store,
        content=content,
        layers=layers,
        installer=installer,
        puller=puller,
        progress=progress,
        registries=registries,
        pinned_names=[config.image.pause_image, *config.image.pinned_images],
    )
    runroot = Path(config.runroot)
    exits = ExitWatcher(runroot / "exits")
    runtimes = build_oci_runtimes(config, exits_dir=runroot / "exits")
    rootfs = RootfsManager(runroot, layers)
    spec = SpecSettings(
        host=probe_host_facts(),
        options=SpecOptions(
            cgroup_driver=CgroupDriver(config.runtime.cgroup_driver),
            default_capabilities=tuple(config.runtime.default_capabilities),
            pids_limit=config.runtime.pids_limit,
            shm_size=config.runtime.shm_size,
        ),
        exec_output_limit=config.runtime.exec_sync_output_limit,
    )
    bundle_root = runroot / "containers"
    infra = InfraContainers(
        images=images,
        rootfs=rootfs,
        runtimes=runtimes,
        bundle_root=bundle_root,
        spec=spec,
        pause_image=config.image.pause_image,
    )
    network = CNIManager(network_settings(config))
    pods = PodService(
        store=sandbox_store(db),
        pinner=NamespacePinner(runroot / "ns"),
        files=PodFiles(runroot, shm_size=config.runtime.shm_size),
        state_dir=runroot / "pods-state",
        handlers=set(runtimes),
        default_handler=config.runtime.default_handler,
        infra=infra,
        run_infra=config.runtime.infra_container,
        network=network,
        describe=functools.partial(describe_sandbox, spec=spec),
    )
    containers = ContainerService(
        store=container_store(db),
        pods=pods,
        images=images,
        rootfs=rootfs,
        runtimes=runtimes,
        bundle_root=bundle_root,
        spec=spec,
    )
    return Runtime(
        db=db,
        installer=installer,
        puller=puller,
        images=images,
        progress=progress,
        pods=pods,
        containers=containers,
        exits=exits,
        network=network,
        streaming=StreamingServer(ContainerStreams(containers, pods), streaming_settings(config)),
    )


def network_settings(config: Config) -> CNISettings:
    net = config.network
    return CNISettings(
        config_dirs=tuple(Path(d) for d in net.config_dirs),
        plugin_dirs=tuple(Path(d) for d in net.plugin_dirs),
        cache_dir=Path(net.cache_dir or Path(config.root) / "cni" / "results"),
        default_network=net.default_network,
        # The namespace pinner brings lo up in-process: no loopback plugin exec per pod.
        loopback=False,
        plugin_timeout=net.plugin_timeout,
        pod_cidr_file=Path(config.root) / "cni" / "pod-cidr",
        embedded=EmbeddedNetwork(
            bridge=net.default_bridge,
            subnets=tuple(net.default_subnets),
            ipam_data_dir=net.default_ipam_dir,
        ),
    )


def streaming_settings(config: Config) -> StreamingSettings:
    streaming = config.streaming
    settings = StreamingSettings(
        address=streaming.address,
        port=streaming.port,
        tls_cert_file=streaming.tls_cert_file,
        tls_key_file=streaming.tls_key_file,
        token_ttl=streaming.token_ttl,
    )
    settings.validate()
    return settings


def build_oci_runtimes(config: Config, *, exits_dir: Path) -> dict[str, OCIRuntime]:
    """One runtime per configured handler whose binary exists on this host."""
    runroot = Path(config.runroot)
    runtimes: dict[str, OCIRuntime] = {}
    for name, handler in config.runtime.handlers.items():
        path = handler.runtime_path or which(name, ("/usr/sbin", "/usr/bin", "/usr/local/bin"))
        if not path or not Path(path).exists():
            log.info("runtime handler %s: %s not found; not offered", name, path or name)
            continue
        runtimes[name] = ConmonRuntime(
            RuntimeHandler(
                name=name,
                runtime_path=path,
                runtime_root=handler.runtime_root or str(runroot / "runtimes" / name),
                monitor_path=handler.monitor_path,
                allowed_annotations=tuple(handler.allowed_annotations),
            ),
            exits_dir=exits_dir,
            # One persist root per handler: recovery knows which runtime made what it finds.
            persist_root=runroot / "persist" / name,
            attach_root=runroot / "attach",
            monitor_cgroups=config.runtime.cgroup_driver == "cgroupfs",
        )
    if config.runtime.default_handler not in runtimes:
        raise ConfigError(
            f"handler {config.runtime.default_handler!r} has no runtime binary on this host",
            key="runtime.default_handler",
        )
    return runtimes


def build_grpc_server(config: Config, runtime: Runtime) -> grpc.aio.Server:
    server = grpc.aio.server(
        interceptors=[ErrorMappingInterceptor()],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    # The generated registration helpers carry no annotations.
    cri_grpc.add_RuntimeServiceServicer_to_server(  # type: ignore[no-untyped-call]
        RuntimeServicer(
            effective_config=lambda: dataclasses.asdict(config),
            pods=runtime.pods,
            containers=runtime.containers,
            network=runtime.network,
            streaming=runtime.streaming,
        ),
        server,
    )
    cri_grpc.add_ImageServiceServicer_to_server(  # type: ignore[no-untyped-call]
        ImageServicer(runtime.images), server
    )
    server.add_generic_rpc_handlers([ImageExtras(runtime.images, runtime.progress).handler()])
    return server


def bind_unix_socket(server: grpc.aio.Server, path: Path) -> None:
    """Listen on `path` (mode 0660), replacing a stale socket from an earlier run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_socket():
        path.unlink()
    elif path.exists():
        raise ConfigError("exists and is not a socket", key="listen", path=str(path))
    old_umask = os.umask(0o117)  # the socket is born 0660: no window where others can connect
    try:
        server.add_insecure_port(f"unix://{path}")
    finally:
        os.umask(old_umask)


def remove_socket(path: Path) -> None:
    path.unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Runtime]:
    """The daemon serving CRI until the block ends; then a clean, ordered shutdown."""
    runtime = build_runtime(config)
    await runtime.images.recover()
    status = await runtime.network.start()
    log.info("pod network: %s", status.message or status.network)
    await runtime.pods.recover()
    await runtime.containers.recover()
    runtime.exits.add_callback(runtime.containers.on_exit, replay=True)
    await runtime.exits.start()
    await runtime.streaming.start()
    server = build_grpc_server(config, runtime)
    socket_path = Path(config.listen)
    try:
        bind_unix_socket(server, socket_path)
        await server.start()
        log.info(
            "cryopod serving CRI on %s (root %s, runroot %s)",
            socket_path,
            config.root,
            config.runroot,
        )
        yield runtime
    finally:
        log.info("shutting down: no new requests, draining in-flight ones")
        await server.stop(SHUTDOWN_GRACE_SECONDS)
        await runtime.streaming.stop()
        await runtime.exits.close()
        await runtime.pods.close()
        await runtime.network.close()
        await runtime.installer.close()
        await runtime.puller.close()
        runtime.db.close()
        remove_socket(socket_path)
        log.info("cryopod stopped")


def use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Learn of helper exits through pidfds (Python 3.12 does this by itself).

    3.11's default watcher starts a thread per child to waitpid() it: with a CNI plugin,
    conmon and runc exec'd for every pod, that thread churn was 5% of the daemon's CPU.
    """
    if sys.version_info < (3, 12):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    use_pidfd_child_watcher(loop)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    async with running(config):
        await stop.wait()
