"""Recovery at start goes on past what it cannot fix: one stuck mount must not keep the node
from running (CRI-O logs and carries on too)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from cryopod.errors import CryopodError

log = logging.getLogger(__name__)


async def recovery_step(step: Awaitable[None], what: str) -> None:
    """Await one step of recovery; a failure is logged, not raised."""
    try:
        await step
    except (CryopodError, OSError) as exc:
        log.error("recovery: %s failed: %s", what, exc)
