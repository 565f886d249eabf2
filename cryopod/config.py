"""Daemon configuration: embedded defaults, TOML files and drop-ins, command-line overrides.

Files are applied in order over the defaults: the main file, then `<main>.d/*.conf` in name
order. Each file is checked against the schema (the dataclasses below) as it is applied, so an
unknown key or a wrong type is reported with the key and the file that holds it.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cryopod.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/cryopod/cryopod.conf")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


@dataclass
class ImageConfig:
    """[image]: pulling and storing images."""

    registries_conf: str = "/etc/containers/registries.conf"
    """containers-registries.conf(5) file: mirrors, insecure and blocked registries."""
    auth_file: str = "/run/containers/0/auth.json"
    """containers-auth.json(5) / docker config.json file with registry credentials."""
    max_concurrent_downloads: int = 3
    """Layers downloaded in parallel per pull."""
    pull_progress_timeout: float = 600.0
    """Seconds a pull may make no progress before it is cancelled (0 disables)."""
    connect_timeout: float = 30.0
    """Seconds to wait for a registry connection."""
    pause_image: str = "registry.k8s.io/pause:3.10"
    """The infra image; it is reported as pinned."""
    pinned_images: list[str] = field(default_factory=list)
    """Further images reported as pinned (a hint for the kubelet's image GC)."""


@dataclass
class HandlerConfig:
    """[runtime.handlers.<name>]: one RuntimeClass handler."""

    runtime_path: str = ""
    """The OCI runtime binary; empty means the handler's name looked up in $PATH."""
    runtime_root: str = ""
    """The runtime's state directory (--root); empty means <runroot>/runtimes/<name>."""
    monitor_path: str = "/usr/bin/conmon"
    """The per-container monitor."""
    allowed_annotations: list[str] = field(default_factory=list)
    """Annotations this handler may act on (experimental features)."""


def _default_handlers() -> dict[str, HandlerConfig]:
    return {"runc": HandlerConfig(), "crun": HandlerConfig()}


@dataclass
class RuntimeConfig:
    """[runtime]: running pods and containers."""

    default_handler: str = "runc"
    """The handler of pods that name none."""
    handlers: dict[str, HandlerConfig] = field(default_factory=_default_handlers)
    cgroup_driver: str = "cgroupfs"
    """cgroupfs or systemd (only where systemd runs as PID 1)."""
    default_capabilities: list[str] = field(
        default_factory=lambda: [
            "CHOWN",
            "DAC_OVERRIDE",
            "FSETID",
            "FOWNER",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "NET_BIND_SERVICE",
            "KILL",
        ]
    )
    """Capabilities of a container that asks for none (CRI-O's set)."""
    pids_limit: int = 0
    """Processes per container (0: no limit)."""
    shm_size: int = 64 * 1024 * 1024
    """Bytes of each pod's /dev/shm."""
    exec_sync_output_limit: int = 15 * 1024 * 1024
    """Bytes of stdout and stderr together an ExecSync keeps (at most half each), so the
    answer fits the kubelet's 16 MiB message limit; the rest is read and dropped."""
    infra_container: bool = False
    """Run an infra container from image.pause_image in every pod (CRI-O's drop_infra_ctr
    = false). Off: the pod's namespaces are pinned with no process, and catatonit holds a
    shared PID namespace."""


@dataclass
class NetworkConfig:
    """[network]: pod networking through CNI plugins."""

    config_dirs: list[str] = field(default_factory=lambda: ["/etc/cni/net.d"])
    """Where network configs (.conf, .conflist, .json) are read from, watched for changes."""
    plugin_dirs: list[str] = field(default_factory=lambda: ["/opt/cni/bin", "/usr/lib/cni"])
    """Where plugin binaries are looked up, in order."""
    default_network: str = ""
    """The network pods join, by name; empty means the first usable config file by name."""
    cache_dir: str = ""
    """Cached ADD results (for DEL after a restart); empty means <root>/cni/results."""
    plugin_timeout: float = 60.0
    """Seconds one plugin call may take."""
    default_bridge: str = "cryopod0"
    """Bridge of the embedded default network (used when no config file exists at all)."""
    default_subnets: list[str] = field(default_factory=lambda: ["10.85.0.0/16"])
    """IPAM ranges of the embedded default network until the kubelet gives a PodCIDR."""
    default_ipam_dir: str = ""
    """host-local's store for the embedded default; empty means /var/lib/cni/networks."""


@dataclass
class StreamingConfig:
    """[streaming]: the HTTP server of exec, attach and port-forward sessions."""

    address: str = "127.0.0.1"
    """Where it listens; the URLs handed to the kubelet name this address."""
    port: int = 0
    """TCP port; 0 picks a free one at start."""
    tls_cert_file: str = ""
    """PEM certificate for HTTPS (with tls_key_file); empty serves plain HTTP."""
    tls_key_file: str = ""
    token_ttl: float = 60.0
    """Seconds an unused streaming URL stays valid."""


@dataclass
class Config:
    """The effective configuration of the daemon."""

    root: str = "/var/lib/cryopod"
    """Persistent storage: blobs, layers, the database."""
    runroot: str = "/run/cryopod"
    """Volatile state: mounts, bundles, sockets."""
    listen: str = "/run/cryopod/cryopod.sock"
    """Unix socket of the CRI gRPC server."""
    log_level: str = "info"
    """One of debug, info, warning, error."""
    log_format: str = "text"
    """text or json."""
    image: ImageConfig = field(default_factory=ImageConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)

    @property
    def database_path(self) -> Path:
        return Path(self.root) / "cryopod.db"


def config_files(main: Path) -> list[Path]:
    """The main file (if present) followed by its drop-ins in name order."""
    files = [main] if main.is_file() else []
    drop_in_dir = main.with_name(main.name + ".d")
    if drop_in_dir.is_dir():
        files.extend(sorted(p for p in drop_in_dir.glob("*.conf") if p.is_file()))
    return files


def load_config(
    path: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
) -> Config:
    """Build the effective configuration.

    `path` None means the default location, which may be absent; an explicit path must exist.
    `overrides` are dotted keys from the command line (`root`, `image.pause_image`).
    """
    if path is not None and not path.is_file():
        raise ConfigError("configuration file does not exist", path=str(path))
    config = Config()
    for file in config_files(path or DEFAULT_CONFIG_PATH):
        apply_file(config, file)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _apply_override(config, dotted, value)
    validate(config)
    return config


def apply_file(config: Config, file: Path) -> None:
    """Apply one TOML file over `config`, checking every key against the schema."""
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(file)) from exc
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", path=str(file)) from exc
    _apply_table(config, data, prefix="", source=str(file))


def _apply_table(target: Any, table: dict[str, Any], *, prefix: str, source: str) -> None:
    hints = typing.get_type_hints(type(target))
    names = {f.name for f in dataclasses.fields(target)}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        attr = key.replace("-", "_")
        if attr not in names:
            raise ConfigError("unknown key", path=source, key=dotted)
        expected = hints[attr]
        if _is_table_of_tables(expected):
            if not isinstance(value, dict):
                raise ConfigError("must be a table", path=source, key=dotted)
            _apply_named_tables(getattr(target, attr), value, expected, dotted, source)
            continue
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                raise ConfigError("must be a table", path=source, key=dotted)
            _apply_table(getattr(target, attr), value, prefix=f"{dotted}.", source=source)
            continue
        setattr(target, attr, _checked_value(value, expected, dotted=dotted, source=source))


def _is_table_of_tables(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1])


def _apply_named_tables(
    existing: dict[str, Any], table: dict[str, Any], hint: Any, dotted: str, source: str
) -> None:
    """[a.b.<name>] tables: each adds an entry or changes the one of that name."""
    item_type = typing.get_args(hint)[1]
    for name, value in table.items():
        if not isinstance(value, dict):
            raise ConfigError("must be a table", path=source, key=f"{dotted}.{name}")
        item = existing.setdefault(name, item_type())
        _apply_table(item, value, prefix=f"{dotted}.{name}.", source=source)


def _checked_value(value: Any, expected: Any, *, dotted: str, source: str) -> Any:
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
            raise ConfigError(f"must be a list of {item_type.__name__}", path=source, key=dotted)
        return list(value)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int subclass; a boolean must not pass for a number or vice versa.
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(
            f"must be {expected.__name__}, not {type(value).__name__}", path=source, key=dotted
        )
    return value


def _apply_override(config: Config, dotted: str, value: Any) -> None:
    *tables, last = dotted.split(".")
    target: Any = config
    for name in tables:
        target = getattr(target, name)
    hints = typing.get_type_hints(type(target))
    setattr(target, last, _checked_value(value, hints[last], dotted=dotted, source="flag"))


def validate(config: Config) -> None:
    """Checks that span more than a type."""
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"must be one of {', '.join(LOG_LEVELS)}", key="log_level")
    if config.log_format not in LOG_FORMATS:
        raise ConfigError(f"must be one of {', '.join(LOG_FORMATS)}", key="log_format")
    if config.image.max_concurrent_downloads < 1:
        raise ConfigError("must be at least 1", key="image.max_concurrent_downloads")
    if config.runtime.default_handler not in config.runtime.handlers:
        raise ConfigError(
            f"names no handler in [runtime.handlers] ({', '.join(config.runtime.handlers)})",
            key="runtime.default_handler",
        )
    if config.runtime.cgroup_driver not in ("cgroupfs", "systemd"):
        raise ConfigError("must be cgroupfs or systemd", key="runtime.cgroup_driver")
    for key in ("root", "runroot", "listen"):
        if not Path(getattr(config, key)).is_absolute():
            raise ConfigError("must be an absolute path", key=key)


def read_optional_file(path: str | Path, what: str) -> bytes | None:
    """The bytes of an ecosystem file that may be absent (None then); unreadable is an error."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", path=str(path)) from exc


def dump_config(config: Config) -> str:
    """The configuration as TOML that `load_config` reads back to the same values."""
    return tomli_w.dumps(_scalars_first(dataclasses.asdict(config)))


def _scalars_first(table: dict[str, Any]) -> dict[str, Any]:
    # TOML needs a table's own keys before its sub-tables.
    ordered = {k: v for k, v in table.items() if not isinstance(v, dict)}
    ordered.update({k: _scalars_first(v) for k, v in table.items() if isinstance(v, dict)})
    return ordered
