"""The embedded default network, used when no CNI config file exists at all.

A bridge (`cryopod0`) that is the pods' gateway and masquerades their traffic, host-local
IPAM on 10.85.0.0/16 (or on the node's PodCIDR once the kubelet sends one), and portmap for
hostPorts. It lists several CNI versions, so it runs with the newest the plugins speak.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryopod.errors import InvalidArgument
from cryopod.pods.network.config import JSONObject, NetworkConfigList, parse_network_config

EMBEDDED_SOURCE = "embedded default"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class EmbeddedNetwork:
    """Settings of the embedded default network."""

    name: str = "cryopod"
    bridge: str = "cryopod0"
    subnets: tuple[str, ...] = ("10.85.0.0/16",)
    """IPAM ranges when no PodCIDR is known: one range per subnet (IPv4 and/or IPv6)."""
    ipam_data_dir: str = ""
    """host-local's store; empty means its own default, /var/lib/cni/networks."""
    cni_version: str = "1.0.0"
    """For readers that know no `cniVersions`; cryopod picks from `cni_versions`."""
    cni_versions: tuple[str, ...] = ("0.4.0", "1.0.0", "1.1.0")
    mtu: int = 0
    """MTU of the bridge and the pods' interfaces; 0 lets the bridge plugin choose."""

    def config(self, pod_cidrs: Sequence[str] = ()) -> NetworkConfigList:
        """The network, with IPAM ranges from `pod_cidrs` when given, else from `subnets`."""
        subnets = [parse_cidr(c) for c in (pod_cidrs or self.subnets)]
        return parse_network_config(self._json(subnets), EMBEDDED_SOURCE)

    def _json(self, subnets: list[IPNetwork]) -> JSONObject:
        ipam: JSONObject = {
            "type": "host-local",
            "ranges": [[{"subnet": str(subnet)}] for subnet in subnets],
            "routes": [{"dst": _default_route(subnet)} for subnet in _one_per_family(subnets)],
        }
        if self.ipam_data_dir:
            ipam["dataDir"] = self.ipam_data_dir
        bridge: JSONObject = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            # A new PodCIDR moves the gateway: without this the plugin refuses the bridge's
            # old address ("already has an IP address different from ...").
            "forceAddress": True,
            "ipam": ipam,
        }
        if self.mtu:
            bridge["mtu"] = self.mtu
        return {
            "cniVersion": self.cni_version,
            "cniVersions": list(self.cni_versions),
            "name": self.name,
            "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
        }


def parse_cidr(text: str) -> IPNetwork:
    """A subnet such as "10.244.1.0/24"; host bits are cleared. Raises InvalidArgument."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"invalid pod CIDR {text!r}: {exc}") from exc


def parse_pod_cidrs(text: str) -> tuple[str, ...]:
    """UpdateRuntimeConfig's pod_cidr: one CIDR, or a comma-separated pair for dual stack."""
    return tuple(str(parse_cidr(part)) for part in text.split(",") if part.strip())


def _one_per_family(subnets: list[IPNetwork]) -> list[IPNetwork]:
    firsts: dict[int, IPNetwork] = {}
    for subnet in subnets:
        firsts.setdefault(subnet.version, subnet)
    return list(firsts.values())


def _default_route(subnet: IPNetwork) -> str:
    return "0.0.0.0/0" if subnet.version == 4 else "::/0"
