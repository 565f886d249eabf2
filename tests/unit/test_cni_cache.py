"""The CNI attachment cache: round trips, keys, damage, atomic writes."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from cryopod.errors import Internal, InvalidArgument, InvalidCNIResult
from cryopod.pods.network.cache import CachedAttachment, ResultCache
from cryopod.pods.network.config import parse_network_config

SANDBOX_A = "a" * 64
SANDBOX_B = "b" * 64
NETWORK = parse_network_config(
    {
        "cniVersion": "1.0.0",
        "cniVersions": ["0.4.0", "1.0.0"],
        "name": "podnet",
        "plugins": [
            {"type": "bridge"},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    },
    "10-podnet.conflist",
).with_version("0.4.0")
RESULT: dict[str, Any] = {
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [{"version": "4", "address": "10.85.0.9/16", "interface": 0}],
}


def attachment(sandbox_id: str = SANDBOX_A, **overrides: Any) -> CachedAttachment:
    fields: dict[str, Any] = {
        "network": NETWORK,
        "sandbox_id": sandbox_id,
        "ifname": "eth0",
        "netns": f"/run/cryopod/ns/netns/{sandbox_id}",
        "cni_args": f"IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID={sandbox_id}",
        "capability_args": {"portMappings": [{"hostPort": 80, "containerPort": 8080}]},
        "result": RESULT,
    }
    fields.update(overrides)
    return CachedAttachment(**fields)


def test_round_trip_keeps_config_version_args_and_result(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "results")
    saved = attachment()
    cache.save(saved)
    loaded = cache.load("podnet", SANDBOX_A, "eth0")
    assert loaded is not None
    assert loaded.network.cni_version == "0.4.0"  # the negotiated one, not the highest listed
    assert [p.raw for p in loaded.network.plugins] == [p.raw for p in NETWORK.plugins]
    assert loaded.network.source == str(cache.path("podnet", SANDBOX_A, "eth0"))
    assert (loaded.sandbox_id, loaded.ifname, loaded.netns) == (
        SANDBOX_A,
        "eth0",
        saved.netns,
    )
    assert loaded.cni_args == saved.cni_args
    assert loaded.capability_args == saved.capability_args
    assert loaded.result == RESULT
    assert loaded.complete
    assert loaded.pod_ips() == ("10.85.0.9",)
    assert loaded.target("").netns == ""
    assert loaded.target().netns == saved.netns


def test_an_entry_without_result_is_incomplete(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    cache.save(attachment(result=None))
    loaded = cache.load("podnet", SANDBOX_A, "eth0")
    assert loaded is not None
    assert not loaded.complete
    assert loaded.pod_ips() == ()
    cache.save(replace(loaded, result=RESULT))  # the ADD finished: replaced in place
    again = cache.load("podnet", SANDBOX_A, "eth0")
    assert again is not None and again.complete


def test_keys_list_and_delete(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    assert cache.keys() == []
    assert cache.list() == []
    cache.save(attachment(SANDBOX_A))
    cache.save(attachment(SANDBOX_A, ifname="net1"))
    cache.save(attachment(SANDBOX_B))
    assert cache.keys() == [
        ("podnet", SANDBOX_A, "eth0"),
        ("podnet", SANDBOX_A, "net1"),
        ("podnet", SANDBOX_B, "eth0"),
    ]
    assert cache.keys(SANDBOX_B) == [("podnet", SANDBOX_B, "eth0")]
    assert [a.ifname for a in cache.list(SANDBOX_A)] == ["eth0", "net1"]
    cache.delete("podnet", SANDBOX_A, "net1")
    cache.delete("podnet", SANDBOX_A, "net1")  # idempotent
    assert len(cache.list()) == 2
    assert cache.load("podnet", SANDBOX_A, "net1") is None


def test_writes_leave_no_temp_file_and_are_private(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path / "results")
    cache.save(attachment())
    cache.save(attachment())
    assert os.listdir(cache.directory) == [f"podnet+{SANDBOX_A}+eth0.json"]
    assert (cache.directory.stat().st_mode & 0o777) == 0o700


def test_stale_temp_files_are_removed_and_never_listed(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    (tmp_path / f".podnet+{SANDBOX_A}+eth0.json.1234.tmp").write_text("{")
    (tmp_path / "unrelated.txt").write_text("")
    assert cache.keys() == []
    cache.remove_stale_temp_files()
    assert os.listdir(tmp_path) == ["unrelated.txt"]


@pytest.mark.parametrize(
    "content",
    [
        "{truncated",
        "[]",
        json.dumps({"kind": "somethingElse"}),
        json.dumps({**attachment().to_json(), "netns": 5}),
        json.dumps({**attachment().to_json(), "result": {"ips": [{"address": "x"}]}}),
    ],
)
def test_damaged_entries_raise_on_load_and_are_skipped_in_lists(
    tmp_path: Path, content: str
) -> None:
    cache = ResultCache(tmp_path)
    cache.save(attachment(SANDBOX_B))
    cache.path("podnet", SANDBOX_A, "eth0").write_text(content)
    with pytest.raises(InvalidCNIResult):
        cache.load("podnet", SANDBOX_A, "eth0")
    assert [a.sandbox_id for a in cache.list()] == [SANDBOX_B]
    assert cache.keys(SANDBOX_A) == [("podnet", SANDBOX_A, "eth0")]  # found, to be dealt with


def test_keys_must_be_safe_file_names(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    bad_keys = [("podnet", "../x", "eth0"), ("pod/net", SANDBOX_A, "eth0"), ("n", SANDBOX_A, "a+b")]
    for key in bad_keys:
        with pytest.raises(InvalidArgument):
            cache.path(*key)


def test_a_failed_write_is_typed_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    cache = ResultCache(tmp_path / "file" / "results")  # its parent is no directory
    with pytest.raises(Internal, match="writing the CNI cache"):
        cache.save(attachment())
