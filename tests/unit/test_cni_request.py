"""What a pod asks of the network: CNI_ARGS, runtimeConfig capabilities, bandwidth annotations."""

from __future__ import annotations

from typing import Any

import pytest

from cryopod.errors import InvalidArgument
from cryopod.pods.model import DNSConfig, PortMapping, Protocol
from cryopod.pods.network.config import PluginConfig
from cryopod.pods.network.request import (
    UNLIMITED_BURST,
    Bandwidth,
    IPRange,
    PodNetworkRequest,
    bandwidth_from_annotations,
    check_ifname,
    parse_quantity,
    runtime_config_for,
)

SANDBOX = "a" * 64


def request(**overrides: Any) -> PodNetworkRequest:
    fields: dict[str, Any] = {
        "sandbox_id": SANDBOX,
        "netns": "/run/cryopod/ns/netns/" + SANDBOX,
        "pod_name": "web-0",
        "pod_namespace": "default",
        "pod_uid": "0b6e8d9c-1111-2222-3333-444455556666",
    }
    fields.update(overrides)
    return PodNetworkRequest(**fields)


def test_cni_args_carry_the_pod_identity_and_ignore_unknown() -> None:
    assert request().cni_args() == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        f"K8S_POD_INFRA_CONTAINER_ID={SANDBOX};K8S_POD_UID=0b6e8d9c-1111-2222-3333-444455556666"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"pod_name": "a;b"},
        {"pod_namespace": "x=y"},
        {"pod_uid": "with space"},
        {"sandbox_id": "../escape"},
        {"netns": ""},
    ],
)
def test_requests_that_would_corrupt_cni_args_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        request(**overrides).validate()


def test_no_capability_args_for_a_plain_pod() -> None:
    assert request().capability_args() == {}


def test_capability_args_in_the_cni_conventions_format() -> None:
    pod = request(
        port_mappings=(
            PortMapping(container_port=80, host_port=8080),
            PortMapping(container_port=53, host_port=5353, protocol=Protocol.UDP, host_ip="::1"),
            PortMapping(container_port=9000),  # no hostPort: not published
        ),
        dns=DNSConfig(servers=("10.96.0.10",), searches=("svc.local",), options=("ndots:5",)),
        bandwidth=Bandwidth(ingress_rate=1000, ingress_burst=2000),
        ips=("10.85.0.77",),
        cgroup_path="/kubepods/besteffort/pod1",
    )
    args = pod.capability_args(((IPRange("10.244.0.0/24"),),))
    assert args == {
        "portMappings": [
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "::1"},
        ],
        "dns": {"servers": ["10.96.0.10"], "searches": ["svc.local"], "options": ["ndots:5"]},
        "bandwidth": {"ingressRate": 1000, "ingressBurst": 2000},
        "ips": ["10.85.0.77"],
        "ipRanges": [[{"subnet": "10.244.0.0/24"}]],
        "cgroupPath": "/kubepods/besteffort/pod1",
    }


def test_the_pods_own_ip_ranges_win_over_the_node_pod_cidr() -> None:
    own = IPRange("10.9.0.0/24", range_start="10.9.0.10", range_end="10.9.0.20", gateway="10.9.0.1")
    args = request(ip_ranges=((own,),)).capability_args(((IPRange("10.244.0.0/24"),),))
    assert args["ipRanges"] == [
        [
            {
                "subnet": "10.9.0.0/24",
                "rangeStart": "10.9.0.10",
                "rangeEnd": "10.9.0.20",
                "gateway": "10.9.0.1",
            }
        ]
    ]


def test_each_plugin_gets_only_the_capabilities_it_declares() -> None:
    args = {"portMappings": [1], "bandwidth": {"egressRate": 1}, "dns": {}}
    portmap = PluginConfig("portmap", {"type": "portmap", "capabilities": {"portMappings": True}})
    bandwidth = PluginConfig(
        "bandwidth", {"type": "bandwidth", "capabilities": {"bandwidth": True, "dns": False}}
    )
    bridge = PluginConfig("bridge", {"type": "bridge"})
    assert runtime_config_for(portmap, args) == {"portMappings": [1]}
    assert runtime_config_for(bandwidth, args) == {"bandwidth": {"egressRate": 1}}
    assert runtime_config_for(bridge, args) == {}
    ips = PluginConfig("host-local", {"type": "x", "capabilities": {"ips": True}})
    assert runtime_config_for(ips, args) == {}  # declared, but the pod asks for none


@pytest.mark.parametrize(
    ("text", "value"),
    [("10M", 10_000_000), ("1Gi", 1 << 30), ("500k", 500_000), ("2e3", 2000), ("1.5M", 1_500_000)],
)
def test_quantities(text: str, value: int) -> None:
    assert parse_quantity(text) == value


def test_bad_quantities_are_refused() -> None:
    for text in ("ten", "10X", "", "-1M"):
        with pytest.raises(InvalidArgument):
            parse_quantity(text)


def test_bandwidth_annotations() -> None:
    assert bandwidth_from_annotations({"other": "x"}) is None
    limits = bandwidth_from_annotations(
        {"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1M"}
    )
    assert limits == Bandwidth(10_000_000, UNLIMITED_BURST, 1_000_000, UNLIMITED_BURST)
    egress_only = bandwidth_from_annotations({"kubernetes.io/egress-bandwidth": "1M"})
    assert egress_only is not None
    assert egress_only.to_json() == {"egressRate": 1_000_000, "egressBurst": UNLIMITED_BURST}


def test_interface_names() -> None:
    check_ifname("eth0")
    for bad in ("", "a" * 16, "eth 0", "a/b", "a+b", ".."):
        with pytest.raises(InvalidArgument):
            check_ifname(bad)


@pytest.mark.parametrize("rate", ["500m", "10", "999", "2P", "1e30"])
def test_bandwidth_outside_the_kubelets_bounds_is_refused(rate: str) -> None:
    with pytest.raises(InvalidArgument, match=r"outside 1k\.\.1P"):
        bandwidth_from_annotations({"kubernetes.io/ingress-bandwidth": rate})


def test_bandwidth_at_the_bounds_is_accepted() -> None:
    bandwidth = bandwidth_from_annotations(
        {"kubernetes.io/ingress-bandwidth": "1k", "kubernetes.io/egress-bandwidth": "1P"}
    )
    assert bandwidth is not None
    assert (bandwidth.ingress_rate, bandwidth.egress_rate) == (1000, 10**15)
