"""The pod sandbox domain model: CRI `PodSandboxConfig` as plain dataclasses, and `Sandbox`.

`server/` translates protobuf messages into these; nothing here knows about protobuf. Types
that pods and containers share (namespace options, security profiles, Linux resources) live
here because a container always belongs to a pod, never the other way round.

Optional CRI wrapper values (`Int64Value run_as_user`) are `int | None`; repeated fields are
tuples; maps are mappings. Defaults are what the kubelet sends for an unconfigured pod.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class NamespaceMode(enum.Enum):
    """CRI NamespaceMode: whose namespace a pod or container uses."""

    POD = "pod"
    """Shared by every container of the pod."""
    CONTAINER = "container"
    """The container's own namespace."""
    NODE = "node"
    """The host's namespace."""
    TARGET = "target"
    """The namespace of another container (`target_id`); PID only."""


class NamespaceKind(enum.StrEnum):
    """Linux namespace types, valued by their OCI runtime spec names."""

    NETWORK = "network"
    IPC = "ipc"
    UTS = "uts"
    PID = "pid"
    MOUNT = "mount"
    CGROUP = "cgroup"
    USER = "user"


class SandboxState(enum.Enum):
    """CRI PodSandboxState."""

    READY = "SANDBOX_READY"
    NOTREADY = "SANDBOX_NOTREADY"


class Protocol(enum.Enum):
    """Transport protocol of a port mapping."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class ProfileType(enum.Enum):
    """CRI SecurityProfile.ProfileType for seccomp and AppArmor."""

    RUNTIME_DEFAULT = "RuntimeDefault"
    UNCONFINED = "Unconfined"
    LOCALHOST = "Localhost"


class SupplementalGroupsPolicy(enum.Enum):
    """Whether the image's /etc/group memberships join the CRI supplemental groups."""

    MERGE = "Merge"
    STRICT = "Strict"


@dataclass(frozen=True)
class SecurityProfile:
    """A seccomp or AppArmor profile choice; `localhost_ref` names the Localhost profile."""

    profile_type: ProfileType = ProfileType.RUNTIME_DEFAULT
    localhost_ref: str = ""


@dataclass(frozen=True)
class NamespaceOptions:
    """CRI NamespaceOption. UTS has no mode of its own: it follows the network."""

    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD
    target_id: str = ""

    @property
    def host_network(self) -> bool:
        return self.network is NamespaceMode.NODE

    @property
    def host_pid(self) -> bool:
        return self.pid is NamespaceMode.NODE

    @property
    def host_ipc(self) -> bool:
        return self.ipc is NamespaceMode.NODE


@dataclass(frozen=True)
class HugepageLimit:
    """A hugetlb limit for one page size ("2MB", "1GB"), in bytes."""

    page_size: str
    limit: int


@dataclass(frozen=True)
class LinuxContainerResources:
    """CRI LinuxContainerResources; 0 and "" mean "not set" as in the CRI."""

    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""
    hugepage_limits: tuple[HugepageLimit, ...] = ()
    unified: Mapping[str, str] = field(default_factory=dict)
    memory_swap_limit_in_bytes: int = 0


@dataclass(frozen=True)
class PodSandboxMetadata:
    """What the kubelet uses to name a pod; together they must be unique."""

    name: str
    uid: str
    namespace: str
    attempt: int = 0

    @property
    def unique_name(self) -> str:
        """The name no two live sandboxes may share (the kubelet's uniqueness rule)."""
        return f"{self.name}_{self.namespace}_{self.uid}_{self.attempt}"


@dataclass(frozen=True)
class DNSConfig:
    """CRI DNSConfig: what the pod's /etc/resolv.conf says."""

    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class PortMapping:
    """A container port published on the host."""

    container_port: int
    host_port: int = 0
    protocol: Protocol = Protocol.TCP
    host_ip: str = ""


@dataclass(frozen=True)
class LinuxSandboxSecurityContext:
    """CRI LinuxSandboxSecurityContext (SELinux is not supported and not modelled)."""

    namespace_options: NamespaceOptions = field(default_factory=NamespaceOptions)
    run_as_user: int | None = None
    run_as_group: int | None = None
    readonly_rootfs: bool = False
    supplemental_groups: tuple[int, ...] = ()
    supplemental_groups_policy: SupplementalGroupsPolicy = SupplementalGroupsPolicy.MERGE
    privileged: bool = False
    seccomp: SecurityProfile | None = None
    apparmor: SecurityProfile | None = None


@dataclass(frozen=True)
class LinuxPodSandboxConfig:
    """CRI LinuxPodSandboxConfig."""

    cgroup_parent: str = ""
    security_context: LinuxSandboxSecurityContext = field(
        default_factory=LinuxSandboxSecurityContext
    )
    sysctls: Mapping[str, str] = field(default_factory=dict)
    overhead: LinuxContainerResources | None = None
    resources: LinuxContainerResources | None = None


@dataclass(frozen=True)
class PodSandboxConfig:
    """CRI PodSandboxConfig, as the kubelet sends it to RunPodSandbox."""

    metadata: PodSandboxMetadata
    hostname: str = ""
    log_directory: str = ""
    dns_config: DNSConfig | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    linux: LinuxPodSandboxConfig = field(default_factory=LinuxPodSandboxConfig)

    @property
    def namespace_options(self) -> NamespaceOptions:
        return self.linux.security_context.namespace_options


@dataclass(frozen=True)
class Sandbox:
    """A pod sandbox as the runtime knows it: its config plus what running it produced."""

    id: str
    config: PodSandboxConfig
    created_ns: int
    state: SandboxState = SandboxState.READY
    runtime_handler: str = ""
    namespace_paths: Mapping[NamespaceKind, str] = field(default_factory=dict)
    """Pinned namespaces the pod's containers join, e.g. {NETWORK: "<runroot>/ns/net/<id>"}."""
    ip_addresses: tuple[str, ...] = ()
    """Filled by networking (CNI); the first one is the pod's primary IP."""
    infra_pid: int | None = None
    """PID of the pod's infra process (catatonit or pause), when the pod has one."""
    infra_start_time: int = 0
    """Start time of that process (/proc/<pid>/stat field 22), so a reused pid is not it."""
    infra_container: bool = False
    """Whether the infra process is a pause container (id = the sandbox's) or catatonit."""

    @property
    def name(self) -> str:
        return self.config.metadata.unique_name

    @property
    def namespace_options(self) -> NamespaceOptions:
        return self.config.namespace_options
