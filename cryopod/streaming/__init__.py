"""The streaming service: exec, attach and port-forward sessions for the kubelet and crictl.

`Exec`, `Attach` and `PortForward` answer a URL on the `StreamingServer`; the client connects
there over WebSocket (`channel.k8s.io` family, or SPDY tunnelled in WebSocket for
port-forward) or SPDY/3.1, and the server drives a `StreamingBackend` with plain byte streams.
"""

from cryopod.streaming.backend import (
    ExecStreams,
    InputStream,
    OutputStream,
    StreamingBackend,
    TerminalSize,
)
from cryopod.streaming.model import AttachRequest, ExecRequest, PortForwardRequest
from cryopod.streaming.server import StreamingServer
from cryopod.streaming.settings import StreamingSettings

__all__ = [
    "AttachRequest",
    "ExecRequest",
    "ExecStreams",
    "InputStream",
    "OutputStream",
    "PortForwardRequest",
    "StreamingBackend",
    "StreamingServer",
    "StreamingSettings",
    "TerminalSize",
]
