"""Stop signals as images and CRI configs name them."""

from __future__ import annotations

import signal

import pytest

from cryopod.containers.service import parse_signal
from cryopod.errors import InvalidArgument


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("term", signal.SIGTERM),
        ("9", 9),
        ("SIGUSR1", signal.SIGUSR1),
        ("SIGRTMIN", signal.SIGRTMIN),
        ("SIGRTMIN+3", signal.SIGRTMIN + 3),
        ("rtmax-2", signal.SIGRTMAX - 2),
    ],
)
def test_known_signals(name: str, number: int) -> None:
    assert parse_signal(name) == number


@pytest.mark.parametrize("name", ["SIGNOPE", "SIGRTMIN+40", "SIGRTMIN-1", "RTMAX+1", ""])
def test_unknown_signals_are_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_signal(name)
