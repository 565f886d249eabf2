"""Running a network's plugins (with a fake exec): env, stdin, chaining, order, errors."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cryopod.errors import CNIPluginFailed, CNIPluginTimeout, CommandTimeout, NetworkNotReady
from cryopod.pods.network.config import NetworkConfigList, PluginConfig, parse_network_config
from cryopod.pods.network.invoke import (
    PluginInvoker,
    PluginOutput,
    Target,
    parse_plugin_error,
    plugin_env,
    plugin_stdin,
)

TARGET = Target("c" * 64, "/run/netns/pod", "eth0", "IgnoreUnknown=1;K8S_POD_NAME=p")
PLUGINS = ("bridge", "portmap", "bandwidth")
# A pod with a hostPort: portmap has work to do (without one it is left out).
MAPPED = {"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}]}


@dataclass
class Call:
    plugin: str
    env: Mapping[str, str]
    conf: dict[str, Any]

    @property
    def command(self) -> str:
        return self.env["CNI_COMMAND"]


Handler = Callable[[Call], PluginOutput]


def result_of(plugin: str, version: str = "1.0.0") -> PluginOutput:
    raw = {
        "cniVersion": version,
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/pod"}],
        "ips": [{"address": "10.85.0.2/16", "interface": 0, "gateway": "10.85.0.1"}],
        "dns": {"nameservers": [plugin]},
    }
    return PluginOutput(0, json.dumps(raw).encode(), b"")


def succeed(call: Call) -> PluginOutput:
    if call.command == "ADD":
        return result_of(call.plugin, call.conf["cniVersion"])
    if call.command == "VERSION":
        return PluginOutput(0, b'{"supportedVersions": ["0.4.0", "1.0.0"]}', b"")
    return PluginOutput(0, b"", b"")


@dataclass
class FakeExec:
    """Records every plugin run and answers with `handler`."""

    handler: Handler = succeed
    calls: list[Call] = field(default_factory=list)

    async def __call__(
        self, path: str, *, env: Mapping[str, str], stdin: bytes, timeout: float | None
    ) -> PluginOutput:
        call = Call(os.path.basename(path), dict(env), json.loads(stdin))
        self.calls.append(call)
        return self.handler(call)

    def commands(self) -> list[tuple[str, str]]:
        return [(c.command, c.plugin) for c in self.calls]


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    for name in PLUGINS:
        (tmp_path / name).write_text("")
        os.chmod(tmp_path / name, 0o755)
    return tmp_path


def network(version: str = "1.0.0", **extra: object) -> NetworkConfigList:
    return parse_network_config(
        {
            "cniVersion": version,
            "name": "podnet",
            **extra,
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "runtimeConfig": {"stale": 1}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
                {"type": "bandwidth", "capabilities": {"bandwidth": True}},
            ],
        },
        "test",
    )


def invoker(plugin_dir: Path, fake: FakeExec, timeout: float = 5.0) -> PluginInvoker:
    return PluginInvoker([plugin_dir / "absent", plugin_dir], timeout=timeout, runner=fake)


# --- the pieces -----------------------------------------------------------------------------


def test_env_has_the_cni_variables_and_drops_stray_ones() -> None:
    base = {"PATH": "/usr/bin", "HOME": "/root", "CNI_ARGS": "leaked=1", "CNI_NETNS": "/x"}
    env = plugin_env("ADD", TARGET, "/opt/cni/bin:/usr/lib/cni", base)
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_CONTAINERID"] == TARGET.container_id
    assert env["CNI_NETNS"] == "/run/netns/pod"
    assert env["CNI_IFNAME"] == "eth0"
    assert env["CNI_ARGS"] == TARGET.cni_args
    assert env["CNI_PATH"] == "/opt/cni/bin:/usr/lib/cni"
    assert env["HOME"] == "/root"
    assert env["PATH"].split(":")[0] == "/usr/bin"
    assert "/usr/sbin" in env["PATH"].split(":")  # iptables lives there
    version_env = plugin_env("VERSION", None, "/p", base)
    assert "CNI_NETNS" not in version_env
    assert "CNI_ARGS" not in version_env


def test_stdin_is_the_plugin_object_with_name_version_prev_result_and_runtime_config() -> None:
    net = network("0.4.0")
    plugin = PluginConfig("portmap", {"type": "portmap", "prevResult": {"stale": True}})
    conf = plugin_stdin(
        net, plugin, prev_result={"cniVersion": "0.4.0"}, runtime_config={"portMappings": []}
    )
    assert conf == {
        "type": "portmap",
        "name": "podnet",
        "cniVersion": "0.4.0",
        "prevResult": {"cniVersion": "0.4.0"},
        "runtimeConfig": {"portMappings": []},
    }
    assert plugin_stdin(net, plugin) == {"type": "portmap", "name": "podnet", "cniVersion": "0.4.0"}


@pytest.mark.parametrize(
    ("output", "parsed"),
    [
        (
            PluginOutput(1, b'{"code": 7, "msg": "bad config", "details": "no bridge"}', b""),
            (7, "bad config", "no bridge"),
        ),
        (PluginOutput(1, b"", b'{"code": 11, "msg": "try again"}'), (11, "try again", "")),
        (PluginOutput(2, b"", b"panic: boom\ngoroutine 1\n"), (None, "goroutine 1", "")),
        (PluginOutput(3, b"", b""), (None, "exited with status 3 and no message", "")),
    ],
)
def test_plugin_errors_are_read_from_their_json_or_their_last_words(
    output: PluginOutput, parsed: tuple[int | None, str, str]
) -> None:
    assert parse_plugin_error(output) == parsed


# --- ADD, DEL, CHECK ------------------------------------------------------------------------


async def test_add_chains_results_and_filters_runtime_config(plugin_dir: Path) -> None:
    fake = FakeExec()
    args = {"portMappings": [{"hostPort": 80}], "bandwidth": {"egressRate": 5}, "dns": {}}
    result = await invoker(plugin_dir, fake).add(network(), TARGET, args)
    assert fake.commands() == [("ADD", "bridge"), ("ADD", "portmap"), ("ADD", "bandwidth")]
    bridge, portmap, bandwidth = fake.calls
    assert "prevResult" not in bridge.conf
    assert bridge.conf["runtimeConfig"] == {"stale": 1}  # the file's own, untouched
    assert portmap.conf["prevResult"]["dns"]["nameservers"] == ["bridge"]
    assert portmap.conf["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert bandwidth.conf["prevResult"]["dns"]["nameservers"] == ["portmap"]
    assert bandwidth.conf["runtimeConfig"] == {"bandwidth": {"egressRate": 5}}
    assert result["dns"]["nameservers"] == ["bandwidth"]
    assert all(c.env["CNI_PATH"] == f"{plugin_dir / 'absent'}:{plugin_dir}" for c in fake.calls)


async def test_add_converts_a_result_of_another_version(plugin_dir: Path) -> None:
    fake = FakeExec(lambda call: result_of(call.plugin, "1.0.0"))
    result = await invoker(plugin_dir, fake).add(network("0.4.0"), TARGET, {})
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4"


async def test_add_stops_at_the_first_failure_with_the_plugins_error(plugin_dir: Path) -> None:
    def fail_portmap(call: Call) -> PluginOutput:
        if call.plugin == "portmap":
            return PluginOutput(1, b'{"code": 999, "msg": "iptables failed", "details": "x"}', b"")
        return succeed(call)

    fake = FakeExec(fail_portmap)
    with pytest.raises(CNIPluginFailed) as info:
        await invoker(plugin_dir, fake).add(network(), TARGET, MAPPED)
    assert fake.commands() == [("ADD", "bridge"), ("ADD", "portmap")]
    error = info.value
    assert (error.plugin, error.command, error.network) == ("portmap", "ADD", "podnet")
    assert (error.cni_code, error.cni_message, error.details) == (999, "iptables failed", "x")
    assert error.sandbox_id == TARGET.container_id
    assert error.code == "UNAVAILABLE"
    assert "portmap failed (CNI error 999): iptables failed: x" in str(error)


async def test_add_refuses_output_that_is_no_result(plugin_dir: Path) -> None:
    fake = FakeExec(lambda call: PluginOutput(0, b"hello", b""))
    with pytest.raises(CNIPluginFailed, match="invalid result: not JSON"):
        await invoker(plugin_dir, fake).add(network(), TARGET, {})


async def test_a_missing_plugin_is_not_ready(plugin_dir: Path) -> None:
    (plugin_dir / "portmap").unlink()
    fake = FakeExec()
    with pytest.raises(NetworkNotReady, match="'portmap' not found in"):
        await invoker(plugin_dir, fake).add(network(), TARGET, MAPPED)


async def test_a_timeout_is_typed(plugin_dir: Path) -> None:
    def hang(call: Call) -> PluginOutput:
        raise CommandTimeout([call.plugin], 5.0)

    with pytest.raises(CNIPluginTimeout, match="did not finish within 5s") as info:
        await invoker(plugin_dir, FakeExec(hang)).add(network(), TARGET, {})
    assert info.value.code == "DEADLINE_EXCEEDED"


async def test_del_runs_in_reverse_with_prev_result(plugin_dir: Path) -> None:
    fake = FakeExec()
    prev = json.loads(result_of("cached").stdout)
    args = {"portMappings": [{"hostPort": 80}]}
    await invoker(plugin_dir, fake).delete(network(), TARGET, args, prev)
    assert fake.commands() == [("DEL", "bandwidth"), ("DEL", "portmap"), ("DEL", "bridge")]
    assert all(c.conf["prevResult"] == prev for c in fake.calls)
    assert fake.calls[1].conf["runtimeConfig"] == args


async def test_del_before_040_gets_no_prev_result(plugin_dir: Path) -> None:
    fake = FakeExec()
    prev = json.loads(result_of("cached", "0.3.1").stdout)
    await invoker(plugin_dir, fake).delete(network("0.3.1"), TARGET, {}, prev)
    assert all("prevResult" not in c.conf for c in fake.calls)


async def test_del_goes_on_after_a_failure_and_raises_it_at_the_end(plugin_dir: Path) -> None:
    def fail_portmap(call: Call) -> PluginOutput:
        if call.plugin == "portmap":
            return PluginOutput(1, b'{"code": 5, "msg": "io"}', b"")
        return succeed(call)

    fake = FakeExec(fail_portmap)
    with pytest.raises(CNIPluginFailed, match="io"):
        await invoker(plugin_dir, fake).delete(network(), TARGET, MAPPED, None)
    assert fake.commands() == [("DEL", "bandwidth"), ("DEL", "portmap"), ("DEL", "bridge")]


async def test_check_runs_in_order_with_prev_result(plugin_dir: Path) -> None:
    fake = FakeExec()
    prev = json.loads(result_of("cached").stdout)
    assert await invoker(plugin_dir, fake).check(network(), TARGET, MAPPED, prev)
    assert fake.commands() == [("CHECK", "bridge"), ("CHECK", "portmap"), ("CHECK", "bandwidth")]
    assert all(c.conf["prevResult"] == prev for c in fake.calls)


@pytest.mark.parametrize(
    "net", [network("0.3.1"), network("1.0.0", disableCheck=True)], ids=["0.3.1", "disableCheck"]
)
async def test_check_is_skipped_where_the_spec_forbids_it(
    plugin_dir: Path, net: NetworkConfigList
) -> None:
    fake = FakeExec()
    assert not await invoker(plugin_dir, fake).check(net, TARGET, {}, {"cniVersion": "0.3.1"})
    assert fake.calls == []


async def test_check_failure_is_raised(plugin_dir: Path) -> None:
    def broken(call: Call) -> PluginOutput:
        return PluginOutput(1, b'{"code": 3, "msg": "eth0 is gone"}', b"")

    with pytest.raises(CNIPluginFailed, match="eth0 is gone"):
        await invoker(plugin_dir, FakeExec(broken)).check(network(), TARGET, {}, {})


# --- STATUS, GC, VERSION ------------------------------------------------------------------


async def test_status_and_gc_only_for_110(plugin_dir: Path) -> None:
    fake = FakeExec()
    runner = invoker(plugin_dir, fake)
    await runner.status(network("1.0.0"))
    await runner.gc(network("1.0.0"), [("a", "eth0")])
    assert fake.calls == []
    await runner.status(network("1.1.0"))
    await runner.gc(network("1.1.0"), [("a", "eth0")])
    assert [c.command for c in fake.calls] == ["STATUS"] * 3 + ["GC"] * 3
    assert "CNI_CONTAINERID" not in fake.calls[0].env
    gc = fake.calls[3].conf
    assert gc["cni.dev/valid-attachments"] == [{"containerID": "a", "ifname": "eth0"}]
    fake.calls.clear()
    await runner.gc(network("1.1.0", disableGC=True), [])
    assert fake.calls == []


async def test_status_failure_is_the_plugins_error(plugin_dir: Path) -> None:
    def unavailable(call: Call) -> PluginOutput:
        return PluginOutput(1, b'{"code": 50, "msg": "plugin not available"}', b"")

    with pytest.raises(CNIPluginFailed) as info:
        await invoker(plugin_dir, FakeExec(unavailable)).status(network("1.1.0"))
    assert info.value.cni_code == 50


async def test_versions_are_asked_once_per_binary(plugin_dir: Path) -> None:
    fake = FakeExec()
    runner = invoker(plugin_dir, fake)
    assert await runner.versions("bridge") == ("0.4.0", "1.0.0")
    assert await runner.versions("bridge") == ("0.4.0", "1.0.0")
    assert fake.commands() == [("VERSION", "bridge")]
    (plugin_dir / "bridge").write_text("replaced")  # a new binary is asked again
    await runner.versions("bridge")
    assert len(fake.calls) == 2


async def test_a_plugin_that_does_not_answer_version_is_unknown(plugin_dir: Path) -> None:
    fake = FakeExec(lambda call: PluginOutput(1, b"", b"unknown command"))
    assert await invoker(plugin_dir, fake).versions("bridge") is None


async def test_portmap_is_left_out_for_a_pod_without_host_ports(plugin_dir: Path) -> None:
    fake = FakeExec()
    inv = invoker(plugin_dir, fake)
    await inv.add(network(), TARGET, {})
    prev = json.loads(result_of("cached").stdout)
    await inv.check(network(), TARGET, {}, prev)
    await inv.delete(network(), TARGET, {}, prev)
    assert fake.commands() == [
        ("ADD", "bridge"),
        ("ADD", "bandwidth"),
        ("CHECK", "bridge"),
        ("CHECK", "bandwidth"),
        ("DEL", "bandwidth"),
        ("DEL", "bridge"),
    ]
    # bandwidth chains onto bridge's result directly.
    assert fake.calls[1].conf["prevResult"]["dns"]["nameservers"] == ["bridge"]
