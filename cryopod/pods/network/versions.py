"""CNI spec versions: which ones cryopod speaks, which verbs each has, and negotiation.

cryopod passes a network's own `cniVersion` to its plugins and reads results of 0.3.0 to
1.1.0. A 1.1.0 config may list `cniVersions`; the highest one that cryopod and every plugin of
the network support is used (the spec's version selection).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SpecVersion = tuple[int, int, int]

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
"""Spec versions whose configs cryopod accepts and whose results it parses."""

_VERSION = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def parse_version(text: str) -> SpecVersion | None:
    """`"1.0.0"` -> `(1, 0, 0)`; None when `text` is no MAJOR.MINOR.PATCH version."""
    match = _VERSION.match(text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def is_supported(version: str) -> bool:
    return version in SUPPORTED_VERSIONS


def _at_least(version: str, floor: SpecVersion) -> bool:
    parsed = parse_version(version)
    return parsed is not None and parsed >= floor


def has_check(version: str) -> bool:
    """CHECK (and prevResult on DEL) exist from 0.4.0 on."""
    return _at_least(version, (0, 4, 0))


def has_status_and_gc(version: str) -> bool:
    """STATUS and GC exist from 1.1.0 on."""
    return _at_least(version, (1, 1, 0))


def ips_carry_version(version: str) -> bool:
    """Results before 1.0.0 say `"version": "4"|"6"` on each IP; 1.0.0 dropped it."""
    parsed = parse_version(version)
    return parsed is not None and parsed < (1, 0, 0)


def highest(versions: Iterable[str]) -> str | None:
    """The highest well-formed version in `versions`."""
    parsed = [(v, p) for v in versions if (p := parse_version(v)) is not None]
    return max(parsed, key=lambda item: item[1])[0] if parsed else None


def select_version(
    cni_version: str, cni_versions: Iterable[str] = (), plugin_versions: Iterable[str] | None = None
) -> str | None:
    """The version to run a network with, or None when no version fits.

    Candidates are `cni_versions` (spec 1.1.0) and `cni_version`; each must be one cryopod
    supports and, when `plugin_versions` is known, one every plugin supports.
    """
    candidates = [*cni_versions, cni_version]
    allowed = set(SUPPORTED_VERSIONS)
    if plugin_versions is not None:
        allowed &= set(plugin_versions)
    return highest(v for v in candidates if v in allowed)
