"""Container root filesystems: an overlay of the image's layers plus a per-container upper dir.

`RootfsManager` mounts `lowerdir=<top>:...:<bottom>` from the layer store, with the writable
`upper`/`work` dirs under the persistent `containers/<id>/` (the writable layer survives a
daemon restart, not a removal), at `<runroot>/containers/<id>/rootfs`.

Overlay options, and why:
- `index=off`: with the index on, overlayfs records the lower root in the upper dir and refuses
  a remount whose lower paths differ (ESTALE), e.g. after the long-lowerdir fallback picked other
  names; containers-storage passes it for the same reason.
- `metacopy=on` (when the kernel has it, or when configured): chmod/chown copy up metadata only,
  not whole files. The kernel turns on `redirect_dir` with it (it needs redirects to find the
  data of a metacopied file; an explicit `redirect_dir=off` would be refused). Redirect and
  metacopy xattrs are followed in lower layers, so they must be trusted: the layer unpacker
  drops every `trusted.overlay.*` xattr except the opaque marker.
- Mount data is one page (PAGE_SIZE - 1 bytes): absolute lower paths fit ~40 layers. Past
  that, the mount runs in a thread of its own with its own cwd (unshare(CLONE_FS)), opens
  each lower dir as an O_PATH fd and chdirs to /proc/self/fd, so `lowerdir=12:13:...` (fd
  numbers, resolved relative to that cwd) fits ~900 layers (overlayfs takes 500). Unlike
  short symlinks this writes nothing to disk (120 links cost ~8 ms to make and remove on ext4)
  and leaves nothing to clean up; mountinfo shows the fd numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryopod.errors import ConfigError, FailedPrecondition, Internal, InvalidArgument, NotFound
from cryopod.ids import check_safe_id
from cryopod.mounts import (
    CLONE_FS,
    check_libc,
    libc,
    sys_mount,
    sys_umount_all,
)
from cryopod.storage.layers import LayerStore
from cryopod.threads import run_in_own_thread

log = logging.getLogger(__name__)

T = TypeVar("T")

_METACOPY_PARAM = Path("/sys/module/overlay/parameters/metacopy")
_OVERLAY_MODULE = Path("/sys/module/overlay")
# overlayfs splits its options at "," and lowerdir at ":"; "\" escapes both.
_OPTION_SPECIALS = frozenset(",:\\")
_MOUNT_DATA_MAX = os.sysconf("SC_PAGE_SIZE")  # the kernel copies one page, NUL included

# --- overlay root filesystems ----------------------------------------------------------------


@dataclass(frozen=True)
class LayerUsage:
    """Disk use of a container's writable layer, as `du` counts it."""

    bytes: int
    inodes: int


@dataclass(frozen=True)
class _OverlayPlan:
    """What to mount; `by_fd` names the lower dirs by fd number (see the module docstring)."""

    lowers: list[Path]
    upper: Path
    work: Path
    metacopy: bool
    by_fd: bool

    def data(self, lowers: Sequence[str | Path]) -> str:
        parts = [
            "lowerdir=" + ":".join(str(p) for p in lowers),
            f"upperdir={self.upper}",
            f"workdir={self.work}",
            "index=off",
        ]
        if self.metacopy:
            parts.append("metacopy=on")
        return ",".join(parts)


class RootfsManager:
    """Overlay mounts of container root filesystems.

    `containers_dir` (default `<layer store root>/containers`) is persistent and holds each
    container's `upper` and `work`; `<runroot>/containers/<id>/rootfs` is the mount point.
    `metacopy`: True/False forces it, None uses it when the kernel's overlayfs has it.
    """

    def __init__(
        self,
        runroot: Path,
        layer_store: LayerStore,
        *,
        containers_dir: Path | None = None,
        metacopy: bool | None = None,
    ) -> None:
        self.runroot = runroot
        self.layer_store = layer_store
        self.containers_dir = containers_dir or layer_store.root / "containers"
        self._metacopy = metacopy
        for path in (runroot, self.containers_dir, layer_store.layer_dir):
            if _OPTION_SPECIALS & set(str(path.resolve())):
                raise ConfigError(f"overlay cannot use a path with ',', ':' or '\\': {path}")

    # ---- paths

    def rootfs_path(self, container_id: str) -> Path:
        return self.runroot / "containers" / container_id / "rootfs"

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / container_id

    def upper_path(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "upper"

    # ---- probing

    def metacopy_enabled(self) -> bool:
        """Whether mounts get `metacopy=on` (probed once the overlay module is loaded)."""
        if self._metacopy is None:
            if _METACOPY_PARAM.exists():
                self._metacopy = True
            elif _OVERLAY_MODULE.exists():
                self._metacopy = False
            else:
                return False  # not loaded yet: the first mount loads it; ask again then
        return self._metacopy

    def is_mounted(self, container_id: str) -> bool:
        # A mount point sits on another device than its parent: two stats, where reading
        # mountinfo costs O(mounts) on every container start.
        return os.path.ismount(self.rootfs_path(container_id))

    # ---- mounting

    async def mount(self, container_id: str, chain_ids: Sequence[str]) -> Path:
        """Mount the container's rootfs over `chain_ids` (lowest layer first); idempotent.

        Raises FailedPrecondition when a layer is missing, Internal when the mount fails;
        a failed first mount leaves no directory behind.
        """
        check_safe_id("container", container_id)
        target = self.rootfs_path(container_id)
        if self.is_mounted(container_id):
            return target
        lowers = self._lower_dirs(container_id, chain_ids)
        cdir = self.container_dir(container_id)
        fresh = not cdir.exists()
        try:
            plan = self._prepare(container_id, lowers)
            await run_in_own_thread(
                functools.partial(_mount_overlay, target, plan),
                name=f"mount-{container_id[:12]}",
                abandon=functools.partial(self._abandon_mount, container_id, fresh),
            )
        except asyncio.CancelledError:
            raise  # _abandon_mount cleans up once the mount thread is done
        except BaseException:
            self._discard_dirs(container_id, remove_container_dir=fresh)
            raise
        return target

    def _lower_dirs(self, container_id: str, chain_ids: Sequence[str]) -> list[Path]:
        lowers = []
        for chain_id in reversed(chain_ids):
            path = self.layer_store.diff_path(chain_id)
            if not path.is_dir():
                raise FailedPrecondition(
                    f"layer {chain_id} of container {container_id} is not in the layer store"
                )
            lowers.append(path)
        return lowers

    def _prepare(self, container_id: str, lowers: list[Path]) -> _OverlayPlan:
        """Make the dirs; name lower dirs by fd when their paths do not fit one page."""
        cdir = self.container_dir(container_id)
        for sub in ("upper", "work"):
            (cdir / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
        self.rootfs_path(container_id).mkdir(mode=0o755, parents=True, exist_ok=True)
        if not lowers:
            # overlayfs needs a lower dir; an image without layers gets an empty one.
            empty = cdir / "empty"
            empty.mkdir(mode=0o755, exist_ok=True)
            lowers = [empty]
        plan = _OverlayPlan(lowers, cdir / "upper", cdir / "work", self.metacopy_enabled(), False)
        if len(plan.data(lowers)) < _MOUNT_DATA_MAX:
            return plan
        # Sized for 4-digit fds; the mount thread checks again with the fds it got.
        if len(plan.data(["9999"] * len(lowers))) >= _MOUNT_DATA_MAX:
            raise InvalidArgument(f"container {container_id} has too many layers ({len(lowers)})")
        return dataclasses.replace(plan, by_fd=True)

    # ---- unmounting and removal

    async def unmount(self, container_id: str) -> None:
        """Unmount the rootfs (lazily when busy) and drop its mount point; idempotent."""
        check_safe_id("container", container_id)
        target = self.rootfs_path(container_id)
        try:
            sys_umount_all(target)
        except OSError as exc:
            raise Internal(f"unmounting rootfs of container {container_id}: {exc}") from exc
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        with contextlib.suppress(OSError):  # shared with the bundle: only when empty
            target.parent.rmdir()

    async def remove(self, container_id: str) -> None:
        """Unmount and delete the writable layer; idempotent."""
        await self.unmount(container_id)
        cdir = self.container_dir(container_id)
        if not cdir.exists():
            return
        # Renamed first so a crash mid-delete never leaves a half-deleted layer under its id.
        doomed = self.containers_dir / f".removing-{container_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(cdir, doomed)
        except FileNotFoundError:
            return  # a concurrent remove got there first
        await asyncio.to_thread(shutil.rmtree, doomed, ignore_errors=True)

    def container_ids(self) -> list[str]:
        """Containers with a writable layer or a mount point here (for recovery)."""
        ids: set[str] = set()
        for top in (self.containers_dir, self.runroot / "containers"):
            if top.is_dir():
                ids |= {p.name for p in top.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return sorted(ids)

    def remove_stale_work(self) -> int:
        """Finish deletions a crash interrupted; answers how many there were."""
        if not self.containers_dir.exists():
            return 0
        stale = [p for p in self.containers_dir.iterdir() if p.name.startswith(".removing-")]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def _abandon_mount(self, container_id: str, fresh: bool, _succeeded: bool) -> None:
        sys_umount_all(self.rootfs_path(container_id))
        self._discard_dirs(container_id, remove_container_dir=fresh)

    def _discard_dirs(self, container_id: str, *, remove_container_dir: bool) -> None:
        target = self.rootfs_path(container_id)
        for directory in (target, target.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()
        if remove_container_dir:
            shutil.rmtree(self.container_dir(container_id), ignore_errors=True)

    # ---- accounting

    async def writable_layer_usage(self, container_id: str) -> LayerUsage:
        """Bytes on disk and inodes of the upper dir; raises NotFound without one."""
        check_safe_id("container", container_id)
        upper = self.upper_path(container_id)
        if not upper.is_dir():
            raise NotFound(f"container {container_id} has no writable layer")
        return await asyncio.to_thread(_disk_usage, upper)


def _mount_overlay(target: Path, plan: _OverlayPlan) -> None:
    """Mount on the calling (own) thread; see the module docstring for `by_fd`."""
    fds: list[int] = []
    try:
        if not plan.by_fd:
            sys_mount("overlay", target, "overlay", 0, plan.data(plan.lowers))
            return
        # Gives this thread its own cwd so the chdir does not move the whole daemon.
        check_libc(libc().unshare(CLONE_FS), "unshare(CLONE_FS)")
        for lower in plan.lowers:
            fds.append(os.open(lower, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
        os.chdir("/proc/self/fd")
        data = plan.data([str(fd) for fd in fds])
        if len(data) >= _MOUNT_DATA_MAX:
            raise InvalidArgument(f"too many layers for one overlay mount ({len(fds)})")
        sys_mount("overlay", target, "overlay", 0, data)
    except OSError as exc:
        raise Internal(f"overlay mount at {target} failed: {exc.strerror}") from exc
    finally:
        for fd in fds:
            os.close(fd)


def _disk_usage(top: Path) -> LayerUsage:
    """Sum st_blocks like du: hard links once, the top dir included."""
    seen: set[int] = set()
    total = 0
    stack = [str(top)]
    while stack:
        directory = stack.pop()
        with contextlib.suppress(FileNotFoundError), os.scandir(directory) as it:
            for entry in it:
                with contextlib.suppress(FileNotFoundError):
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
                    if info.st_ino not in seen:
                        seen.add(info.st_ino)
                        total += info.st_blocks * 512
    top_info = os.lstat(top)
    return LayerUsage(bytes=total + top_info.st_blocks * 512, inodes=len(seen) + 1)
