"""The attachment cache: what each CNI ADD was run with and what it returned, on disk.

One file per attachment, keyed by (network, sandbox id, ifname): the network config as it was
run, the pod's CNI_ARGS and runtimeConfig values, the netns path and the ADD result. DEL after
a restart (or a config change) then runs with the same config and gets the result as
`prevResult`; recovery runs CHECK from it, and DEL for pods that are gone.

An entry is written before ADD runs (without a result) and again after it, so even a crash
in the middle of an ADD leaves a record to DEL from. Writes are crash-safe (temp file, fsync,
rename) and synchronous: callers run them off the event loop. The directory belongs on
persistent storage, like host-local's IPAM store, so a reboot does not leak addresses.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryopod.errors import CryopodError, Internal, InvalidCNIResult, ResourceExhausted
from cryopod.ids import check_safe_id
from cryopod.pods.network.config import JSONObject, NetworkConfigList, parse_network_config
from cryopod.pods.network.invoke import Target
from cryopod.pods.network.request import check_ifname
from cryopod.pods.network.result import CNIResult, parse_result

log = logging.getLogger(__name__)

CACHE_KIND = "cryopodCNICacheV1"
_SEPARATOR = "+"  # in no network name, sandbox id or ifname cryopod accepts
_SUFFIX = ".json"

AttachmentKey = tuple[str, str, str]
"""(network name, sandbox id, ifname)."""


@dataclass(frozen=True)
class CachedAttachment:
    """One pod's attachment to one network, as ADD ran it."""

    network: NetworkConfigList
    sandbox_id: str
    ifname: str
    netns: str
    cni_args: str = ""
    capability_args: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] | None = None
    """The ADD result as the plugins printed it; None while ADD has not finished."""

    @property
    def key(self) -> AttachmentKey:
        return self.network.name, self.sandbox_id, self.ifname

    @property
    def complete(self) -> bool:
        """Did ADD finish? An incomplete entry is DEL'd, never CHECK'd."""
        return self.result is not None

    def target(self, netns: str | None = None) -> Target:
        """The CNI_* parameters, with `netns` instead of the recorded path when given."""
        return Target(
            self.sandbox_id, self.netns if netns is None else netns, self.ifname, self.cni_args
        )

    def parsed_result(self) -> CNIResult | None:
        return None if self.result is None else parse_result(self.result, self.network.cni_version)

    def pod_ips(self) -> tuple[str, ...]:
        """The pod's addresses from the cached result (after a restart), IPv4 first."""
        result = self.parsed_result()
        return () if result is None else result.pod_ips(self.ifname)

    def to_json(self) -> JSONObject:
        return {
            "kind": CACHE_KIND,
            "containerId": self.sandbox_id,
            "ifName": self.ifname,
            "netns": self.netns,
            "cniArgs": self.cni_args,
            "capabilityArgs": dict(self.capability_args),
            "network": self.network.to_json(),
            "result": None if self.result is None else dict(self.result),
        }


def attachment_from_json(data: Mapping[str, Any], source: str) -> CachedAttachment:
    """Read a cache record; raises InvalidCNIResult (or InvalidNetworkConfig) when damaged."""
    if data.get("kind") != CACHE_KIND:
        raise InvalidCNIResult(f"{source}: not a cryopod CNI cache record")
    network = parse_network_config(_field(data, "network", dict, source), source)
    result = data.get("result")
    if result is not None and not isinstance(result, dict):
        raise InvalidCNIResult(f"{source}: 'result' is not an object")
    attachment = CachedAttachment(
        network=network,
        sandbox_id=_field(data, "containerId", str, source),
        ifname=_field(data, "ifName", str, source),
        netns=_field(data, "netns", str, source),
        cni_args=_field(data, "cniArgs", str, source),
        capability_args=_field(data, "capabilityArgs", dict, source),
        result=result,
    )
    attachment.parsed_result()  # a result that does not parse is damage too
    return attachment


def _field(data: Mapping[str, Any], key: str, kind: type[Any], source: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind):
        raise InvalidCNIResult(f"{source}: {key!r} is missing or not a {kind.__name__}")
    return value


def _discard(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


class ResultCache:
    """Cached attachments, one JSON file each under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, network: str, sandbox_id: str, ifname: str) -> Path:
        check_safe_id("sandbox", sandbox_id)
        check_safe_id("network", network)
        check_ifname(ifname)
        return self.directory / f"{network}{_SEPARATOR}{sandbox_id}{_SEPARATOR}{ifname}{_SUFFIX}"

    def save(self, attachment: CachedAttachment) -> None:
        """Write (or replace) the entry atomically.

        Not fsynced, like libcni's cache: a daemon crash never sees a torn file (rename),
        and what a power loss could lose describes a netns that died with the host anyway.
        It is on every pod's start path: two fsyncs per ADD cost more than the ADD's own
        bookkeeping.

        Raises ResourceExhausted when the disk is full, Internal for other I/O errors.
        """
        path = self.path(*attachment.key)
        temp = self.directory / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            with temp.open("x") as f:
                json.dump(attachment.to_json(), f)
            os.replace(temp, path)
        except OSError as exc:
            _discard(temp)
            if exc.errno == errno.ENOSPC:
                raise ResourceExhausted(f"no space to write the CNI cache {path}") from exc
            raise Internal(f"writing the CNI cache {path}: {exc}") from exc
        except BaseException:
            _discard(temp)
            raise

    def load(self, network: str, sandbox_id: str, ifname: str) -> CachedAttachment | None:
        """The entry, or None when there is none; raises InvalidCNIResult when it is damaged."""
        path = self.path(network, sandbox_id, ifname)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidCNIResult(f"{path}: not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidCNIResult(f"{path}: not a JSON object")
        return attachment_from_json(data, str(path))

    def delete(self, network: str, sandbox_id: str, ifname: str) -> None:
        """Forget the entry; idempotent."""
        self.path(network, sandbox_id, ifname).unlink(missing_ok=True)

    def keys(self, sandbox_id: str | None = None) -> list[AttachmentKey]:
        """Keys of every entry on disk (of one sandbox if given), damaged ones included."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        keys = []
        for name in names:
            parts = name[: -len(_SUFFIX)].split(_SEPARATOR)
            if name.startswith(".") or not name.endswith(_SUFFIX) or len(parts) != 3:
                continue
            network, owner, ifname = parts
            if sandbox_id is None or owner == sandbox_id:
                keys.append((network, owner, ifname))
        return keys

    def list(self, sandbox_id: str | None = None) -> list[CachedAttachment]:
        """Every readable entry (of one sandbox if given); damaged ones are logged, skipped."""
        found = []
        for key in self.keys(sandbox_id):
            try:
                attachment = self.load(*key)
            except CryopodError as exc:
                log.warning("CNI cache: skipping damaged entry: %s", exc)
                continue
            if attachment is not None:
                found.append(attachment)
        return found

    def remove_stale_temp_files(self) -> None:
        """Drop temp files a crash left behind mid-write."""
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    Path(entry.path).unlink(missing_ok=True)
