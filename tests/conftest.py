"""Session-wide test plumbing: integration marking, host requirements, leak checks, and a real
registry with locally built test images.

Fixtures (all session-scoped unless noted):

- `require_root`: skips integration tests (fails them when CI=true) unless we are root and
  the real components are installed. Every test under tests/integration gets it.
- `registry`: a plain `docker-registry` on 127.0.0.1 (`tests.support.registry.Registry`).
- `auth_registry`: the same behind htpasswd basic auth, user `tester`, password `s3cret`.
- `test_layout`: an OCI layout (`LayoutBuilder`) holding every ready-made test image, each
  tagged with its repository name.
- `test_images`: those images pushed to `registry` (`PushedImages`: host, digests, refs).
- `auth_images`: busybox pushed to `auth_registry` as `private/busybox:latest`.

Every integration test is checked for leaked mounts, netns, processes, runtime containers
and cgroups (function-scoped, autouse); the whole session is checked again at its end.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:  # make `tests.support` importable under plain `pytest`
    sys.path.insert(0, str(_REPO_ROOT))

from tests.support import (  # noqa: E402
    INTEGRATION_BINARIES,
    INTEGRATION_FILES,
    require_tools,
)
from tests.support import imagebuild as ib  # noqa: E402
from tests.support.leaks import LeakChecker, Leaks, session_marker  # noqa: E402
from tests.support.registry import (  # noqa: E402
    TEST_CREDENTIALS,
    PushedImages,
    Registry,
    describe_pushed,
    push,
)

_INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        if _INTEGRATION_DIR in path.parents:
            item.add_marker(pytest.mark.integration)


def _is_integration(item: pytest.Item) -> bool:
    return item.get_closest_marker("integration") is not None


# ----------------------------------------------------------------------------- requirements


@pytest.fixture(scope="session")
def require_root() -> None:
    """Root and the real components (runc, conmon, catatonit, registry, skopeo, ...)."""
    require_tools(*INTEGRATION_BINARIES, files=INTEGRATION_FILES)


@pytest.fixture(autouse=True)
def _integration_requirements(request: pytest.FixtureRequest) -> None:
    if _is_integration(request.node):
        request.getfixturevalue("require_root")


# ----------------------------------------------------------------------------- leak checks


def _leak_report(what: str, leaks: Leaks, errors: list[str]) -> str:
    lines = [f"{what} left {len(leaks.lines())} resource(s) behind:", leaks.describe()]
    if errors:
        lines.append("cleanup failed for:")
        lines += [f"  - {e}" for e in errors]
    else:
        lines.append("(cleaned up so later tests start clean)")
    return "\n".join(lines)


@pytest.fixture(scope="session", autouse=True)
def _leak_checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LeakChecker | None]:
    """Baseline of the host state, taken before the first test; checked again at the end."""
    if os.geteuid() != 0:
        yield None
        return
    session_marker()
    checker = LeakChecker(own_paths=[tmp_path_factory.getbasetemp()])
    baseline = checker.snapshot()
    checker.baseline = baseline
    yield checker
    leaks = checker.settle(baseline)
    if leaks:
        errors = checker.cleanup(leaks)
        pytest.fail(_leak_report("the test session", leaks, errors), pytrace=False)


@pytest.fixture(autouse=True)
def _leak_check(
    request: pytest.FixtureRequest, _leak_checker: LeakChecker | None
) -> Iterator[None]:
    """Fail an integration test that leaves a mount, netns, process, container or cgroup."""
    if _leak_checker is None or _leak_checker.baseline is None or not _is_integration(request.node):
        yield
        return
    # Long-lived fixtures the test uses were set up before this snapshot; what they hold is
    # theirs, and the session-end check covers it.
    before = _leak_checker.snapshot()
    yield
    leaks = _leak_checker.settle(_leak_checker.baseline, before)
    if leaks:
        errors = _leak_checker.cleanup(leaks)
        pytest.fail(_leak_report(request.node.nodeid, leaks, errors), pytrace=False)


# ----------------------------------------------------------------------------- registries


@pytest.fixture(scope="session")
def registry(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A plain (no auth, no TLS) docker-registry on 127.0.0.1."""
    with Registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry(
    require_root: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registry]:
    """A docker-registry requiring basic auth: user `tester`, password `s3cret`."""
    with Registry(tmp_path_factory.mktemp("auth-registry"), auth=TEST_CREDENTIALS) as reg:
        yield reg


# ----------------------------------------------------------------------------- test images

# repository name (= ref name in the layout) -> (how to build it, extra push arguments)
_Builder = Callable[[ib.LayoutBuilder, str], str]
TEST_IMAGE_PLAN: dict[str, tuple[_Builder, dict[str, Any]]] = {
    "busybox": (ib.busybox_image, {}),
    "configured": (ib.configured_image, {}),
    "pause": (ib.pause_image, {}),
    "whiteouts": (ib.whiteout_image, {}),
    "multiarch": (ib.multiarch_index, {"all": True}),
    "zstd": (ib.zstd_image, {}),
    "uncompressed": (lambda lay, ref: ib.busybox_image(lay, ref, compression="none"), {}),
    "docker2": (ib.busybox_image, {"fmt": "v2s2"}),
    **{
        f"evil-{kind}": (functools.partial(ib.malicious_image, kind=kind), {})
        for kind in ib.MALICIOUS_KINDS
    },
}


@pytest.fixture(scope="session")
def test_layout(tmp_path_factory: pytest.TempPathFactory) -> ib.LayoutBuilder:
    """An OCI layout with every test image, tagged by repository name (see TEST_IMAGE_PLAN)."""
    require_tools(files=INTEGRATION_FILES, root=False)
    layout = ib.LayoutBuilder(tmp_path_factory.mktemp("images") / "layout")
    for repo, (build, _push_args) in TEST_IMAGE_PLAN.items():
        build(layout, repo)
    return layout


@pytest.fixture(scope="session")
def test_images(registry: Registry, test_layout: ib.LayoutBuilder) -> PushedImages:
    """Every test image pushed to `registry` as `<repo>:latest`.

    busybox, configured (every config field set), pause (sleeps as PID 1), whiteouts,
    multiarch (OCI index, amd64 + arm64), zstd (zstd layer), uncompressed (plain tar layer),
    docker2 (busybox as Docker schema 2), evil-traversal, evil-absolute,
    evil-symlink-escape, evil-hardlink-escape.
    """
    images = {}
    for repo, (_build, push_args) in TEST_IMAGE_PLAN.items():
        digest = push(test_layout.root, repo, registry, f"{repo}:latest", **push_args)
        images[repo] = describe_pushed(registry.host, repo, "latest", digest)
    return PushedImages(host=registry.host, layout=test_layout.root, images=images)


@pytest.fixture(scope="session")
def auth_images(auth_registry: Registry, test_layout: ib.LayoutBuilder) -> PushedImages:
    """busybox pushed to `auth_registry` as `private/busybox:latest` (creds in `.creds`)."""
    repo = "private/busybox"
    digest = push(
        test_layout.root, "busybox", auth_registry, f"{repo}:latest", creds=TEST_CREDENTIALS
    )
    image = describe_pushed(auth_registry.host, repo, "latest", digest, creds=TEST_CREDENTIALS)
    return PushedImages(
        host=auth_registry.host,
        layout=test_layout.root,
        images={repo: image},
        creds=TEST_CREDENTIALS,
    )
