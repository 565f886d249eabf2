"""The container domain model: CRI `ContainerConfig` as plain dataclasses, and `Container`.

Also `ImageRuntimeConfig`, the part of an image's configuration (`Entrypoint`, `Cmd`, `Env`,
...) that shapes a container. `server/` translates protobuf into these types.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryopod.errors import InvalidArgument
from cryopod.pods.model import (
    LinuxContainerResources,
    NamespaceOptions,
    SecurityProfile,
    SupplementalGroupsPolicy,
)

__all__ = [
    "Capability",
    "Container",
    "ContainerConfig",
    "ContainerMetadata",
    "ContainerState",
    "Device",
    "EnvVar",
    "ImageRuntimeConfig",
    "ImageSpec",
    "LinuxContainerConfig",
    "LinuxContainerResources",
    "LinuxContainerSecurityContext",
    "Mount",
    "MountPropagation",
    "ProcMount",
]


class ContainerState(enum.Enum):
    """CRI ContainerState."""

    CREATED = "CONTAINER_CREATED"
    RUNNING = "CONTAINER_RUNNING"
    EXITED = "CONTAINER_EXITED"
    UNKNOWN = "CONTAINER_UNKNOWN"


class MountPropagation(enum.Enum):
    """CRI MountPropagation, valued by the OCI mount option it becomes."""

    PRIVATE = "rprivate"
    HOST_TO_CONTAINER = "rslave"
    BIDIRECTIONAL = "rshared"


class ProcMount(enum.Enum):
    """Kubernetes procMount: Unmasked lifts the masked and read-only /proc paths."""

    DEFAULT = "Default"
    UNMASKED = "Unmasked"


@dataclass(frozen=True)
class ContainerMetadata:
    """A container's name within its pod, and which restart this is."""

    name: str
    attempt: int = 0


@dataclass(frozen=True)
class ImageSpec:
    """The image a container runs: `image` is what the kubelet resolved (often the image id)."""

    image: str
    user_specified_image: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvVar:
    """One environment variable."""

    key: str
    value: str


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted into the container (image volumes of the CRI are not supported)."""

    container_path: str
    host_path: str
    readonly: bool = False
    selinux_relabel: bool = False
    propagation: MountPropagation = MountPropagation.PRIVATE
    recursive_read_only: bool = False


@dataclass(frozen=True)
class Device:
    """A host device node made available in the container; permissions from "rwm"."""

    container_path: str
    host_path: str
    permissions: str = "rwm"


@dataclass(frozen=True)
class Capability:
    """Capabilities to add to and drop from the default set; "ALL" is allowed in both."""

    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()
    add_ambient_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class LinuxContainerSecurityContext:
    """CRI LinuxContainerSecurityContext (SELinux is not supported and not modelled).

    `masked_paths` / `readonly_paths` are None when the request gave none, so the runtime's
    defaults apply; a tuple (even empty) is used as given. `proc_mount` is Kubernetes'
    procMount, which the CRI only expresses through those lists.
    """

    capabilities: Capability | None = None
    privileged: bool = False
    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_username: str = ""
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    no_new_privs: bool = False
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None
    proc_mount: ProcMount = ProcMount.DEFAULT


@dataclass(frozen=True)
class LinuxContainerConfig:
    """CRI LinuxContainerConfig."""

    resources: LinuxContainerResources | None = None
    security_context: LinuxContainerSecurityContext = field(
        default_factory=LinuxContainerSecurityContext
    )


@dataclass(frozen=True)
class ContainerConfig:
    """CRI ContainerConfig, as the kubelet sends it to CreateContainer."""

    metadata: ContainerMetadata
    image: ImageSpec
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[EnvVar, ...] = ()
    mounts: tuple[Mount, ...] = ()
    devices: tuple[Device, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    """Relative to the pod's log_directory."""
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False
    linux: LinuxContainerConfig = field(default_factory=LinuxContainerConfig)
    stop_signal: str = ""
    """A signal name ("SIGTERM"); empty means the image's StopSignal, else SIGTERM."""

    @property
    def security_context(self) -> LinuxContainerSecurityContext:
        return self.linux.security_context


@dataclass(frozen=True)
class ProcessUser:
    """The uid, gid and supplemental groups a container's process runs with."""

    uid: int
    gid: int
    supplemental_groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class Container:
    """A container as the runtime knows it: its config plus its lifecycle so far."""

    id: str
    pod_id: str
    config: ContainerConfig
    image_id: str
    """The image's config digest, as PullImage answered."""
    image_ref: str
    created_ns: int
    state: ContainerState = ContainerState.CREATED
    started_ns: int = 0
    finished_ns: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int | None = None
    log_path: str = ""
    """Absolute: the pod's log_directory joined with the config's log_path."""
    user: ProcessUser | None = None
    """Who the container's process runs as, resolved at create (ContainerStatus.user)."""
    runtime_handler: str = ""
    """The handler (OCI runtime) it was created with: its pod's."""

    @property
    def name(self) -> str:
        return self.config.metadata.name


# --- image configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRuntimeConfig:
    """The image configuration's `config` section, the part that shapes a container."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    volumes: tuple[str, ...] = ()
    stop_signal: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_image_config(cls, document: Mapping[str, Any]) -> ImageRuntimeConfig:
        """Read an OCI / Docker image configuration document (the whole config blob)."""
        section = document.get("config") or {}
        if not isinstance(section, Mapping):
            raise InvalidArgument("image config field 'config' must be a JSON object")
        volumes = section.get("Volumes") or {}
        if not isinstance(volumes, Mapping):
            raise InvalidArgument("image config field 'Volumes' must be a JSON object")
        labels = section.get("Labels") or {}
        if not isinstance(labels, Mapping):
            raise InvalidArgument("image config field 'Labels' must be a JSON object")
        return cls(
            entrypoint=_string_list(section, "Entrypoint"),
            cmd=_string_list(section, "Cmd"),
            env=_string_list(section, "Env"),
            working_dir=_string(section, "WorkingDir"),
            user=_string(section, "User"),
            volumes=tuple(sorted(str(path) for path in volumes)),
            stop_signal=_string(section, "StopSignal"),
            labels={str(k): str(v) for k, v in labels.items()},
        )


def _string_list(section: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = section.get(key) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument(f"image config field {key!r} must be a list of strings")
    return tuple(value)


def _string(section: Mapping[str, Any], key: str) -> str:
    value = section.get(key) or ""
    if not isinstance(value, str):
        raise InvalidArgument(f"image config field {key!r} must be a string")
    return value
