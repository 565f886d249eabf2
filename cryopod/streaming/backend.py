"""The seam between the streaming server and the runtime.

The server speaks the wire protocols (WebSocket channels, SPDY streams); a `StreamingBackend`
runs the process, attaches to a container or connects to a pod's port. The two meet at plain
byte streams that know nothing of either protocol: an `InputStream` carries what the client
sends, an `OutputStream` what it receives.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_READ_SIZE = 64 * 1024


class InputStream(Protocol):
    """Bytes from the client (stdin, or a port-forward connection's upstream half)."""

    async def read(self, max_bytes: int = DEFAULT_READ_SIZE) -> bytes:
        """Up to `max_bytes` bytes as soon as some are there; b"" once the client closed."""
        ...


class OutputStream(Protocol):
    """Bytes to the client (stdout, stderr, or a port-forward connection's downstream half)."""

    async def write(self, data: bytes) -> None:
        """Send `data`, waiting while the client is slow; raises `StreamClosed` once it is gone."""
        ...

    async def close(self) -> None:
        """Half-close: the client sees the end of this stream. Idempotent."""
        ...


@dataclass(frozen=True)
class TerminalSize:
    """A terminal's size in characters, as the client's resize events carry it."""

    width: int
    height: int


@dataclass(frozen=True)
class ExecStreams:
    """The streams of one exec or attach; a stream the request did not ask for is None."""

    stdin: InputStream | None = None
    stdout: OutputStream | None = None
    stderr: OutputStream | None = None


class StreamingBackend(Protocol):
    """What the streaming server calls once a client has connected with a valid token.

    Errors raised here reach the client as a Kubernetes Status on the error stream. A call is
    cancelled when the client disconnects; the backend must then stop what it started (kill
    the exec'd process, detach) before it re-raises. `resize` yields only in TTY mode and ends
    when the client stops sending sizes; a backend may ignore it.
    """

    async def exec(
        self,
        container_id: str,
        cmd: Sequence[str],
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> int:
        """Run `cmd` in the container, copying the streams; answer its exit code (0-255)."""
        ...

    async def attach(
        self,
        container_id: str,
        streams: ExecStreams,
        *,
        tty: bool,
        resize: AsyncIterator[TerminalSize],
    ) -> None:
        """Connect the streams to the container's main process until it or the client ends."""
        ...

    async def port_forward(
        self, pod_sandbox_id: str, port: int, inbound: InputStream, outbound: OutputStream
    ) -> None:
        """Connect to `port` in the pod's network namespace and copy both ways until done.

        `inbound` ends (b"") when the client half-closes; return once the pod side has closed
        too. One call serves one forwarded connection; calls for one session run concurrently.
        """
        ...
