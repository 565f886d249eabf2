"""Waiting on raw file descriptors (pidfds, ptys) from the event loop."""

from __future__ import annotations

import asyncio


async def wait_readable(fd: int) -> None:
    """Until `fd` is readable; for a pidfd, until its process has exited."""
    await _wait(fd, writing=False)


async def wait_writable(fd: int) -> None:
    await _wait(fd, writing=True)


async def _wait(fd: int, *, writing: bool) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if writing:
        loop.add_writer(fd, wake)
    else:
        loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
