"""Pod networking through CNI: which network pods join, whether it is ready, attach, detach.

`CNIManager` picks the default network from the config directories (by name when configured,
else the first usable file in name order; the embedded default when there is no file at all),
checks that its plugins exist and negotiates the CNI version with them, and keeps that answer
as a `NetworkStatus`. A watcher reloads it when the config or plugin directories change.

`attach` runs ADD for a pod (its loopback first when configured), `detach` runs DEL from the
attachment cache, `check` runs CHECK, `gc` DELs pods that are gone. Operations on one sandbox
are serialized; different sandboxes run concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryopod.errors import (
    CNIPluginFailed,
    CNIPluginTimeout,
    CryopodError,
    InvalidArgument,
    NetworkNotReady,
)
from cryopod.ids import check_safe_id
from cryopod.pods.files import write_atomic
from cryopod.pods.network.cache import AttachmentKey, CachedAttachment, ResultCache
from cryopod.pods.network.config import (
    NetworkConfigList,
    load_network_configs,
    parse_network_config,
)
from cryopod.pods.network.default import EMBEDDED_SOURCE, EmbeddedNetwork, parse_pod_cidrs
from cryopod.pods.network.invoke import (
    DEFAULT_PLUGIN_TIMEOUT,
    PluginExec,
    PluginInvoker,
    Target,
    exec_plugin,
)
from cryopod.pods.network.request import DEFAULT_IFNAME, IPRange, PodNetworkRequest, check_ifname
from cryopod.pods.network.result import CNIResult, parse_result
from cryopod.pods.network.watch import DirectoryWatcher

log = logging.getLogger(__name__)

NOT_READY_REASON = "NetworkPluginNotReady"
NOT_READY_RETRY_SECONDS = 10.0
LOOPBACK_IFNAME = "lo"
_LOOPBACK_CONFIG = {
    "cniVersion": "1.0.0",
    "cniVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    "name": "cni-loopback",
    "plugins": [{"type": "loopback"}],
}
_DEL_FAILURES = (CNIPluginFailed, CNIPluginTimeout, NetworkNotReady)
_NS_GET_NSTYPE = 0xB703  # ioctl on an nsfs file: which CLONE_NEW* it is
_CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class CNISettings:
    """Where configs, plugins and the cache are, and how pods are attached."""

    config_dirs: tuple[Path, ...] = (Path("/etc/cni/net.d"),)
    plugin_dirs: tuple[Path, ...] = (Path("/opt/cni/bin"), Path("/usr/lib/cni"))
    cache_dir: Path = Path("/var/lib/cryopod/cni/results")
    """Persistent (like host-local's store), so a reboot does not leak addresses."""
    default_network: str = ""
    """The network pods join; empty means the first usable config file by name."""
    ifname: str = DEFAULT_IFNAME
    loopback: bool = True
    """Run the loopback plugin for each pod (not needed when lo is brought up otherwise)."""
    plugin_timeout: float = DEFAULT_PLUGIN_TIMEOUT
    embedded: EmbeddedNetwork = field(default_factory=EmbeddedNetwork)
    watch: bool = True
    """Reload when the config or plugin directories change."""
    pod_cidr_file: Path | None = None
    """Where the node's PodCIDR is kept across restarts (the kubelet sends it only when it
    changes, not again because the runtime restarted); None keeps it in memory only."""


@dataclass(frozen=True)
class NetworkStatus:
    """The NetworkReady condition, and what the runtime knows about its network."""

    ready: bool
    reason: str = ""
    message: str = ""
    network: str = ""
    source: str = ""
    """The config file of the network, or "embedded default"."""
    cni_version: str = ""
    skipped: tuple[str, ...] = ()
    """Why config files were skipped."""
    pod_cidrs: tuple[str, ...] = ()

    @property
    def embedded_default(self) -> bool:
        return self.source == EMBEDDED_SOURCE

    def info(self) -> dict[str, object]:
        """For the verbose Status info map."""
        return {
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            "network": self.network,
            "source": self.source,
            "embeddedDefault": self.embedded_default,
            "cniVersion": self.cni_version,
            "skippedConfigs": list(self.skipped),
            "podCIDRs": list(self.pod_cidrs),
        }


@dataclass(frozen=True)
class PodAttachment:
    """A pod's attachment to its network, as ADD returned it."""

    network: str
    ifname: str
    result: CNIResult

    @property
    def ips(self) -> tuple[str, ...]:
        """The pod's addresses, IPv4 first; the first is its primary IP."""
        return self.result.pod_ips(self.ifname)


@dataclass(frozen=True)
class _Active:
    """What `attach` uses now: the chosen network (None when not ready) and the status."""

    status: NetworkStatus
    network: NetworkConfigList | None = None
    loopback: NetworkConfigList | None = None


class CNIManager:
    """The pods' CNI network: configuration, readiness, ADD/DEL/CHECK, and the cache."""

    def __init__(self, settings: CNISettings, *, runner: PluginExec = exec_plugin) -> None:
        check_ifname(settings.ifname)
        self.settings = settings
        self.cache = ResultCache(settings.cache_dir)
        self._invoker = PluginInvoker(
            settings.plugin_dirs, timeout=settings.plugin_timeout, runner=runner
        )
        self._pod_cidrs: tuple[str, ...] = ()
        self._active = _Active(_not_ready("the CNI configuration has not been loaded yet"))
        self._reload_lock = asyncio.Lock()
        self._locks = _SandboxLocks()
        self._watcher: DirectoryWatcher | None = None
        self._retry: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> NetworkStatus:
        """Load the configuration and start watching for changes."""
        await asyncio.to_thread(self.cache.remove_stale_temp_files)
        self._pod_cidrs = await asyncio.to_thread(self._read_pod_cidrs)
        status = await self.reload()
        if self.settings.watch and self._watcher is None:
            dirs = [*self.settings.config_dirs, *self.settings.plugin_dirs]
            self._watcher = DirectoryWatcher(dirs, self._reload_quietly)
            await self._watcher.start()
            self._retry = asyncio.create_task(self._retry_while_not_ready())
        return status

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.close()
        retry, self._retry = self._retry, None
        if retry is not None:
            retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retry

    async def _retry_while_not_ready(self) -> None:
        """Load again now and then while not ready: a plugin's VERSION or STATUS may have
        failed for a passing reason, which no file change would announce."""
        while True:
            await asyncio.sleep(NOT_READY_RETRY_SECONDS)
            if not self._active.status.ready:
                try:
                    await self.reload()
                except (CryopodError, OSError) as exc:
                    log.warning("reloading the CNI configuration failed: %s", exc)

    # --- configuration and readiness ---------------------------------------------------

    def status(self) -> NetworkStatus:
        """The NetworkReady condition as of the last (re)load."""
        return self._active.status

    @property
    def pod_cidrs(self) -> tuple[str, ...]:
        return self._pod_cidrs

    async def set_pod_cidr(self, pod_cidr: str) -> None:
        """Record the node's PodCIDR (UpdateRuntimeConfig); empty keeps the one known.

        It becomes the embedded default network's IPAM range and the `ipRanges` capability.
        """
        cidrs = parse_pod_cidrs(pod_cidr)
        if not cidrs or cidrs == self._pod_cidrs:
            return
        log.info("pod CIDR is now %s", ", ".join(cidrs))
        await asyncio.to_thread(self._write_pod_cidrs, cidrs)
        self._pod_cidrs = cidrs
        await self.reload()

    def _read_pod_cidrs(self) -> tuple[str, ...]:
        path = self.settings.pod_cidr_file
        if path is None:
            return ()
        try:
            cidrs = parse_pod_cidrs(path.read_text())
        except FileNotFoundError:
            return ()
        except (OSError, UnicodeDecodeError, InvalidArgument) as exc:
            log.warning("ignoring the pod CIDR recorded in %s: %s", path, exc)
            return ()
        if cidrs:
            log.info("pod CIDR is %s, as recorded before the restart", ", ".join(cidrs))
        return cidrs

    def _write_pod_cidrs(self, cidrs: tuple[str, ...]) -> None:
        path = self.settings.pod_cidr_file
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, ",".join(cidrs) + "\n")

    async def reload(self) -> NetworkStatus:
        """Read the config directories again and decide which network pods join."""
        async with self._reload_lock:
            active = await self._load()
            self._announce(active.status)
            self._active = active
            return active.status

    async def _reload_quietly(self) -> None:
        await self.reload()

    async def _load(self) -> _Active:
        scan = await asyncio.to_thread(load_network_configs, self.settings.config_dirs)
        skipped = tuple(str(problem) for problem in scan.invalid)
        dirs = ", ".join(str(d) for d in self.settings.config_dirs)
        if scan.empty:
            candidates = [self.settings.embedded.config(self._pod_cidrs)]
        elif self.settings.default_network:
            named = scan.find(self.settings.default_network)
            candidates = [named] if named is not None else []
        else:
            candidates = list(scan.networks)
        problems: list[str] = []
        for network in candidates:
            try:
                return await self._activate(network, skipped)
            except NetworkNotReady as exc:
                problems.append(f"{network.source}: {exc.reason}")
        if not candidates and self.settings.default_network:
            problems.append(f"network {self.settings.default_network!r} not found in {dirs}")
        elif not candidates:
            problems.append(f"no valid CNI network config in {dirs}")
        return _Active(_not_ready("; ".join([*problems, *skipped]), skipped, self._pod_cidrs))

    async def _activate(self, network: NetworkConfigList, skipped: tuple[str, ...]) -> _Active:
        """The network made ready to use: plugins found, version negotiated, STATUS ok."""
        network = await self._negotiate(network)
        try:
            await self._invoker.status(network)
        except (CNIPluginFailed, CNIPluginTimeout) as exc:
            raise NetworkNotReady(str(exc)) from exc
        loopback = None
        if self.settings.loopback:
            loopback = await self._negotiate(parse_network_config(_LOOPBACK_CONFIG, "loopback"))
        status = NetworkStatus(
            ready=True,
            network=network.name,
            source=network.source,
            cni_version=network.cni_version,
            skipped=skipped,
            pod_cidrs=self._pod_cidrs,
        )
        return _Active(status, network, loopback)

    async def _negotiate(self, network: NetworkConfigList) -> NetworkConfigList:
        """`network` with the highest version it and all its plugins support."""
        common: set[str] | None = None
        for plugin in network.plugins:
            supported = await self._invoker.versions(plugin.type)  # NetworkNotReady if missing
            if supported is not None:
                common = set(supported) if common is None else common & set(supported)
        version = network.cni_version if common is None else network.negotiate(common)
        if version is None:
            offered = ", ".join(network.cni_versions or (network.cni_version,))
            raise NetworkNotReady(
                f"network {network.name!r} ({network.source}) offers CNI version {offered}, "
                f"which its plugins do not all support (common: {', '.join(sorted(common or ()))})"
            )
        return network.with_version(version)

    def _announce(self, status: NetworkStatus) -> None:
        before = self._active.status
        if (status.ready, status.message, status.network, status.source) == (
            before.ready,
            before.message,
            before.network,
            before.source,
        ):
            return
        if not status.ready:
            log.warning("pod network is not ready: %s", status.message)
        elif status.embedded_default:
            embedded = self.settings.embedded
            ranges = ", ".join(self._pod_cidrs or embedded.subnets)
            log.info(
                "no CNI config in %s: pods join the embedded default network %r "
                "(bridge %s, %s, CNI %s)",
                ", ".join(str(d) for d in self.settings.config_dirs),
                status.network,
                embedded.bridge,
                ranges,
                status.cni_version,
            )
        else:
            log.info(
                "pods join CNI network %r from %s (CNI %s)",
                status.network,
                status.source,
                status.cni_version,
            )

    # --- pods --------------------------------------------------------------------------

    async def attach(self, request: PodNetworkRequest) -> PodAttachment:
        """ADD the pod to the network. Raises NetworkNotReady, CNIPluginFailed, ...

        A failed ADD is undone with DEL before the error is raised; its cache entry stays
        only if that DEL failed too, so recovery can try again.
        """
        request.validate()
        active = self._active
        if active.network is None:
            raise NetworkNotReady(active.status.message)
        ranges = tuple((IPRange(cidr),) for cidr in self._pod_cidrs)
        record = CachedAttachment(
            network=active.network,
            sandbox_id=request.sandbox_id,
            ifname=self.settings.ifname,
            netns=request.netns,
            cni_args=request.cni_args(),
            capability_args=request.capability_args(ranges),
        )
        async with self._locks.hold(request.sandbox_id):
            if active.loopback is not None:
                loopback = Target(request.sandbox_id, request.netns, LOOPBACK_IFNAME)
                await self._invoker.add(active.loopback, loopback, {})
            result = await self._add(record)
        attachment = PodAttachment(active.network.name, record.ifname, result)
        log.info(
            "sandbox %s joined network %r: %s",
            request.sandbox_id,
            attachment.network,
            ", ".join(attachment.ips) or "no IP",
        )
        return attachment

    async def _add(self, record: CachedAttachment) -> CNIResult:
        await asyncio.to_thread(self.cache.save, record)  # before ADD: a crash leaves a trace
        try:
            raw = await self._invoker.add(record.network, record.target(), record.capability_args)
            await asyncio.to_thread(self.cache.save, replace(record, result=raw))
        except BaseException:
            await _finish_uncancelled(self._undo_add(record))
            raise
        return parse_result(raw, record.network.cni_version)

    async def _undo_add(self, record: CachedAttachment) -> None:
        try:
            await self._delete(record, record.netns)
        except _DEL_FAILURES as exc:
            log.error(
                "sandbox %s: DEL after a failed ADD failed too; kept for recovery: %s",
                record.sandbox_id,
                exc,
            )

    async def detach(self, sandbox_id: str, netns: str = "") -> None:
        """DEL the pod from every network it was added to; idempotent.

        Runs from the cache, so it works after a restart or a config change. `netns` (or the
        recorded path) is passed only while it is still a network namespace, so a pod whose
        netns is gone is still cleaned up. Raises the first DEL failure after trying all.
        """
        check_safe_id("sandbox", sandbox_id)
        async with self._locks.hold(sandbox_id):
            keys = await asyncio.to_thread(self.cache.keys, sandbox_id)
            if not keys:
                return  # never added, or DEL'd already: the entry goes only after DEL
            failure: BaseException | None = None
            for key in keys:
                try:
                    await self._detach_one(key, netns)
                except _DEL_FAILURES as exc:
                    failure = failure or exc
            await self._detach_loopback(sandbox_id, netns)
        if failure is not None:
            raise failure

    async def _detach_one(self, key: AttachmentKey, netns: str) -> None:
        try:
            record = await asyncio.to_thread(self.cache.load, *key)
        except CryopodError as exc:
            record = self._fallback_record(key, exc)
        if record is None:
            await asyncio.to_thread(self.cache.delete, *key)  # nothing left to DEL it with
        else:
            await self._delete(record, _live_netns(netns, record.netns))

    def _fallback_record(self, key: AttachmentKey, damage: CryopodError) -> CachedAttachment | None:
        """For a damaged cache entry: the current config of its network, if it has one."""
        network_name, sandbox_id, ifname = key
        network = self._active.network
        if network is None or network.name != network_name:
            log.error("sandbox %s: cannot DEL from %r: %s", sandbox_id, network_name, damage)
            return None
        log.warning("sandbox %s: DEL with the current config: %s", sandbox_id, damage)
        return CachedAttachment(network, sandbox_id, ifname, netns="")

    async def _delete(self, record: CachedAttachment, netns: str) -> None:
        # Without a result (an unfinished ADD, a damaged entry) nobody knows which plugins
        # did something: all of them get a DEL.
        await self._invoker.delete(
            record.network,
            record.target(netns),
            record.capability_args,
            record.result,
            every_plugin=record.result is None,
        )
        await asyncio.to_thread(self.cache.delete, *record.key)
        log.info("sandbox %s left network %r", record.sandbox_id, record.network.name)

    async def _detach_loopback(self, sandbox_id: str, netns: str) -> None:
        loopback = self._active.loopback
        if loopback is None or not _live_netns(netns):
            return  # lo goes away with its netns
        target = Target(sandbox_id, netns, LOOPBACK_IFNAME)
        try:
            await self._invoker.delete(loopback, target, {}, None)
        except _DEL_FAILURES as exc:
            log.warning("sandbox %s: loopback DEL failed: %s", sandbox_id, exc)

    async def check(self, sandbox_id: str, netns: str = "") -> bool:
        """CHECK the pod's attachments; False when none could be checked.

        Attachments of configs before 0.4.0, with disableCheck, whose ADD never finished,
        or whose netns is gone are not checked. Raises CNIPluginFailed when one is broken.
        """
        check_safe_id("sandbox", sandbox_id)
        checked = False
        async with self._locks.hold(sandbox_id):
            for record in await asyncio.to_thread(self.cache.list, sandbox_id):
                live = _live_netns(netns, record.netns)
                if record.result is None or not live:
                    continue
                target = record.target(live)
                args = record.capability_args
                checked |= await self._invoker.check(record.network, target, args, record.result)
        return checked

    async def attachments(self, sandbox_id: str | None = None) -> list[CachedAttachment]:
        """The cached attachments (of one sandbox if given), for recovery and status."""
        return await asyncio.to_thread(self.cache.list, sandbox_id)

    async def gc(self, keep: Collection[str]) -> list[str]:
        """DEL every cached pod not in `keep` (sandbox ids), then GC the network (CNI 1.1.0).

        Answers the sandboxes that were DEL'd; failures are logged and retried next time.
        """
        keys = await asyncio.to_thread(self.cache.keys)
        gone = sorted({sandbox for _, sandbox, _ in keys if sandbox not in keep})
        removed = []
        for sandbox_id in gone:
            try:
                await self.detach(sandbox_id)
                removed.append(sandbox_id)
            except (CryopodError, OSError) as exc:
                log.warning("GC: sandbox %s stays cached: %s", sandbox_id, exc)
        await self._gc_network()
        return removed

    async def _gc_network(self) -> None:
        network = self._active.network
        if network is None:
            return
        kept = await asyncio.to_thread(self.cache.keys)
        valid = [(sandbox, ifname) for name, sandbox, ifname in kept if name == network.name]
        try:
            await self._invoker.gc(network, valid)
        except (CNIPluginFailed, CNIPluginTimeout) as exc:
            log.warning("GC of network %r failed: %s", network.name, exc)


# --- helpers --------------------------------------------------------------------------------


def _not_ready(
    message: str, skipped: tuple[str, ...] = (), pod_cidrs: tuple[str, ...] = ()
) -> NetworkStatus:
    return NetworkStatus(
        ready=False,
        reason=NOT_READY_REASON,
        message=message,
        skipped=skipped,
        pod_cidrs=pod_cidrs,
    )


def _live_netns(*paths: str) -> str:
    """The first of `paths` that is a network namespace now, else "" (as the spec allows)."""
    return next((p for p in paths if p and is_network_namespace(p)), "")


def is_network_namespace(path: str) -> bool:
    """Is `path` a network namespace (a pinned bind mount, /proc/<pid>/ns/net) right now?

    A pin file whose mount is gone is a plain empty file, and is not.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return bool(fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET)
    except OSError:
        return False  # ENOTTY: not an nsfs file
    finally:
        os.close(fd)


async def _finish_uncancelled(cleanup: Awaitable[None]) -> None:
    """Run `cleanup` to its end even if the caller is cancelled meanwhile; then honour it."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


class _SandboxLocks:
    """One lock per sandbox, dropped when nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, sandbox_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(sandbox_id, (asyncio.Lock(), 0))
        self._locks[sandbox_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[sandbox_id]
            if users == 1:
                del self._locks[sandbox_id]
            else:
                self._locks[sandbox_id] = (lock, users - 1)
