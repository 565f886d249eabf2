"""Pod networking with CNI plugins: configs, readiness, ADD/DEL/CHECK and the result cache.

`CNIManager` is what the pod service uses; the rest is exported for tests and tools.
"""

from cryopod.pods.network.cache import CachedAttachment, ResultCache
from cryopod.pods.network.config import (
    ConfigScan,
    NetworkConfigList,
    PluginConfig,
    find_plugin,
    load_network_configs,
    parse_network_config,
)
from cryopod.pods.network.default import EmbeddedNetwork, parse_pod_cidrs
from cryopod.pods.network.invoke import PluginExec, PluginInvoker, PluginOutput, Target
from cryopod.pods.network.manager import (
    NOT_READY_REASON,
    CNIManager,
    CNISettings,
    NetworkStatus,
    PodAttachment,
)
from cryopod.pods.network.request import (
    Bandwidth,
    IPRange,
    PodNetworkRequest,
    bandwidth_from_annotations,
)
from cryopod.pods.network.result import CNIResult, IPConfig, parse_result

__all__ = [
    "NOT_READY_REASON",
    "Bandwidth",
    "CNIManager",
    "CNIResult",
    "CNISettings",
    "CachedAttachment",
    "ConfigScan",
    "EmbeddedNetwork",
    "IPConfig",
    "IPRange",
    "NetworkConfigList",
    "NetworkStatus",
    "PluginConfig",
    "PluginExec",
    "PluginInvoker",
    "PluginOutput",
    "PodAttachment",
    "PodNetworkRequest",
    "ResultCache",
    "Target",
    "bandwidth_from_annotations",
    "find_plugin",
    "load_network_configs",
    "parse_network_config",
    "parse_pod_cidrs",
    "parse_result",
]
