"""Settings of the streaming server (the daemon maps its `[streaming]` config onto these)."""

from __future__ import annotations

from dataclasses import dataclass

from cryopod.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class StreamingSettings:
    """Where the server listens and how long what it hands out stays valid."""

    address: str = "127.0.0.1"
    """The address to listen on; URLs name it, so it must be reachable by the kubelet."""
    port: int = 0
    """The TCP port; 0 picks a free one at start."""
    tls_cert_file: str = ""
    """PEM certificate (chain) for HTTPS; empty serves plain HTTP."""
    tls_key_file: str = ""
    """PEM private key of `tls_cert_file`."""
    token_ttl: float = 60.0
    """Seconds an unused streaming URL stays valid."""
    max_pending_requests: int = 1000
    """Unused URLs kept at once; beyond that Exec/Attach/PortForward fail (RESOURCE_EXHAUSTED)."""
    stream_creation_timeout: float = 30.0
    """Seconds a SPDY client has to open the streams of an exec or port-forward connection."""
    keepalive_interval: float = 10.0
    """Seconds between pings on an open session. No answer is required: the ping is there so
    a vanished client is noticed even while the session has stopped reading from it."""

    def validate(self) -> None:
        """Raise `ConfigError` for settings the server cannot start with."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "tls_cert_file and tls_key_file must be set together", key="streaming"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} is not in 0-65535", key="streaming.port")
        if self.token_ttl <= 0:
            raise ConfigError("token_ttl must be positive", key="streaming.token_ttl")
        if self.max_pending_requests < 1:
            raise ConfigError(
                "max_pending_requests must be at least 1", key="streaming.max_pending_requests"
            )
        if self.keepalive_interval <= 0:
            raise ConfigError(
                "keepalive_interval must be positive", key="streaming.keepalive_interval"
            )
        if self.stream_creation_timeout <= 0:
            raise ConfigError(
                "stream_creation_timeout must be positive",
                key="streaming.stream_creation_timeout",
            )
