"""Single-use, expiring tokens that stand for a pending streaming request.

A token is random (from `secrets`), valid once, and only for `ttl` seconds after it was
issued; the kubelet's streaming server answers 404 for an unknown, used or expired one and so
does ours. The number of unused tokens is capped so a caller cannot grow the store forever.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cryopod.errors import TooManyPendingStreams

T = TypeVar("T")

TOKEN_BYTES = 16


@dataclass(frozen=True)
class _Entry(Generic[T]):
    request: T
    expires_at: float


class TokenStore(Generic[T]):
    """Maps fresh tokens to requests; `consume` hands each request out at most once."""

    def __init__(
        self,
        *,
        ttl: float = 60.0,
        capacity: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._capacity = capacity
        self._clock = clock
        # Insertion order is expiry order (one ttl for all), so purging stops at the first
        # entry that is still valid.
        self._entries: OrderedDict[str, _Entry[T]] = OrderedDict()

    def __len__(self) -> int:
        self._purge_expired()
        return len(self._entries)

    def issue(self, request: T) -> str:
        """Store `request` under a new token; raises `TooManyPendingStreams` when full."""
        self._purge_expired()
        if len(self._entries) >= self._capacity:
            raise TooManyPendingStreams(self._capacity)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        while token in self._entries:  # pragma: nocover - 128 random bits do not collide
            token = secrets.token_urlsafe(TOKEN_BYTES)
        self._entries[token] = _Entry(request, self._clock() + self._ttl)
        return token

    def consume(self, token: str) -> T | None:
        """The request of `token`, removing it; None if unknown, already used or expired."""
        entry = self._entries.pop(token, None)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return entry.request

    def _purge_expired(self) -> None:
        now = self._clock()
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                return
            del self._entries[token]
