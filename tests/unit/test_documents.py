"""Sandbox and container tables: uniqueness, updates, lookups, and surviving a restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cryopod.containers.model import ContainerState
from cryopod.containers.store import container_store
from cryopod.errors import AlreadyExists
from cryopod.pods.model import SandboxState
from cryopod.pods.store import sandbox_store
from cryopod.state.db import Database
from tests.unit.test_codec import full_container, full_sandbox


def test_sandboxes_are_unique_by_pod_name_and_survive_reopening(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    store = sandbox_store(db)
    sandbox = full_sandbox()
    store.add(sandbox)
    with pytest.raises(AlreadyExists, match=sandbox.id):
        store.add(replace(sandbox, id="t" * 64))
    store.update(replace(sandbox, state=SandboxState.READY))
    db.close()

    reopened = sandbox_store(Database(tmp_path / "c.db"))
    again = reopened.get(sandbox.id)
    assert again == replace(sandbox, state=SandboxState.READY)
    assert reopened.select("state = ?", ("READY",)) == [again]
    assert reopened.select("state = ?", ("NOTREADY",)) == []
    assert reopened.ids_with_prefix(sandbox.id[:6]) == [sandbox.id]


def test_containers_are_unique_per_pod_and_attempt(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    sandbox_store(db).add(full_sandbox())
    store = container_store(db)
    container = full_container()
    store.add(container)
    with pytest.raises(AlreadyExists, match="container name"):
        store.add(replace(container, id="d" * 64))
    next_attempt = replace(
        container,
        id="e" * 64,
        config=replace(container.config, metadata=replace(container.config.metadata, attempt=2)),
    )
    store.add(next_attempt)
    assert [c.id for c in store.select("sandbox_id = ?", (container.pod_id,))] == [
        container.id,
        next_attempt.id,
    ]
    store.update(replace(container, state=ContainerState.RUNNING, pid=42))
    got = store.get(container.id)
    assert got is not None and got.pid == 42 and got.state is ContainerState.RUNNING
    store.delete(container.id)
    assert store.get(container.id) is None


def test_an_update_racing_a_delete_does_not_bring_the_object_back(tmp_path: Path) -> None:
    store = sandbox_store(Database(tmp_path / "c.db"))
    sandbox = full_sandbox()
    store.add(sandbox)
    assert store.get(sandbox.id) == sandbox  # decoded and kept in memory
    store.delete(sandbox.id)
    store.update(replace(sandbox, state=SandboxState.NOTREADY))  # e.g. a stop finishing late
    assert store.get(sandbox.id) is None
    assert store.find(sandbox.id[:8]) is None
    assert store.select() == []
