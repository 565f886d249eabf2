"""The CRI ImageService against a real registry, through a running `cryopod serve`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from tests.integration.conftest import Daemon, insecure_registries_conf
from tests.support.registry import PushedImages


def code_of(call: object, *args: object, **kwargs: object) -> grpc.StatusCode:
    """The gRPC status code `call` fails with (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)  # type: ignore[operator]
    return caught.value.code()  # type: ignore[no-any-return]


def layer_dirs(daemon: Daemon) -> set[str]:
    layers = daemon.root / "layers"
    return {p.name for p in layers.iterdir() if p.name != "tmp"} if layers.exists() else set()


def leftovers(daemon: Daemon) -> list[str]:
    """Half-done work that must never stay behind."""
    found = [str(p) for p in (daemon.root / "layers" / "tmp").glob("*")]
    found += [str(p) for p in (daemon.root / "blobs" / "ingest").glob("*")]
    return found


# --- pull and inspect -----------------------------------------------------------------------


def test_pull_by_tag_records_the_image(daemon: Daemon, test_images: PushedImages) -> None:
    busybox = test_images["busybox"]
    image_ref = daemon.pull(busybox.reference)
    assert image_ref == busybox.config_digest

    status = daemon.status(busybox.reference, verbose=True)
    assert status.image.id == image_ref
    assert list(status.image.repo_tags) == [busybox.reference]
    assert list(status.image.repo_digests) == [f"{test_images.host}/busybox@{busybox.digest}"]
    assert status.image.size > 0
    info = json.loads(status.info["info"])
    assert info["imageSpec"]["rootfs"]["diff_ids"]
    assert info["manifestDigest"] == busybox.digest

    [listed] = daemon.list_images()
    assert listed.id == image_ref
    [chain] = info["chainIDs"]
    diff = daemon.root / "layers" / chain.removeprefix("sha256:") / "diff"
    assert (diff / "bin" / "busybox").stat().st_mode & stat.S_IXUSR
    assert os.readlink(diff / "bin" / "sh") == "busybox"
    assert leftovers(daemon) == []


def test_pull_by_digest_and_status_by_every_name(daemon: Daemon, test_images: PushedImages) -> None:
    busybox = test_images["busybox"]
    image_ref = daemon.pull(busybox.by_digest)
    assert image_ref == busybox.config_digest
    hex_id = image_ref.removeprefix("sha256:")
    for name in (busybox.by_digest, image_ref, hex_id, hex_id[:12]):
        assert daemon.status(name).image.id == image_ref, name
    # Pulled by digest only: no tag was given, so none is recorded.
    assert list(daemon.status(image_ref).image.repo_tags) == []


def test_image_config_user_is_reported(daemon: Daemon, test_images: PushedImages) -> None:
    configured = test_images["configured"]
    daemon.pull(configured.reference)
    image = daemon.status(configured.reference, verbose=True)
    info = json.loads(image.info["info"])
    user = info["imageSpec"]["config"].get("User", "")
    name = user.split(":")[0]
    if name.isdigit():
        assert image.image.uid.value == int(name)
    else:
        assert image.image.username == name


def _mount_overlay(daemon: Daemon, chain_ids: list[str], target: Path) -> None:
    lowers = ":".join(
        str(daemon.root / "layers" / c.removeprefix("sha256:") / "diff")
        for c in reversed(chain_ids)
    )
    target.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}", str(target)], check=True
    )


def test_whiteouts_and_opaque_dirs_hide_lower_files(
    daemon: Daemon, test_images: PushedImages, tmp_path: Path
) -> None:
    whiteouts = test_images["whiteouts"]
    daemon.pull(whiteouts.reference)
    chains = json.loads(daemon.status(whiteouts.reference, verbose=True).info["info"])["chainIDs"]
    assert len(chains) == 3
    second = daemon.root / "layers" / chains[1].removeprefix("sha256:") / "diff"
    gone = os.lstat(second / "data" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(second / "opaque", "trusted.overlay.opaque") == b"y"

    merged = tmp_path / "merged"
    _mount_overlay(daemon, chains, merged)
    try:
        assert (merged / "data" / "keep").exists()
        assert not (merged / "data" / "gone").exists()
        assert sorted(p.name for p in (merged / "opaque").iterdir()) == ["new"]
        assert (merged / "bin" / "busybox").exists()
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_multiarch_index_selects_the_host_platform(
    daemon: Daemon, test_images: PushedImages
) -> None:
    multiarch = test_images["multiarch"]
    image_ref = daemon.pull(multiarch.reference)
    status = daemon.status(multiarch.reference, verbose=True)
    info = json.loads(status.info["info"])
    assert info["manifestDigest"] == multiarch.platform_digests["linux/amd64"]
    assert info["imageSpec"]["architecture"] == "amd64"
    # The repo digest is the index's: the digest a user pulls by.
    assert list(status.image.repo_digests) == [f"{test_images.host}/multiarch@{multiarch.digest}"]
    top = daemon.root / "layers" / info["chainIDs"][-1].removeprefix("sha256:") / "diff"
    assert (top / "arch").read_text().strip() == "amd64"
    assert image_ref == info["id"]


@pytest.mark.parametrize("repo", ["zstd", "uncompressed", "docker2"])
def test_layer_compressions_and_docker_manifests(
    daemon: Daemon, test_images: PushedImages, repo: str
) -> None:
    pushed = test_images[repo]
    image_ref = daemon.pull(pushed.reference)
    info = json.loads(daemon.status(image_ref, verbose=True).info["info"])
    assert info["manifestMediaType"] == pushed.media_type
    diff = daemon.root / "layers" / info["chainIDs"][0].removeprefix("sha256:") / "diff"
    assert (diff / "bin" / "busybox").is_file()


# --- removal and usage ----------------------------------------------------------------------


def test_remove_by_each_kind_of_name_is_idempotent_and_frees_layers(
    daemon: Daemon, test_images: PushedImages
) -> None:
    busybox = test_images["busybox"]
    for name in (
        busybox.reference,
        busybox.by_digest,
        busybox.config_digest,
        busybox.config_digest.removeprefix("sha256:")[:10],
    ):
        daemon.pull(busybox.reference)
        assert layer_dirs(daemon)
        daemon.remove(name)
        assert daemon.status(busybox.reference).HasField("image") is False, name
        assert daemon.list_images() == []
        assert layer_dirs(daemon) == set(), name
        daemon.remove(name)  # again: still fine


def test_remove_keeps_layers_shared_with_another_image(
    daemon: Daemon, test_images: PushedImages
) -> None:
    busybox = daemon.pull(test_images.ref("busybox"))
    configured = daemon.pull(test_images.ref("configured"))  # same busybox layer, other config
    assert configured != busybox
    shared = layer_dirs(daemon)
    daemon.remove(test_images.ref("configured"))
    assert layer_dirs(daemon) == shared
    assert daemon.status(test_images.ref("busybox")).image.id == busybox
    daemon.remove(busybox)
    assert layer_dirs(daemon) == set()


def test_one_config_under_two_names_is_one_image(daemon: Daemon, test_images: PushedImages) -> None:
    # docker2 is busybox converted to a Docker schema2 manifest: same config, so same image.
    first = daemon.pull(test_images.ref("busybox"))
    second = daemon.pull(test_images.ref("docker2"))
    assert first == second
    [image] = daemon.list_images()
    assert sorted(image.repo_tags) == sorted(
        [test_images.ref("busybox"), test_images.ref("docker2")]
    )
    daemon.remove(test_images.ref("docker2"))  # removes every tag of that image
    assert daemon.list_images() == []


def test_image_fs_info_reports_usage_and_mountpoint(
    daemon: Daemon, test_images: PushedImages
) -> None:
    empty = daemon.images.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    daemon.pull(test_images.ref("busybox"))
    usage = daemon.images.ImageFsInfo(cri.ImageFsInfoRequest(), timeout=10).image_filesystems[0]
    assert usage.used_bytes.value > empty.used_bytes.value + 500_000  # busybox is ~1 MB
    assert usage.inodes_used.value > empty.inodes_used.value
    assert os.path.ismount(usage.fs_id.mountpoint)
    assert str(daemon.root).startswith(usage.fs_id.mountpoint)


def test_list_filter(daemon: Daemon, test_images: PushedImages) -> None:
    daemon.pull(test_images.ref("busybox"))
    daemon.pull(test_images.ref("whiteouts"))
    wanted = cri.ListImagesRequest(
        filter=cri.ImageFilter(image=cri.ImageSpec(image=test_images.ref("whiteouts")))
    )
    [only] = daemon.images.ListImages(wanted, timeout=10).images
    assert list(only.repo_tags) == [test_images.ref("whiteouts")]
    missing = cri.ListImagesRequest(
        filter=cri.ImageFilter(image=cri.ImageSpec(image="nothing:here"))
    )
    assert list(daemon.images.ListImages(missing, timeout=10).images) == []


# --- errors ---------------------------------------------------------------------------------


def test_errors_carry_the_right_codes(daemon: Daemon, test_images: PushedImages) -> None:
    assert code_of(daemon.pull, "UPPER/Case:tag") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(daemon.pull, "") == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(daemon.pull, f"{test_images.host}/no/such:image") == grpc.StatusCode.NOT_FOUND
    assert (
        code_of(daemon.pull, f"{test_images.host}/busybox:nosuchtag") == grpc.StatusCode.NOT_FOUND
    )
    assert not daemon.status("docker.io/library/absent:1").HasField("image")
    assert code_of(daemon.status, "Bad Name") == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code_of(
            daemon.runtime.CheckpointContainer,
            cri.CheckpointContainerRequest(container_id="x"),
            timeout=5,
        )
        == grpc.StatusCode.UNIMPLEMENTED
    )


def test_blocked_registry_is_permission_denied(
    make_daemon: object, test_images: PushedImages
) -> None:
    conf = f'[[registry]]\nlocation = "{test_images.host}"\ninsecure = true\nblocked = true\n'
    daemon: Daemon = make_daemon(conf)  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        daemon.pull(test_images.ref("busybox"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "blocked" in (caught.value.details() or "")


def test_an_http_registry_needs_insecure(make_daemon: object, test_images: PushedImages) -> None:
    daemon: Daemon = make_daemon("")  # type: ignore[operator]
    with pytest.raises(grpc.RpcError) as caught:
        daemon.pull(test_images.ref("busybox"), timeout=60)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert daemon.list_images() == []


def test_mirror_serves_a_registry_that_does_not_exist(
    make_daemon: object, test_images: PushedImages
) -> None:
    conf = (
        '[[registry]]\nlocation = "registry.invalid"\n'
        f'[[registry.mirror]]\nlocation = "{test_images.host}"\ninsecure = true\n'
    )
    daemon: Daemon = make_daemon(conf)  # type: ignore[operator]
    image_ref = daemon.pull("registry.invalid/busybox:latest")
    assert image_ref == test_images["busybox"].config_digest
    assert list(daemon.status(image_ref).image.repo_tags) == ["registry.invalid/busybox:latest"]


# --- authentication -------------------------------------------------------------------------


def test_credentials_from_the_request(make_daemon: object, auth_images: PushedImages) -> None:
    daemon: Daemon = make_daemon(insecure_registries_conf(auth_images.host))  # type: ignore[operator]
    ref = auth_images.ref("private/busybox")
    user, password = auth_images.creds or ("", "")
    wrong = cri.AuthConfig(username=user, password="wrong")
    assert code_of(daemon.pull, ref) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(daemon.pull, ref, wrong) == grpc.StatusCode.UNAUTHENTICATED
    assert daemon.list_images() == []
    image_ref = daemon.pull(ref, cri.AuthConfig(username=user, password=password))
    assert image_ref == auth_images["private/busybox"].config_digest


def test_credentials_from_the_auth_file(make_daemon: object, auth_images: PushedImages) -> None:
    import base64

    daemon: Daemon = make_daemon(insecure_registries_conf(auth_images.host), start=False)  # type: ignore[operator]
    user, password = auth_images.creds or ("", "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    (daemon.base / "auth.json").write_text(
        json.dumps({"auths": {auth_images.host: {"auth": token}}})
    )
    daemon.start()
    assert daemon.pull(auth_images.ref("private/busybox")).startswith("sha256:")


# --- safety ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink-escape", "hardlink-escape"])
def test_malicious_layers_are_refused_and_leave_nothing(
    daemon: Daemon, test_images: PushedImages, kind: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        daemon.pull(test_images.ref(f"evil-{kind}"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "layer refused" in (caught.value.details() or "")
    assert daemon.list_images() == []
    assert layer_dirs(daemon) == set()
    assert leftovers(daemon) == []


# --- concurrency and restarts ---------------------------------------------------------------


def test_concurrent_pulls_of_one_image_agree(daemon: Daemon, test_images: PushedImages) -> None:
    ref = test_images.ref("whiteouts")
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(daemon.pull(ref))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert set(results) == {test_images["whiteouts"].config_digest}
    assert len(daemon.list_images()) == 1
    assert len(layer_dirs(daemon)) == 3
    assert leftovers(daemon) == []


def test_images_survive_a_restart(daemon: Daemon, test_images: PushedImages) -> None:
    image_ref = daemon.pull(test_images.ref("busybox"))
    before = daemon.list_images()
    daemon.restart()
    after = daemon.list_images()
    assert [i.id for i in after] == [image_ref]
    assert after == before
    daemon.kill9()
    daemon.start()
    assert [i.id for i in daemon.list_images()] == [image_ref]
