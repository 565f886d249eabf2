"""Streaming requests and settings validation, the inbound buffer, and handshake helpers."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from cryopod.errors import ConfigError, InvalidStreamRequest
from cryopod.streaming import httpstream, websocket
from cryopod.streaming.buffers import InboundBuffer
from cryopod.streaming.model import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    validate_request,
)
from cryopod.streaming.settings import StreamingSettings

# ----------------------------------------------------------------------------- requests


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ExecRequest(container_id="", cmd=("ls",), stdout=True), "missing required container_id"),
        (
            ExecRequest(container_id="c", cmd=("ls",), tty=True, stdout=True, stderr=True),
            "tty and stderr cannot both be true",
        ),
        (ExecRequest(container_id="c", cmd=("ls",)), "one of stdin, stdout, or stderr"),
        (ExecRequest(container_id="c", cmd=(), stdout=True), "cmd must not be empty"),
        (AttachRequest(container_id="c"), "one of stdin, stdout, or stderr"),
        (PortForwardRequest(pod_sandbox_id=""), "missing required pod_sandbox_id"),
        (PortForwardRequest(pod_sandbox_id="p", ports=(0,)), "port 0"),
        (PortForwardRequest(pod_sandbox_id="p", ports=(65536,)), "port 65536"),
    ],
)
def test_invalid_requests(request_: StreamRequest, reason: str) -> None:
    with pytest.raises(InvalidStreamRequest, match=reason) as invalid:
        validate_request(request_)
    assert invalid.value.code == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "request_",
    [
        ExecRequest(container_id="c", cmd=("sh",), tty=True, stdin=True, stdout=True),
        AttachRequest(container_id="c", stdin=True),
        PortForwardRequest(pod_sandbox_id="p"),
        PortForwardRequest(pod_sandbox_id="p", ports=(1, 65535)),
    ],
)
def test_valid_requests(request_: StreamRequest) -> None:
    validate_request(request_)


@pytest.mark.parametrize(
    "settings",
    [
        StreamingSettings(tls_cert_file="/cert.pem"),
        StreamingSettings(port=70000),
        StreamingSettings(token_ttl=0),
        StreamingSettings(max_pending_requests=0),
        StreamingSettings(stream_creation_timeout=-1),
    ],
)
def test_invalid_settings(settings: StreamingSettings) -> None:
    with pytest.raises(ConfigError):
        settings.validate()


def test_default_settings_listen_on_loopback_with_a_free_port() -> None:
    settings = StreamingSettings()
    settings.validate()
    assert (settings.address, settings.port, settings.token_ttl) == ("127.0.0.1", 0, 60.0)


# ----------------------------------------------------------------------------- buffer


async def test_buffer_pushes_back_when_full_and_drains_after_eof() -> None:
    buffer = InboundBuffer(limit=4)
    await buffer.feed(b"abcd")
    blocked = asyncio.create_task(buffer.feed(b"efgh"))
    await asyncio.sleep(0)
    assert not blocked.done()

    assert await buffer.read(2) == b"ab"
    await blocked
    buffer.feed_eof()
    assert await buffer.read() == b"cd"
    assert await buffer.read() == b"efgh"
    assert await buffer.read() == b""
    assert buffer.at_eof


async def test_eof_releases_a_blocked_feeder() -> None:
    buffer = InboundBuffer(limit=1)
    await buffer.feed(b"x")
    blocked = asyncio.create_task(buffer.feed(b"y"))
    await asyncio.sleep(0)
    buffer.feed_eof()
    await blocked
    assert await buffer.read() == b"x"
    assert await buffer.read() == b""


# ----------------------------------------------------------------------------- handshakes


def mocked(headers: list[tuple[str, str]], path: str = "/exec/t") -> web.Request:
    return make_mocked_request("POST", path, headers=CIMultiDict(headers))


def test_spdy_negotiation_honours_the_clients_order() -> None:
    offered = [("X-Stream-Protocol-Version", "v3.channel.k8s.io")]
    offered.append(("X-Stream-Protocol-Version", "v4.channel.k8s.io"))
    assert httpstream.negotiate(mocked(offered), httpstream.REMOTECOMMAND_PROTOCOLS) == (
        "v3.channel.k8s.io"
    )


def test_spdy_negotiation_needs_the_header() -> None:
    with pytest.raises(web.HTTPBadRequest) as refused:
        httpstream.negotiate(mocked([]), httpstream.REMOTECOMMAND_PROTOCOLS)
    assert refused.value.text == "unable to upgrade: X-Stream-Protocol-Version is required"
    commas = mocked([("X-Stream-Protocol-Version", "v9, channel.k8s.io")])
    assert httpstream.negotiate(commas, httpstream.REMOTECOMMAND_PROTOCOLS) == "channel.k8s.io"


def test_spdy_negotiation_failure_lists_what_we_accept() -> None:
    request = mocked([("X-Stream-Protocol-Version", "v9")])
    with pytest.raises(web.HTTPForbidden) as refused:
        httpstream.negotiate(request, httpstream.PORTFORWARD_PROTOCOLS)
    assert refused.value.headers.getall("X-Accepted-Stream-Protocol-Versions") == [
        "portforward.k8s.io"
    ]


def test_spdy_upgrade_needs_both_headers() -> None:
    httpstream.check_upgrade(mocked([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]))
    with pytest.raises(web.HTTPBadRequest):
        httpstream.check_upgrade(mocked([("Upgrade", "SPDY/3.1")]))
    with pytest.raises(web.HTTPBadRequest):
        httpstream.check_upgrade(mocked([("Connection", "Upgrade"), ("Upgrade", "h2c")]))


def test_websocket_requests_are_told_apart() -> None:
    headers = [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")]
    assert websocket.is_websocket_request(mocked(headers))
    assert not websocket.is_websocket_request(mocked([("Connection", "Upgrade")]))
    spdy = [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]
    assert not websocket.is_websocket_request(mocked(spdy))


def test_port_forward_protocol_choice() -> None:
    choose = websocket.choose_port_forward_protocol
    assert choose([]) == ""
    assert choose(["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"]) == (
        "SPDY/3.1+portforward.k8s.io"
    )
    assert choose(["v5.channel.k8s.io", "v4.base64.channel.k8s.io"]) == "v4.base64.channel.k8s.io"
    assert choose(["portforward.k8s.io"]) is None


def test_ports_from_the_query() -> None:
    request = mocked([], path="/portforward/t?port=80&port=8080,9090")
    assert websocket.ports_from_query(request) == (80, 8080, 9090)
    with pytest.raises(web.HTTPBadRequest):
        websocket.ports_from_query(mocked([], path="/portforward/t?port=0"))
