"""CNI network configs: parsing, version selection, loading directories, the embedded default."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cryopod.errors import InvalidArgument, InvalidNetworkConfig
from cryopod.pods.network.config import (
    config_files,
    find_plugin,
    load_network_configs,
    parse_network_config,
)
from cryopod.pods.network.default import EMBEDDED_SOURCE, EmbeddedNetwork, parse_pod_cidrs
from cryopod.pods.network.versions import (
    has_check,
    has_status_and_gc,
    ips_carry_version,
    parse_version,
    select_version,
)

BRIDGE_LIST: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "podnet",
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True, "bogus": False}},
    ],
}


def write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


# --- versions -----------------------------------------------------------------------------


def test_versions_parse_and_compare() -> None:
    assert parse_version("1.0.0") == (1, 0, 0)
    assert parse_version("0.10.1") == (0, 10, 1)
    for bad in ("1.0", "v1.0.0", "1.0.0-rc1", "01.0.0", ""):
        assert parse_version(bad) is None
    assert has_check("0.4.0") and has_check("1.1.0") and not has_check("0.3.1")
    assert has_status_and_gc("1.1.0") and not has_status_and_gc("1.0.0")
    assert ips_carry_version("0.4.0") and not ips_carry_version("1.0.0")


def test_select_version_takes_the_highest_everyone_supports() -> None:
    assert select_version("1.0.0") == "1.0.0"
    assert select_version("0.2.0") is None  # too old for cryopod
    assert select_version("2.0.0") is None  # too new
    assert select_version("1.0.0", ["1.0.0", "1.1.0"]) == "1.1.0"
    plugins = ["0.3.1", "0.4.0", "1.0.0"]
    assert select_version("1.0.0", ["1.0.0", "1.1.0"], plugins) == "1.0.0"
    assert select_version("1.1.0", [], plugins) is None


# --- parsing ------------------------------------------------------------------------------


def test_conflist_is_parsed_with_plugins_and_capabilities() -> None:
    network = parse_network_config(json.dumps(BRIDGE_LIST), "10-podnet.conflist")
    assert network.name == "podnet"
    assert network.cni_version == "1.0.0"
    assert [p.type for p in network.plugins] == ["bridge", "portmap"]
    assert network.plugins[0].capabilities == frozenset()
    assert network.plugins[1].capabilities == {"portMappings"}
    assert not network.disable_check
    assert network.source == "10-podnet.conflist"


def test_single_plugin_conf_becomes_a_one_plugin_list() -> None:
    conf = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "br9"}
    network = parse_network_config(json.dumps(conf), "x.conf")
    assert network.name == "single"
    assert network.cni_version == "0.4.0"
    assert len(network.plugins) == 1
    assert network.plugins[0].type == "bridge"
    assert network.plugins[0].raw["bridge"] == "br9"


def test_cni_versions_pick_the_highest_known_and_keep_the_rest_for_negotiation() -> None:
    conf = {**BRIDGE_LIST, "cniVersion": "1.0.0", "cniVersions": ["1.0.0", "1.1.0", "9.9.9"]}
    network = parse_network_config(conf, "v.conflist")
    assert network.cni_version == "1.1.0"
    assert network.negotiate(["0.4.0", "1.0.0"]) == "1.0.0"
    assert network.negotiate(["0.3.1"]) is None
    pinned = network.with_version("1.0.0")
    assert pinned.cni_version == "1.0.0"
    # what the cache stores runs with that one version when read back
    again = parse_network_config(pinned.to_json(), "cache")
    assert again.cni_version == "1.0.0"
    assert [p.raw for p in again.plugins] == [p.raw for p in network.plugins]


def test_disable_check_accepts_booleans_and_their_strings() -> None:
    assert parse_network_config({**BRIDGE_LIST, "disableCheck": True}, "a").disable_check
    assert parse_network_config({**BRIDGE_LIST, "disableCheck": "true"}, "a").disable_check
    assert not parse_network_config({**BRIDGE_LIST, "disableCheck": "false"}, "a").disable_check
    with pytest.raises(InvalidNetworkConfig, match="disableCheck"):
        parse_network_config({**BRIDGE_LIST, "disableCheck": "yes"}, "a")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ({**BRIDGE_LIST, "name": ""}, "'name' is missing"),
        ({**BRIDGE_LIST, "name": "bad/name"}, "invalid network name"),
        ({**BRIDGE_LIST, "cniVersion": None}, "'cniVersion' is missing"),
        ({**BRIDGE_LIST, "cniVersion": "0.2.0"}, "unsupported CNI version 0.2.0"),
        ({**BRIDGE_LIST, "cniVersions": "1.0.0"}, "list of strings"),
        ({**BRIDGE_LIST, "plugins": []}, "non-empty list"),
        ({**BRIDGE_LIST, "plugins": [{"bridge": "x"}]}, "has no 'type'"),
        ({**BRIDGE_LIST, "plugins": [{"type": "../../bin/sh"}]}, "invalid type"),
        ({**BRIDGE_LIST, "plugins": ["bridge"]}, "not a JSON object"),
        ({**BRIDGE_LIST, "plugins": [{"type": "x", "capabilities": []}]}, "capabilities"),
        ({"cniVersion": "1.0.0", "name": "n"}, "has no 'type'"),
    ],
)
def test_invalid_configs_say_why(content: object, reason: str) -> None:
    data = content if isinstance(content, str) else json.dumps(content)
    with pytest.raises(InvalidNetworkConfig, match=reason) as info:
        parse_network_config(data, "/etc/cni/net.d/broken.conflist")
    assert info.value.source == "/etc/cni/net.d/broken.conflist"
    assert info.value.code == "INVALID_ARGUMENT"


# --- loading directories ------------------------------------------------------------------


def test_files_are_read_per_directory_in_name_order(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    write(first / "20-b.conflist", {**BRIDGE_LIST, "name": "b"})
    write(first / "10-a.conf", {"cniVersion": "1.0.0", "name": "a", "type": "bridge"})
    write(first / "05-c.json", {**BRIDGE_LIST, "name": "c"})
    write(first / "00-ignored.txt", BRIDGE_LIST)
    write(first / ".00-hidden.conflist", BRIDGE_LIST)
    write(second / "00-d.conflist", {**BRIDGE_LIST, "name": "d"})
    scan = load_network_configs([first, tmp_path / "missing", second])
    assert [n.name for n in scan.networks] == ["c", "a", "b", "d"]
    assert scan.networks[0].source == str(first / "05-c.json")
    assert not scan.invalid
    assert not scan.empty
    assert scan.find("b") is scan.networks[2]
    assert scan.find("nope") is None


def test_invalid_files_are_skipped_with_their_reason(tmp_path: Path) -> None:
    write(tmp_path / "00-broken.conflist", "{")
    write(tmp_path / "10-good.conflist", BRIDGE_LIST)
    write(tmp_path / "20-dup.conflist", BRIDGE_LIST)  # same name as 10-good: ignored
    (tmp_path / "30-dir.conf").mkdir()
    scan = load_network_configs([tmp_path])
    assert [n.name for n in scan.networks] == ["podnet"]
    assert [e.source for e in scan.invalid] == [
        str(tmp_path / "00-broken.conflist"),
        str(tmp_path / "30-dir.conf"),
    ]
    assert "not valid JSON" in str(scan.invalid[0])


def test_an_empty_or_missing_directory_is_empty(tmp_path: Path) -> None:
    assert load_network_configs([tmp_path]).empty
    assert load_network_configs([tmp_path / "absent"]).empty
    write(tmp_path / "bad.conf", "nope")
    assert not load_network_configs([tmp_path]).empty
    assert config_files([tmp_path]) == [tmp_path / "bad.conf"]


def test_find_plugin_takes_the_first_executable(tmp_path: Path) -> None:
    opt, lib = tmp_path / "opt", tmp_path / "lib"
    opt.mkdir()
    lib.mkdir()
    (opt / "bridge").write_text("")  # not executable: skipped
    (lib / "bridge").write_text("")
    os.chmod(lib / "bridge", 0o755)
    assert find_plugin("bridge", [opt, lib]) == lib / "bridge"
    os.chmod(opt / "bridge", 0o755)
    assert find_plugin("bridge", [opt, lib]) == opt / "bridge"
    assert find_plugin("portmap", [opt, lib]) is None


# --- the embedded default -------------------------------------------------------------------


def test_embedded_default_is_a_gateway_bridge_with_host_local_and_portmap() -> None:
    network = EmbeddedNetwork().config()
    assert network.source == EMBEDDED_SOURCE
    assert network.name == "cryopod"
    assert network.cni_version == "1.1.0"  # before negotiation with the plugins
    assert network.negotiate(["0.4.0", "1.0.0"]) == "1.0.0"
    bridge, portmap = network.plugins
    assert bridge.type == "bridge"
    assert bridge.raw["bridge"] == "cryopod0"
    assert bridge.raw["isGateway"] is True
    assert bridge.raw["ipMasq"] is True
    assert bridge.raw["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.85.0.0/16"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    assert portmap.type == "portmap"
    assert portmap.capabilities == {"portMappings"}


def test_embedded_default_takes_the_pod_cidr_and_its_own_settings() -> None:
    embedded = EmbeddedNetwork(bridge="test0", ipam_data_dir="/tmp/ipam", mtu=1400)
    network = embedded.config(parse_pod_cidrs("10.244.1.7/24, fd00:10::/64"))
    ipam = network.plugins[0].raw["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10::/64"}]]
    assert ipam["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert ipam["dataDir"] == "/tmp/ipam"
    assert network.plugins[0].raw["mtu"] == 1400
    assert network.plugins[0].raw["bridge"] == "test0"


def test_pod_cidrs_are_validated() -> None:
    assert parse_pod_cidrs("") == ()
    assert parse_pod_cidrs("10.1.0.0/16") == ("10.1.0.0/16",)
    with pytest.raises(InvalidArgument, match="invalid pod CIDR"):
        parse_pod_cidrs("10.1.0.0/33")


def test_a_network_name_too_long_for_the_cache_is_refused() -> None:
    parse_network_config({**BRIDGE_LIST, "name": "n" * 128}, "ok.conflist")
    with pytest.raises(InvalidNetworkConfig, match="at most 128"):
        parse_network_config({**BRIDGE_LIST, "name": "n" * 129}, "long.conflist")
