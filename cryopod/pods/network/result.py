"""CNI results (spec 0.3.0 to 1.1.0) as typed values, and conversion between versions.

The raw JSON a plugin printed is what the next plugin gets as `prevResult` and what the cache
keeps; `parse_result` reads it into a `CNIResult` for cryopod's own use (the pod's IPs).
Before 1.0.0 each IP says its family (`"version": "4"`); `convert_result` adds or drops that.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from cryopod.errors import InvalidCNIResult
from cryopod.pods.network.versions import ips_carry_version, is_supported

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


@dataclass(frozen=True)
class Interface:
    """An interface the network set up; `sandbox` is the netns path for the pod's own."""

    name: str
    mac: str = ""
    sandbox: str = ""
    mtu: int = 0


@dataclass(frozen=True)
class IPConfig:
    """An address (with prefix length) given to the interface at index `interface`."""

    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def version(self) -> int:
        return self.address.version


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None


@dataclass(frozen=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class CNIResult:
    """A parsed CNI result."""

    cni_version: str
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()

    def pod_ips(self, ifname: str) -> tuple[str, ...]:
        """The addresses of the pod's interface `ifname`, IPv4 first, without prefix length.

        IPs that name no interface (an IPAM-only result) count as the pod's.
        """
        mine = [ip for ip in self.ips if self._is_pod_interface(ip.interface, ifname)]
        ordered = sorted(mine, key=lambda ip: ip.version)  # stable: keeps the plugin's order
        return tuple(str(ip.address.ip) for ip in ordered)

    def _is_pod_interface(self, index: int | None, ifname: str) -> bool:
        if index is None:
            return True
        if not 0 <= index < len(self.interfaces):
            return False
        interface = self.interfaces[index]
        return bool(interface.sandbox) and interface.name == ifname


def parse_result(raw: Mapping[str, Any], expected_version: str = "") -> CNIResult:
    """Read a result of a supported version; raises InvalidCNIResult when it is malformed."""
    version = raw.get("cniVersion") or expected_version
    if not isinstance(version, str) or not is_supported(version):
        raise InvalidCNIResult(f"result of unsupported version {version!r}")
    return CNIResult(
        cni_version=version,
        interfaces=tuple(_interface(i) for i in _list(raw, "interfaces")),
        ips=tuple(_ip_config(ip) for ip in _list(raw, "ips")),
        routes=tuple(_route(r) for r in _list(raw, "routes")),
        dns=_dns(raw.get("dns")),
    )


def convert_result(raw: Mapping[str, Any], version: str) -> dict[str, Any]:
    """`raw` as a result of `version`: IPs get or lose their `version` field."""
    converted = dict(raw)
    converted["cniVersion"] = version
    ips = []
    for ip in _list(raw, "ips"):
        ip = dict(ip)
        if ips_carry_version(version):
            ip["version"] = str(_ip_config(ip).version)
        else:
            ip.pop("version", None)
        ips.append(ip)
    if "ips" in raw:
        converted["ips"] = ips
    if not ips_carry_version(version) and "interfaces" in raw:
        # 1.0.0 dropped the (never used) version field of interfaces too.
        converted["interfaces"] = [
            {k: v for k, v in i.items() if k != "version"} for i in _list(raw, "interfaces")
        ]
    return converted


def _list(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
        raise InvalidCNIResult(f"{key!r} must be a list of objects")
    return value


def _interface(raw: Mapping[str, Any]) -> Interface:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidCNIResult("an interface has no name")
    mtu = raw.get("mtu", 0)
    return Interface(
        name=name,
        mac=_str(raw, "mac"),
        sandbox=_str(raw, "sandbox"),
        mtu=mtu if isinstance(mtu, int) else 0,
    )


def _ip_config(raw: Mapping[str, Any]) -> IPConfig:
    address = _parse(ipaddress.ip_interface, raw.get("address"), "address")
    gateway = raw.get("gateway")
    index = raw.get("interface")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise InvalidCNIResult(f"interface index {index!r} is not a number")
    family = raw.get("version")
    if family is not None and str(family) != str(address.version):
        raise InvalidCNIResult(f"{address} is not an IPv{family} address")
    return IPConfig(
        address=address,
        gateway=_parse(ipaddress.ip_address, gateway, "gateway") if gateway else None,
        interface=index,
    )


def _route(raw: Mapping[str, Any]) -> Route:
    gw = raw.get("gw")
    return Route(
        dst=_parse(lambda t: ipaddress.ip_network(t, strict=False), raw.get("dst"), "route dst"),
        gw=_parse(ipaddress.ip_address, gw, "route gw") if gw else None,
    )


def _dns(raw: object) -> DNS:
    if raw is None:
        return DNS()
    if not isinstance(raw, Mapping):
        raise InvalidCNIResult("'dns' must be an object")
    return DNS(
        nameservers=_strings(raw, "nameservers"),
        domain=_str(raw, "domain"),
        search=_strings(raw, "search"),
        options=_strings(raw, "options"),
    )


def _parse(parse: Callable[[str], T], value: object, what: str) -> T:
    if not isinstance(value, str):
        raise InvalidCNIResult(f"{what} {value!r} is not a string")
    try:
        return parse(value)
    except ValueError as exc:
        raise InvalidCNIResult(f"invalid {what} {value!r}") from exc


def _str(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key, "")
    return value if isinstance(value, str) else ""


def _strings(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidCNIResult(f"dns {key!r} must be a list of strings")
    return tuple(value)
