"""CNI results of spec 0.3.x, 0.4.0, 1.0.0 and 1.1.0: parsing, the pod's IPs, conversion."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from cryopod.errors import InvalidCNIResult
from cryopod.pods.network.result import CNIResult, convert_result, parse_result

RESULT_040: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
        {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
        {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x"},
    ],
    "ips": [
        {"version": "6", "address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
        {"version": "4", "address": "10.85.0.5/16", "gateway": "10.85.0.1", "interface": 2},
        {"version": "4", "address": "10.85.0.1/16", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}],
    "dns": {"nameservers": ["10.96.0.10"], "domain": "cluster.local", "search": ["a.b"]},
}

RESULT_110: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/run/netns/x", "mtu": 1450},
    ],
    "ips": [{"address": "10.85.0.5/16", "gateway": "10.85.0.1", "interface": 0}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.85.0.1", "mtu": 1400, "table": 5}],
    "dns": {},
}


def test_a_040_result_is_fully_typed() -> None:
    result = parse_result(RESULT_040)
    assert result.cni_version == "0.4.0"
    assert [i.name for i in result.interfaces] == ["cni0", "veth1", "eth0"]
    assert result.interfaces[2].sandbox == "/run/netns/x"
    ip6, ip4, _ = result.ips
    assert ip4.address == ipaddress.ip_interface("10.85.0.5/16")
    assert ip4.gateway == ipaddress.ip_address("10.85.0.1")
    assert ip4.interface == 2
    assert ip6.version == 6
    assert result.routes[0].dst == ipaddress.ip_network("0.0.0.0/0")
    assert result.routes[1].gw == ipaddress.ip_address("fd00::1")
    assert result.dns.nameservers == ("10.96.0.10",)
    assert result.dns.domain == "cluster.local"
    assert result.dns.search == ("a.b",)


def test_pod_ips_are_those_of_the_pods_interface_ipv4_first() -> None:
    result = parse_result(RESULT_040)
    # the gateway address on the host's bridge (interface 0) is not the pod's
    assert result.pod_ips("eth0") == ("10.85.0.5", "fd00::5")
    assert result.pod_ips("net1") == ()


def test_ips_without_an_interface_index_belong_to_the_pod() -> None:
    result = parse_result({"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.9/24"}]})
    assert result.pod_ips("eth0") == ("10.1.0.9",)


def test_newer_fields_of_110_are_read_or_ignored() -> None:
    result = parse_result(RESULT_110)
    assert result.interfaces[0].mtu == 1450
    assert result.pod_ips("eth0") == ("10.85.0.5",)
    assert result.routes[0].gw == ipaddress.ip_address("10.85.0.1")


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_every_supported_version_parses(version: str) -> None:
    raw = convert_result(RESULT_040, version)
    assert parse_result(raw).cni_version == version
    assert parse_result(raw).pod_ips("eth0") == ("10.85.0.5", "fd00::5")


def test_the_expected_version_applies_when_the_result_names_none() -> None:
    assert parse_result({"ips": []}, "1.0.0") == CNIResult("1.0.0")


def test_conversion_adds_or_drops_the_ip_family_field() -> None:
    to_100 = convert_result(RESULT_040, "1.0.0")
    assert to_100["cniVersion"] == "1.0.0"
    assert all("version" not in ip for ip in to_100["ips"])
    back = convert_result(to_100, "0.3.1")
    assert [ip["version"] for ip in back["ips"]] == ["6", "4", "4"]
    assert RESULT_040["ips"][0]["version"] == "6"  # the original is untouched


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24"}}, "unsupported version"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.300/24"}]}, "invalid address"),
        ({"cniVersion": "1.0.0", "ips": [{"address": 7}]}, "not a string"),
        ({"cniVersion": "1.0.0", "ips": {"address": "10.0.0.2/24"}}, "list of objects"),
        ({"cniVersion": "0.4.0", "ips": [{"version": "6", "address": "10.0.0.2/24"}]}, "IPv6"),
        ({"cniVersion": "1.0.0", "ips": [{"address": "1.2.3.4/8", "interface": "0"}]}, "index"),
        ({"cniVersion": "1.0.0", "interfaces": [{"mac": "x"}]}, "no name"),
        ({"cniVersion": "1.0.0", "routes": [{"dst": "nowhere"}]}, "route dst"),
        ({"cniVersion": "1.0.0", "dns": {"nameservers": "1.1.1.1"}}, "list of strings"),
        ({"cniVersion": "1.0.0", "dns": []}, "'dns' must be an object"),
    ],
)
def test_malformed_results_are_refused(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidCNIResult, match=reason):
        parse_result(raw)
