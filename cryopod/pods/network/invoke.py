"""Running the plugins of a network: ADD, DEL, CHECK, STATUS, GC and VERSION.

This is cryopod's libcni. Each plugin is exec'd through `cryopod.procs.run_command` with the
CNI_* environment and its config on stdin: the network's name and cniVersion, the previous
plugin's result as `prevResult`, and the `runtimeConfig` keys it declares. ADD and CHECK run
the plugins in order, DEL in reverse. A plugin's JSON error becomes `CNIPluginFailed`.

Plugins of different pods run concurrently; callers must not run two operations on one
attachment at once (the spec forbids it; `CNIManager` holds a lock per sandbox).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryopod.errors import (
    CNIPluginFailed,
    CNIPluginTimeout,
    CommandTimeout,
    InvalidCNIResult,
    NetworkNotReady,
)
from cryopod.pods.network.config import JSONObject, NetworkConfigList, PluginConfig, find_plugin
from cryopod.pods.network.request import runtime_config_for
from cryopod.pods.network.result import convert_result, parse_result
from cryopod.pods.network.versions import has_check, has_status_and_gc
from cryopod.procs import run_command

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_TIMEOUT = 60.0
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class _QueryFailed(Exception):
    """VERSION could not be asked (as opposed to a plugin that does not answer it)."""


@dataclass(frozen=True)
class PluginOutput:
    """What a plugin left: exit status and output."""

    returncode: int
    stdout: bytes
    stderr: bytes


class PluginExec(Protocol):
    """Runs one plugin binary; `exec_plugin` by default, a fake in unit tests."""

    async def __call__(
        self, path: str, *, env: Mapping[str, str], stdin: bytes, timeout: float | None
    ) -> PluginOutput: ...


async def exec_plugin(
    path: str, *, env: Mapping[str, str], stdin: bytes, timeout: float | None
) -> PluginOutput:
    """Run a plugin through the subprocess seam; its exit status is judged by the caller."""
    result = await run_command([path], stdin=stdin, env=env, timeout=timeout, check=False)
    return PluginOutput(result.returncode, result.stdout, result.stderr)


@dataclass(frozen=True)
class Target:
    """The attachment a plugin works on: CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS."""

    container_id: str
    netns: str
    ifname: str
    cni_args: str = ""


# --- the pieces of one invocation -----------------------------------------------------------


def plugin_env(
    command: str, target: Target | None, cni_path: str, base: Mapping[str, str]
) -> dict[str, str]:
    """The plugin's environment: `base` without stray CNI_* variables, plus the CNI ones.

    PATH keeps the sbin directories, where the iptables and tc the plugins run live.
    """
    env = {k: v for k, v in base.items() if not k.startswith("CNI_")}
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(":") if p]
    env["PATH"] = ":".join([*path, *(d for d in _SBIN if d not in path)])
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = cni_path
    if target is not None:
        env["CNI_CONTAINERID"] = target.container_id
        env["CNI_NETNS"] = target.netns
        env["CNI_IFNAME"] = target.ifname
        env["CNI_ARGS"] = target.cni_args
    return env


def plugin_stdin(
    network: NetworkConfigList,
    plugin: PluginConfig,
    *,
    prev_result: Mapping[str, Any] | None = None,
    runtime_config: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONObject:
    """The config one plugin reads: its own object plus the network's name and version."""
    conf: JSONObject = dict(plugin.raw)
    conf["name"] = network.name
    conf["cniVersion"] = network.cni_version
    conf.pop("prevResult", None)
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    if runtime_config:
        conf["runtimeConfig"] = dict(runtime_config)
    if extra:
        conf.update(extra)
    return conf


def _plugins_with_work(
    plugins: Sequence[PluginConfig], capability_args: Mapping[str, Any]
) -> list[PluginConfig]:
    """The plugins that have something to do for this pod.

    `portmap` takes its mappings only from runtimeConfig: for a pod without hostPorts its
    ADD passes the previous result through untouched and its DEL and CHECK have nothing to
    look at. Leaving it out spares an exec per pod operation; the outcome is the same.
    (Debian's portmap also fails CHECK for every IPv4-only pod while ip6tables works.)
    """
    return [
        plugin
        for plugin in plugins
        if plugin.type != "portmap" or capability_args.get("portMappings")
    ]


def parse_plugin_error(output: PluginOutput) -> tuple[int | None, str, str]:
    """(code, msg, details) of a failed plugin: its JSON error, else its last words."""
    for stream in (output.stdout, output.stderr):
        try:
            error = json.loads(stream)
        except ValueError:
            continue
        if isinstance(error, dict) and ("msg" in error or "code" in error):
            code = error.get("code")
            return (
                code if isinstance(code, int) and not isinstance(code, bool) else None,
                str(error.get("msg") or "no message"),
                str(error.get("details") or ""),
            )
    for stream in (output.stderr, output.stdout):
        text = stream.decode(errors="replace").strip()
        if text:
            return None, text.splitlines()[-1], ""
    return None, f"exited with status {output.returncode} and no message", ""


# --- running networks ---------------------------------------------------------------------


class PluginInvoker:
    """Runs the plugins of network config lists, found in `plugin_dirs`."""

    def __init__(
        self,
        plugin_dirs: Sequence[Path],
        *,
        timeout: float = DEFAULT_PLUGIN_TIMEOUT,
        runner: PluginExec = exec_plugin,
    ) -> None:
        self.plugin_dirs = tuple(plugin_dirs)
        self.cni_path = ":".join(str(d) for d in self.plugin_dirs)
        self._timeout = timeout
        self._runner = runner
        self._versions: dict[tuple[str, int, int, int], tuple[str, ...] | None] = {}

    def find(self, plugin_type: str) -> Path:
        """The plugin's binary; NetworkNotReady when no plugin directory has it."""
        path = find_plugin(plugin_type, self.plugin_dirs)
        if path is None:
            dirs = ", ".join(str(d) for d in self.plugin_dirs)
            raise NetworkNotReady(f"CNI plugin {plugin_type!r} not found in {dirs}")
        return path

    async def add(
        self, network: NetworkConfigList, target: Target, capability_args: Mapping[str, Any]
    ) -> JSONObject:
        """ADD every plugin in order, chaining results; the last plugin's result."""
        result: JSONObject | None = None
        for plugin in _plugins_with_work(network.plugins, capability_args):
            conf = plugin_stdin(
                network,
                plugin,
                prev_result=result,
                runtime_config=runtime_config_for(plugin, capability_args),
            )
            stdout = await self._invoke("ADD", network, plugin, target, conf)
            result = self._result(network, plugin, target, stdout)
        assert result is not None  # a network has at least one plugin
        return result

    async def delete(
        self,
        network: NetworkConfigList,
        target: Target,
        capability_args: Mapping[str, Any],
        prev_result: Mapping[str, Any] | None,
        *,
        every_plugin: bool = False,
    ) -> None:
        """DEL every plugin in reverse order; each runs even when one before it failed.

        The first failure is raised after all ran; DEL is idempotent, so a retry is safe.
        `every_plugin` includes those that had nothing to do at ADD (when it is unknown
        what ADD did).
        """
        if not has_check(network.cni_version):
            prev_result = None  # prevResult on DEL arrived with 0.4.0
        failure: BaseException | None = None
        plugins = list(network.plugins)
        if not every_plugin:
            plugins = _plugins_with_work(plugins, capability_args)
        for plugin in reversed(plugins):
            conf = plugin_stdin(
                network,
                plugin,
                prev_result=prev_result,
                runtime_config=runtime_config_for(plugin, capability_args),
            )
            try:
                await self._invoke("DEL", network, plugin, target, conf)
            except (CNIPluginFailed, CNIPluginTimeout, NetworkNotReady) as exc:
                log.warning("%s", exc)
                failure = failure or exc
        if failure is not None:
            raise failure

    async def check(
        self,
        network: NetworkConfigList,
        target: Target,
        capability_args: Mapping[str, Any],
        prev_result: Mapping[str, Any],
    ) -> bool:
        """CHECK every plugin in order; False when the network cannot be checked."""
        if not has_check(network.cni_version) or network.disable_check:
            return False
        for plugin in _plugins_with_work(network.plugins, capability_args):
            conf = plugin_stdin(
                network,
                plugin,
                prev_result=prev_result,
                runtime_config=runtime_config_for(plugin, capability_args),
            )
            await self._invoke("CHECK", network, plugin, target, conf)
        return True

    async def status(self, network: NetworkConfigList) -> None:
        """STATUS every plugin (spec 1.1.0); raises CNIPluginFailed when one is not ready."""
        if not has_status_and_gc(network.cni_version):
            return
        for plugin in network.plugins:
            await self._invoke("STATUS", network, plugin, None, plugin_stdin(network, plugin))

    async def gc(self, network: NetworkConfigList, valid: Sequence[tuple[str, str]]) -> None:
        """GC every plugin (spec 1.1.0), naming the (container id, ifname) pairs to keep."""
        if not has_status_and_gc(network.cni_version) or network.disable_gc:
            return
        attachments = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
        for plugin in network.plugins:
            conf = plugin_stdin(network, plugin, extra={"cni.dev/valid-attachments": attachments})
            await self._invoke("GC", network, plugin, None, conf)

    async def versions(self, plugin_type: str) -> tuple[str, ...] | None:
        """The spec versions a plugin supports (VERSION); None when it does not say."""
        path = self.find(plugin_type)
        try:
            st = path.stat()
        except OSError:
            return None
        key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in self._versions:
            try:
                self._versions[key] = await self._query_versions(path)
            except _QueryFailed:
                return None  # asked again next time: it may have been a passing failure
        return self._versions[key]

    async def _query_versions(self, path: Path) -> tuple[str, ...] | None:
        env = plugin_env("VERSION", None, self.cni_path, os.environ)
        try:
            output = await self._runner(
                str(path), env=env, stdin=b'{"cniVersion":"1.0.0"}', timeout=self._timeout
            )
            reply = json.loads(output.stdout) if output.returncode == 0 else None
        except (OSError, ValueError, CommandTimeout) as exc:
            log.warning("CNI plugin %s: VERSION failed: %s", path, exc)
            raise _QueryFailed from exc
        supported = reply.get("supportedVersions") if isinstance(reply, dict) else None
        if not isinstance(supported, list):
            return None
        return tuple(v for v in supported if isinstance(v, str))

    # --- one plugin

    async def _invoke(
        self,
        command: str,
        network: NetworkConfigList,
        plugin: PluginConfig,
        target: Target | None,
        conf: Mapping[str, Any],
    ) -> bytes:
        path = self.find(plugin.type)
        env = plugin_env(command, target, self.cni_path, os.environ)
        sandbox_id = target.container_id if target is not None else ""
        try:
            output = await self._runner(
                str(path), env=env, stdin=json.dumps(conf).encode(), timeout=self._timeout
            )
        except CommandTimeout as exc:
            raise CNIPluginTimeout(
                network=network.name,
                plugin=plugin.type,
                command=command,
                sandbox_id=sandbox_id,
                timeout=self._timeout,
            ) from exc
        except OSError as exc:
            raise self._failure(command, network, plugin, sandbox_id, None, str(exc)) from exc
        if output.returncode != 0:
            code, message, details = parse_plugin_error(output)
            raise self._failure(command, network, plugin, sandbox_id, code, message, details)
        return output.stdout

    def _result(
        self, network: NetworkConfigList, plugin: PluginConfig, target: Target, stdout: bytes
    ) -> JSONObject:
        try:
            decoded = json.loads(stdout)
            if not isinstance(decoded, dict):
                raise InvalidCNIResult("not a JSON object")
            raw: JSONObject = decoded
            if raw.get("cniVersion", network.cni_version) != network.cni_version:
                parse_result(raw)  # its own version must be one cryopod reads
                raw = convert_result(raw, network.cni_version)
            parse_result(raw, network.cni_version)
        except (ValueError, InvalidCNIResult) as exc:
            reason = exc.reason if isinstance(exc, InvalidCNIResult) else f"not JSON: {exc}"
            raise self._failure(
                "ADD", network, plugin, target.container_id, None, f"invalid result: {reason}"
            ) from exc
        return raw

    @staticmethod
    def _failure(
        command: str,
        network: NetworkConfigList,
        plugin: PluginConfig,
        sandbox_id: str,
        code: int | None,
        message: str,
        details: str = "",
    ) -> CNIPluginFailed:
        return CNIPluginFailed(
            network=network.name,
            plugin=plugin.type,
            command=command,
            sandbox_id=sandbox_id,
            cni_code=code,
            cni_message=message,
            details=details,
        )
