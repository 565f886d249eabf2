"""CNIManager with a fake plugin exec: readiness, reloads, attach/detach/check/gc, the cache."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cryopod.errors import CNIPluginFailed, InvalidArgument, NetworkNotReady
from cryopod.pods.model import PortMapping
from cryopod.pods.network import (
    NOT_READY_REASON,
    CNIManager,
    CNISettings,
    EmbeddedNetwork,
    PluginOutput,
    PodNetworkRequest,
)

SANDBOX_A = "a" * 64
SANDBOX_B = "b" * 64
LIVE_NETNS = "/proc/self/ns/net"  # a real network namespace the fake never touches
PLUGINS = ("bridge", "host-local", "portmap", "loopback")


@dataclass
class Call:
    plugin: str
    env: Mapping[str, str]
    conf: dict[str, Any]

    @property
    def command(self) -> str:
        return self.env["CNI_COMMAND"]


Handler = Callable[[Call], Awaitable[PluginOutput]]


def add_result(call: Call) -> PluginOutput:
    netns = call.env["CNI_NETNS"]
    index = 0 if call.env["CNI_IFNAME"] == "lo" else 9
    raw = {
        "cniVersion": call.conf["cniVersion"],
        "interfaces": [{"name": call.env["CNI_IFNAME"], "sandbox": netns}],
        "ips": [{"address": f"10.85.0.{index}/16", "interface": 0}],
    }
    return PluginOutput(0, json.dumps(raw).encode(), b"")


async def succeed(call: Call) -> PluginOutput:
    if call.command == "VERSION":
        return PluginOutput(0, b'{"supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}', b"")
    if call.command == "ADD":
        return add_result(call)
    return PluginOutput(0, b"", b"")


def failing(plugin: str, command: str, message: str = "boom") -> Handler:
    async def handler(call: Call) -> PluginOutput:
        if (call.plugin, call.command) == (plugin, command):
            return PluginOutput(1, json.dumps({"code": 5, "msg": message}).encode(), b"")
        return await succeed(call)

    return handler


@dataclass
class FakeExec:
    handler: Handler = succeed
    calls: list[Call] = field(default_factory=list)

    async def __call__(
        self, path: str, *, env: Mapping[str, str], stdin: bytes, timeout: float | None
    ) -> PluginOutput:
        call = Call(os.path.basename(path), dict(env), json.loads(stdin))
        self.calls.append(call)
        return await self.handler(call)

    def commands(self, *, version: bool = False) -> list[tuple[str, str]]:
        return [(c.command, c.plugin) for c in self.calls if version or c.command != "VERSION"]

    def of(self, command: str, plugin: str) -> Call:
        return next(c for c in self.calls if (c.command, c.plugin) == (command, plugin))


@dataclass
class Env:
    base: Path
    fake: FakeExec

    @property
    def net_d(self) -> Path:
        return self.base / "net.d"

    @property
    def bin(self) -> Path:
        return self.base / "bin"

    def settings(self, **overrides: Any) -> CNISettings:
        fields: dict[str, Any] = {
            "config_dirs": (self.net_d,),
            "plugin_dirs": (self.base / "opt-bin", self.bin),
            "cache_dir": self.base / "cache",
            "embedded": EmbeddedNetwork(bridge="test0"),
        }
        fields.update(overrides)
        return CNISettings(**fields)

    def write_config(self, name: str, content: object) -> None:
        self.net_d.mkdir(exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)
        (self.net_d / name).write_text(text)

    def install(self, plugin: str) -> None:
        self.bin.mkdir(exist_ok=True)
        (self.bin / plugin).write_text("")
        os.chmod(self.bin / plugin, 0o755)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    environment = Env(tmp_path, FakeExec())
    for plugin in PLUGINS:
        environment.install(plugin)
    return environment


@pytest.fixture
async def manager(env: Env) -> AsyncIterator[CNIManager]:
    cni = CNIManager(env.settings(), runner=env.fake)
    await cni.start()
    yield cni
    await cni.close()


def conflist(name: str, *plugins: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": name,
        **extra,
        "plugins": [{"type": p, "capabilities": {"portMappings": True}} for p in plugins],
    }


# A hostPort gives portmap work to do (without one it is left out of the chain).
HOST_PORT = (PortMapping(container_port=80, host_port=8080),)


def pod(sandbox_id: str = SANDBOX_A, **overrides: Any) -> PodNetworkRequest:
    fields: dict[str, Any] = {
        "sandbox_id": sandbox_id,
        "netns": LIVE_NETNS,
        "pod_name": "web",
        "pod_namespace": "default",
        "pod_uid": "uid-1",
    }
    fields.update(overrides)
    return PodNetworkRequest(**fields)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait for the watcher to apply a change (it has no event to wait on)."""
    for _ in range(int(timeout / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition did not come true in time")


# --- readiness ------------------------------------------------------------------------------


async def test_no_config_at_all_uses_the_embedded_default(manager: CNIManager) -> None:
    status = manager.status()
    assert status.ready
    assert (status.reason, status.message) == ("", "")
    assert status.network == "cryopod"
    assert status.embedded_default
    assert status.cni_version == "1.0.0"  # negotiated down from 1.1.0 with the plugins
    assert status.info()["embeddedDefault"] is True


async def test_a_broken_config_is_not_ready_until_a_good_one_appears(
    env: Env, manager: CNIManager
) -> None:
    env.write_config("10-broken.conflist", "{oops")
    await eventually(lambda: not manager.status().ready)
    status = manager.status()
    assert status.reason == NOT_READY_REASON
    assert "no valid CNI network config" in status.message
    assert "10-broken.conflist" in status.message and "not valid JSON" in status.message
    with pytest.raises(NetworkNotReady, match="not valid JSON") as info:
        await manager.attach(pod())
    assert info.value.code == "FAILED_PRECONDITION"
    env.write_config("20-good.conflist", conflist("good", "bridge"))
    await eventually(lambda: manager.status().ready)
    assert manager.status().network == "good"
    (skipped,) = manager.status().skipped
    assert "10-broken.conflist" in skipped


async def test_a_config_dir_created_after_start_is_watched(tmp_path: Path) -> None:
    env = Env(tmp_path, FakeExec())
    env.install("bridge")
    env.install("loopback")
    settings = env.settings(config_dirs=(tmp_path / "later" / "net.d",))
    cni = CNIManager(settings, runner=env.fake)
    try:
        await cni.start()
        assert cni.status().embedded_default is False  # portmap is missing: not ready
        assert not cni.status().ready
        assert "'portmap' not found" in cni.status().message
        (tmp_path / "later" / "net.d").mkdir(parents=True)
        (tmp_path / "later" / "net.d" / "10-x.conflist").write_text(
            json.dumps(conflist("late", "bridge"))
        )
        await eventually(lambda: cni.status().ready)
        assert cni.status().network == "late"
    finally:
        await cni.close()


async def test_a_missing_plugin_is_not_ready_until_it_is_installed(
    env: Env, manager: CNIManager
) -> None:
    env.write_config("10-flannel.conflist", conflist("flannel", "flannel"))
    await eventually(lambda: not manager.status().ready)
    assert "CNI plugin 'flannel' not found in" in manager.status().message
    env.install("flannel")
    await eventually(lambda: manager.status().ready)
    assert manager.status().network == "flannel"


async def test_the_first_usable_file_wins_unless_one_is_named(env: Env) -> None:
    env.write_config("10-missing.conflist", conflist("missing", "flannel"))
    env.write_config("20-second.conflist", conflist("second", "bridge"))
    env.write_config("30-third.conflist", conflist("third", "bridge"))
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    assert (await cni.start()).network == "second"
    named = CNIManager(env.settings(watch=False, default_network="third"), runner=env.fake)
    assert (await named.start()).network == "third"
    absent = CNIManager(env.settings(watch=False, default_network="nope"), runner=env.fake)
    status = await absent.start()
    assert not status.ready
    assert "network 'nope' not found in" in status.message
    unusable = CNIManager(env.settings(watch=False, default_network="missing"), runner=env.fake)
    assert "'flannel' not found" in (await unusable.start()).message


async def test_a_version_the_plugins_do_not_speak_is_not_ready(env: Env) -> None:
    env.write_config("10-new.conflist", conflist("new", "bridge", version="1.1.0"))
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    status = await cni.start()
    assert not status.ready
    assert "offers CNI version 1.1.0, which its plugins do not all support" in status.message


async def test_cni_versions_are_negotiated_with_the_plugins(env: Env) -> None:
    config = conflist("multi", "bridge", version="1.0.0", cniVersions=["0.4.0", "1.0.0", "1.1.0"])
    env.write_config("10-multi.conflist", config)
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    assert (await cni.start()).cni_version == "1.0.0"
    await cni.attach(pod())
    assert env.fake.of("ADD", "bridge").conf["cniVersion"] == "1.0.0"


async def test_status_of_a_110_network_is_asked(env: Env) -> None:
    async def speaks_110(call: Call) -> PluginOutput:
        if call.command == "VERSION":
            return PluginOutput(0, b'{"supportedVersions": ["1.0.0", "1.1.0"]}', b"")
        if call.command == "STATUS":
            return PluginOutput(1, b'{"code": 50, "msg": "daemon not running"}', b"")
        return await succeed(call)

    env.fake.handler = speaks_110
    env.write_config("10-new.conflist", conflist("new", "bridge", version="1.1.0"))
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    status = await cni.start()
    assert not status.ready
    assert "daemon not running" in status.message
    assert ("STATUS", "bridge") in env.fake.commands()


# --- attach ---------------------------------------------------------------------------------


async def test_attach_adds_loopback_then_the_network_and_caches_the_result(
    env: Env, manager: CNIManager
) -> None:
    attachment = await manager.attach(
        pod(port_mappings=(PortMapping(container_port=80, host_port=8080),))
    )
    assert env.fake.commands() == [("ADD", "loopback"), ("ADD", "bridge"), ("ADD", "portmap")]
    loopback, bridge, portmap = (c for c in env.fake.calls if c.command == "ADD")
    assert loopback.env["CNI_IFNAME"] == "lo"
    assert loopback.conf["name"] == "cni-loopback"
    assert bridge.env["CNI_IFNAME"] == "eth0"
    assert bridge.env["CNI_CONTAINERID"] == SANDBOX_A
    assert bridge.env["CNI_NETNS"] == LIVE_NETNS
    assert "K8S_POD_UID=uid-1" in bridge.env["CNI_ARGS"]
    assert "runtimeConfig" not in bridge.conf
    assert portmap.conf["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }
    assert attachment.network == "cryopod"
    assert attachment.ips == ("10.85.0.9",)
    (cached,) = await manager.attachments(SANDBOX_A)
    assert cached.complete
    assert cached.pod_ips() == ("10.85.0.9",)
    assert cached.network.cni_version == "1.0.0"


async def test_a_failed_add_is_undone_and_leaves_no_cache_entry(env: Env) -> None:
    env.fake.handler = failing("portmap", "ADD", "no iptables")
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    await cni.start()
    with pytest.raises(CNIPluginFailed, match="no iptables"):
        await cni.attach(pod(port_mappings=HOST_PORT))
    assert env.fake.commands()[-2:] == [("DEL", "portmap"), ("DEL", "bridge")]
    assert await cni.attachments() == []


async def test_a_failed_add_whose_del_fails_stays_cached_for_recovery(env: Env) -> None:
    async def handler(call: Call) -> PluginOutput:
        if call.plugin == "portmap" and call.command in ("ADD", "DEL"):
            return PluginOutput(1, b'{"code": 5, "msg": "stuck"}', b"")
        return await succeed(call)

    env.fake.handler = handler
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    await cni.start()
    with pytest.raises(CNIPluginFailed, match="ADD"):
        await cni.attach(pod(port_mappings=HOST_PORT))
    (entry,) = await cni.attachments()
    assert not entry.complete
    env.fake.handler = succeed
    await cni.detach(SANDBOX_A)
    assert await cni.attachments() == []


async def test_a_cancelled_add_is_undone(env: Env) -> None:
    started = asyncio.Event()

    async def slow_bridge(call: Call) -> PluginOutput:
        if (call.plugin, call.command) == ("bridge", "ADD"):
            started.set()
            await asyncio.sleep(60)
        return await succeed(call)

    env.fake.handler = slow_bridge
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    await cni.start()
    task = asyncio.create_task(cni.attach(pod()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert ("DEL", "bridge") in env.fake.commands()
    assert await cni.attachments() == []


async def test_attach_validates_the_request(manager: CNIManager) -> None:
    with pytest.raises(InvalidArgument):
        await manager.attach(pod(pod_name="a;b"))


# --- detach, check, gc --------------------------------------------------------------------


async def test_detach_uses_the_cached_config_and_is_idempotent(
    env: Env, manager: CNIManager
) -> None:
    await manager.attach(pod(port_mappings=(PortMapping(container_port=80, host_port=8080),)))
    added = env.fake.of("ADD", "portmap").conf["prevResult"]
    env.write_config("10-other.conflist", conflist("other", "bridge"))  # the default changes
    await eventually(lambda: manager.status().network == "other")
    env.fake.calls.clear()
    await manager.detach(SANDBOX_A, LIVE_NETNS)
    assert env.fake.commands() == [("DEL", "portmap"), ("DEL", "bridge"), ("DEL", "loopback")]
    portmap_del = env.fake.of("DEL", "portmap")
    assert portmap_del.conf["name"] == "cryopod"
    assert portmap_del.conf["runtimeConfig"]["portMappings"][0]["hostPort"] == 8080
    assert portmap_del.conf["prevResult"]["interfaces"][0]["name"] == "eth0"
    assert added["interfaces"][0]["name"] == "eth0"
    assert portmap_del.env["CNI_NETNS"] == LIVE_NETNS
    assert await manager.attachments() == []
    env.fake.calls.clear()
    await manager.detach(SANDBOX_A, LIVE_NETNS)
    await manager.detach(SANDBOX_B)
    assert env.fake.calls == []  # nothing cached: nothing to DEL


async def test_detach_after_a_restart_with_the_netns_gone(env: Env) -> None:
    first = CNIManager(env.settings(watch=False), runner=env.fake)
    await first.start()
    await first.attach(pod(netns="/run/netns/gone", port_mappings=HOST_PORT))
    env.fake.calls.clear()
    second = CNIManager(env.settings(watch=False, loopback=False), runner=env.fake)
    await second.start()
    await second.detach(SANDBOX_A)
    assert env.fake.commands() == [("DEL", "portmap"), ("DEL", "bridge")]
    assert all(c.env["CNI_NETNS"] == "" for c in env.fake.calls if c.command == "DEL")
    assert await second.attachments() == []


async def test_a_failed_del_keeps_the_entry_and_raises(env: Env, manager: CNIManager) -> None:
    await manager.attach(pod())
    env.fake.handler = failing("bridge", "DEL", "busy")
    with pytest.raises(CNIPluginFailed, match="busy"):
        await manager.detach(SANDBOX_A)
    assert len(await manager.attachments()) == 1
    env.fake.handler = succeed
    await manager.detach(SANDBOX_A)
    assert await manager.attachments() == []


async def test_a_damaged_entry_is_deleted_with_the_current_config(
    env: Env, manager: CNIManager
) -> None:
    await manager.attach(pod(port_mappings=HOST_PORT))
    manager.cache.path("cryopod", SANDBOX_A, "eth0").write_text("{garbage")
    env.fake.calls.clear()
    await manager.detach(SANDBOX_A)
    assert env.fake.commands() == [("DEL", "portmap"), ("DEL", "bridge")]
    assert "prevResult" not in env.fake.of("DEL", "bridge").conf
    assert manager.cache.keys() == []


async def test_check_runs_for_complete_entries_with_a_live_netns(
    env: Env, manager: CNIManager
) -> None:
    assert not await manager.check(SANDBOX_A)  # nothing cached
    await manager.attach(pod(port_mappings=HOST_PORT))
    env.fake.calls.clear()
    assert await manager.check(SANDBOX_A)
    assert env.fake.commands() == [("CHECK", "bridge"), ("CHECK", "portmap")]
    assert env.fake.of("CHECK", "bridge").conf["prevResult"]["ips"]
    env.fake.handler = failing("portmap", "CHECK", "rule missing")
    with pytest.raises(CNIPluginFailed, match="rule missing"):
        await manager.check(SANDBOX_A)


async def test_check_skips_a_pod_whose_netns_is_gone(env: Env, manager: CNIManager) -> None:
    await manager.attach(pod(netns="/run/netns/gone"))
    env.fake.calls.clear()
    assert not await manager.check(SANDBOX_A)
    assert env.fake.calls == []


async def test_gc_deletes_pods_that_are_gone_and_gcs_a_110_network(env: Env) -> None:
    async def speaks_110(call: Call) -> PluginOutput:
        if call.command == "VERSION":
            return PluginOutput(0, b'{"supportedVersions": ["1.0.0", "1.1.0"]}', b"")
        return await succeed(call)

    env.fake.handler = speaks_110
    env.write_config("10-new.conflist", conflist("new", "bridge", version="1.1.0"))
    cni = CNIManager(env.settings(watch=False, loopback=False), runner=env.fake)
    await cni.start()
    await cni.attach(pod(SANDBOX_A))
    await cni.attach(pod(SANDBOX_B))
    env.fake.calls.clear()
    assert await cni.gc(keep={SANDBOX_B}) == [SANDBOX_A]
    assert env.fake.commands() == [("DEL", "bridge"), ("GC", "bridge")]
    assert env.fake.of("DEL", "bridge").env["CNI_CONTAINERID"] == SANDBOX_A
    valid = env.fake.of("GC", "bridge").conf["cni.dev/valid-attachments"]
    assert valid == [{"containerID": SANDBOX_B, "ifname": "eth0"}]


# --- pod CIDR, concurrency ------------------------------------------------------------------


async def test_the_pod_cidr_becomes_the_embedded_range_and_ip_ranges(
    env: Env, manager: CNIManager
) -> None:
    await manager.set_pod_cidr("10.244.3.0/24")
    assert manager.status().pod_cidrs == ("10.244.3.0/24",)
    await manager.attach(pod())
    ipam = env.fake.of("ADD", "bridge").conf["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    (cached,) = await manager.attachments()
    assert cached.capability_args["ipRanges"] == [[{"subnet": "10.244.3.0/24"}]]
    with pytest.raises(InvalidArgument):
        await manager.set_pod_cidr("banana")


async def test_one_sandbox_at_a_time_different_sandboxes_at_once(env: Env) -> None:
    running: dict[str, int] = {}
    overlap = {"same": 0, "max": 0}

    async def slow(call: Call) -> PluginOutput:
        if call.command == "VERSION":
            return await succeed(call)
        sandbox = call.env["CNI_CONTAINERID"]
        running[sandbox] = running.get(sandbox, 0) + 1
        overlap["same"] = max(overlap["same"], running[sandbox])
        overlap["max"] = max(overlap["max"], sum(running.values()))
        await asyncio.sleep(0.01)
        running[sandbox] -= 1
        return await succeed(call)

    env.fake.handler = slow
    cni = CNIManager(env.settings(watch=False), runner=env.fake)
    await cni.start()
    await asyncio.gather(cni.attach(pod(SANDBOX_A)), cni.attach(pod(SANDBOX_B)))
    await asyncio.gather(cni.detach(SANDBOX_A, LIVE_NETNS), cni.check(SANDBOX_A, LIVE_NETNS))
    assert overlap["same"] == 1
    assert overlap["max"] == 2
