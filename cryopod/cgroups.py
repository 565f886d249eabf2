"""The host's cgroup filesystem, read and written directly (cgroupfs driver).

Works on cgroup v1, v2 and the hybrid layout (v1 controllers plus a v2 tree at
`/sys/fs/cgroup/unified`). Only small things live here: where a process's cgroups are, the
OOM-kill counter, and the leaf cgroups that hold each container's monitor (conmon) next to
its container, so that a daemon restart which kills the daemon's own cgroup (systemd's
KillMode=control-group) cannot take the monitors with it.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
MONITOR_CGROUP_PREFIX = "cryopod-conmon-"


def is_unified(root: Path = CGROUP_ROOT) -> bool:
    """Whether the host runs cgroup v2 alone."""
    return (root / "cgroup.controllers").exists()


def cgroup_dirs_of(pid: int, root: Path = CGROUP_ROOT) -> dict[str, Path]:
    """The cgroup directory of `pid` in every mounted hierarchy, by controller list.

    Keys are the hierarchy's controllers as /proc/<pid>/cgroup names them ("memory",
    "cpu,cpuacct", "name=systemd"; "" for the v2 tree). Hierarchies that are not mounted
    where expected are left out.
    """
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return {}
    unified = is_unified(root)
    found: dict[str, Path] = {}
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, path = fields
        if controllers == "":
            mount = root if unified else root / "unified"
        elif unified:
            continue
        else:
            mount = root / controllers.removeprefix("name=")
        directory = mount / path.lstrip("/")
        if directory.is_dir():
            found[controllers] = directory
    return found


def memory_cgroup(dirs: dict[str, Path]) -> Path | None:
    """Of a process's cgroups (`cgroup_dirs_of`), the one that accounts its memory: the v1
    memory hierarchy's, else the v2 tree's."""
    v1 = next((d for c, d in dirs.items() if "memory" in c.split(",")), None)
    return v1 or dirs.get("")


def oom_kills(cgroup: Path) -> int:
    """OOM kills counted by the cgroup: v1 `memory.oom_control`, v2 `memory.events`."""
    for name in ("memory.events", "memory.oom_control"):
        try:
            text = (cgroup / name).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
    return 0


# The hierarchies a monitor moves in: the ones process managers track units by (systemd's,
# the v2 tree) and the ones that account its use to the pod. Moving it in every v1
# hierarchy would cost a cgroup migration (and a directory to remove) in each of a dozen.
MONITOR_CONTROLLERS = frozenset({"", "name=systemd", "memory", "cpu", "cpuacct", "pids"})


def leaves_beside(dirs: dict[str, Path], name: str) -> dict[str, Path]:
    """Where a leaf cgroup `name` beside a process's cgroups (`cgroup_dirs_of`) would be,
    in the hierarchies a monitor belongs in."""
    return {
        controllers: directory.parent / name
        for controllers, directory in dirs.items()
        if MONITOR_CONTROLLERS.intersection(controllers.split(",") if controllers else [""])
    }


def move_into(pid: int, leaves: dict[str, Path]) -> None:
    """Make the leaf cgroups (see `leaves_beside`) and put `pid` in them.

    A hierarchy that refuses is skipped with a warning: the process then stays where it was
    in that hierarchy, which is harmless.
    """
    for controllers, leaf in leaves.items():
        try:
            leaf.mkdir(exist_ok=True)
            if "cpuset" in controllers.split(","):
                _inherit_cpuset(leaf)
            (leaf / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            log.warning("cannot move pid %d to %s: %s", pid, leaf, exc.strerror)
            with contextlib.suppress(OSError):
                leaf.rmdir()


def _inherit_cpuset(leaf: Path) -> None:
    """A v1 cpuset starts empty and takes no process until it has CPUs and memory nodes."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not (leaf / name).read_text().strip():
            (leaf / name).write_text((leaf.parent / name).read_text())


def remove_leaves(leaves: list[Path]) -> None:
    """Remove leaf cgroups once their processes are gone; what is gone already is fine."""
    for leaf in leaves:
        try:
            leaf.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s", leaf, exc.strerror)
