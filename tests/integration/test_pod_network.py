"""Pod networking through a running daemon over CRI, with the real Debian CNI plugins.

Each daemon of `make_daemon` has an empty CNI config directory, so its pods join the embedded
default network (bridge + host-local + portmap) on this session's bridge and subnet, with a
host-local store of the daemon's own. What happens inside pods is observed through busybox
containers and their CRI logs; what is left on the host (addresses, veths, netns pins,
iptables rules) is looked at directly.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import re
import secrets
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon, insecure_registries_conf
from tests.integration.conftest import TestNetwork as SessionNetwork  # not collected
from tests.integration.test_cni import (
    PLUGIN_DIR,
    free_port,
    free_subnet,
    in_netns,
    link_exists,
    purge_iptables,
    run,
)
from tests.integration.test_containers import (
    container,
    contains,
    log_file,
    run_to_exit,
    start_running,
    wait_for_log,
)
from tests.integration.test_crash_recovery import leftovers, list_pods
from tests.integration.test_pods import pod_config, run_pod, teardown
from tests.support import require_tools
from tests.support.registry import PushedImages

EMBEDDED_NETWORK = "cryopod"  # the embedded default network's name: its host-local store
NEEDED_PLUGINS = ("bridge", "host-local", "portmap")
NET_RAW = cri.LinuxContainerSecurityContext(
    capabilities=cri.Capability(add_capabilities=["NET_RAW"])  # busybox ping: a raw socket
)
_LINK_LINE = re.compile(r"^\d+: ([^:@]+)[@:]")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def busybox(daemon: Daemon, test_images: PushedImages) -> str:
    require_tools("nsenter", "iptables-save", "ip6tables-save")
    missing = [p for p in NEEDED_PLUGINS if not (PLUGIN_DIR / p).exists()]
    if missing:
        pytest.skip(f"CNI plugins missing from {PLUGIN_DIR}: {', '.join(missing)}")
    image = test_images.ref("busybox")
    daemon.pull(image)
    return image


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def pods_torn_down(daemon: Daemon) -> Iterator[list[str]]:
    """A list to put pod ids in; each is stopped and removed however the block ends."""
    pod_ids: list[str] = []
    try:
        yield pod_ids
    finally:
        with ThreadPoolExecutor(max_workers=max(1, len(pod_ids))) as pool:
            list(pool.map(lambda pod_id: teardown(daemon, pod_id), pod_ids))


def sandbox_status(daemon: Daemon, pod_id: str) -> cri.PodSandboxStatus:
    request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
    status: cri.PodSandboxStatus = daemon.runtime.PodSandboxStatus(request, timeout=10).status
    return status


def pod_ip(daemon: Daemon, pod_id: str) -> str:
    ip: str = sandbox_status(daemon, pod_id).network.ip
    return ip


def pod_netns(daemon: Daemon, pod_id: str) -> str:
    """The pod's pinned network namespace, from the verbose PodSandboxStatus."""
    request = cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True)
    info = json.loads(daemon.runtime.PodSandboxStatus(request, timeout=10).info["info"])
    netns: str = info["namespaces"]["network"]
    return netns


def host_veth(netns: str) -> str:
    """The host-side name of the veth whose peer is eth0 in `netns`."""
    (eth0,) = json.loads(in_netns(netns, "ip", "-j", "link", "show", "eth0"))
    peer_index = eth0["link_index"]
    names = [
        link["ifname"]
        for link in json.loads(run("ip", "-j", "link"))
        if link["ifindex"] == peer_index
    ]
    assert len(names) == 1, f"no host link with index {peer_index} for eth0 of {netns}"
    name: str = names[0]
    return name


def link_names(ip_o_link: str) -> set[str]:
    """Interface names in the output of `ip -o link`."""
    return {m.group(1) for line in ip_o_link.splitlines() if (m := _LINK_LINE.match(line))}


def ipam_store(daemon: Daemon, network: str = EMBEDDED_NETWORK) -> Path:
    return daemon.base / "ipam" / network


def reservations(store: Path) -> dict[str, str]:
    """host-local's reservations: address -> the container (sandbox) id that holds it."""
    found = {}
    if store.is_dir():
        for path in store.iterdir():
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(path.name)
                found[path.name] = path.read_text().splitlines()[0].strip()
    return found


def cni_cache_entries(daemon: Daemon) -> list[str]:
    cache = daemon.root / "cni" / "results"
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def iptables_mentioning(*needles: str) -> list[str]:
    lines = run("iptables-save").splitlines() + run("ip6tables-save").splitlines()
    return [line for line in lines if any(needle in line for needle in needles)]


def cni_chains(rules: list[str]) -> set[str]:
    """The per-pod chains (CNI-<hash>, CNI-DN-<hash>, ...) that `rules` jump to or fill."""
    chains = set()
    for rule in rules:
        words = rule.split()
        for flag, chain in itertools.pairwise(words):
            if flag in ("-A", "-j") and chain.startswith("CNI-") and "HOSTPORT" not in chain:
                chains.add(chain)
    return chains


def mounts_mentioning(*needles: str) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in lines if any(needle in line for needle in needles)]


def network_condition(daemon: Daemon) -> cri.RuntimeCondition:
    status = daemon.runtime.Status(cri.StatusRequest(), timeout=10).status
    conditions: list[cri.RuntimeCondition] = list(status.conditions)
    (condition,) = [c for c in conditions if c.type == "NetworkReady"]
    return condition


def network_info(daemon: Daemon) -> dict[str, Any]:
    response = daemon.runtime.Status(cri.StatusRequest(verbose=True), timeout=10)
    info: dict[str, Any] = json.loads(response.info["network"])
    return info


def eventually(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def host_primary_ip() -> str | None:
    """The host's source address for the default route (its address on the node network)."""
    routes = json.loads(run("ip", "-j", "-4", "route", "get", "1.1.1.1", check=False) or "[]")
    return routes[0].get("prefsrc") if routes else None


def http_get(url: str, timeout: float = 10.0) -> str:
    """GET `url`, retrying while the server in the pod starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered: {exc}") from exc
            time.sleep(0.1)


def refused(address: str, port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=2):
            return False
    except OSError:
        return True


def resolv_conf(text: str) -> dict[str, list[str]]:
    """resolv.conf as keyword -> values, in order (nameserver lines add up)."""
    parsed: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.split()
        if words and not words[0].startswith(("#", ";")):
            parsed.setdefault(words[0], []).extend(words[1:])
    return parsed


def hosts_entries(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ----------------------------------------------------------------------------- two pods


def test_two_pods_reach_each_other_over_the_bridge_and_know_their_names(
    daemon: Daemon, busybox: str, test_network: SessionNetwork, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    first = pod_config("net-first", logs / "first", cgroup_parent)
    first.dns_config.CopyFrom(
        cri.DNSConfig(
            servers=["10.96.0.10", "fd00:10:96::a"],
            searches=["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            options=["ndots:5", "timeout:2"],
        )
    )
    second = pod_config("net-second", logs / "second", cgroup_parent)
    with pods_torn_down(daemon) as pod_ids:
        first_id = run_pod(daemon, first)
        pod_ids.append(first_id)
        second_id = run_pod(daemon, second)
        pod_ids.append(second_id)
        first_ip, second_ip = pod_ip(daemon, first_id), pod_ip(daemon, second_id)
        subnet = ipaddress.ip_network(test_network.subnet)
        assert ipaddress.ip_address(first_ip) in subnet
        assert ipaddress.ip_address(second_ip) in subnet
        assert first_ip != second_ip

        names = "hostname; for f in hosts resolv.conf; do echo ---; cat /etc/$f; done; "
        names += "echo ---; echo __end__"
        _, output = run_to_exit(daemon, first_id, first, container("names", busybox, script=names))
        hostname, hosts, resolv, end = output.split("---\n")
        assert end == "__end__\n"
        assert hostname.strip() == "net-first"
        assert [first_ip, "net-first"] in hosts_entries(hosts)
        assert ["127.0.0.1", "localhost"] in hosts_entries(hosts)
        assert resolv_conf(resolv) == {
            "nameserver": ["10.96.0.10", "fd00:10:96::a"],
            "search": ["default.svc.cluster.local", "svc.cluster.local", "cluster.local"],
            "options": ["ndots:5", "timeout:2"],
        }
        _, output = run_to_exit(
            daemon, second_id, second, container("names", busybox, script=names)
        )
        _, hosts, resolv, _ = output.split("---\n")
        assert [second_ip, "net-second"] in hosts_entries(hosts)
        assert first_ip not in hosts
        assert resolv == Path("/etc/resolv.conf").read_text()  # no DNSConfig: the host's

        # ping both ways
        for pod_id, pod, peer in ((first_id, first, second_ip), (second_id, second, first_ip)):
            ping = container(
                "ping",
                busybox,
                script=f"ping -c 2 -W 2 {peer}; echo rc=$?; echo __end__",
                security=NET_RAW,
            )
            _, output = run_to_exit(daemon, pod_id, pod, ping)
            assert "rc=0" in output, output
            assert "2 packets received" in output, output

        # TCP: a busybox nc server in the first pod, a client in the second.
        start_running(
            daemon,
            first_id,
            first,
            container(
                "server", busybox, script="echo reply-from-first | nc -l -p 8080; echo served"
            ),
        )
        client = (
            "for i in $(seq 100); do "
            f"if echo hello-from-second | nc -w 2 {first_ip} 8080; then echo __end__; exit 0; fi; "
            "sleep 0.1; done; echo never connected; exit 1"
        )
        status, output = run_to_exit(
            daemon, second_id, second, container("client", busybox, script=client)
        )
        assert status.exit_code == 0, output
        assert "reply-from-first" in output
        served = wait_for_log(log_file(logs / "first", "server"), contains("served\n"))
        assert served == "hello-from-second\nserved\n"


# ----------------------------------------------------------------------------- hostPort


HTTPD = (
    "mkdir -p /www && echo served-from-the-pod > /www/index.html && exec httpd -f -p 8080 -h /www"
)


def test_a_host_port_reaches_a_server_in_the_pod(
    daemon: Daemon, busybox: str, test_network: SessionNetwork, tmp_path: Path, cgroup_parent: str
) -> None:
    """From the host at any of its IPv4 addresses, from another pod, and from the pod itself.

    portmap DNATs connections to any local address (`--dst-type LOCAL`, in PREROUTING and
    OUTPUT). The host's own address and the bridge's gateway address are plainly local;
    127.0.0.1 works too because Debian's portmap (snat on by default) sets route_localnet
    on the bridge and masquerades 127.0.0.1 so the pod's answer can be routed back (IPv4
    only: there is no such thing for ::1). The pod reaching itself through the host port
    needs the bridge's hairpin mode, which the embedded default network turns on.
    """
    logs = tmp_path / "logs"
    host_port = free_port()
    pod = pod_config("hostport", logs, cgroup_parent)
    pod.port_mappings.append(
        cri.PortMapping(protocol=cri.TCP, container_port=8080, host_port=host_port)
    )
    client = pod_config("hostport-client", logs, cgroup_parent)
    host_addresses = [test_network.gateway, "127.0.0.1"]
    primary = host_primary_ip()
    if primary is not None:
        host_addresses.append(primary)
    with pods_torn_down(daemon) as pod_ids:
        pod_id = run_pod(daemon, pod)
        pod_ids.append(pod_id)
        client_id = run_pod(daemon, client)
        pod_ids.append(client_id)
        start_running(daemon, pod_id, pod, container("httpd", busybox, script=HTTPD))
        for address in host_addresses:
            url = f"http://{address}:{host_port}/index.html"
            assert http_get(url) == "served-from-the-pod\n", address
        # Pods reach the host port at the host's address (not at their own 127.0.0.1).
        # busybox wget's own -T crashes (Debian's 1.35); `timeout` bounds it instead.
        host = primary or test_network.gateway
        fetch = f"timeout 5 wget -q -O - http://{host}:{host_port}/index.html; echo __end__"
        for name, runs_in, config in (("other", client_id, client), ("self", pod_id, pod)):
            fetcher = container(f"fetch-from-{name}", busybox, script=fetch)
            _, output = run_to_exit(daemon, runs_in, config, fetcher)
            assert output == "served-from-the-pod\n__end__\n", name
        rules = iptables_mentioning(pod_id)
        assert any(f"--dports {host_port}" in rule for rule in rules), rules
        chains = cni_chains(rules)
        assert chains

        teardown(daemon, pod_id)
        for address in host_addresses:
            assert refused(address, host_port), address
        assert iptables_mentioning(pod_id, *chains) == []


# ----------------------------------------------------------------------------- host network


def test_a_host_network_pod_sees_the_hosts_interfaces_and_gets_no_cni_add(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    pod = pod_config("host-net", logs, cgroup_parent)
    pod.linux.security_context.namespace_options.network = cri.NODE
    with pods_torn_down(daemon) as pod_ids:
        pod_id = run_pod(daemon, pod)
        pod_ids.append(pod_id)
        before = link_names(run("ip", "-o", "link"))
        _, output = run_to_exit(
            daemon, pod_id, pod, container("links", busybox, script="ip -o link; echo __end__")
        )
        after = link_names(run("ip", "-o", "link"))
        inside = link_names(output)
        # Other tests (and sessions) may add or drop veths meanwhile: compare what stayed.
        assert before & after <= inside <= before | after
        assert "lo" in inside and len(inside) > 1

        assert sandbox_status(daemon, pod_id).network.ip == ""
        assert reservations(ipam_store(daemon)) == {}  # this daemon's store: no ADD ever ran
        assert cni_cache_entries(daemon) == []
        assert f"sandbox {pod_id} joined network" not in daemon.log()


# ----------------------------------------------------------------------------- DEL


def assert_attached(daemon: Daemon, pod_id: str) -> tuple[str, str]:
    """The pod's IP (reserved for it in the IPAM store) and its host-side veth."""
    ip = pod_ip(daemon, pod_id)
    assert reservations(ipam_store(daemon)).get(ip) == pod_id
    veth = host_veth(pod_netns(daemon, pod_id))
    assert veth.startswith("veth")
    assert iptables_mentioning(pod_id)  # the bridge plugin's masquerade rules
    return ip, veth


def assert_detached(daemon: Daemon, pod_id: str, ip: str, veth: str) -> None:
    assert ip not in reservations(ipam_store(daemon))
    assert not link_exists(veth)
    assert iptables_mentioning(pod_id) == []
    assert not any(pod_id in entry for entry in cni_cache_entries(daemon))


@pytest.mark.parametrize("crash", [False, True], ids=["running-daemon", "after-kill9-restart"])
def test_stop_pod_sandbox_runs_del(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str, crash: bool
) -> None:
    pod = pod_config("del-on-stop", tmp_path / "logs", cgroup_parent)
    with pods_torn_down(daemon) as pod_ids:
        pod_id = run_pod(daemon, pod)
        pod_ids.append(pod_id)
        ip, veth = assert_attached(daemon, pod_id)
        if crash:
            daemon.kill9()
            daemon.start()  # only the CNI result cache remembers how the pod was added
            assert reservations(ipam_store(daemon)).get(ip) == pod_id
            assert link_exists(veth)
        daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        assert_detached(daemon, pod_id, ip, veth)
        assert list_pods(daemon)[pod_id].state == cri.SANDBOX_NOTREADY
        # Stop is idempotent: the second finds no cached attachment left to DEL.
        daemon.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        daemon.runtime.RemovePodSandbox(
            cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30
        )
        assert leftovers(daemon) == {}


def test_pods_keep_their_network_across_a_kill9_and_restart(
    daemon: Daemon, busybox: str, tmp_path: Path, cgroup_parent: str
) -> None:
    logs = tmp_path / "logs"
    host_port = free_port()
    first = pod_config("survivor-first", logs / "first", cgroup_parent)
    first.port_mappings.append(
        cri.PortMapping(protocol=cri.TCP, container_port=8080, host_port=host_port)
    )
    second = pod_config("survivor-second", logs / "second", cgroup_parent)
    with pods_torn_down(daemon) as pod_ids:
        first_id = run_pod(daemon, first)
        pod_ids.append(first_id)
        second_id = run_pod(daemon, second)
        pod_ids.append(second_id)
        start_running(daemon, first_id, first, container("server", busybox, script=HTTPD))
        attached = {pod_id: assert_attached(daemon, pod_id) for pod_id in pod_ids}

        daemon.kill9()
        daemon.start()

        for pod_id, (ip, veth) in attached.items():
            status = sandbox_status(daemon, pod_id)
            assert status.state == cri.SANDBOX_READY
            assert status.network.ip == ip
            assert reservations(ipam_store(daemon)).get(ip) == pod_id
            assert link_exists(veth)
        first_ip = attached[first_id][0]
        reach = (
            f"ping -c 2 -W 2 {first_ip}; echo ping=$?; "
            f"timeout 5 wget -q -O - http://{first_ip}:8080/index.html; echo __end__"
        )
        checker = container("reach", busybox, script=reach, security=NET_RAW)
        _, output = run_to_exit(daemon, second_id, second, checker)
        assert "ping=0" in output and output.endswith("served-from-the-pod\n__end__\n"), output
        url = f"http://127.0.0.1:{host_port}/index.html"
        assert http_get(url) == "served-from-the-pod\n"
        # The recovered daemon's background CNI CHECK tore nothing down (Debian's portmap
        # 1.1.1 fails CHECK for the IPv4-only pod with a hostPort when ip6tables works: the
        # daemon logs that and leaves the pod alone).
        assert {pod.state for pod in list_pods(daemon).values()} == {cri.SANDBOX_READY}


# ----------------------------------------------------------------------------- many pods


def test_fifty_concurrent_pods_get_distinct_ips_and_leave_nothing(
    daemon: Daemon, busybox: str, test_network: SessionNetwork, tmp_path: Path, cgroup_parent: str
) -> None:
    count = 50
    logs = tmp_path / "logs"
    subnet = ipaddress.ip_network(test_network.subnet)

    def bring_up(index: int) -> str:
        pod = pod_config(f"many-{index}", logs / str(index), f"{cgroup_parent}/pod{index}")
        if index % 5 == 0:  # some with a hostPort: portmap's chains must go too
            pod.port_mappings.append(
                cri.PortMapping(protocol=cri.TCP, container_port=80, host_port=free_port())
            )
        pod_id = run_pod(daemon, pod)
        pod_ids.append(pod_id)  # list.append is atomic
        return pod_id

    with pods_torn_down(daemon) as pod_ids:
        with ThreadPoolExecutor(max_workers=count) as pool:
            started = list(pool.map(bring_up, range(count)))
        ips = {pod_id: pod_ip(daemon, pod_id) for pod_id in started}
        assert len(set(ips.values())) == count
        assert all(ipaddress.ip_address(ip) in subnet for ip in ips.values())
        assert reservations(ipam_store(daemon)) == {ip: pod_id for pod_id, ip in ips.items()}
        veths = {host_veth(pod_netns(daemon, pod_id)) for pod_id in started}
        assert len(veths) == count
        chains = cni_chains(iptables_mentioning(*started))
        assert len(chains) >= count  # at least each pod's masquerade chain
    # All stopped and removed, concurrently, by pods_torn_down.
    assert list_pods(daemon) == {}
    assert reservations(ipam_store(daemon)) == {}
    assert veths.isdisjoint(link_names(run("ip", "-o", "link")))
    assert leftovers(daemon) == {}  # no netns pin (nor anything else) on disk
    assert mounts_mentioning(*started) == []
    assert iptables_mentioning(*started, *chains) == []
    assert cni_cache_entries(daemon) == []


# ----------------------------------------------------------------------------- readiness


def write_config(net_d: Path, file_name: str, content: object) -> None:
    """Write a CNI config file in one rename, as a network operator's tooling would."""
    net_d.mkdir(exist_ok=True)
    temp = net_d / f".{file_name}.tmp"
    temp.write_text(content if isinstance(content, str) else json.dumps(content))
    temp.rename(net_d / file_name)


BROKEN_CONFIGS = {
    "missing-plugin": (
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "broken",
                "plugins": [{"type": "no-such-cni-plugin"}],
            }
        ),
        ("CNI plugin 'no-such-cni-plugin' not found",),
    ),
    "invalid-json": (
        '{"cniVersion": "1.0.0", "name": "broken", "plugins": [',
        ("10-broken.conflist", "not valid JSON"),
    ),
}
"""Broken config files, and what the NetworkReady message and RunPodSandbox's error say."""


@pytest.mark.parametrize("broken", sorted(BROKEN_CONFIGS))
def test_a_broken_config_is_not_ready_and_a_good_one_written_later_is_used(
    make_daemon: Callable[..., Daemon],
    test_images: PushedImages,
    tmp_path: Path,
    cgroup_parent: str,
    broken: str,
) -> None:
    require_tools("nsenter", "iptables-save", "ip6tables-save")
    daemon = make_daemon(insecure_registries_conf(test_images.host), start=False)
    net_d = daemon.base / "net.d"
    text, problem = BROKEN_CONFIGS[broken]
    write_config(net_d, "10-broken.conflist", text)
    daemon.start()

    condition = network_condition(daemon)
    assert not condition.status
    assert condition.reason == "NetworkPluginNotReady"
    assert all(words in condition.message for words in problem), condition.message
    pod = pod_config("too-early", tmp_path / "logs", cgroup_parent)
    with pytest.raises(grpc.RpcError) as caught:
        run_pod(daemon, pod)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert "network is not ready" in details
    assert all(words in details for words in problem), details
    assert leftovers(daemon) == {}
    assert list_pods(daemon) == {}
    assert cni_cache_entries(daemon) == []

    name = f"cpn-{secrets.token_hex(4)}"
    bridge = f"cpn{secrets.token_hex(4)}"
    subnet = free_subnet()
    good = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(tmp_path / "good-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    try:
        with pods_torn_down(daemon) as pod_ids:
            write_config(net_d, "20-good.conflist", good)
            eventually(lambda: network_condition(daemon).status, "NetworkReady turns true")
            info = network_info(daemon)
            assert (info["network"], info["source"]) == (name, str(net_d / "20-good.conflist"))
            pod_id = run_pod(daemon, pod)
            pod_ids.append(pod_id)
            ip = pod_ip(daemon, pod_id)
            assert ipaddress.ip_address(ip) in subnet
            assert reservations(tmp_path / "good-ipam" / name) == {ip: pod_id}
            veth = host_veth(pod_netns(daemon, pod_id))
            (link,) = json.loads(run("ip", "-j", "link", "show", veth))
            assert link["master"] == bridge
        assert reservations(tmp_path / "good-ipam" / name) == {}
        assert iptables_mentioning(pod_id) == []
    finally:
        run("ip", "link", "del", bridge, check=False)
        purge_iptables(name)


# ----------------------------------------------------------------------------- PodCIDR


@contextlib.contextmanager
def daemon_on_own_bridge(
    make_daemon: Callable[..., Daemon], test_images: PushedImages
) -> Iterator[tuple[Daemon, str]]:
    """A started daemon whose embedded default network has a bridge of its own (deleted after).

    The bridge plugin puts one IPv4 gateway address on a bridge and refuses another, so a
    PodCIDR other than the range the session's bridge already serves needs its own bridge.
    """
    require_tools("nsenter", "iptables-save", "ip6tables-save")
    bridge = f"cpc{secrets.token_hex(4)}"
    daemon = make_daemon(insecure_registries_conf(test_images.host), start=False)
    config = daemon.config_path.read_text()
    own = re.sub(r'^default_bridge = ".*"$', f'default_bridge = "{bridge}"', config, flags=re.M)
    assert own != config
    daemon.config_path.write_text(own)
    try:
        daemon.start()
        yield daemon, bridge
    finally:
        daemon.stop()
        run("ip", "link", "del", bridge, check=False)


def update_pod_cidr(daemon: Daemon, pod_cidr: str) -> None:
    config = cri.RuntimeConfig(network_config=cri.NetworkConfig(pod_cidr=pod_cidr))
    daemon.runtime.UpdateRuntimeConfig(
        cri.UpdateRuntimeConfigRequest(runtime_config=config), timeout=10
    )


def test_update_runtime_config_pod_cidr_gives_new_pods_their_ips(
    make_daemon: Callable[..., Daemon],
    test_images: PushedImages,
    tmp_path: Path,
    cgroup_parent: str,
) -> None:
    logs = tmp_path / "logs"
    pod_cidr = free_subnet()
    with daemon_on_own_bridge(make_daemon, test_images) as (daemon, bridge):
        busybox = test_images.ref("busybox")
        daemon.pull(busybox)
        update_pod_cidr(daemon, str(pod_cidr))
        assert network_info(daemon)["podCIDRs"] == [str(pod_cidr)]
        assert network_condition(daemon).status
        first = pod_config("cidr-first", logs / "first", cgroup_parent)
        second = pod_config("cidr-second", logs / "second", cgroup_parent)
        with pods_torn_down(daemon) as pod_ids:
            first_id = run_pod(daemon, first)
            pod_ids.append(first_id)
            second_id = run_pod(daemon, second)
            pod_ids.append(second_id)
            ips = [pod_ip(daemon, pod_id) for pod_id in pod_ids]
            assert all(ipaddress.ip_address(ip) in pod_cidr for ip in ips) and ips[0] != ips[1]
            assert reservations(ipam_store(daemon)) == dict(zip(ips, pod_ids, strict=True))
            gateway = str(pod_cidr.network_address + 1)
            assert f"inet {gateway}/{pod_cidr.prefixlen}" in run("ip", "addr", "show", bridge)
            ping = f"ping -c 2 -W 2 {ips[0]}; echo rc=$?; echo __end__"
            _, output = run_to_exit(
                daemon, second_id, second, container("ping", busybox, script=ping, security=NET_RAW)
            )
            assert "rc=0" in output, output
            # The same PodCIDR again changes nothing.
            update_pod_cidr(daemon, str(pod_cidr))
            assert network_info(daemon)["podCIDRs"] == [str(pod_cidr)]
        assert reservations(ipam_store(daemon)) == {}


def test_the_pod_cidr_outlives_a_daemon_restart(
    make_daemon: Callable[..., Daemon],
    test_images: PushedImages,
    tmp_path: Path,
    cgroup_parent: str,
) -> None:
    """The kubelet sends the PodCIDR when it changes, not again because the runtime restarted."""
    pod_cidr = free_subnet()
    with daemon_on_own_bridge(make_daemon, test_images) as (daemon, _):
        update_pod_cidr(daemon, str(pod_cidr))
        with pods_torn_down(daemon) as pod_ids:
            pod_ids.append(run_pod(daemon, pod_config("before", tmp_path, cgroup_parent)))
            assert ipaddress.ip_address(pod_ip(daemon, pod_ids[0])) in pod_cidr
            daemon.restart()
            assert network_info(daemon)["podCIDRs"] == [str(pod_cidr)]
            pod_ids.append(run_pod(daemon, pod_config("after", tmp_path, cgroup_parent)))
            assert ipaddress.ip_address(pod_ip(daemon, pod_ids[1])) in pod_cidr


# ----------------------------------------------------------------------------- crash in ADD


SLOW_BRIDGE = """#!/bin/sh
# The real bridge plugin; after an ADD it names the sandbox, then waits before answering.
out=$({plugin_dir}/bridge)
rc=$?
if [ "$CNI_COMMAND" = ADD ]; then
    echo $$ > {state}/pid
    echo "$CNI_CONTAINERID" > {state}/.sandbox && mv {state}/.sandbox {state}/sandbox
    sleep 60
fi
printf '%s' "$out"
exit $rc
"""


def test_a_crash_in_the_middle_of_add_is_cleaned_up_by_recovery(
    make_daemon: Callable[..., Daemon],
    test_images: PushedImages,
    tmp_path: Path,
    cgroup_parent: str,
) -> None:
    """The daemon dies after the bridge plugin did its work, before the pod was recorded.

    The attachment cache was written before ADD ran, so recovery DELs the pod it never
    recorded (while its netns is still pinned), and then unpins the netns.
    """
    require_tools("nsenter", "iptables-save", "ip6tables-save")
    plugins, state = tmp_path / "plugins", tmp_path / "slow-bridge"
    plugins.mkdir()
    state.mkdir()
    script = plugins / "bridge"
    script.write_text(SLOW_BRIDGE.format(plugin_dir=PLUGIN_DIR, state=state))
    script.chmod(0o755)
    daemon = make_daemon(
        insecure_registries_conf(test_images.host),
        network=f'plugin_dirs = ["{plugins}", "{PLUGIN_DIR}"]',
    )
    pod = pod_config("cut-short", tmp_path / "logs", cgroup_parent)
    errors: list[grpc.RpcError] = []

    def run_pod_until_the_crash() -> None:
        try:
            run_pod(daemon, pod)
        except grpc.RpcError as exc:
            errors.append(exc)

    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(run_pod_until_the_crash)
        try:
            eventually(lambda: (state / "sandbox").exists(), "the bridge plugin did its ADD")
        finally:
            daemon.kill9()
            with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
                os.kill(int((state / "pid").read_text()), signal.SIGKILL)
            running.result(timeout=30)
    try:
        assert len(errors) == 1  # the call died with the daemon (its channel was closed)
        sandbox_id = (state / "sandbox").read_text().strip()
        assert sandbox_id in reservations(ipam_store(daemon)).values()
        assert iptables_mentioning(sandbox_id)
        veth = host_veth(str(daemon.runroot / "ns" / "netns" / sandbox_id))  # still pinned
    finally:
        daemon.start()  # whatever happened: its recovery DELs the pod it never recorded
    assert list_pods(daemon) == {}
    assert leftovers(daemon) == {}  # the netns was unpinned, after the DEL
    assert reservations(ipam_store(daemon)) == {}
    assert not link_exists(veth)
    assert iptables_mentioning(sandbox_id) == []
    assert cni_cache_entries(daemon) == []
