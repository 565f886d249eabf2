"""The streaming requests a CRI call turns into a URL, and their validation.

These mirror the CRI `ExecRequest`, `AttachRequest` and `PortForwardRequest` messages; the
server stores one per token and serves it when the client connects.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryopod.errors import InvalidStreamRequest


@dataclass(frozen=True, kw_only=True)
class ExecRequest:
    """Run `cmd` in a running container with the chosen streams."""

    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True, kw_only=True)
class AttachRequest:
    """Connect to a running container's main process."""

    container_id: str
    tty: bool = False
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False


@dataclass(frozen=True, kw_only=True)
class PortForwardRequest:
    """Forward connections to ports in a pod's network namespace.

    `ports` may be empty: SPDY clients name the port per stream, WebSocket clients then name
    them in the URL's `port` query parameters.
    """

    pod_sandbox_id: str
    ports: tuple[int, ...] = ()


StreamRequest = ExecRequest | AttachRequest | PortForwardRequest


def validate_request(request: StreamRequest) -> None:
    """Raise `InvalidStreamRequest` for what the kubelet's streaming server refuses too."""
    if isinstance(request, PortForwardRequest):
        _validate_port_forward(request)
        return
    kind = "exec" if isinstance(request, ExecRequest) else "attach"
    if not request.container_id:
        raise InvalidStreamRequest(kind, "missing required container_id")
    if request.tty and request.stderr:
        # With a TTY the process has one output; there is nothing to tell stderr apart by.
        raise InvalidStreamRequest(kind, "tty and stderr cannot both be true")
    if not (request.stdin or request.stdout or request.stderr):
        raise InvalidStreamRequest(kind, "one of stdin, stdout, or stderr must be set")
    if isinstance(request, ExecRequest) and not request.cmd:
        raise InvalidStreamRequest(kind, "cmd must not be empty")


def _validate_port_forward(request: PortForwardRequest) -> None:
    if not request.pod_sandbox_id:
        raise InvalidStreamRequest("port-forward", "missing required pod_sandbox_id")
    for port in request.ports:
        if not 1 <= port <= 65535:
            raise InvalidStreamRequest("port-forward", f"port {port} is not in 1-65535")
