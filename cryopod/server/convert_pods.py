"""CRI pod and container messages to domain objects and back, for the RuntimeService servicer.

Owns the translation of `PodSandboxConfig`, `ContainerConfig` and `LinuxContainerResources`
into `cryopod.pods.model` / `cryopod.containers.model`, of `Sandbox` and `Container` into the
CRI list and status messages, and the ListPodSandbox / ListContainers filters.

Presence rules: a sub-message the request left out (`dns_config`, `overhead`, `run_as_user`, a
`SecurityProfile`, ...) becomes None, found with `HasField`. Repeated fields have no presence
bit in proto3, so `masked_paths` / `readonly_paths` that arrive empty become None and the
runtime's defaults apply: the kubelet sends the default lists for every non-privileged
container, and a client that sends none (crictl) gets the same protection CRI-O gives it.
The price is that the kubelet's procMount Unmasked, which it sends as two empty lists, cannot
be told apart from "nothing sent" and keeps the default masking.

Structured requests cryopod cannot honour (user namespaces, image volumes, idmapped mounts,
CDI devices) are refused with InvalidArgument rather than silently dropped.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from cri_api.v1 import api_pb2 as cri

from cryopod.containers.model import (
    Capability,
    Container,
    ContainerConfig,
    ContainerMetadata,
    ContainerState,
    Device,
    EnvVar,
    ImageSpec,
    LinuxContainerConfig,
    LinuxContainerSecurityContext,
    Mount,
    MountPropagation,
)
from cryopod.errors import InvalidArgument
from cryopod.pods.model import (
    DNSConfig,
    HugepageLimit,
    LinuxContainerResources,
    LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext,
    NamespaceMode,
    NamespaceOptions,
    PodSandboxConfig,
    PodSandboxMetadata,
    PortMapping,
    ProfileType,
    Protocol,
    Sandbox,
    SandboxState,
    SecurityProfile,
    SupplementalGroupsPolicy,
)

__all__ = [
    "ContainerFilter",
    "SandboxFilter",
    "container_config_from_cri",
    "container_filter_from_cri",
    "container_status_to_cri",
    "container_to_cri",
    "mount_to_cri",
    "namespace_options_from_cri",
    "namespace_options_to_cri",
    "pod_config_from_cri",
    "resources_from_cri",
    "resources_to_cri",
    "sandbox_filter_from_cri",
    "sandbox_status_to_cri",
    "sandbox_to_cri",
    "signal_from_cri",
    "signal_to_cri",
]

_Key = TypeVar("_Key")
_Value = TypeVar("_Value")

# --- enum tables ---------------------------------------------------------------------------

_NAMESPACE_MODES: dict[cri.NamespaceMode.ValueType, NamespaceMode] = {
    cri.POD: NamespaceMode.POD,
    cri.CONTAINER: NamespaceMode.CONTAINER,
    cri.NODE: NamespaceMode.NODE,
    cri.TARGET: NamespaceMode.TARGET,
}
_PROTOCOLS: dict[cri.Protocol.ValueType, Protocol] = {
    cri.TCP: Protocol.TCP,
    cri.UDP: Protocol.UDP,
    cri.SCTP: Protocol.SCTP,
}
_PROPAGATIONS: dict[cri.MountPropagation.ValueType, MountPropagation] = {
    cri.PROPAGATION_PRIVATE: MountPropagation.PRIVATE,
    cri.PROPAGATION_HOST_TO_CONTAINER: MountPropagation.HOST_TO_CONTAINER,
    cri.PROPAGATION_BIDIRECTIONAL: MountPropagation.BIDIRECTIONAL,
}
_GROUPS_POLICIES: dict[cri.SupplementalGroupsPolicy.ValueType, SupplementalGroupsPolicy] = {
    cri.Merge: SupplementalGroupsPolicy.MERGE,
    cri.Strict: SupplementalGroupsPolicy.STRICT,
}
_PROFILE_TYPES: dict[cri.SecurityProfile.ProfileType.ValueType, ProfileType] = {
    cri.SecurityProfile.RuntimeDefault: ProfileType.RUNTIME_DEFAULT,
    cri.SecurityProfile.Unconfined: ProfileType.UNCONFINED,
    cri.SecurityProfile.Localhost: ProfileType.LOCALHOST,
}
_SANDBOX_STATES: dict[cri.PodSandboxState.ValueType, SandboxState] = {
    cri.SANDBOX_READY: SandboxState.READY,
    cri.SANDBOX_NOTREADY: SandboxState.NOTREADY,
}
_CONTAINER_STATES: dict[cri.ContainerState.ValueType, ContainerState] = {
    cri.CONTAINER_CREATED: ContainerState.CREATED,
    cri.CONTAINER_RUNNING: ContainerState.RUNNING,
    cri.CONTAINER_EXITED: ContainerState.EXITED,
    cri.CONTAINER_UNKNOWN: ContainerState.UNKNOWN,
}
_NAMESPACE_MODES_TO_CRI = {mode: value for value, mode in _NAMESPACE_MODES.items()}
_PROPAGATIONS_TO_CRI = {mode: value for value, mode in _PROPAGATIONS.items()}
_SANDBOX_STATES_TO_CRI = {state: value for value, state in _SANDBOX_STATES.items()}
_CONTAINER_STATES_TO_CRI = {state: value for value, state in _CONTAINER_STATES.items()}

# The deprecated string forms of seccomp_profile_path / apparmor_profile; "localhost/<ref>"
# is handled apart. An empty string means "not given".
_DEPRECATED_PROFILES: dict[str, ProfileType] = {
    "runtime/default": ProfileType.RUNTIME_DEFAULT,
    "docker/default": ProfileType.RUNTIME_DEFAULT,
    "unconfined": ProfileType.UNCONFINED,
}
_LOCALHOST_PREFIX = "localhost/"

# CRI Signal values to the names images use in StopSignal: SIGRTMINPLUS3 is "SIGRTMIN+3",
# SIGRTMAXMINUS2 is "SIGRTMAX-2"; RUNTIME_DEFAULT is "" (the image's, else SIGTERM).
_SIGNAL_NAMES: dict[cri.Signal.ValueType, str] = {
    value: "" if name == "RUNTIME_DEFAULT" else name.replace("PLUS", "+").replace("MINUS", "-")
    for name, value in cri.Signal.items()
}
_SIGNALS_BY_NAME: dict[str, cri.Signal.ValueType] = {
    name: value for value, name in _SIGNAL_NAMES.items() if name
}
_REALTIME_OFFSETS = 15
"""The CRI names SIGRTMIN+1..+15 and SIGRTMAX-14..-1."""


def _lookup(table: Mapping[_Key, _Value], key: _Key, what: str) -> _Value:
    try:
        return table[key]
    except KeyError:
        raise InvalidArgument(f"unknown {what} {key!r}") from None


# --- small shared pieces ------------------------------------------------------------------


def namespace_options_from_cri(options: cri.NamespaceOption) -> NamespaceOptions:
    """CRI NamespaceOption; TARGET is for PID only and needs `target_id`.

    `userns_options` may only ask for the host's user namespace: cryopod does not create
    user namespaces, and running a pod that asked for one without it would quietly weaken it.
    """
    if options.HasField("userns_options") and options.userns_options.mode != cri.NODE:
        raise InvalidArgument(
            "user namespaces are not supported: namespace_options.userns_options.mode must be NODE"
        )
    network = _lookup(_NAMESPACE_MODES, options.network, "network namespace mode")
    pid = _lookup(_NAMESPACE_MODES, options.pid, "pid namespace mode")
    ipc = _lookup(_NAMESPACE_MODES, options.ipc, "ipc namespace mode")
    if NamespaceMode.TARGET in (network, ipc):
        raise InvalidArgument("namespace mode TARGET is only valid for the pid namespace")
    if pid is NamespaceMode.TARGET and not options.target_id:
        raise InvalidArgument("pid namespace mode TARGET needs namespace_options.target_id")
    return NamespaceOptions(network=network, pid=pid, ipc=ipc, target_id=options.target_id)


def namespace_options_to_cri(options: NamespaceOptions) -> cri.NamespaceOption:
    return cri.NamespaceOption(
        network=_NAMESPACE_MODES_TO_CRI[options.network],
        pid=_NAMESPACE_MODES_TO_CRI[options.pid],
        ipc=_NAMESPACE_MODES_TO_CRI[options.ipc],
        target_id=options.target_id,
    )


def _optional_namespace_options(present: bool, options: cri.NamespaceOption) -> NamespaceOptions:
    # Absent options mean an unconfigured pod: the model's defaults are what the kubelet
    # sends for one (pid CONTAINER), where proto zero values would say pid POD.
    return namespace_options_from_cri(options) if present else NamespaceOptions()


def _security_profile(
    profile: cri.SecurityProfile | None, deprecated_path: str, *, what: str
) -> SecurityProfile | None:
    """The structured profile when given, else the deprecated path string, else None."""
    if profile is not None:
        profile_type = _lookup(_PROFILE_TYPES, profile.profile_type, f"{what} profile type")
        if profile_type is not ProfileType.LOCALHOST:
            return SecurityProfile(profile_type=profile_type)
        if not profile.localhost_ref:
            raise InvalidArgument(f"{what} profile type Localhost needs localhost_ref")
        return SecurityProfile(profile_type=profile_type, localhost_ref=profile.localhost_ref)
    if not deprecated_path:
        return None
    if deprecated_path.startswith(_LOCALHOST_PREFIX):
        reference = deprecated_path.removeprefix(_LOCALHOST_PREFIX)
        if not reference:
            raise InvalidArgument(f"{what} profile {deprecated_path!r} names no profile")
        return SecurityProfile(profile_type=ProfileType.LOCALHOST, localhost_ref=reference)
    if deprecated_path not in _DEPRECATED_PROFILES:
        raise InvalidArgument(
            f"unknown {what} profile {deprecated_path!r}: expected runtime/default, "
            "unconfined or localhost/<profile>"
        )
    return SecurityProfile(profile_type=_DEPRECATED_PROFILES[deprecated_path])


def _int64(present: bool, value: cri.Int64Value) -> int | None:
    return value.value if present else None


def signal_from_cri(value: cri.Signal.ValueType) -> str:
    """A CRI Signal as a signal name ("SIGTERM", "SIGRTMIN+3"); RUNTIME_DEFAULT is ""."""
    return _lookup(_SIGNAL_NAMES, value, "stop signal")


def signal_to_cri(name: str) -> cri.Signal.ValueType:
    """A signal name ("SIGTERM", "TERM", "15", "SIGRTMIN+3") as a CRI Signal.

    Anything not expressible (empty, unknown) is RUNTIME_DEFAULT.
    """
    key = name.strip().upper()
    if key.isdigit():
        key = _signal_name_of_number(int(key))
    elif key and not key.startswith("SIG"):
        key = f"SIG{key}"
    return _SIGNALS_BY_NAME.get(key, cri.RUNTIME_DEFAULT)


def _signal_name_of_number(number: int) -> str:
    low, high = int(signal.SIGRTMIN), int(signal.SIGRTMAX)
    if low <= number <= high:
        if number - low <= _REALTIME_OFFSETS:
            return "SIGRTMIN" if number == low else f"SIGRTMIN+{number - low}"
        return "SIGRTMAX" if number == high else f"SIGRTMAX-{high - number}"
    try:
        return signal.Signals(number).name
    except ValueError:
        return ""


# --- resources ----------------------------------------------------------------------------


def resources_from_cri(resources: cri.LinuxContainerResources) -> LinuxContainerResources:
    return LinuxContainerResources(
        cpu_period=resources.cpu_period,
        cpu_quota=resources.cpu_quota,
        cpu_shares=resources.cpu_shares,
        memory_limit_in_bytes=resources.memory_limit_in_bytes,
        oom_score_adj=resources.oom_score_adj,
        cpuset_cpus=resources.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems,
        hugepage_limits=tuple(
            HugepageLimit(page_size=limit.page_size, limit=limit.limit)
            for limit in resources.hugepage_limits
        ),
        unified=dict(resources.unified),
        memory_swap_limit_in_bytes=resources.memory_swap_limit_in_bytes,
    )


def resources_to_cri(resources: LinuxContainerResources) -> cri.LinuxContainerResources:
    return cri.LinuxContainerResources(
        cpu_period=resources.cpu_period,
        cpu_quota=resources.cpu_quota,
        cpu_shares=resources.cpu_shares,
        memory_limit_in_bytes=resources.memory_limit_in_bytes,
        oom_score_adj=resources.oom_score_adj,
        cpuset_cpus=resources.cpuset_cpus,
        cpuset_mems=resources.cpuset_mems,
        hugepage_limits=[
            cri.HugepageLimit(page_size=limit.page_size, limit=limit.limit)
            for limit in resources.hugepage_limits
        ],
        unified=dict(resources.unified),
        memory_swap_limit_in_bytes=resources.memory_swap_limit_in_bytes,
    )


# --- pod sandbox config -------------------------------------------------------------------


def pod_config_from_cri(config: cri.PodSandboxConfig) -> PodSandboxConfig:
    """RunPodSandbox's config; metadata with a name is required."""
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("PodSandboxConfig.metadata.name is required")
    metadata = config.metadata
    dns = config.dns_config
    return PodSandboxConfig(
        metadata=PodSandboxMetadata(
            name=metadata.name,
            uid=metadata.uid,
            namespace=metadata.namespace,
            attempt=metadata.attempt,
        ),
        hostname=config.hostname,
        log_directory=config.log_directory,
        dns_config=(
            DNSConfig(
                servers=tuple(dns.servers),
                searches=tuple(dns.searches),
                options=tuple(dns.options),
            )
            if config.HasField("dns_config")
            else None
        ),
        port_mappings=tuple(_port_mapping_from_cri(port) for port in config.port_mappings),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        linux=_linux_pod_config_from_cri(config.linux),
    )


def _port_mapping_from_cri(port: cri.PortMapping) -> PortMapping:
    return PortMapping(
        container_port=port.container_port,
        host_port=port.host_port,
        protocol=_lookup(_PROTOCOLS, port.protocol, "port mapping protocol"),
        host_ip=port.host_ip,
    )


def _linux_pod_config_from_cri(linux: cri.LinuxPodSandboxConfig) -> LinuxPodSandboxConfig:
    return LinuxPodSandboxConfig(
        cgroup_parent=linux.cgroup_parent,
        security_context=_sandbox_security_context_from_cri(linux.security_context),
        sysctls=dict(linux.sysctls),
        overhead=resources_from_cri(linux.overhead) if linux.HasField("overhead") else None,
        resources=resources_from_cri(linux.resources) if linux.HasField("resources") else None,
    )


def _sandbox_security_context_from_cri(
    context: cri.LinuxSandboxSecurityContext,
) -> LinuxSandboxSecurityContext:
    return LinuxSandboxSecurityContext(
        namespace_options=_optional_namespace_options(
            context.HasField("namespace_options"), context.namespace_options
        ),
        run_as_user=_int64(context.HasField("run_as_user"), context.run_as_user),
        run_as_group=_int64(context.HasField("run_as_group"), context.run_as_group),
        readonly_rootfs=context.readonly_rootfs,
        supplemental_groups=tuple(context.supplemental_groups),
        supplemental_groups_policy=_lookup(
            _GROUPS_POLICIES, context.supplemental_groups_policy, "supplemental groups policy"
        ),
        privileged=context.privileged,
        seccomp=_security_profile(
            context.seccomp if context.HasField("seccomp") else None,
            context.seccomp_profile_path,
            what="seccomp",
        ),
        apparmor=_security_profile(
            context.apparmor if context.HasField("apparmor") else None, "", what="apparmor"
        ),
    )


# --- container config ---------------------------------------------------------------------


def container_config_from_cri(config: cri.ContainerConfig) -> ContainerConfig:
    """CreateContainer's config; metadata with a name and an image are required."""
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("ContainerConfig.metadata.name is required")
    if not config.image.image:
        raise InvalidArgument(f"container {config.metadata.name!r}: image.image is required")
    if config.CDI_devices:
        names = ", ".join(device.name for device in config.CDI_devices)
        raise InvalidArgument(
            f"container {config.metadata.name!r}: CDI devices are not supported ({names})"
        )
    linux = config.linux
    return ContainerConfig(
        metadata=ContainerMetadata(name=config.metadata.name, attempt=config.metadata.attempt),
        image=ImageSpec(
            image=config.image.image,
            user_specified_image=config.image.user_specified_image,
            annotations=dict(config.image.annotations),
        ),
        command=tuple(config.command),
        args=tuple(config.args),
        working_dir=config.working_dir,
        envs=tuple(EnvVar(key=env.key, value=env.value) for env in config.envs),
        mounts=tuple(_mount_from_cri(mount) for mount in config.mounts),
        devices=tuple(
            Device(
                container_path=device.container_path,
                host_path=device.host_path,
                # OCI: an omitted access string means "rwm".
                permissions=device.permissions or "rwm",
            )
            for device in config.devices
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        log_path=config.log_path,
        stdin=config.stdin,
        stdin_once=config.stdin_once,
        tty=config.tty,
        linux=LinuxContainerConfig(
            resources=resources_from_cri(linux.resources) if linux.HasField("resources") else None,
            security_context=_container_security_context_from_cri(linux.security_context),
        ),
        stop_signal=signal_from_cri(config.stop_signal),
    )


def _mount_from_cri(mount: cri.Mount) -> Mount:
    if mount.HasField("image"):
        raise InvalidArgument(f"mount {mount.container_path!r}: image volumes are not supported")
    if mount.uidMappings or mount.gidMappings:
        raise InvalidArgument(f"mount {mount.container_path!r}: idmapped mounts are not supported")
    return Mount(
        container_path=mount.container_path,
        host_path=mount.host_path,
        readonly=mount.readonly,
        selinux_relabel=mount.selinux_relabel,
        propagation=_lookup(_PROPAGATIONS, mount.propagation, "mount propagation"),
        recursive_read_only=mount.recursive_read_only,
    )


def _container_security_context_from_cri(
    context: cri.LinuxContainerSecurityContext,
) -> LinuxContainerSecurityContext:
    capabilities = context.capabilities
    return LinuxContainerSecurityContext(
        capabilities=(
            Capability(
                add_capabilities=tuple(capabilities.add_capabilities),
                drop_capabilities=tuple(capabilities.drop_capabilities),
                add_ambient_capabilities=tuple(capabilities.add_ambient_capabilities),
            )
            if context.HasField("capabilities")
            else None
        ),
        privileged=context.privileged,
        namespace_options=_optional_namespace_options(
            context.HasField("namespace_options"), context.namespace_options
        ),
        run_as_user=_int64(context.HasField("run_as_user"), context.run_as_user),
        run_as_group=_int64(context.HasField("run_as_group"), context.run_as_group),
        run_as_username=context.run_as_username,
        readonly_rootfs=context.readonly_rootfs,
        supplemental_groups=tuple(context.supplemental_groups),
        supplemental_groups_policy=_lookup(
            _GROUPS_POLICIES, context.supplemental_groups_policy, "supplemental groups policy"
        ),
        no_new_privs=context.no_new_privs,
        # Empty means "not sent" (see the module docstring): the runtime's defaults apply.
        masked_paths=tuple(context.masked_paths) or None,
        readonly_paths=tuple(context.readonly_paths) or None,
        seccomp=_security_profile(
            context.seccomp if context.HasField("seccomp") else None,
            context.seccomp_profile_path,
            what="seccomp",
        ),
        apparmor=_security_profile(
            context.apparmor if context.HasField("apparmor") else None,
            context.apparmor_profile,
            what="apparmor",
        ),
    )


# --- sandboxes and containers to CRI ------------------------------------------------------


def _pod_metadata_to_cri(metadata: PodSandboxMetadata) -> cri.PodSandboxMetadata:
    return cri.PodSandboxMetadata(
        name=metadata.name,
        uid=metadata.uid,
        namespace=metadata.namespace,
        attempt=metadata.attempt,
    )


def sandbox_to_cri(sandbox: Sandbox) -> cri.PodSandbox:
    """A ListPodSandbox entry."""
    config = sandbox.config
    return cri.PodSandbox(
        id=sandbox.id,
        metadata=_pod_metadata_to_cri(config.metadata),
        state=_SANDBOX_STATES_TO_CRI[sandbox.state],
        created_at=sandbox.created_ns,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=sandbox.runtime_handler,
    )


def sandbox_status_to_cri(sandbox: Sandbox) -> cri.PodSandboxStatus:
    """PodSandboxStatus: the first address is the pod IP, the others `additional_ips`."""
    config = sandbox.config
    addresses = sandbox.ip_addresses
    return cri.PodSandboxStatus(
        id=sandbox.id,
        metadata=_pod_metadata_to_cri(config.metadata),
        state=_SANDBOX_STATES_TO_CRI[sandbox.state],
        created_at=sandbox.created_ns,
        network=cri.PodSandboxNetworkStatus(
            ip=addresses[0] if addresses else "",
            additional_ips=[cri.PodIP(ip=address) for address in addresses[1:]],
        ),
        linux=cri.LinuxPodSandboxStatus(
            namespaces=cri.Namespace(options=namespace_options_to_cri(sandbox.namespace_options))
        ),
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        runtime_handler=sandbox.runtime_handler,
    )


def _image_spec_to_cri(spec: ImageSpec) -> cri.ImageSpec:
    # Like CRI-O, show the image the user asked for (the pod's `image:`) rather than the
    # resolved id the kubelet puts in `image`; image_ref / image_id carry the identity.
    return cri.ImageSpec(
        image=spec.user_specified_image or spec.image,
        user_specified_image=spec.user_specified_image,
        annotations=dict(spec.annotations),
    )


def container_to_cri(container: Container) -> cri.Container:
    """A ListContainers entry."""
    config = container.config
    return cri.Container(
        id=container.id,
        pod_sandbox_id=container.pod_id,
        metadata=cri.ContainerMetadata(name=config.metadata.name, attempt=config.metadata.attempt),
        image=_image_spec_to_cri(config.image),
        image_ref=container.image_ref,
        image_id=container.image_id,
        state=_CONTAINER_STATES_TO_CRI[container.state],
        created_at=container.created_ns,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
    )


def mount_to_cri(mount: Mount) -> cri.Mount:
    return cri.Mount(
        container_path=mount.container_path,
        host_path=mount.host_path,
        readonly=mount.readonly,
        selinux_relabel=mount.selinux_relabel,
        propagation=_PROPAGATIONS_TO_CRI[mount.propagation],
        recursive_read_only=mount.recursive_read_only,
    )


def _exit_reason(container: Container) -> str:
    if container.reason or container.state is not ContainerState.EXITED:
        return container.reason
    return "Completed" if container.exit_code == 0 else "Error"


def container_status_to_cri(
    container: Container, *, log_path: str | None = None, stop_signal: str | None = None
) -> cri.ContainerStatus:
    """ContainerStatus.

    `log_path` defaults to the container's own; `stop_signal` is the signal StopContainer
    will send (the config's, else the image's), defaulting to the config's. An exited
    container without a recorded reason reports Completed or Error by its exit code.
    """
    config = container.config
    resources = config.linux.resources
    status = cri.ContainerStatus(
        id=container.id,
        metadata=cri.ContainerMetadata(name=config.metadata.name, attempt=config.metadata.attempt),
        state=_CONTAINER_STATES_TO_CRI[container.state],
        created_at=container.created_ns,
        started_at=container.started_ns,
        finished_at=container.finished_ns,
        exit_code=container.exit_code,
        image=_image_spec_to_cri(config.image),
        image_ref=container.image_ref,
        image_id=container.image_id,
        reason=_exit_reason(container),
        message=container.message,
        labels=dict(config.labels),
        annotations=dict(config.annotations),
        mounts=[mount_to_cri(mount) for mount in config.mounts],
        log_path=container.log_path if log_path is None else log_path,
        stop_signal=signal_to_cri(config.stop_signal if stop_signal is None else stop_signal),
    )
    if resources is not None:
        status.resources.linux.CopyFrom(resources_to_cri(resources))
    if container.user is not None:
        status.user.linux.CopyFrom(
            cri.LinuxContainerUser(
                uid=container.user.uid,
                gid=container.user.gid,
                supplemental_groups=list(container.user.supplemental_groups),
            )
        )
    return status


# --- list filters -------------------------------------------------------------------------


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True)
class SandboxFilter:
    """ListPodSandbox's filter: every given criterion must hold; `id` may be a prefix."""

    id: str = ""
    state: SandboxState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, sandbox: Sandbox) -> bool:
        return (
            sandbox.id.startswith(self.id)
            and (self.state is None or sandbox.state is self.state)
            and _labels_match(self.labels, sandbox.config.labels)
        )


@dataclass(frozen=True)
class ContainerFilter:
    """ListContainers' filter: every given criterion must hold; ids may be prefixes."""

    id: str = ""
    pod_id: str = ""
    state: ContainerState | None = None
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, container: Container) -> bool:
        return (
            container.id.startswith(self.id)
            and container.pod_id.startswith(self.pod_id)
            and (self.state is None or container.state is self.state)
            and _labels_match(self.labels, container.config.labels)
        )


def sandbox_filter_from_cri(message: cri.PodSandboxFilter) -> SandboxFilter:
    return SandboxFilter(
        id=message.id,
        state=(
            _lookup(_SANDBOX_STATES, message.state.state, "sandbox state")
            if message.HasField("state")
            else None
        ),
        labels=dict(message.label_selector),
    )


def container_filter_from_cri(message: cri.ContainerFilter) -> ContainerFilter:
    return ContainerFilter(
        id=message.id,
        pod_id=message.pod_sandbox_id,
        state=(
            _lookup(_CONTAINER_STATES, message.state.state, "container state")
            if message.HasField("state")
            else None
        ),
        labels=dict(message.label_selector),
    )
