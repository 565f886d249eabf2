"""CNI network configurations: parsing, loading from directories, finding plugin binaries.

A `.conflist` holds a network configuration list; a `.conf` or `.json` a single plugin's
config, which becomes a one-plugin list (as libcni does); a file of either extension whose
object has `plugins` is read as a list. Files are read from each configured directory in name
order; a file that cannot be used is skipped, and the reason kept for logs and Status.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryopod.errors import InvalidNetworkConfig
from cryopod.pods.network.versions import SUPPORTED_VERSIONS, parse_version, select_version

log = logging.getLogger(__name__)

CONFIG_EXTENSIONS = (".conf", ".conflist", ".json")
# The name is part of cache file names: at most 128 characters, as ids are.
_NETWORK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MAX_CONFIG_BYTES = 1 << 20

JSONObject = dict[str, Any]


@dataclass(frozen=True)
class PluginConfig:
    """One plugin of a network: its `type` (the binary's name) and its JSON object."""

    type: str
    raw: Mapping[str, Any]

    @property
    def capabilities(self) -> frozenset[str]:
        """The runtimeConfig keys the plugin declares it understands."""
        declared = self.raw.get("capabilities")
        if not isinstance(declared, Mapping):
            return frozenset()
        return frozenset(name for name, on in declared.items() if on is True)


@dataclass(frozen=True)
class NetworkConfigList:
    """A CNI network configuration list, run with `cni_version`."""

    name: str
    cni_version: str
    plugins: tuple[PluginConfig, ...]
    cni_versions: tuple[str, ...] = ()
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""
    """Where it came from: a file's path, or a description such as "embedded default"."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Top-level keys cryopod does not interpret; kept so a cached copy is complete."""

    def negotiate(self, plugin_versions: Iterable[str]) -> str | None:
        """The highest version of this network that cryopod and every plugin support."""
        return select_version(self.cni_version, self.cni_versions, plugin_versions)

    def with_version(self, version: str) -> NetworkConfigList:
        """The same network, run with `version` (one of its `cni_versions`)."""
        return NetworkConfigList(
            name=self.name,
            cni_version=version,
            plugins=self.plugins,
            cni_versions=self.cni_versions,
            disable_check=self.disable_check,
            disable_gc=self.disable_gc,
            source=self.source,
            extra=self.extra,
        )

    def to_json(self) -> JSONObject:
        """The list as run: its one version, no `cniVersions` to choose from again.

        `parse_network_config` reads it back to the same network (the cache keeps it).
        """
        data: JSONObject = dict(self.extra)
        data.update(name=self.name, cniVersion=self.cni_version)
        if self.disable_check:
            data["disableCheck"] = True
        if self.disable_gc:
            data["disableGC"] = True
        data["plugins"] = [dict(plugin.raw) for plugin in self.plugins]
        return data


# --- parsing ------------------------------------------------------------------------------


def parse_network_config(data: bytes | str | Mapping[str, Any], source: str) -> NetworkConfigList:
    """Parse a network config list or a single plugin config; raises InvalidNetworkConfig."""
    obj = _load_object(data, source)
    if "plugins" in obj:
        plugins = obj["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise InvalidNetworkConfig(source, "'plugins' must be a non-empty list")
        top = {k: v for k, v in obj.items() if k != "plugins"}
    else:
        plugins, top = [obj], obj
    name = _network_name(top, source)
    cni_version, cni_versions = _versions(top, source)
    known = {"name", "cniVersion", "cniVersions", "disableCheck", "disableGC"}
    return NetworkConfigList(
        name=name,
        cni_version=cni_version,
        cni_versions=cni_versions,
        plugins=tuple(_plugin(p, i, source) for i, p in enumerate(plugins)),
        disable_check=_flag(top, "disableCheck", source),
        disable_gc=_flag(top, "disableGC", source),
        source=source,
        extra={k: v for k, v in top.items() if k not in known} if "plugins" in obj else {},
    )


def _load_object(data: bytes | str | Mapping[str, Any], source: str) -> JSONObject:
    if isinstance(data, Mapping):
        return dict(data)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidNetworkConfig(source, f"not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidNetworkConfig(source, "not a JSON object")
    return obj


def _network_name(top: Mapping[str, Any], source: str) -> str:
    name = top.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidNetworkConfig(source, "'name' is missing")
    if not _NETWORK_NAME.match(name):
        raise InvalidNetworkConfig(
            source,
            f"invalid network name {name!r} (letters, digits, '_', '.', '-'; at most 128)",
        )
    return name


def _versions(top: Mapping[str, Any], source: str) -> tuple[str, tuple[str, ...]]:
    """The config's cniVersion (the highest usable one when it lists `cniVersions`)."""
    declared = top.get("cniVersion")
    if not isinstance(declared, str) or parse_version(declared) is None:
        raise InvalidNetworkConfig(source, f"'cniVersion' is missing or invalid: {declared!r}")
    listed = top.get("cniVersions", [])
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        raise InvalidNetworkConfig(source, "'cniVersions' must be a list of strings")
    chosen = select_version(declared, listed)
    if chosen is None:
        offered = ", ".join(listed) if listed else declared
        raise InvalidNetworkConfig(
            source,
            f"unsupported CNI version {offered} (cryopod supports {', '.join(SUPPORTED_VERSIONS)})",
        )
    # The declared version stays a candidate when negotiating with the plugins later.
    return chosen, tuple(dict.fromkeys([*listed, declared])) if listed else ()


def _flag(top: Mapping[str, Any], key: str, source: str) -> bool:
    value = top.get(key, False)
    if isinstance(value, bool):
        return value
    # libcni accepts the strings too, and configs in the wild use them.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidNetworkConfig(source, f"{key!r} must be true or false, not {value!r}")


def _plugin(raw: object, index: int, source: str) -> PluginConfig:
    if not isinstance(raw, dict):
        raise InvalidNetworkConfig(source, f"plugin {index} is not a JSON object")
    plugin_type = raw.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise InvalidNetworkConfig(source, f"plugin {index} has no 'type'")
    if "/" in plugin_type or plugin_type in (".", ".."):
        raise InvalidNetworkConfig(source, f"plugin {index} has an invalid type {plugin_type!r}")
    capabilities = raw.get("capabilities", {})
    if not isinstance(capabilities, dict):
        raise InvalidNetworkConfig(source, f"plugin {plugin_type}: 'capabilities' is no object")
    return PluginConfig(type=plugin_type, raw=raw)


# --- loading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigScan:
    """What the config directories hold: usable networks in priority order, and the rest."""

    networks: tuple[NetworkConfigList, ...] = ()
    invalid: tuple[InvalidNetworkConfig, ...] = ()

    @property
    def empty(self) -> bool:
        """No config file at all, valid or not (the embedded default applies)."""
        return not self.networks and not self.invalid

    def find(self, name: str) -> NetworkConfigList | None:
        return next((n for n in self.networks if n.name == name), None)


def config_files(dirs: Iterable[Path]) -> list[Path]:
    """Candidate config files: each directory in turn, its files in name order."""
    found: list[Path] = []
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            log.warning("cannot list CNI config directory %s: %s", directory, exc)
            continue
        found += [
            directory / n for n in names if n.endswith(CONFIG_EXTENSIONS) and not n.startswith(".")
        ]
    return found


def load_network_configs(dirs: Sequence[Path]) -> ConfigScan:
    """Read every config file of `dirs`; invalid ones are logged and listed, not raised."""
    networks: list[NetworkConfigList] = []
    invalid: list[InvalidNetworkConfig] = []
    seen: set[str] = set()
    for path in config_files(dirs):
        try:
            network = parse_network_config(_read_config(path), str(path))
        except InvalidNetworkConfig as exc:
            log.warning("skipping %s", exc)
            invalid.append(exc)
            continue
        if network.name in seen:
            log.warning("skipping %s: network %r is defined by an earlier file", path, network.name)
            continue
        seen.add(network.name)
        networks.append(network)
    return ConfigScan(tuple(networks), tuple(invalid))


def _read_config(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise InvalidNetworkConfig(str(path), f"cannot be read: {exc.strerror}") from exc
    if len(data) > _MAX_CONFIG_BYTES:
        raise InvalidNetworkConfig(str(path), f"larger than {_MAX_CONFIG_BYTES} bytes")
    return data


def find_plugin(plugin_type: str, plugin_dirs: Iterable[Path]) -> Path | None:
    """The first executable file named `plugin_type` in `plugin_dirs`."""
    for directory in plugin_dirs:
        candidate = directory / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None
