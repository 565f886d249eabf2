"""The streaming HTTP server: hands out single-use URLs and serves them.

`exec_url`, `attach_url` and `port_forward_url` validate a request, store it under a fresh
token and answer `http(s)://host:port/{exec,attach,portforward}/<token>`. A client that
connects there (GET or POST) within the token's lifetime gets the session over WebSocket or
SPDY/3.1, whichever its upgrade headers ask for; an unknown, used or expired token gets 404.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

from aiohttp import web

from cryopod.errors import ConfigError, FailedPrecondition
from cryopod.streaming import httpstream, websocket
from cryopod.streaming.backend import StreamingBackend
from cryopod.streaming.channels import PORTFORWARD_PROTOCOLS
from cryopod.streaming.model import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamRequest,
    validate_request,
)
from cryopod.streaming.remotecommand import CommandRequest
from cryopod.streaming.settings import StreamingSettings
from cryopod.streaming.tokens import TokenStore

log = logging.getLogger(__name__)

R = TypeVar("R", ExecRequest, AttachRequest, PortForwardRequest)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SHUTDOWN_TIMEOUT = 2.0


class StreamingServer:
    """Serves exec, attach and port-forward sessions for one `StreamingBackend`.

    Use as `async with StreamingServer(backend, settings) as server:` or call `start` and
    `stop`. URLs can only be made while the server runs (they name its port).
    """

    def __init__(
        self,
        backend: StreamingBackend,
        settings: StreamingSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._settings = settings or StreamingSettings()
        self._settings.validate()
        self._tokens: TokenStore[StreamRequest] = TokenStore(
            ttl=self._settings.token_ttl,
            capacity=self._settings.max_pending_requests,
            clock=clock,
        )
        self._runner: web.AppRunner | None = None
        self._base_url = ""
        self._sessions: set[asyncio.Task[object]] = set()

    async def __aenter__(self) -> StreamingServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        """`scheme://host:port` of the running server."""
        if not self._base_url:
            raise FailedPrecondition("the streaming server is not running")
        return self._base_url

    # ------------------------------------------------------------------ URLs

    def exec_url(self, request: ExecRequest) -> str:
        """A single-use URL for `request`; raises InvalidStreamRequest or TooManyPendingStreams."""
        return self._issue("exec", request)

    def attach_url(self, request: AttachRequest) -> str:
        """A single-use URL for `request`; raises InvalidStreamRequest or TooManyPendingStreams."""
        return self._issue("attach", request)

    def port_forward_url(self, request: PortForwardRequest) -> str:
        """A single-use URL for `request`; raises InvalidStreamRequest or TooManyPendingStreams."""
        return self._issue("portforward", request)

    def _issue(self, kind: str, request: StreamRequest) -> str:
        validate_request(request)
        base_url = self.base_url
        return f"{base_url}/{kind}/{self._tokens.issue(request)}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Listen on the configured address; raises ConfigError if that is impossible."""
        if self._runner is not None:
            return
        tls = _tls_context(self._settings)
        sock = _bind(self._settings.address, self._settings.port)
        app = web.Application()
        for kind, handler in (
            ("exec", self._serve_exec),
            ("attach", self._serve_attach),
            ("portforward", self._serve_port_forward),
        ):
            app.router.add_route("GET", f"/{kind}/{{token}}", handler)
            app.router.add_route("POST", f"/{kind}/{{token}}", handler)
        # A lost connection cancels its handler: a session blocked on a full stdin buffer
        # would otherwise never notice the client has gone.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT
        )
        await runner.setup()
        try:
            await web.SockSite(runner, sock, ssl_context=tls).start()
        except BaseException:
            await runner.cleanup()
            sock.close()
            raise
        self._runner = runner
        self._base_url = _base_url(sock, tls is not None)
        log.info("Streaming server listening on %s", self._base_url)

    async def stop(self) -> None:
        """End every session and stop listening. Idempotent."""
        runner, self._runner = self._runner, None
        self._base_url = ""
        for task in self._sessions:
            task.cancel()
        if self._sessions:
            # Sessions close gracefully within bounds; the runner's cleanup cuts the rest.
            await asyncio.wait(self._sessions, timeout=SHUTDOWN_TIMEOUT)
        if runner is not None:
            await runner.cleanup()

    # ------------------------------------------------------------------ handlers

    async def _serve_exec(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_command(request, self._consume(request, ExecRequest))

    async def _serve_attach(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_command(request, self._consume(request, AttachRequest))

    async def _serve_command(
        self, request: web.Request, command: CommandRequest
    ) -> web.StreamResponse:
        with self._session():
            if websocket.is_websocket_request(request):
                return await websocket.serve_command(
                    request, self._backend, command, self._settings
                )
            return await httpstream.serve_command(request, self._backend, command, self._settings)

    async def _serve_port_forward(self, request: web.Request) -> web.StreamResponse:
        forward = self._consume(request, PortForwardRequest)
        settings = self._settings
        with self._session():
            if not websocket.is_websocket_request(request):
                return await httpstream.serve_port_forward(
                    request, self._backend, forward, settings
                )
            requested = websocket.requested_protocols(request)
            protocol = websocket.choose_port_forward_protocol(requested)
            if protocol is None:
                supported = (*PORTFORWARD_PROTOCOLS, websocket.SPDY_TUNNEL_PROTOCOL)
                raise websocket.refuse(requested, supported)
            if protocol == websocket.SPDY_TUNNEL_PROTOCOL:
                return await websocket.serve_port_forward_tunnel(
                    request, self._backend, forward, settings
                )
            return await websocket.serve_port_forward(
                request, self._backend, forward, protocol, settings
            )

    def _consume(self, request: web.Request, kind: type[R]) -> R:
        """The request stored under the URL's token; 404 (as the kubelet) if there is none."""
        stored = self._tokens.consume(request.match_info["token"])
        if not isinstance(stored, kind):
            raise web.HTTPNotFound()
        return stored

    def _session(self) -> _SessionTracker:
        return _SessionTracker(self._sessions)


class _SessionTracker:
    """Registers the running handler task so `stop` can end its session."""

    def __init__(self, sessions: set[asyncio.Task[object]]) -> None:
        self._sessions = sessions
        self._task: asyncio.Task[object] | None = None

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:
            self._sessions.add(self._task)

    def __exit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._sessions.discard(self._task)


def _tls_context(settings: StreamingSettings) -> ssl.SSLContext | None:
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate and key: {exc}", key="streaming") from exc
    return context


def _bind(address: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}", key="streaming.address") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {address} port {port}: {exc}", key="streaming.address"
        ) from exc
    return sock


def _base_url(sock: socket.socket, tls: bool) -> str:
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
