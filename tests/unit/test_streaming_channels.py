"""WebSocket channel framing: channel prefixes, the base64 variant, the v5 close signal."""

from __future__ import annotations

import pytest

from cryopod.streaming.channels import (
    DEFAULT_PROTOCOL,
    PORTFORWARD_PROTOCOLS,
    REMOTECOMMAND_PROTOCOLS,
    ChannelClose,
    ChannelData,
    decode_message,
    encode_close,
    encode_message,
)

V5 = REMOTECOMMAND_PROTOCOLS["v5.channel.k8s.io"]
V4 = REMOTECOMMAND_PROTOCOLS["v4.channel.k8s.io"]
V4_BASE64 = REMOTECOMMAND_PROTOCOLS["v4.base64.channel.k8s.io"]
V1_BASE64 = REMOTECOMMAND_PROTOCOLS["base64.channel.k8s.io"]


def test_binary_messages_start_with_the_channel_byte() -> None:
    assert encode_message(V4, 1, b"out") == b"\x01out"
    assert encode_message(V4, 3, b"") == b"\x03"
    assert decode_message(V4, b"\x00foo\n") == ChannelData(0, b"foo\n")
    assert decode_message(V4, b"\x04{}") == ChannelData(4, b"{}")


def test_base64_messages_are_text_with_a_digit_and_base64() -> None:
    # The example of apimachinery's wsstream: "foo\n" on stdin, "\n" on stdout.
    assert decode_message(V1_BASE64, "0Zm9vCg==") == ChannelData(0, b"foo\n")
    assert encode_message(V1_BASE64, 1, b"\n") == "1Cg=="
    assert encode_message(V4_BASE64, 2, b"") == "2"


def test_malformed_base64_is_ignored() -> None:
    assert decode_message(V4_BASE64, "0not base64!") is None


def test_v5_close_signal() -> None:
    assert encode_close(0) == b"\xff\x00"
    assert decode_message(V5, b"\xff\x00") == ChannelClose(0)
    assert decode_message(V5, b"\xff") is None  # the channel byte is missing
    assert decode_message(V5, b"\xff\x00\x01") is None


def test_channel_255_is_data_before_v5() -> None:
    assert decode_message(V4, b"\xff\x00") == ChannelData(255, b"\x00")


def test_empty_messages_are_ignored() -> None:
    assert decode_message(V4, b"") is None
    assert decode_message(V4_BASE64, "") is None


@pytest.mark.parametrize(
    ("name", "json_status", "base64", "close_signal"),
    [
        ("v5.channel.k8s.io", True, False, True),
        ("v4.channel.k8s.io", True, False, False),
        ("v4.base64.channel.k8s.io", True, True, False),
        ("v3.channel.k8s.io", False, False, False),
        ("channel.k8s.io", False, False, False),
        ("base64.channel.k8s.io", False, True, False),
    ],
)
def test_protocol_properties(
    name: str, json_status: bool, base64: bool, close_signal: bool
) -> None:
    protocol = REMOTECOMMAND_PROTOCOLS[name]
    assert (protocol.json_status, protocol.base64, protocol.close_signal) == (
        json_status,
        base64,
        close_signal,
    )


def test_port_forward_speaks_only_the_v4_protocols() -> None:
    assert set(PORTFORWARD_PROTOCOLS) == {"v4.channel.k8s.io", "v4.base64.channel.k8s.io"}
    assert DEFAULT_PROTOCOL.name == "channel.k8s.io" and not DEFAULT_PROTOCOL.base64
