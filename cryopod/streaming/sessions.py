"""What every session type shares: background tasks, awaiting work while the client is
connected, and ending streams the client may already have abandoned."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine
from typing import Any, TypeVar

from cryopod.errors import StreamClosed
from cryopod.streaming.backend import OutputStream

T = TypeVar("T")


@contextlib.asynccontextmanager
async def background(*work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` as tasks for the duration of the block, cancelling what is left on exit."""
    tasks = [asyncio.create_task(coroutine) for coroutine in work]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_while_connected(work: Awaitable[T], disconnected: Awaitable[object]) -> T | None:
    """Await `work`, cancelling it if `disconnected` completes first (then answer None)."""
    work_task = asyncio.ensure_future(work)
    watch_task = asyncio.ensure_future(disconnected)
    try:
        await asyncio.wait((work_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        work_task.cancel()
        watch_task.cancel()
        await asyncio.gather(work_task, watch_task, return_exceptions=True)
    if work_task.cancelled():
        return None
    return work_task.result()


async def close_quietly(*streams: OutputStream | None) -> None:
    """Half-close streams the client may already have abandoned."""
    for stream in streams:
        if stream is not None:
            with contextlib.suppress(StreamClosed):
                await stream.close()


async def write_quietly(stream: OutputStream | None, data: bytes) -> None:
    """Write to a stream the client may already have abandoned."""
    if stream is not None and data:
        with contextlib.suppress(StreamClosed):
            await stream.write(data)
