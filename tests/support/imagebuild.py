"""Build OCI image layouts in Python, from local material only (no network).

`LayoutBuilder` writes an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`);
`tar_layer` turns a list of entry specs into a layer tar, including the malformed and hostile
entries that unpack tests need. The ready-made images (`busybox_image`, `whiteout_image`,
`multiarch_index`, `zstd_image`, `configured_image`, `malicious_image`, `big_image`) are built
from the static busybox binary and the host's own files, so every build is deterministic on a
given machine: the same call gives the same digests.

The module is importable from `bench/` as well as from the tests.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias

import zstandard

try:  # isal's gzip is several times faster than zlib's and is a runtime dependency anyway
    from isal import igzip as _igzip
except ImportError:  # pragma: no cover - isal is in the project's dependencies
    _igzip = None

Compression: TypeAlias = Literal["gzip", "zstd", "none"]

MEDIA_TYPE_OCI_LAYOUT_VERSION = "1.0.0"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER_MEDIA_TYPES: dict[str, str] = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

# Every timestamp in a built image; a fixed value keeps digests stable between runs.
EPOCH = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"

BUSYBOX_BINARY = Path("/bin/busybox")
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Users and groups of the busybox rootfs: (name, uid, gid, home).
BUSYBOX_USERS: tuple[tuple[str, int, int, str], ...] = (
    ("root", 0, 0, "/root"),
    ("app", 1000, 1000, "/home/app"),
    ("nobody", 65534, 65534, "/nonexistent"),
)
# (name, gid, members)
BUSYBOX_GROUPS: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("root", 0, ()),
    ("staff", 50, ("app",)),
    ("app", 1000, ()),
    ("nobody", 65534, ()),
)

# What a correct unpacker leaves in the rootfs of `whiteout_image` (beyond busybox).
WHITEOUT_PRESENT: dict[str, bytes] = {
    "data/keep": b"keep\n",
    "opaque/new": b"new\n",
    "data/added": b"added in layer 3\n",
}
WHITEOUT_ABSENT: tuple[str, ...] = (
    "data/gone",
    "data/.wh.gone",
    "opaque/old",
    "opaque/.wh..wh..opq",
)

# Content of `/arch` in each image of `multiarch_index`.
MULTIARCH_MARKERS: dict[str, bytes] = {"amd64": b"amd64", "arm64": b"arm64"}
MULTIARCH_PLATFORMS: dict[str, dict[str, str]] = {
    "amd64": {"architecture": "amd64", "os": "linux"},
    "arm64": {"architecture": "arm64", "os": "linux", "variant": "v8"},
}

MALICIOUS_KINDS: tuple[str, ...] = ("traversal", "absolute", "symlink-escape", "hardlink-escape")
# Host paths that a broken unpacker would create or modify when unpacking each malicious image.
# For "hardlink-escape", create HARDLINK_ESCAPE_TARGET with known content before unpacking and
# check afterwards that it is unchanged and that no file in the rootfs shares its inode.
HARDLINK_ESCAPE_TARGET = Path("/tmp/cryopod-hardlink-target")
MALICIOUS_HOST_PATHS: dict[str, tuple[Path, ...]] = {
    "traversal": (Path("/tmp/cryopod-pwned-traversal"),),
    "absolute": (Path("/tmp/cryopod-pwned-absolute"),),
    "symlink-escape": (
        Path("/tmp/cryopod-pwned-symlink"),
        Path("/tmp/cryopod-pwned-symlink-relative"),
    ),
    "hardlink-escape": (HARDLINK_ESCAPE_TARGET,),
}
# Enough `../` to climb out of any unpack directory a test uses.
_CLIMB = "../" * 24


# --------------------------------------------------------------------------- layer entries


@dataclass(frozen=True)
class File:
    """A regular file."""

    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = EPOCH
    pax: dict[str, str] = field(default_factory=dict)  # e.g. {"SCHILY.xattr.user.k": "v"}


@dataclass(frozen=True)
class Dir:
    """A directory."""

    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = EPOCH


@dataclass(frozen=True)
class Symlink:
    """A symbolic link `path -> target`; the target is stored verbatim."""

    path: str
    target: str
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Hardlink:
    """A hard link to `target`, a path earlier in the same layer."""

    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletes `path` from lower layers: stored as `dirname/.wh.basename`."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides everything lower layers put in directory `path`: `path/.wh..wh..opq`."""

    path: str


@dataclass(frozen=True)
class Raw:
    """A tar header written exactly as given, for hostile or malformed entries."""

    info: tarfile.TarInfo
    data: bytes | None = None


Entry: TypeAlias = File | Dir | Symlink | Hardlink | Whiteout | Opaque | Raw | tarfile.TarInfo


def _info(
    name: str, kind: bytes, *, mode: int, uid: int = 0, gid: int = 0, mtime: int = EPOCH
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.uname = ""
    info.gname = ""
    info.mtime = mtime
    return info


def _split(path: str) -> tuple[str, str]:
    path = path.strip("/")
    head, _, tail = path.rpartition("/")
    return head, tail


def tar_layer(entries: Iterable[Entry]) -> bytes:
    """Return an uncompressed layer tar holding `entries` in the given order.

    Paths are written as given (no leading `./`, no implicit parent directories), so a spec
    decides exactly what the unpacker sees. Headers use the PAX format, like Docker and
    BuildKit.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            data: bytes | None = None
            match entry:
                case File():
                    info = _info(
                        entry.path,
                        tarfile.REGTYPE,
                        mode=entry.mode,
                        uid=entry.uid,
                        gid=entry.gid,
                        mtime=entry.mtime,
                    )
                    info.size = len(entry.data)
                    if entry.pax:
                        info.pax_headers = dict(entry.pax)
                    data = entry.data
                case Dir():
                    info = _info(
                        entry.path.rstrip("/"),
                        tarfile.DIRTYPE,
                        mode=entry.mode,
                        uid=entry.uid,
                        gid=entry.gid,
                        mtime=entry.mtime,
                    )
                case Symlink():
                    info = _info(
                        entry.path, tarfile.SYMTYPE, mode=0o777, uid=entry.uid, gid=entry.gid
                    )
                    info.linkname = entry.target
                case Hardlink():
                    info = _info(entry.path, tarfile.LNKTYPE, mode=0o644)
                    info.linkname = entry.target
                case Whiteout():
                    head, tail = _split(entry.path)
                    name = f"{head}/.wh.{tail}" if head else f".wh.{tail}"
                    info = _info(name, tarfile.REGTYPE, mode=0o644)
                case Opaque():
                    info = _info(
                        f"{entry.path.strip('/')}/.wh..wh..opq", tarfile.REGTYPE, mode=0o644
                    )
                case Raw():
                    info, data = entry.info, entry.data
                case tarfile.TarInfo():
                    info = entry
                case _:  # pragma: no cover - guarded by the type
                    raise TypeError(f"not a layer entry: {entry!r}")
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: Compression) -> bytes:
    """Compress a layer tar deterministically (no timestamps in the stream)."""
    if compression == "gzip":
        if _igzip is not None:
            return bytes(_igzip.compress(data, compresslevel=2, mtime=0))
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return bytes(zstandard.ZstdCompressor(level=3, write_content_size=True).compress(data))
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class LayerBlob:
    """A layer written to the layout: its descriptor and the digest of the uncompressed tar."""

    descriptor: dict[str, Any]
    diff_id: str


class LayoutBuilder:
    """Writes an OCI image layout under `root`; re-opening an existing layout appends to it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (self.root / "oci-layout").write_text(
            json.dumps({"imageLayoutVersion": MEDIA_TYPE_OCI_LAYOUT_VERSION})
        )
        index_path = self.root / "index.json"
        if index_path.exists():
            self._index: dict[str, Any] = json.loads(index_path.read_text())
        else:
            self._index = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}
            self._write_index()

    # blobs

    def write_blob(self, data: bytes) -> str:
        """Store `data` under its digest (idempotent) and return the digest."""
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        return digest

    def blob_path(self, digest: str) -> Path:
        algo, _, hexpart = digest.partition(":")
        if algo != "sha256" or len(hexpart) != 64:
            raise ValueError(f"unsupported digest {digest!r}")
        return self.blobs / hexpart

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def read_json(self, digest: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.read_blob(digest))
        return value

    def descriptor(self, digest: str, media_type: str | None = None) -> dict[str, Any]:
        """Descriptor of a stored blob; manifests and indexes carry their own media type."""
        data = self.read_blob(digest)
        if media_type is None:
            media_type = json.loads(data)["mediaType"]
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    # layers, images, indexes

    def add_layer(self, tar: bytes, compression: Compression = "gzip") -> LayerBlob:
        """Compress and store an uncompressed layer tar."""
        blob = compress(tar, compression)
        digest = self.write_blob(blob)
        descriptor = {
            "mediaType": LAYER_MEDIA_TYPES[compression],
            "digest": digest,
            "size": len(blob),
        }
        return LayerBlob(descriptor=descriptor, diff_id=sha256_digest(tar))

    def add_image(
        self,
        layers: Sequence[tuple[bytes, Compression]],
        *,
        config: dict[str, Any] | None = None,
        architecture: str = "amd64",
        os: str = "linux",
        variant: str = "",
        ref_name: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Store an image made of `layers` (uncompressed tars and how to compress each).

        `config` is the runtime part of the image config (`Env`, `Cmd`, `Entrypoint`,
        `WorkingDir`, `User`, `Labels`, `StopSignal`, `ExposedPorts`, `Volumes`, ...).
        The manifest is tagged `ref_name` in index.json when given, else only stored (as the
        child of an index). Returns the manifest digest.
        """
        blobs = [self.add_layer(tar, compression) for tar, compression in layers]
        image_config: dict[str, Any] = {
            "created": CREATED,
            "author": "cryopod tests",
            "architecture": architecture,
            "os": os,
        }
        if variant:
            image_config["variant"] = variant
        image_config["config"] = dict(config or {})
        image_config["rootfs"] = {"type": "layers", "diff_ids": [b.diff_id for b in blobs]}
        image_config["history"] = [
            {"created": CREATED, "created_by": f"cryopod-tests layer {i}"}
            for i in range(len(blobs))
        ]
        config_data = _canonical_json(image_config)
        config_digest = self.write_blob(config_data)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_OCI_CONFIG,
                "digest": config_digest,
                "size": len(config_data),
            },
            "layers": [b.descriptor for b in blobs],
        }
        if annotations:
            manifest["annotations"] = dict(annotations)
        digest = self.write_blob(_canonical_json(manifest))
        if ref_name is not None:
            self.tag(ref_name, digest)
        return digest

    def add_index(
        self,
        manifests: Sequence[tuple[str, dict[str, str]]],
        ref_name: str | None,
        *,
        annotations: dict[str, str] | None = None,
    ) -> str:
        """Store an image index over stored manifests given as (digest, platform)."""
        entries = []
        for digest, platform in manifests:
            entry = self.descriptor(digest)
            entry["platform"] = dict(platform)
            entries.append(entry)
        index: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": entries,
        }
        if annotations:
            index["annotations"] = dict(annotations)
        digest = self.write_blob(_canonical_json(index))
        if ref_name is not None:
            self.tag(ref_name, digest)
        return digest

    def tag(self, ref_name: str, digest: str) -> None:
        """Point `ref_name` in index.json at a stored manifest or index."""
        entry = self.descriptor(digest)
        entry["annotations"] = {REF_NAME_ANNOTATION: ref_name}
        kept = [
            m
            for m in self._index["manifests"]
            if m.get("annotations", {}).get(REF_NAME_ANNOTATION) != ref_name
        ]
        self._index["manifests"] = [*kept, entry]
        self._write_index()

    def refs(self) -> dict[str, str]:
        """Tagged names in index.json and their digests."""
        return {
            m["annotations"][REF_NAME_ANNOTATION]: m["digest"]
            for m in self._index["manifests"]
            if REF_NAME_ANNOTATION in m.get("annotations", {})
        }

    def _write_index(self) -> None:
        path = self.root / "index.json"
        tmp = path.with_name(".index.json.tmp")
        tmp.write_text(json.dumps(self._index, indent=2))
        tmp.rename(path)


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# --------------------------------------------------------------------------- busybox rootfs


@functools.cache
def busybox_applets() -> tuple[str, ...]:
    """Applets the host's static busybox provides (`busybox --list`)."""
    out = subprocess.run(
        [str(BUSYBOX_BINARY), "--list"], check=True, capture_output=True, text=True
    ).stdout
    return tuple(sorted(a for a in out.split() if a and a != "busybox" and "/" not in a))


@functools.cache
def _busybox_bytes() -> bytes:
    return BUSYBOX_BINARY.read_bytes()


def passwd_text() -> str:
    lines = []
    for name, uid, gid, home in BUSYBOX_USERS:
        shell = "/bin/false" if name == "nobody" else "/bin/sh"
        lines.append(f"{name}:x:{uid}:{gid}:{name}:{home}:{shell}")
    return "\n".join(lines) + "\n"


def group_text() -> str:
    return "".join(f"{name}:x:{gid}:{','.join(members)}\n" for name, gid, members in BUSYBOX_GROUPS)


def busybox_entries() -> list[Entry]:
    """A small runnable rootfs: static busybox, its applets as symlinks, users and groups."""
    entries: list[Entry] = [
        Dir("bin"),
        Dir("dev"),
        Dir("etc"),
        Dir("home"),
        Dir("home/app", mode=0o755, uid=1000, gid=1000),
        Dir("proc", mode=0o555),
        Dir("root", mode=0o700),
        Dir("sys", mode=0o555),
        Dir("tmp", mode=0o1777),
        Dir("usr"),
        Dir("usr/bin"),
        Dir("usr/sbin"),
        Dir("var"),
        Dir("var/tmp", mode=0o1777),
        File("bin/busybox", _busybox_bytes(), mode=0o755),
    ]
    entries += [Symlink(f"bin/{applet}", "busybox") for applet in busybox_applets()]
    entries += [
        Symlink("usr/bin/env", "../../bin/busybox"),
        File("etc/passwd", passwd_text().encode()),
        File("etc/group", group_text().encode()),
        File("etc/os-release", b'ID=cryopod-test\nNAME="cryopod test busybox"\n'),
    ]
    return entries


@functools.cache
def busybox_layer() -> bytes:
    """The uncompressed busybox rootfs layer (cached: every image shares it)."""
    return tar_layer(busybox_entries())


BUSYBOX_CONFIG: dict[str, Any] = {
    "Env": [DEFAULT_PATH_ENV],
    "Cmd": ["/bin/sh"],
    "Labels": {"org.cryopod.test": "busybox"},
}

CONFIGURED_CONFIG: dict[str, Any] = {
    "Env": [DEFAULT_PATH_ENV, "GREETING=hello from the image", "EMPTY="],
    "Entrypoint": ["/bin/sh", "-c"],
    "Cmd": ["echo $GREETING"],
    "WorkingDir": "/home/app",
    "User": "app",
    "Labels": {"org.cryopod.test": "configured", "com.example.tier": "backend"},
    "StopSignal": "SIGUSR1",
    "ExposedPorts": {"8080/tcp": {}},
    "Volumes": {"/data": {}},
}


# --------------------------------------------------------------------------- ready-made images


def busybox_image(layout: LayoutBuilder, ref: str, compression: Compression = "gzip") -> str:
    """A one-layer runnable busybox image; returns the manifest digest."""
    return layout.add_image([(busybox_layer(), compression)], config=BUSYBOX_CONFIG, ref_name=ref)


def pause_image(layout: LayoutBuilder, ref: str) -> str:
    """A stand-in for registry.k8s.io/pause: busybox sleeping for ever as PID 1."""
    config = {"Entrypoint": ["/bin/sleep", "2147483647"], "Labels": {"org.cryopod.test": "pause"}}
    return layout.add_image([(busybox_layer(), "gzip")], config=config, ref_name=ref)


def configured_image(layout: LayoutBuilder, ref: str) -> str:
    """busybox with every runtime config field set (see CONFIGURED_CONFIG)."""
    return layout.add_image([(busybox_layer(), "gzip")], config=CONFIGURED_CONFIG, ref_name=ref)


def whiteout_image(layout: LayoutBuilder, ref: str) -> str:
    """Three layers exercising whiteouts and opaque directories.

    Expected result: WHITEOUT_PRESENT exist with that content, WHITEOUT_ABSENT do not.
    """
    base = tar_layer(
        [
            *busybox_entries(),
            Dir("data"),
            File("data/keep", b"keep\n"),
            File("data/gone", b"gone\n"),
            Dir("opaque"),
            File("opaque/old", b"old\n"),
        ]
    )
    change = tar_layer(
        [
            Whiteout("data/gone"),
            Dir("opaque"),
            Opaque("opaque"),
            File("opaque/new", b"new\n"),
        ]
    )
    addition = tar_layer([File("data/added", WHITEOUT_PRESENT["data/added"])])
    config = dict(BUSYBOX_CONFIG, Labels={"org.cryopod.test": "whiteouts"})
    return layout.add_image(
        [(base, "gzip"), (change, "gzip"), (addition, "gzip")], config=config, ref_name=ref
    )


def multiarch_index(layout: LayoutBuilder, ref: str) -> str:
    """An index over a runnable amd64 busybox and a tiny arm64 image; `/arch` names each.

    Returns the index digest.
    """
    amd64 = layout.add_image(
        [
            (busybox_layer(), "gzip"),
            (tar_layer([File("arch", MULTIARCH_MARKERS["amd64"])]), "gzip"),
        ],
        config=dict(BUSYBOX_CONFIG, Labels={"org.cryopod.test": "multiarch-amd64"}),
        architecture="amd64",
    )
    arm64 = layout.add_image(
        [(tar_layer([Dir("bin"), File("arch", MULTIARCH_MARKERS["arm64"])]), "gzip")],
        config={
            "Env": [DEFAULT_PATH_ENV],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.cryopod.test": "multiarch-arm64"},
        },
        architecture="arm64",
        variant="v8",
    )
    return layout.add_index(
        [(amd64, MULTIARCH_PLATFORMS["amd64"]), (arm64, MULTIARCH_PLATFORMS["arm64"])],
        ref,
    )


def zstd_image(layout: LayoutBuilder, ref: str) -> str:
    """busybox with its layer compressed with zstd."""
    return busybox_image(layout, ref, compression="zstd")


def _raw(
    name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None, linkname: str = ""
) -> Raw:
    info = _info(name, kind, mode=0o777 if kind == tarfile.SYMTYPE else 0o644)
    info.linkname = linkname
    return Raw(info, data if data is not None or kind != tarfile.REGTYPE else b"")


def malicious_entries(kind: str) -> list[Entry]:
    """Entries of a hostile layer; see MALICIOUS_HOST_PATHS for what each one targets."""
    benign: list[Entry] = [Dir("ok"), File("ok/file", b"harmless\n")]
    if kind == "traversal":
        return [*benign, _raw(f"{_CLIMB}tmp/cryopod-pwned-traversal", data=b"pwned\n")]
    if kind == "absolute":
        return [*benign, _raw("/tmp/cryopod-pwned-absolute", data=b"pwned\n")]
    if kind == "symlink-escape":
        return [
            *benign,
            _raw("evil", tarfile.SYMTYPE, linkname="/tmp"),
            _raw("evil/cryopod-pwned-symlink", data=b"pwned\n"),
            _raw("evil-relative", tarfile.SYMTYPE, linkname=f"{_CLIMB}tmp"),
            _raw("evil-relative/cryopod-pwned-symlink-relative", data=b"pwned\n"),
        ]
    if kind == "hardlink-escape":
        return [
            *benign,
            _raw("escape", tarfile.LNKTYPE, linkname=f"{_CLIMB}{str(HARDLINK_ESCAPE_TARGET)[1:]}"),
            # A second entry with the same name: writing it through the link would modify the
            # host file if the unpacker followed the first one.
            _raw("escape", data=b"pwned\n"),
        ]
    raise ValueError(f"unknown malicious image kind {kind!r}; expected one of {MALICIOUS_KINDS}")


def malicious_image(layout: LayoutBuilder, ref: str, kind: str) -> str:
    """A single-layer image whose layer tries to write outside the rootfs."""
    return layout.add_image(
        [(tar_layer(malicious_entries(kind)), "gzip")],
        config={
            "Env": [DEFAULT_PATH_ENV],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.cryopod.test": f"evil-{kind}"},
        },
        ref_name=ref,
    )


# --------------------------------------------------------------------------- big images


@functools.cache
def _host_corpus(limit: int = 48 << 20) -> bytes:
    """Up to `limit` bytes of real files from /usr/lib, in a stable order."""
    chunks: list[bytes] = []
    total = 0
    for top, dirs, files in os.walk("/usr/lib"):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            try:
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read(limit - total)
            except OSError:
                continue
            chunks.append(data)
            total += len(data)
            if total >= limit:
                return b"".join(chunks)
    if total < 1 << 20:  # no usable /usr/lib: fall back to repetitive text
        text = b"".join(b"line %d of a compressible filler text\n" % i for i in range(40000))
        chunks.append(text)
    return b"".join(chunks)


def _big_layer_entries(rng: random.Random, layer: int, size: int) -> list[Entry]:
    corpus = _host_corpus()
    entries: list[Entry] = [Dir(f"big{layer}")]
    written = 0
    index = 0
    while written < size:
        if index % 40 == 0:
            entries.append(Dir(f"big{layer}/d{index // 40}"))
        remaining = size - written
        if rng.random() < 0.7:
            length = rng.randint(512, 32 << 10)
        else:
            length = rng.randint(256 << 10, 8 << 20)
        length = min(length, remaining)
        if rng.random() < 0.5:
            data = rng.randbytes(length)
        else:
            length = min(length, len(corpus))
            start = rng.randrange(0, len(corpus) - length + 1)
            data = corpus[start : start + length]
        path = f"big{layer}/d{index // 40}/f{index}"
        entries.append(File(path, data, mode=0o755 if index % 7 == 0 else 0o644))
        if index % 25 == 0:
            entries.append(Symlink(f"{path}.link", f"f{index}"))
        written += len(data)
        index += 1
    return entries


def big_image(
    layout: LayoutBuilder,
    ref: str,
    layers: int = 7,
    total_mb: int = 128,
    *,
    compression: Compression = "gzip",
    seed: int = 0,
    with_busybox: bool = True,
) -> str:
    """A large image for benchmarks: `layers` layers totalling about `total_mb` MiB.

    Half the file data is seeded random bytes (incompressible), half is slices of real files
    from /usr/lib (compressible, realistic); sizes mix many small files with a few large ones.
    The same arguments always give the same image on a given host. When `with_busybox`, the
    first layer is the busybox rootfs so containers can run from the image.
    """
    if layers < 1:
        raise ValueError("an image needs at least one layer")
    rng = random.Random(seed)
    per_layer = max(1, (total_mb << 20) // layers)
    tars: list[tuple[bytes, Compression]] = []
    for i in range(layers):
        entries = _big_layer_entries(rng, i, per_layer)
        if i == 0 and with_busybox:
            entries = [*busybox_entries(), *entries]
        tars.append((tar_layer(entries), compression))
    config = dict(BUSYBOX_CONFIG, Labels={"org.cryopod.test": f"big-{layers}x{total_mb}"})
    return layout.add_image(tars, config=config, ref_name=ref)
