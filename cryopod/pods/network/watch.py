"""Watching the CNI config and plugin directories, so changes apply without a restart.

`DirectoryWatcher` calls `on_change()` after files in any of its directories were created,
written, renamed, removed or chmod'ed, once per burst of events. A directory that does not
exist yet is waited for by watching its nearest existing ancestor; when it appears (or a
watched one is removed), every watch is set up afresh and `on_change()` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType

from asyncinotify import Event, Inotify, Mask

log = logging.getLogger(__name__)

OnChange = Callable[[], Awaitable[None]]

_CONTENT_MASK = (
    Mask.CREATE
    | Mask.CLOSE_WRITE
    | Mask.MOVED_TO
    | Mask.MOVED_FROM
    | Mask.DELETE
    | Mask.ATTRIB
    | Mask.DELETE_SELF
    | Mask.MOVE_SELF
    | Mask.ONLYDIR
)
_ANCESTOR_MASK = Mask.CREATE | Mask.MOVED_TO | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR
_REARM = Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.IGNORED | Mask.Q_OVERFLOW


class DirectoryWatcher:
    """Calls `on_change()` when the contents of `dirs` change; run with `async with`."""

    def __init__(self, dirs: Sequence[Path], on_change: OnChange, *, settle: float = 0.05):
        self.dirs = tuple(dirs)
        self._on_change = on_change
        self._settle = settle
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Set the watches up; changes from now on are reported."""
        if self._task is not None:
            return
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._run(ready), name="cni-config-watcher")
        self._task = task
        await asyncio.wait({ready, task}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # it could not even start: say why
            self._task = None
            ready.cancel()
            task.result()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> DirectoryWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, ready: asyncio.Future[None]) -> None:
        first = True
        while True:
            with Inotify() as inotify:
                ancestors = self._arm(inotify)
                if first:
                    ready.set_result(None)
                    first = False
                else:
                    await self._notify()  # what changed while no watch was set
                await self._watch(inotify, ancestors)

    def _arm(self, inotify: Inotify) -> set[Path]:
        """Watch each directory, or its nearest existing ancestor; answer the ancestors."""
        ancestors: set[Path] = set()
        for directory in self.dirs:
            target, mask = directory, _CONTENT_MASK
            while not target.is_dir() and target != target.parent:
                target, mask = target.parent, _ANCESTOR_MASK
            try:
                inotify.add_watch(target, mask)
            except OSError as exc:
                log.warning("cannot watch %s for CNI changes: %s", target, exc)
                continue
            if target != directory:
                ancestors.add(target)
        return ancestors

    async def _watch(self, inotify: Inotify, ancestors: set[Path]) -> None:
        """Deliver bursts of events until the watches must be set up again."""
        while True:
            event = await inotify.get()
            if self._needs_rearm(event, ancestors) or await self._drain(inotify, ancestors):
                return
            await self._notify()

    def _needs_rearm(self, event: Event, ancestors: set[Path]) -> bool:
        if event.mask & _REARM:
            return True
        # Something appeared in an ancestor: perhaps a watched directory (or its parent).
        return event.watch is not None and event.watch.path in ancestors

    async def _drain(self, inotify: Inotify, ancestors: set[Path]) -> bool:
        """Swallow the rest of a burst (a cp, an editor's save); True if one needs a rearm."""
        rearm = False
        with contextlib.suppress(TimeoutError):
            while True:
                async with asyncio.timeout(self._settle):
                    event = await inotify.get()
                rearm = rearm or self._needs_rearm(event, ancestors)
        return rearm

    async def _notify(self) -> None:
        try:
            await self._on_change()
        except Exception:
            # A failed reload must not end the watching; the next change tries again.
            log.exception("reloading the CNI configuration failed")
