"""What the runtime asks of the network for one pod, and how it reaches the plugins.

The pod's identity goes to the plugins in CNI_ARGS (the Kubernetes `K8S_POD_*` keys, which
every plugin accepts with `IgnoreUnknown=1`); per-pod settings such as hostPorts go in
`runtimeConfig`, and each plugin gets only the keys it declares in its `capabilities`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cryopod.errors import InvalidArgument
from cryopod.ids import check_safe_id
from cryopod.pods.model import DNSConfig, PortMapping
from cryopod.pods.network.config import JSONObject, PluginConfig

DEFAULT_IFNAME = "eth0"
INGRESS_ANNOTATION = "kubernetes.io/ingress-bandwidth"
EGRESS_ANNOTATION = "kubernetes.io/egress-bandwidth"
# The kubelet's own choice: a burst this large (~2 Gbit) does not limit bursts in practice.
UNLIMITED_BURST = 2**31 - 1

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$")
_SUFFIXES = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
    **{s + "i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")},
}


@dataclass(frozen=True)
class Bandwidth:
    """The `bandwidth` capability: rates in bits per second, bursts in bits; 0 is unset."""

    ingress_rate: int = 0
    ingress_burst: int = 0
    egress_rate: int = 0
    egress_burst: int = 0

    def to_json(self) -> JSONObject:
        data: JSONObject = {}
        if self.ingress_rate:
            data.update(ingressRate=self.ingress_rate, ingressBurst=self.ingress_burst)
        if self.egress_rate:
            data.update(egressRate=self.egress_rate, egressBurst=self.egress_burst)
        return data


@dataclass(frozen=True)
class IPRange:
    """One range of the `ipRanges` capability (host-local's range syntax)."""

    subnet: str
    range_start: str = ""
    range_end: str = ""
    gateway: str = ""

    def to_json(self) -> JSONObject:
        data: JSONObject = {"subnet": self.subnet}
        for key, value in (
            ("rangeStart", self.range_start),
            ("rangeEnd", self.range_end),
            ("gateway", self.gateway),
        ):
            if value:
                data[key] = value
        return data


@dataclass(frozen=True)
class PodNetworkRequest:
    """Attach a pod sandbox's netns to the network."""

    sandbox_id: str
    netns: str
    """Path of the pod's network namespace (a pinned bind mount)."""
    pod_name: str
    pod_namespace: str
    pod_uid: str
    port_mappings: tuple[PortMapping, ...] = ()
    dns: DNSConfig | None = None
    bandwidth: Bandwidth | None = None
    ips: tuple[str, ...] = ()
    """Addresses the pod asks for (the `ips` capability)."""
    ip_ranges: tuple[tuple[IPRange, ...], ...] = ()
    """Range sets for IPAM (the `ipRanges` capability); empty means the node's PodCIDR."""
    cgroup_path: str = ""
    """The pod's cgroup parent (the `cgroupPath` capability)."""

    def validate(self) -> None:
        """Refuse ids and names that would corrupt CNI_ARGS or file names."""
        check_safe_id("sandbox", self.sandbox_id)
        if not self.netns:
            raise InvalidArgument(f"sandbox {self.sandbox_id}: a network namespace path is needed")
        for what, value in (
            ("pod name", self.pod_name),
            ("pod namespace", self.pod_namespace),
            ("pod uid", self.pod_uid),
        ):
            if any(c in value for c in ";=\0") or any(c.isspace() for c in value):
                raise InvalidArgument(f"{what} {value!r} cannot be passed in CNI_ARGS")

    def cni_args(self) -> str:
        """CNI_ARGS, as the kubelet's own CNI code and every Kubernetes runtime send them."""
        return ";".join(
            [
                "IgnoreUnknown=1",
                f"K8S_POD_NAMESPACE={self.pod_namespace}",
                f"K8S_POD_NAME={self.pod_name}",
                f"K8S_POD_INFRA_CONTAINER_ID={self.sandbox_id}",
                f"K8S_POD_UID={self.pod_uid}",
            ]
        )

    def capability_args(self, pod_ip_ranges: tuple[tuple[IPRange, ...], ...] = ()) -> JSONObject:
        """Every runtimeConfig value this pod has, by capability name.

        `pod_ip_ranges` (from the node's PodCIDR) fill `ipRanges` when the pod names none.
        """
        args: JSONObject = {}
        mappings = [_port_mapping(p) for p in self.port_mappings if p.host_port > 0]
        if mappings:
            args["portMappings"] = mappings
        if self.dns is not None:
            args["dns"] = {
                "servers": list(self.dns.servers),
                "searches": list(self.dns.searches),
                "options": list(self.dns.options),
            }
        if self.ips:
            args["ips"] = list(self.ips)
        if self.bandwidth is not None and self.bandwidth.to_json():
            args["bandwidth"] = self.bandwidth.to_json()
        ranges = self.ip_ranges or pod_ip_ranges
        if ranges:
            args["ipRanges"] = [[r.to_json() for r in range_set] for range_set in ranges]
        if self.cgroup_path:
            args["cgroupPath"] = self.cgroup_path
        return args


def _port_mapping(mapping: PortMapping) -> JSONObject:
    data: JSONObject = {
        "hostPort": mapping.host_port,
        "containerPort": mapping.container_port,
        "protocol": mapping.protocol.value.lower(),
    }
    if mapping.host_ip:
        data["hostIP"] = mapping.host_ip
    return data


def runtime_config_for(plugin: PluginConfig, capability_args: Mapping[str, Any]) -> JSONObject:
    """The part of `capability_args` the plugin declares among its capabilities."""
    return {name: capability_args[name] for name in plugin.capabilities if name in capability_args}


def check_ifname(ifname: str) -> None:
    """An interface name cryopod accepts (Linux's limit; also safe in a file name)."""
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise InvalidArgument(f"invalid interface name {ifname!r}")


# --- Kubernetes bandwidth annotations -----------------------------------------------------


def parse_quantity(text: str) -> int:
    """A Kubernetes resource quantity ("10M", "1Gi", "500k") as a whole number."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise InvalidArgument(f"invalid quantity {text!r}")
    number, suffix = match.groups()
    try:
        value = Decimal(number) * _SUFFIXES[suffix or ""]
    except InvalidOperation as exc:
        raise InvalidArgument(f"invalid quantity {text!r}") from exc
    return int(value.to_integral_value())


MIN_BANDWIDTH = 1000
MAX_BANDWIDTH = 10**15


def bandwidth_from_annotations(annotations: Mapping[str, str]) -> Bandwidth | None:
    """The pod's `kubernetes.io/{ingress,egress}-bandwidth` limits, if it has any."""
    ingress = annotations.get(INGRESS_ANNOTATION)
    egress = annotations.get(EGRESS_ANNOTATION)
    if not ingress and not egress:
        return None
    ingress_rate = _bandwidth_rate(INGRESS_ANNOTATION, ingress) if ingress else 0
    egress_rate = _bandwidth_rate(EGRESS_ANNOTATION, egress) if egress else 0
    return Bandwidth(
        ingress_rate=ingress_rate,
        ingress_burst=UNLIMITED_BURST if ingress_rate else 0,
        egress_rate=egress_rate,
        egress_burst=UNLIMITED_BURST if egress_rate else 0,
    )


def _bandwidth_rate(annotation: str, text: str) -> int:
    """A rate in bits/s within the kubelet's own bounds (1k to 1P)."""
    rate = parse_quantity(text)
    if not MIN_BANDWIDTH <= rate <= MAX_BANDWIDTH:
        raise InvalidArgument(f"{annotation} {text!r} is outside 1k..1P bits per second")
    return rate
