"""CRI RuntimeService: validate, call the pod and container services, shape the answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

import cryopod
from cryopod.containers.service import ContainerService
from cryopod.errors import InvalidArgument, Unimplemented
from cryopod.pods.network import CNIManager
from cryopod.pods.service import PodService
from cryopod.server import convert_pods
from cryopod.state import codec
from cryopod.streaming import AttachRequest, ExecRequest, PortForwardRequest, StreamingServer

Context = grpc.aio.ServicerContext[Any, Any]

RUNTIME_NAME = "cryopod"
CRI_API_VERSION = "v1"
# Version.version is the kubelet-facing API version of the runtime protocol itself.
KUBE_RUNTIME_API_VERSION = "0.1.0"


class RuntimeServicer(cri_grpc.RuntimeServiceServicer):
    """The CRI RuntimeService."""

    def __init__(
        self,
        *,
        effective_config: Callable[[], dict[str, Any]],
        pods: PodService,
        containers: ContainerService,
        network: CNIManager,
        streaming: StreamingServer,
    ) -> None:
        self._effective_config = effective_config
        self._pods = pods
        self._containers = containers
        self._network = network
        self._streaming = streaming

    # --- pod sandboxes ---------------------------------------------------------------------

    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, context: Context) -> Any:
        if not request.HasField("config") or not request.config.metadata.name:
            raise InvalidArgument("RunPodSandbox: config.metadata.name is required")
        sandbox = await self._pods.run(
            convert_pods.pod_config_from_cri(request.config), request.runtime_handler
        )
        return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox.id)

    async def StopPodSandbox(self, request: cri.StopPodSandboxRequest, context: Context) -> Any:
        await self._pods.stop(request.pod_sandbox_id, self._containers.stop_all_of_pod)
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: cri.RemovePodSandboxRequest, context: Context) -> Any:
        await self._pods.remove(request.pod_sandbox_id, self._containers.remove_all_of_pod)
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: cri.PodSandboxStatusRequest, context: Context) -> Any:
        sandbox = self._pods.get(request.pod_sandbox_id)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "config": codec.to_plain(sandbox.config),
                    "namespaces": codec.to_plain(sandbox.namespace_paths),
                    "runtimeHandler": sandbox.runtime_handler,
                    "pid": sandbox.infra_pid,
                    "runtimeSpec": self._pods.runtime_spec(sandbox),
                }
            )
        return cri.PodSandboxStatusResponse(
            status=convert_pods.sandbox_status_to_cri(sandbox), info=info
        )

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: Context) -> Any:
        wanted = convert_pods.sandbox_filter_from_cri(request.filter)
        return cri.ListPodSandboxResponse(
            items=[convert_pods.sandbox_to_cri(s) for s in self._pods.all() if wanted.matches(s)]
        )

    # --- containers --------------------------------------------------------------------------

    async def CreateContainer(self, request: cri.CreateContainerRequest, context: Context) -> Any:
        if not request.HasField("config") or not request.config.metadata.name:
            raise InvalidArgument("CreateContainer: config.metadata.name is required")
        if not request.config.image.image:
            raise InvalidArgument("CreateContainer: config.image.image is required")
        container = await self._containers.create(
            request.pod_sandbox_id, convert_pods.container_config_from_cri(request.config)
        )
        return cri.CreateContainerResponse(container_id=container.id)

    async def StartContainer(self, request: cri.StartContainerRequest, context: Context) -> Any:
        await self._containers.start(request.container_id)
        return cri.StartContainerResponse()

    async def StopContainer(self, request: cri.StopContainerRequest, context: Context) -> Any:
        await self._containers.stop(request.container_id, float(request.timeout))
        return cri.StopContainerResponse()

    async def RemoveContainer(self, request: cri.RemoveContainerRequest, context: Context) -> Any:
        await self._containers.remove(request.container_id)
        return cri.RemoveContainerResponse()

    async def ContainerStatus(self, request: cri.ContainerStatusRequest, context: Context) -> Any:
        container = self._containers.get(request.container_id)
        info = {}
        if request.verbose:
            info["info"] = json.dumps(
                {
                    "config": codec.to_plain(container.config),
                    "pid": container.pid,
                    "sandboxID": container.pod_id,
                    "runtimeSpec": self._containers.runtime_spec(container),
                }
            )
        return cri.ContainerStatusResponse(
            status=convert_pods.container_status_to_cri(
                container,
                log_path=container.log_path,
                stop_signal=self._containers.stop_signal_name(container),
            ),
            info=info,
        )

    async def ListContainers(self, request: cri.ListContainersRequest, context: Context) -> Any:
        wanted = convert_pods.container_filter_from_cri(request.filter)
        return cri.ListContainersResponse(
            containers=[
                convert_pods.container_to_cri(c)
                for c in self._containers.all()
                if wanted.matches(c)
            ]
        )

    async def ExecSync(self, request: cri.ExecSyncRequest, context: Context) -> Any:
        output = await self._containers.exec_sync(
            request.container_id, list(request.cmd), float(request.timeout)
        )
        return cri.ExecSyncResponse(
            stdout=output.stdout, stderr=output.stderr, exit_code=output.exit_code
        )

    # --- streaming --------------------------------------------------------------------------

    async def Exec(self, request: cri.ExecRequest, context: Context) -> Any:
        self._containers.get_running(request.container_id)  # its errors now, not on the URL
        url = self._streaming.exec_url(
            ExecRequest(
                container_id=request.container_id,
                cmd=tuple(request.cmd),
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return cri.ExecResponse(url=url)

    async def Attach(self, request: cri.AttachRequest, context: Context) -> Any:
        self._containers.get_running(request.container_id)
        url = self._streaming.attach_url(
            AttachRequest(
                container_id=request.container_id,
                tty=request.tty,
                stdin=request.stdin,
                stdout=request.stdout,
                stderr=request.stderr,
            )
        )
        return cri.AttachResponse(url=url)

    async def PortForward(self, request: cri.PortForwardRequest, context: Context) -> Any:
        self._pods.get(request.pod_sandbox_id)
        url = self._streaming.port_forward_url(
            PortForwardRequest(pod_sandbox_id=request.pod_sandbox_id, ports=tuple(request.port))
        )
        return cri.PortForwardResponse(url=url)

    async def UpdateContainerResources(
        self, request: cri.UpdateContainerResourcesRequest, context: Context
    ) -> Any:
        await self._containers.update_resources(
            request.container_id, convert_pods.resources_from_cri(request.linux)
        )
        return cri.UpdateContainerResourcesResponse()

    async def ReopenContainerLog(
        self, request: cri.ReopenContainerLogRequest, context: Context
    ) -> Any:
        await self._containers.reopen_log(request.container_id)
        return cri.ReopenContainerLogResponse()

    async def UpdateRuntimeConfig(
        self, request: cri.UpdateRuntimeConfigRequest, context: Context
    ) -> Any:
        await self._network.set_pod_cidr(request.runtime_config.network_config.pod_cidr)
        return cri.UpdateRuntimeConfigResponse()

    async def RuntimeConfig(self, request: cri.RuntimeConfigRequest, context: Context) -> Any:
        driver = self._effective_config()["runtime"]["cgroup_driver"]
        return cri.RuntimeConfigResponse(
            linux=cri.LinuxRuntimeConfiguration(
                cgroup_driver=cri.SYSTEMD if driver == "systemd" else cri.CGROUPFS
            )
        )

    async def Version(self, request: cri.VersionRequest, context: Context) -> Any:
        return cri.VersionResponse(
            version=KUBE_RUNTIME_API_VERSION,
            runtime_name=RUNTIME_NAME,
            runtime_version=cryopod.__version__,
            runtime_api_version=CRI_API_VERSION,
        )

    async def Status(self, request: cri.StatusRequest, context: Context) -> Any:
        network = self._network.status()
        conditions = [
            cri.RuntimeCondition(type="RuntimeReady", status=True),
            cri.RuntimeCondition(
                type="NetworkReady",
                status=network.ready,
                reason="" if network.ready else network.reason,
                message=network.message,
            ),
        ]
        info = {}
        if request.verbose:
            info = {
                "config": json.dumps(self._effective_config()),
                "network": json.dumps(network.info()),
            }
        return cri.StatusResponse(
            status=cri.RuntimeStatus(conditions=conditions),
            info=info,
            runtime_handlers=[
                cri.RuntimeHandler(name=name, features=cri.RuntimeHandlerFeatures())
                for name in ("", *self._pods.handlers)
            ],
            features=cri.RuntimeFeatures(supplemental_groups_policy=False),
        )


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(self: RuntimeServicer, request: Any, context: Context) -> Any:
        raise Unimplemented(f"{name} is not implemented by cryopod yet")

    handler.__name__ = name
    return handler


# The generated base answers UNIMPLEMENTED from synchronous methods, which an asyncio
# server cannot run; give every call not written above an async twin.
for _method in cri.DESCRIPTOR.services_by_name["RuntimeService"].methods:
    if _method.name not in RuntimeServicer.__dict__:
        setattr(RuntimeServicer, _method.name, _unimplemented(_method.name))
