"""The typed error tree of cryopod.

Every error a request can meet is a `CryopodError`; each class names the gRPC status code
it maps to (by name, so domain code never imports grpc). `server/` converts them to gRPC
statuses in exactly one place. Facts live in attributes, the message says what to do.
"""

from __future__ import annotations

from typing import ClassVar


class CryopodError(Exception):
    """Base of every error cryopod raises on purpose."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CryopodError):
    """The request is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(CryopodError):
    """The object the request names does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(CryopodError):
    """An object with that name exists already."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(CryopodError):
    """The object is in the wrong state for the request."""

    code = "FAILED_PRECONDITION"


class PermissionDenied(CryopodError):
    """Policy forbids the request."""

    code = "PERMISSION_DENIED"


class Unauthenticated(CryopodError):
    """Credentials are missing or wrong."""

    code = "UNAUTHENTICATED"


class ResourceExhausted(CryopodError):
    """A disk, quota or limit is full."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(CryopodError):
    """The operation took longer than allowed."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(CryopodError):
    """A remote service (registry, plugin) could not be reached or failed."""

    code = "UNAVAILABLE"


class DataLoss(CryopodError):
    """Content does not match what it claims to be."""

    code = "DATA_LOSS"


class Internal(CryopodError):
    """An invariant of cryopod itself broke."""

    code = "INTERNAL"


class Unimplemented(CryopodError):
    """The call is not implemented yet."""

    code = "UNIMPLEMENTED"


# --- configuration -----------------------------------------------------------------------


class ConfigError(CryopodError):
    """A configuration file is wrong; raised at start-up, never per request."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        where = f"{path}: " if path else ""
        what = f"key '{key}': " if key else ""
        super().__init__(f"{where}{what}{message}")
        self.path = path
        self.key = key


# --- images --------------------------------------------------------------------------------


class InvalidReference(InvalidArgument):
    """An image reference that cannot be parsed."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class ImageNotFound(NotFound):
    """No image in the store (or registry) matches the reference."""

    def __init__(self, reference: str, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(f"image {reference!r} not found{suffix}")
        self.reference = reference


class RegistryBlocked(PermissionDenied):
    """registries.conf blocks the registry of the reference."""

    def __init__(self, reference: str, prefix: str, path: str) -> None:
        super().__init__(f"pulling {reference!r} is blocked by registry entry {prefix!r} in {path}")
        self.reference = reference
        self.prefix = prefix


class RegistryAuthFailed(Unauthenticated):
    """The registry refused the credentials (or demanded some that were not given)."""

    def __init__(self, registry: str, detail: str) -> None:
        super().__init__(f"registry {registry} refused authentication: {detail}")
        self.registry = registry


class RegistryDenied(PermissionDenied):
    """The registry authenticated us but denied access."""

    def __init__(self, registry: str, detail: str) -> None:
        super().__init__(f"registry {registry} denied access: {detail}")
        self.registry = registry


class RegistryUnavailable(Unavailable):
    """The registry could not be reached or answered with a server error."""

    def __init__(self, registry: str, detail: str) -> None:
        super().__init__(f"registry {registry} unavailable: {detail}")
        self.registry = registry


class DigestMismatch(DataLoss):
    """Downloaded or imported content does not hash to its declared digest."""

    def __init__(self, expected: str, actual: str, what: str = "blob") -> None:
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class UnsupportedMediaType(InvalidArgument):
    """A manifest or layer media type cryopod cannot handle."""

    def __init__(self, media_type: str, what: str = "content") -> None:
        super().__init__(f"unsupported {what} media type {media_type!r}")
        self.media_type = media_type


class NoMatchingPlatform(NotFound):
    """An image index has no manifest for this host's platform."""

    def __init__(self, reference: str, platform: str, available: list[str]) -> None:
        listed = ", ".join(available) or "none"
        super().__init__(
            f"image {reference!r} has no manifest for platform {platform} (available: {listed})"
        )
        self.reference = reference
        self.platform = platform


class UnsafeLayer(InvalidArgument):
    """A layer tarball tries to write outside its directory or is otherwise malformed."""

    def __init__(self, entry: str, reason: str) -> None:
        super().__init__(f"layer refused: entry {entry!r} {reason}")
        self.entry = entry
        self.reason = reason


# --- subprocesses ----------------------------------------------------------------------------


class CommandFailed(CryopodError):
    """A helper binary exited non-zero; raised by the subprocess seam only."""

    code = "INTERNAL"

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"{argv[0]} exited with {returncode}: {tail}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class CommandTimeout(DeadlineExceeded):
    """A helper binary did not finish in time and was killed."""

    def __init__(self, argv: list[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:g}s")
        self.argv = argv
        self.timeout = timeout


# --- runtime (runc, conmon) ------------------------------------------------------------------


class OCIRuntimeError(Internal):
    """runc (or conmon driving it) refused an operation; `runtime_message` is runc's own word."""

    def __init__(self, container_id: str, operation: str, runtime_message: str) -> None:
        super().__init__(f"{operation} container {container_id}: {runtime_message}")
        self.container_id = container_id
        self.operation = operation
        self.runtime_message = runtime_message


class OCIRuntimeCreateFailed(OCIRuntimeError):
    """conmon or `runc create` failed; nothing of the container was left behind."""

    def __init__(self, container_id: str, runtime_message: str) -> None:
        super().__init__(container_id, "create", runtime_message)


class RuntimeContainerNotFound(NotFound):
    """The OCI runtime has no container with that id."""

    def __init__(self, container_id: str) -> None:
        super().__init__(f"container {container_id} does not exist in the OCI runtime")
        self.container_id = container_id


class RuntimeContainerNotRunning(FailedPrecondition):
    """The operation needs a running container (and its conmon), which has exited."""

    def __init__(self, container_id: str, operation: str) -> None:
        super().__init__(f"cannot {operation} container {container_id}: it is not running")
        self.container_id = container_id
        self.operation = operation


class OCIRuntimeTimeout(DeadlineExceeded):
    """conmon or the container did not do what was asked in time."""

    def __init__(self, container_id: str, what: str, timeout: float) -> None:
        super().__init__(f"container {container_id}: {what} within {timeout:g}s")
        self.container_id = container_id
        self.timeout = timeout


# --- pods and containers -------------------------------------------------------------------


class InvalidField(InvalidArgument):
    """A field of a pod or container config has a value the runtime cannot use."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"invalid {field}: {reason}")
        self.field = field
        self.reason = reason


class UnknownCapability(InvalidArgument):
    """A capability name that is not a Linux capability."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown capability {name!r}")
        self.name = name


class UnknownUser(InvalidArgument):
    """A user name the container's /etc/passwd does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"user {name!r} not found in the container's /etc/passwd")
        self.name = name


class UnknownGroup(InvalidArgument):
    """A group name the container's /etc/group does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"group {name!r} not found in the container's /etc/group")
        self.name = name


# --- network (CNI) -------------------------------------------------------------------------


class NetworkNotReady(FailedPrecondition):
    """No usable CNI network: no valid config, or a plugin it needs is missing or unusable."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"pod network is not ready: {reason}")
        self.reason = reason


class InvalidNetworkConfig(InvalidArgument):
    """A CNI network configuration (a file, or the embedded default) is malformed."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"CNI network config {source}: {reason}")
        self.source = source
        self.reason = reason


class CNIPluginFailed(Unavailable):
    """A CNI plugin reported an error; `cni_code`, `cni_message`, `details` are its own words."""

    def __init__(
        self,
        *,
        network: str,
        plugin: str,
        command: str,
        sandbox_id: str,
        cni_code: int | None,
        cni_message: str,
        details: str = "",
    ) -> None:
        code = f" (CNI error {cni_code})" if cni_code is not None else ""
        more = f": {details}" if details else ""
        target = f" for sandbox {sandbox_id}" if sandbox_id else ""
        super().__init__(
            f"CNI {command} of network {network!r}{target}: plugin {plugin} failed{code}: "
            f"{cni_message}{more}"
        )
        self.network = network
        self.plugin = plugin
        self.command = command
        self.sandbox_id = sandbox_id
        self.cni_code = cni_code
        self.cni_message = cni_message
        self.details = details


class CNIPluginTimeout(DeadlineExceeded):
    """A CNI plugin did not finish in time and was killed."""

    def __init__(
        self, *, network: str, plugin: str, command: str, sandbox_id: str, timeout: float
    ) -> None:
        target = f" for sandbox {sandbox_id}" if sandbox_id else ""
        super().__init__(
            f"CNI {command} of network {network!r}{target}: plugin {plugin} did not finish "
            f"within {timeout:g}s"
        )
        self.network = network
        self.plugin = plugin
        self.command = command
        self.sandbox_id = sandbox_id
        self.timeout = timeout


class InvalidCNIResult(Internal):
    """A CNI result (a plugin's output, or a cached copy of one) is malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"invalid CNI result: {reason}")
        self.reason = reason


# --- streaming -----------------------------------------------------------------------------


class InvalidStreamRequest(InvalidArgument):
    """An Exec, Attach or PortForward request the streaming server cannot serve."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"invalid {kind} request: {reason}")
        self.kind = kind
        self.reason = reason


class TooManyPendingStreams(ResourceExhausted):
    """Every streaming URL slot is taken by a request nobody has used yet."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many pending streaming requests (limit {limit}); retry when some have expired"
        )
        self.limit = limit


class StreamClosed(Unavailable):
    """The client of a streaming session went away; raised when writing to it."""

    def __init__(self, what: str) -> None:
        super().__init__(f"streaming client closed {what}")
        self.what = what


class SpdyProtocolError(InvalidArgument):
    """A SPDY peer sent bytes that are not valid SPDY/3.1; the session cannot go on."""

    def __init__(self, reason: str, *, stream_id: int = 0) -> None:
        where = f" (stream {stream_id})" if stream_id else ""
        super().__init__(f"SPDY protocol error{where}: {reason}")
        self.reason = reason
        self.stream_id = stream_id
