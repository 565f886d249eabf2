"""Pod networking with the real Debian CNI plugins (bridge, host-local, portmap, loopback,
bandwidth, tuning) in real network namespaces pinned by `NamespacePinner`.

Each test has its own bridge, subnet, network name, host-local store and cache under its tmp
dir, so tests (and other test sessions) never share anything; each removes what it made:
attachments, netns pins, bridges, and any iptables rule that names its network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import random
import secrets
import shlex
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cryopod.errors import CNIPluginFailed, NetworkNotReady
from cryopod.ids import new_id
from cryopod.pods.model import PortMapping
from cryopod.pods.namespaces import NamespacePinner
from cryopod.pods.network import (
    NOT_READY_REASON,
    Bandwidth,
    CNIManager,
    CNISettings,
    EmbeddedNetwork,
    PodAttachment,
    PodNetworkRequest,
)
from tests.support import require_tools

PLUGIN_DIR = Path("/usr/lib/cni")
REAL_PLUGINS = ("bridge", "host-local", "portmap", "loopback", "bandwidth", "tuning")


def run(*argv: str, check: bool = True, stdin: str | None = None) -> str:
    result = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=30, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def in_netns(netns: str, *argv: str, check: bool = True, stdin: str | None = None) -> str:
    return run("nsenter", f"--net={netns}", *argv, check=check, stdin=stdin)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.160.0.0-10.250.255.0 that no address or route of this host overlaps."""
    routes = json.loads(run("ip", "-j", "-4", "route", "show", "table", "all"))
    used = [
        ipaddress.ip_network(route["dst"], strict=False)
        for route in routes
        if route.get("dst", "default") != "default"
    ]
    for _ in range(100):
        subnet = ipaddress.IPv4Network(
            f"10.{random.randint(160, 250)}.{random.randint(0, 255)}.0/24"
        )
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise AssertionError("no free /24 for a test bridge")


def free_ipv6_subnet() -> str:
    """A random ULA /64, in its canonical text form (no leading zeros)."""
    text = f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}:{secrets.token_hex(2)}::/64"
    return str(ipaddress.ip_network(text))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        port: int = sock.getsockname()[1]
        return port


def iptables_lines(needle: str) -> list[str]:
    lines = run("iptables-save").splitlines() + run("ip6tables-save").splitlines()
    return [line for line in lines if needle in line]


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


@dataclass
class Pod:
    sandbox_id: str
    netns: str
    attachment: PodAttachment | None = None

    @property
    def ip(self) -> str:
        assert self.attachment is not None
        return self.attachment.ips[0]

    @property
    def host_veth(self) -> str:
        assert self.attachment is not None
        return next(
            i.name
            for i in self.attachment.result.interfaces
            if not i.sandbox and i.name.startswith("veth")
        )


@dataclass
class NetWorld:
    """One test's private network world."""

    base: Path
    pinner: NamespacePinner
    name: str = field(default_factory=lambda: f"cpt-{secrets.token_hex(4)}")
    bridge: str = field(default_factory=lambda: f"cpt{secrets.token_hex(4)}")
    subnet: ipaddress.IPv4Network = field(default_factory=free_subnet)
    managers: list[CNIManager] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.net_d.mkdir()
        self.names.append(self.name)
        self.bridges.append(self.bridge)

    @property
    def net_d(self) -> Path:
        return self.base / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    def settings(self, **overrides: Any) -> CNISettings:
        fields: dict[str, Any] = {
            "config_dirs": (self.net_d,),
            "plugin_dirs": (self.base / "no-such-bin", PLUGIN_DIR),
            "cache_dir": self.base / "cache",
            "embedded": EmbeddedNetwork(
                name=self.name,
                bridge=self.bridge,
                subnets=(str(self.subnet),),
                ipam_data_dir=str(self.ipam_dir),
            ),
            "watch": False,
        }
        fields.update(overrides)
        return CNISettings(**fields)

    async def manager(self, **overrides: Any) -> CNIManager:
        cni = CNIManager(self.settings(**overrides))
        self.managers.append(cni)
        await cni.start()
        return cni

    def conflist(self, version: str, *extra: dict[str, Any], name: str = "") -> dict[str, Any]:
        """bridge + host-local on this test's bridge and subnet, then `extra` plugins."""
        bridge = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.ipam_dir),
            },
        }
        return {"cniVersion": version, "name": name or self.name, "plugins": [bridge, *extra]}

    def write_config(self, file_name: str, content: object) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        temp = self.net_d / f".{file_name}.tmp"
        temp.write_text(text)
        temp.rename(self.net_d / file_name)

    async def new_pod(self) -> Pod:
        sandbox_id = new_id()
        pinned = await self.pinner.pin(sandbox_id, {"net"}, hostname="pod")
        return Pod(sandbox_id, str(pinned["net"]))

    def request(self, pod: Pod, **extra: Any) -> PodNetworkRequest:
        return PodNetworkRequest(
            sandbox_id=pod.sandbox_id,
            netns=pod.netns,
            pod_name=f"pod-{pod.sandbox_id[:8]}",
            pod_namespace="cryopod-test",
            pod_uid=pod.sandbox_id[:32],
            **extra,
        )

    async def attach(self, cni: CNIManager, pod: Pod, **extra: Any) -> Pod:
        pod.attachment = await cni.attach(self.request(pod, **extra))
        return pod

    def reserved_ips(self, network: str = "") -> list[str]:
        """Addresses host-local holds for `network` (its store keeps one file per address)."""
        store = self.ipam_dir / (network or self.name)
        if not store.is_dir():
            return []
        return sorted(p.name for p in store.iterdir() if _is_address(p.name))

    def assert_pod_gone(self, pod: Pod, network: str = "") -> None:
        """No veth, address, iptables rule or cache entry of the pod is left."""
        assert not link_exists(pod.host_veth)
        assert pod.ip not in self.reserved_ips(network)
        assert iptables_lines(pod.sandbox_id) == []
        assert list(self.cache_entries(pod)) == []

    def cache_entries(self, pod: Pod) -> Iterator[Path]:
        cache = self.base / "cache"
        return cache.glob(f"*{pod.sandbox_id}*") if cache.is_dir() else iter(())

    async def cleanup(self) -> None:
        for cni in self.managers:
            with contextlib.suppress(Exception):
                await cni.gc(keep=())
            await cni.close()
        for sandbox_id in self.pinner.list_pinned():
            await self.pinner.unpin(sandbox_id)
        await self.pinner.release_root()
        for bridge in self.bridges:
            run("ip", "link", "del", bridge, check=False)
        for name in self.names:
            purge_iptables(name)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def purge_iptables(network: str) -> None:
    """Delete rules that name `network` and the per-pod chains they fill (test hygiene)."""
    for save, tool in (("iptables-save", "iptables"), ("ip6tables-save", "ip6tables")):
        table, chains = "", set()
        for line in run(save).splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith("-A ") and f'name: \\"{network}\\"' in line:
                args = shlex.split(line)
                chain = args[1]
                run(tool, "-t", table, "-D", *args[1:], check=False)
                if chain.startswith("CNI-") and not chain.startswith("CNI-HOSTPORT"):
                    chains.add((table, chain))
        for table_name, chain in chains:
            run(tool, "-t", table_name, "-F", chain, check=False)
            run(tool, "-t", table_name, "-X", chain, check=False)


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[NetWorld]:
    require_tools("nsenter", "ip", "iptables-save", "ip6tables-save", "tc", "busybox")
    missing = [p for p in REAL_PLUGINS if not (PLUGIN_DIR / p).exists()]
    if missing:
        pytest.skip(f"CNI plugins missing from {PLUGIN_DIR}: {', '.join(missing)}")
    world = NetWorld(base=tmp_path, pinner=NamespacePinner(tmp_path / "ns"))
    try:
        yield world
    finally:
        await world.cleanup()


@contextlib.contextmanager
def tcp_server(netns: str, port: int, reply: str) -> Iterator[subprocess.Popen[str]]:
    """busybox nc listening once on `port` in `netns`, answering `reply`."""
    server = subprocess.Popen(
        ["nsenter", f"--net={netns}", "busybox", "nc", "-l", "-p", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdin is not None
        server.stdin.write(reply + "\n")
        server.stdin.flush()
        yield server
    finally:
        server.kill()
        server.communicate(timeout=10)


async def nc(address: str, port: int, message: str, *, netns: str = "") -> tuple[int, str]:
    """A busybox nc client: its exit status and what the server answered."""
    argv = ["busybox", "nc", "-w", "2", address, str(port)]
    if netns:
        argv = ["nsenter", f"--net={netns}", *argv]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    stdout, _ = await proc.communicate((message + "\n").encode())
    return proc.returncode or 0, stdout.decode()


async def connect(address: str, port: int, message: str, *, netns: str = "") -> str:
    """What the server answers, retrying while it starts listening."""
    for _ in range(50):
        _, reply = await nc(address, port, message, netns=netns)
        if reply:
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError(f"{address}:{port} never answered")


async def ping(netns: str, address: str, attempts: int = 20) -> None:
    """ping from `netns`, retrying while a fresh IPv6 address is still tentative (DAD)."""
    argv = ["nsenter", f"--net={netns}", "busybox", "ping", "-c", "1", "-W", "1", address]
    for _ in range(attempts):
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        if await proc.wait() == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{address} does not answer pings from {netns}")


def pod_bridge(pod: Pod) -> str:
    master: str = json.loads(run("ip", "-j", "link", "show", pod.host_veth))[0]["master"]
    return master


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for the watcher to apply a change."""
    for _ in range(int(timeout / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the change was not picked up in time")


# --- the embedded default -------------------------------------------------------------------


async def test_embedded_default_puts_an_address_in_the_pod_and_del_removes_all(
    net: NetWorld,
) -> None:
    cni = await net.manager()
    status = cni.status()
    assert status.ready and status.embedded_default
    assert status.cni_version == "1.0.0"  # the Debian plugins speak up to 1.0.0
    pod = await net.attach(cni, await net.new_pod())
    assert ipaddress.ip_address(pod.ip) in net.subnet
    assert f"inet {pod.ip}/24" in in_netns(pod.netns, "ip", "-4", "addr", "show", "eth0")
    gateway = str(net.subnet.network_address + 1)
    assert f"default via {gateway}" in in_netns(pod.netns, "ip", "route")
    assert "UP" in in_netns(pod.netns, "ip", "link", "show", "lo")
    assert link_exists(pod.host_veth)
    assert net.reserved_ips() == [pod.ip]
    assert iptables_lines(pod.sandbox_id)  # the bridge's masquerade rules
    (cached,) = await cni.attachments(pod.sandbox_id)
    assert cached.pod_ips() == (pod.ip,)

    await cni.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)
    await cni.detach(pod.sandbox_id, pod.netns)  # idempotent


async def test_two_pods_reach_each_other_over_the_bridge(net: NetWorld) -> None:
    cni = await net.manager()
    first = await net.attach(cni, await net.new_pod())
    second = await net.attach(cni, await net.new_pod())
    assert first.ip != second.ip
    await ping(first.netns, second.ip)
    await ping(second.netns, first.ip)
    with tcp_server(second.netns, 8080, "hello from second") as server:
        reply = await connect(second.ip, 8080, "hello from first", netns=first.netns)
        assert reply.strip() == "hello from second"
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "hello from first"
    for pod in (first, second):
        await cni.detach(pod.sandbox_id, pod.netns)
        net.assert_pod_gone(pod)


async def test_a_host_port_reaches_a_server_in_the_pod(net: NetWorld) -> None:
    cni = await net.manager()
    host_port = free_port()
    pod = await net.attach(
        cni,
        await net.new_pod(),
        port_mappings=(PortMapping(container_port=8080, host_port=host_port),),
    )
    assert any("--dport" in line for line in iptables_lines(pod.sandbox_id))
    gateway = str(net.subnet.network_address + 1)  # an address of the host itself
    with tcp_server(pod.netns, 8080, "served from the pod"):
        assert (await connect(gateway, host_port, "hi")).strip() == "served from the pod"
    await cni.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)
    returncode, _ = await nc(gateway, host_port, "anyone?")
    assert returncode != 0


async def test_concurrent_pods_get_distinct_addresses_and_leave_nothing(net: NetWorld) -> None:
    cni = await net.manager()
    pods = [await net.new_pod() for _ in range(8)]
    await asyncio.gather(*(net.attach(cni, pod) for pod in pods))
    assert len({pod.ip for pod in pods}) == 8
    assert net.reserved_ips() == sorted(pod.ip for pod in pods)
    await asyncio.gather(*(cni.detach(pod.sandbox_id, pod.netns) for pod in pods))
    assert net.reserved_ips() == []
    for pod in pods:
        net.assert_pod_gone(pod)


# --- configuration files, versions, readiness ----------------------------------------------


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
async def test_config_versions_work_and_check_finds_a_broken_pod(
    net: NetWorld, version: str
) -> None:
    net.write_config("10-test.conflist", net.conflist(version))
    cni = await net.manager()
    assert cni.status().cni_version == version
    assert cni.status().source == str(net.net_d / "10-test.conflist")
    pod = await net.attach(cni, await net.new_pod())
    assert pod.attachment is not None
    assert pod.attachment.result.cni_version == version
    assert await cni.check(pod.sandbox_id, pod.netns)
    in_netns(pod.netns, "ip", "route", "del", "default")
    with pytest.raises(CNIPluginFailed) as info:
        await cni.check(pod.sandbox_id, pod.netns)
    assert (info.value.command, info.value.plugin) == ("CHECK", "bridge")
    await cni.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)


async def test_a_single_plugin_conf_works(net: NetWorld) -> None:
    conf = net.conflist("0.4.0")
    single = {"cniVersion": "0.4.0", "name": net.name, **conf["plugins"][0]}
    net.write_config("10-single.conf", single)
    cni = await net.manager()
    assert cni.status().ready
    pod = await net.attach(cni, await net.new_pod())
    assert f"inet {pod.ip}/" in in_netns(pod.netns, "ip", "-4", "addr", "show", "eth0")
    await cni.detach(pod.sandbox_id, pod.netns)
    assert net.reserved_ips() == []


async def test_bandwidth_limits_are_applied_and_removed(net: NetWorld) -> None:
    bandwidth = {"type": "bandwidth", "capabilities": {"bandwidth": True}}
    net.write_config("10-bw.conflist", net.conflist("1.0.0", bandwidth))
    cni = await net.manager()
    links_before = run("ip", "-o", "link")
    limits = Bandwidth(1_000_000, 2**31 - 1, 2_000_000, 2**31 - 1)
    pod = await net.attach(cni, await net.new_pod(), bandwidth=limits)
    assert "rate 1Mbit" in run("tc", "qdisc", "show", "dev", pod.host_veth)
    assert "rate 2Mbit" in run("tc", "qdisc", "show")  # egress, on the plugin's ifb device
    assert await cni.check(pod.sandbox_id, pod.netns)
    await cni.detach(pod.sandbox_id, pod.netns)
    assert run("ip", "-o", "link").count("ifb") == links_before.count("ifb")
    assert "rate 2Mbit" not in run("tc", "qdisc", "show")
    net.assert_pod_gone(pod)


async def test_a_broken_config_is_not_ready_until_a_good_one_is_written(net: NetWorld) -> None:
    net.write_config("10-broken.conflist", '{"cniVersion": "1.0.0", "name": ')
    cni = await net.manager(watch=True)
    status = cni.status()
    assert not status.ready
    assert status.reason == NOT_READY_REASON
    assert "10-broken.conflist" in status.message and "not valid JSON" in status.message
    pod = await net.new_pod()
    with pytest.raises(NetworkNotReady):
        await cni.attach(net.request(pod))
    assert not link_exists(net.bridge)  # nothing was set up
    assert list(net.cache_entries(pod)) == [] and net.reserved_ips() == []

    net.write_config("20-good.conflist", net.conflist("1.0.0"))
    await eventually(lambda: cni.status().ready)
    assert cni.status().network == net.name
    await net.attach(cni, pod)
    await cni.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)


async def test_a_config_written_after_start_replaces_the_embedded_default(net: NetWorld) -> None:
    cni = await net.manager(watch=True)
    assert cni.status().embedded_default
    old = await net.attach(cni, await net.new_pod())
    other_name, other_bridge = f"cpt-{secrets.token_hex(4)}", f"cpt{secrets.token_hex(4)}"
    net.names.append(other_name)
    net.bridges.append(other_bridge)
    conf = net.conflist("1.0.0", name=other_name)
    conf["plugins"][0]["bridge"] = other_bridge
    net.write_config("10-other.conflist", conf)
    await eventually(lambda: cni.status().network == other_name)
    assert not cni.status().embedded_default
    new = await net.attach(cni, await net.new_pod())
    assert pod_bridge(new) == other_bridge
    await cni.detach(old.sandbox_id, old.netns)  # from its cached (embedded) config
    net.assert_pod_gone(old)
    await cni.detach(new.sandbox_id, new.netns)
    net.assert_pod_gone(new, other_name)


# --- failures, restarts, recovery --------------------------------------------------------


async def test_a_failed_add_is_rolled_back(net: NetWorld) -> None:
    tuning = {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_sysctl": "1"}}
    net.write_config("10-tuning.conflist", net.conflist("1.0.0", tuning))
    cni = await net.manager()
    pod = await net.new_pod()
    with pytest.raises(CNIPluginFailed) as info:
        await cni.attach(net.request(pod))
    assert (info.value.plugin, info.value.command) == ("tuning", "ADD")
    assert "no_such_sysctl" in str(info.value)
    assert net.reserved_ips() == []
    assert iptables_lines(pod.sandbox_id) == []
    assert list(net.cache_entries(pod)) == []
    assert "eth0" not in in_netns(pod.netns, "ip", "-o", "link")


async def test_del_after_a_restart_uses_the_cache(net: NetWorld) -> None:
    first = await net.manager()
    host_port = free_port()
    pod = await net.attach(
        first,
        await net.new_pod(),
        port_mappings=(PortMapping(container_port=80, host_port=host_port),),
    )
    await first.close()
    restarted = await net.manager()  # a new daemon: only the cache remembers the pod
    (cached,) = await restarted.attachments()
    assert cached.sandbox_id == pod.sandbox_id and cached.complete
    assert cached.pod_ips() == (pod.ip,)
    await restarted.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)


async def test_gc_deletes_pods_whose_netns_is_gone(net: NetWorld) -> None:
    cni = await net.manager()
    kept = await net.attach(cni, await net.new_pod())
    gone = await net.attach(
        cni,
        await net.new_pod(),
        port_mappings=(PortMapping(container_port=80, host_port=free_port()),),
    )
    await net.pinner.unpin(gone.sandbox_id)  # as after a crash that lost the pod
    assert await cni.gc(keep={kept.sandbox_id}) == [gone.sandbox_id]
    assert net.reserved_ips() == [kept.ip]
    await eventually(lambda: not link_exists(gone.host_veth))  # went with its netns
    assert [line for line in iptables_lines(gone.sandbox_id) if "dnat" in line.lower()] == []
    assert list(net.cache_entries(gone)) == []
    # Without the netns, bridge 1.1.1 cannot tell which masquerade rules were the pod's:
    # they stay (the fixture purges them). Hence: DEL before the netns is unpinned.
    await cni.detach(kept.sandbox_id, kept.netns)
    net.assert_pod_gone(kept)


# --- the node's pod CIDR --------------------------------------------------------------------


async def test_a_dual_stack_pod_cidr_gives_pods_both_families(net: NetWorld) -> None:
    cni = await net.manager()
    ipv6 = free_ipv6_subnet()
    await cni.set_pod_cidr(f"{net.subnet},{ipv6}")
    assert cni.status().pod_cidrs == (str(net.subnet), ipv6)
    first = await net.attach(cni, await net.new_pod())
    second = await net.attach(cni, await net.new_pod())
    assert first.attachment is not None and second.attachment is not None
    v4, v6 = second.attachment.ips
    assert ipaddress.ip_address(v4) in net.subnet  # IPv4 first: the primary IP
    assert ipaddress.ip_address(v6) in ipaddress.ip_network(ipv6)
    await ping(first.netns, v6)
    await ping(first.netns, v4)
    for pod in (first, second):
        await cni.detach(pod.sandbox_id, pod.netns)
        net.assert_pod_gone(pod)
        assert pod.attachment is not None
        assert not set(pod.attachment.ips) & set(net.reserved_ips())


async def test_the_pod_cidr_feeds_the_ip_ranges_capability(net: NetWorld) -> None:
    conf = net.conflist("1.0.0")
    bridge = conf["plugins"][0]
    del bridge["ipam"]["ranges"]  # host-local takes the ranges from runtimeConfig
    bridge["capabilities"] = {"ipRanges": True}
    net.write_config("10-ranges.conflist", conf)
    cni = await net.manager()
    await cni.set_pod_cidr(str(net.subnet))
    pod = await net.attach(cni, await net.new_pod())
    assert ipaddress.ip_address(pod.ip) in net.subnet
    await cni.detach(pod.sandbox_id, pod.netns)
    net.assert_pod_gone(pod)
