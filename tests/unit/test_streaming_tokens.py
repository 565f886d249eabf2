"""Single-use, expiring streaming tokens."""

from __future__ import annotations

import base64

import pytest

from cryopod.errors import TooManyPendingStreams
from cryopod.streaming.tokens import TokenStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_token_is_consumed_once(clock: Clock) -> None:
    store: TokenStore[str] = TokenStore(ttl=60, clock=clock)
    token = store.issue("exec request")

    assert store.consume(token) == "exec request"
    assert store.consume(token) is None


def test_a_token_expires_after_its_ttl(clock: Clock) -> None:
    store: TokenStore[str] = TokenStore(ttl=60, clock=clock)
    fresh, stale = store.issue("fresh"), store.issue("stale")

    clock.now += 59.9
    assert store.consume(fresh) == "fresh"
    clock.now += 0.1
    assert store.consume(stale) is None


def test_unknown_tokens_are_refused(clock: Clock) -> None:
    store: TokenStore[str] = TokenStore(clock=clock)
    store.issue("x")
    assert store.consume("not-a-token") is None
    assert store.consume("") is None


def test_tokens_are_random_url_safe_and_long() -> None:
    store: TokenStore[int] = TokenStore(capacity=200)
    tokens = {store.issue(i) for i in range(200)}

    assert len(tokens) == 200
    for token in tokens:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        assert len(raw) >= 16
        assert token.replace("-", "").replace("_", "").isalnum()


def test_capacity_counts_only_unexpired_tokens(clock: Clock) -> None:
    store: TokenStore[int] = TokenStore(ttl=10, capacity=2, clock=clock)
    store.issue(1)
    store.issue(2)
    with pytest.raises(TooManyPendingStreams) as full:
        store.issue(3)
    assert full.value.code == "RESOURCE_EXHAUSTED"
    assert full.value.limit == 2

    clock.now += 10
    assert len(store) == 0
    store.issue(3)  # the expired ones made room


def test_consumed_tokens_free_their_slot(clock: Clock) -> None:
    store: TokenStore[int] = TokenStore(capacity=1, clock=clock)
    token = store.issue(1)
    store.consume(token)
    store.issue(2)
    assert len(store) == 1
