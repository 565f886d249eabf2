"""Files a pod's containers share: /etc/hostname, /etc/hosts, /etc/resolv.conf and /dev/shm.

They live in `<runroot>/pods/<sandbox-id>/` (`hostname`, `hosts`, `resolv.conf`, `shm/`), to be
bind-mounted into every container of the pod. Files are replaced atomically (temp file and
rename) so a container never reads half a file. They are not fsync'ed: runroot is volatile,
so a power loss takes them anyway, and a rename survives a daemon crash without it.

`shm/` is a tmpfs of its own per pod (nosuid, nodev, noexec, mode 1777) so the pod's IPC
namespace gets a /dev/shm of a bounded size that its containers share.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from cryopod.errors import Internal, InvalidArgument
from cryopod.ids import check_safe_id
from cryopod.mounts import MS_NODEV, MS_NOEXEC, MS_NOSUID, sys_mount, sys_umount_all
from cryopod.pods.model import DNSConfig
from cryopod.pods.namespaces import validate_hostname

log = logging.getLogger(__name__)

DEFAULT_SHM_SIZE = 64 * 1024 * 1024
HOSTS_HEADER = """\
# Kubernetes-managed hosts file.
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""
_FILE_NAMES = ("hostname", "hosts", "resolv.conf")
_SEARCH_DOMAIN = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*)(\.[A-Za-z0-9_-]+)*\.?$")
_RESOLVER_OPTION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_:.+-]*$")
# Limits of older glibc (before 2.26) and of musl: entries beyond them are ignored there.
_MAX_NAMESERVERS = 3
_OLD_MAX_SEARCHES = 6
_OLD_MAX_SEARCH_CHARS = 256


@dataclass(frozen=True)
class PodFilePaths:
    """Where a pod's shared /etc files are, to be bind-mounted into its containers."""

    hostname: Path
    hosts: Path
    resolv_conf: Path


def render_hosts(hostname: str, ip_addresses: Sequence[str]) -> str:
    """/etc/hosts as the kubelet writes it: localhost lines, then `<ip>\t<hostname>`."""
    lines = [HOSTS_HEADER]
    if hostname:
        lines += [f"{_checked_ip(ip, 'pod IP')}\t{hostname}\n" for ip in ip_addresses]
    return "".join(lines)


def render_resolv_conf(dns: DNSConfig) -> str:
    """resolv.conf from a CRI DNSConfig; raises InvalidArgument for a malformed entry."""
    servers = [_checked_ip(server, "DNS server") for server in dns.servers]
    for search in dns.searches:
        if len(search) > 253 or not _SEARCH_DOMAIN.match(search):
            raise InvalidArgument(f"invalid DNS search domain {search!r}")
    for option in dns.options:
        if not _RESOLVER_OPTION.match(option):
            raise InvalidArgument(f"invalid DNS option {option!r}")
    _warn_about_limits(servers, dns.searches)
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "".join(line + "\n" for line in lines)


def _checked_ip(text: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError as exc:
        raise InvalidArgument(f"invalid {what} {text!r}") from exc


def _warn_about_limits(servers: Sequence[str], searches: Sequence[str]) -> None:
    # Kept anyway: current glibc reads them all, and the kubelet already trimmed to its limits.
    if len(servers) > _MAX_NAMESERVERS:
        log.warning("resolv.conf: %d nameservers; resolvers use the first 3", len(servers))
    chars = len(" ".join(searches))
    if len(searches) > _OLD_MAX_SEARCHES or chars > _OLD_MAX_SEARCH_CHARS:
        log.warning(
            "resolv.conf: %d search domains (%d chars); musl and glibc before 2.26 use only "
            "6 domains / 256 chars",
            len(searches),
            chars,
        )


def _dns_given(dns: DNSConfig | None) -> TypeGuard[DNSConfig]:
    return dns is not None and bool(dns.servers or dns.searches or dns.options)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace `path` with `text` in one rename."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            os.fchmod(f.fileno(), mode)
        os.rename(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


class PodFiles:
    """Per-pod /etc files and /dev/shm under `<runroot>/pods/`.

    Everything here is a few syscalls on a tmpfs (no fork), so the methods are synchronous.
    """

    def __init__(
        self,
        runroot: Path,
        *,
        host_resolv_conf: Path = Path("/etc/resolv.conf"),
        shm_size: int = DEFAULT_SHM_SIZE,
    ) -> None:
        self.pods_dir = runroot / "pods"
        self.host_resolv_conf = host_resolv_conf
        self.shm_size = shm_size

    def sandbox_ids(self) -> list[str]:
        """Sandboxes that have a directory here (for recovery after a crash)."""
        if not self.pods_dir.is_dir():
            return []
        return sorted(p.name for p in self.pods_dir.iterdir() if p.is_dir())

    def pod_dir(self, sandbox_id: str) -> Path:
        return self.pods_dir / sandbox_id

    def paths(self, sandbox_id: str) -> PodFilePaths:
        directory = self.pod_dir(sandbox_id)
        return PodFilePaths(directory / "hostname", directory / "hosts", directory / "resolv.conf")

    def shm_path(self, sandbox_id: str) -> Path:
        return self.pod_dir(sandbox_id) / "shm"

    # ---- /etc files

    def write(
        self,
        sandbox_id: str,
        *,
        hostname: str,
        dns: DNSConfig | None,
        ip_addresses: Sequence[str] = (),
    ) -> PodFilePaths:
        """Write hostname, hosts and resolv.conf (the host's copy when `dns` says nothing).

        Raises InvalidArgument for a bad hostname, IP or DNS entry, before writing anything.
        """
        check_safe_id("sandbox", sandbox_id)
        validate_hostname(hostname)
        hosts = render_hosts(hostname, ip_addresses)
        resolv = render_resolv_conf(dns) if _dns_given(dns) else self._host_resolv_conf()
        paths = self.paths(sandbox_id)
        self.pod_dir(sandbox_id).mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(paths.hostname, f"{hostname}\n" if hostname else "")
        write_atomic(paths.hosts, hosts)
        write_atomic(paths.resolv_conf, resolv)
        return paths

    def write_hosts(self, sandbox_id: str, *, hostname: str, ip_addresses: Sequence[str]) -> Path:
        """Rewrite /etc/hosts once the pod's IPs are known (after network setup)."""
        check_safe_id("sandbox", sandbox_id)
        validate_hostname(hostname)
        path = self.paths(sandbox_id).hosts
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        write_atomic(path, render_hosts(hostname, ip_addresses))
        return path

    def _host_resolv_conf(self) -> str:
        try:
            return self.host_resolv_conf.read_text(errors="replace")
        except FileNotFoundError:
            log.warning("%s does not exist; pods get an empty resolv.conf", self.host_resolv_conf)
            return ""

    # ---- /dev/shm

    def mount_shm(self, sandbox_id: str, size: int | None = None) -> Path:
        """Mount the pod's shm tmpfs (`size` bytes, default from the config); idempotent."""
        check_safe_id("sandbox", sandbox_id)
        size = self.shm_size if size is None else size
        if size <= 0:
            raise InvalidArgument(f"invalid shm size {size} for sandbox {sandbox_id}")
        path = self.shm_path(sandbox_id)
        if os.path.ismount(path):  # tmpfs: its own device, two stats instead of mountinfo
            return path
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        try:
            sys_mount("shm", path, "tmpfs", flags, f"mode=1777,size={size}")
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise Internal(f"mounting /dev/shm of sandbox {sandbox_id}: {exc}") from exc
        return path

    def unmount_shm(self, sandbox_id: str) -> None:
        """Unmount the pod's shm (lazily when busy); idempotent."""
        check_safe_id("sandbox", sandbox_id)
        path = self.shm_path(sandbox_id)
        try:
            sys_umount_all(path)
        except OSError as exc:
            raise Internal(f"unmounting /dev/shm of sandbox {sandbox_id}: {exc}") from exc
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()

    # ---- removal

    def remove(self, sandbox_id: str) -> None:
        """Unmount shm and delete the pod's files; idempotent.

        Only the entries this class makes are deleted; the directory goes when that empties it.
        """
        self.unmount_shm(sandbox_id)
        directory = self.pod_dir(sandbox_id)
        for name in _FILE_NAMES:
            (directory / name).unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            for leftover in directory.glob(".*.tmp-*"):
                leftover.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # gone already, or holds others' files
            directory.rmdir()
