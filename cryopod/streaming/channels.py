"""The WebSocket channel protocols (`channel.k8s.io` family) for exec, attach and port-forward.

Every message starts with its channel: a byte (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize
for exec/attach; 2n data and 2n+1 error for the n-th forwarded port) in the binary protocols,
an ASCII digit ('0' + channel) followed by the base64 of the payload in the `base64.` ones,
which use text messages. `v5.channel.k8s.io` adds a close signal: channel 255 with one byte,
the channel the sender will not write to again (a client closing stdin sends [255, 0]).
Protocols before v4 report a failure as plain text on the error channel, v4 and later as a
Status in JSON.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

STDIN_CHANNEL = 0
STDOUT_CHANNEL = 1
STDERR_CHANNEL = 2
ERROR_CHANNEL = 3
RESIZE_CHANNEL = 4
CLOSE_SIGNAL = 255

PORT_DATA_CHANNEL = 0
PORT_ERROR_CHANNEL = 1


@dataclass(frozen=True)
class ChannelProtocol:
    """The properties of one negotiated WebSocket subprotocol."""

    name: str
    base64: bool = False
    json_status: bool = False
    close_signal: bool = False


_PROTOCOLS = (
    ChannelProtocol("v5.channel.k8s.io", json_status=True, close_signal=True),
    ChannelProtocol("v4.channel.k8s.io", json_status=True),
    ChannelProtocol("v4.base64.channel.k8s.io", base64=True, json_status=True),
    ChannelProtocol("v3.channel.k8s.io"),
    ChannelProtocol("v2.channel.k8s.io"),
    ChannelProtocol("channel.k8s.io"),
    ChannelProtocol("base64.channel.k8s.io", base64=True),
)
REMOTECOMMAND_PROTOCOLS: dict[str, ChannelProtocol] = {p.name: p for p in _PROTOCOLS}
"""Exec/attach subprotocols by name; a client that names none gets `channel.k8s.io`."""

PORTFORWARD_PROTOCOLS: dict[str, ChannelProtocol] = {
    name: REMOTECOMMAND_PROTOCOLS[name]
    for name in ("v4.channel.k8s.io", "v4.base64.channel.k8s.io")
}
"""Port-forward subprotocols by name; a client that names none gets the binary framing."""

DEFAULT_PROTOCOL = REMOTECOMMAND_PROTOCOLS["channel.k8s.io"]


@dataclass(frozen=True)
class ChannelData:
    """A decoded data message."""

    channel: int
    data: bytes


@dataclass(frozen=True)
class ChannelClose:
    """A decoded v5 close signal: the client will not write to `channel` again."""

    channel: int


def encode_message(protocol: ChannelProtocol, channel: int, data: bytes) -> bytes | str:
    """One WebSocket message carrying `data` on `channel`: bytes (binary) or str (text)."""
    if protocol.base64:
        return chr(ord("0") + channel) + base64.b64encode(data).decode("ascii")
    return bytes((channel,)) + data


def encode_close(channel: int) -> bytes:
    """The v5 close signal for `channel`."""
    return bytes((CLOSE_SIGNAL, channel))


def decode_message(
    protocol: ChannelProtocol, message: bytes | str
) -> ChannelData | ChannelClose | None:
    """Decode a client message; None for what the server ignores (empty, malformed)."""
    raw = message.encode("utf-8", "replace") if isinstance(message, str) else message
    if not raw:
        return None
    channel, payload = raw[0], raw[1:]
    if protocol.base64:
        channel -= ord("0")
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            return None
    elif protocol.close_signal and channel == CLOSE_SIGNAL:
        return ChannelClose(payload[0]) if len(payload) == 1 else None
    if channel < 0:
        return None
    return ChannelData(channel, payload)
