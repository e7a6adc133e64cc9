"""The CRI calls only the test harness makes: creating, starting, stopping and removing pods and containers.

The agent's CRI client (``podcap.agent.pods.cri``) declares only what a pod source needs. The harness drives a real
containerd like a kubelet, so it declares the rest here, on top of the agent's declaration, and talks through the
same ``CriClient`` with this ``Declaration``. ``tests/integration/test_cri_wire.py`` compares the whole of it (the
agent's part included) with the descriptor compiled into containerd.
"""

from __future__ import annotations

from typing import Any, Final

from google.protobuf import json_format
from google.protobuf.message import Message

from podcap.agent.pods.cri import CriClient
from podcap.agent.pods.cri_declaration import (
    BOOL,
    ENUM,
    ENUMS,
    INT32,
    INT64,
    MESSAGE,
    MESSAGES,
    METHODS,
    NAMESPACE_MODE_NODE,
    PACKAGE,
    SANDBOX_NOTREADY,
    SANDBOX_READY,
    STRING,
    UINT32,
    Declaration,
    Field,
    map_field,
)

__all__ = ["NAMESPACE_MODE_NODE", "PACKAGE", "SANDBOX_NOTREADY", "SANDBOX_READY", "HARNESS", "as_dict", "client",
           "file_descriptor", "message", "message_class"]

_HARNESS_ENUMS: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "ContainerState": (
        ("CONTAINER_CREATED", 0),
        ("CONTAINER_RUNNING", 1),
        ("CONTAINER_EXITED", 2),
        ("CONTAINER_UNKNOWN", 3),
    ),
    "MountPropagation": (
        ("PROPAGATION_PRIVATE", 0),
        ("PROPAGATION_HOST_TO_CONTAINER", 1),
        ("PROPAGATION_BIDIRECTIONAL", 2),
    ),
}

_HARNESS_MESSAGES: Final[dict[str, tuple[Field, ...]]] = {
    "DNSConfig": (
        Field("servers", 1, STRING, repeated=True),
        Field("searches", 2, STRING, repeated=True),
        Field("options", 3, STRING, repeated=True),
    ),
    "Int64Value": (Field("value", 1, INT64),),
    "LinuxSandboxSecurityContext": (
        Field("namespace_options", 1, MESSAGE, "NamespaceOption"),
        Field("run_as_user", 3, MESSAGE, "Int64Value"),
        Field("run_as_group", 8, MESSAGE, "Int64Value"),
        Field("supplemental_groups", 5, INT64, repeated=True),
        Field("privileged", 6, BOOL),
        Field("seccomp_profile_path", 7, STRING),
    ),
    "LinuxPodSandboxConfig": (
        Field("cgroup_parent", 1, STRING),
        Field("security_context", 2, MESSAGE, "LinuxSandboxSecurityContext"),
    ),
    "PodSandboxConfig": (
        Field("metadata", 1, MESSAGE, "PodSandboxMetadata"),
        Field("hostname", 2, STRING),
        Field("log_directory", 3, STRING),
        Field("dns_config", 4, MESSAGE, "DNSConfig"),
        map_field("labels", 6),
        map_field("annotations", 7),
        Field("linux", 8, MESSAGE, "LinuxPodSandboxConfig"),
    ),
    "RunPodSandboxRequest": (
        Field("config", 1, MESSAGE, "PodSandboxConfig"),
        Field("runtime_handler", 2, STRING),
    ),
    "RunPodSandboxResponse": (Field("pod_sandbox_id", 1, STRING),),
    "StopPodSandboxRequest": (Field("pod_sandbox_id", 1, STRING),),
    "StopPodSandboxResponse": (),
    "RemovePodSandboxRequest": (Field("pod_sandbox_id", 1, STRING),),
    "RemovePodSandboxResponse": (),
    "ContainerMetadata": (Field("name", 1, STRING), Field("attempt", 2, UINT32)),
    "ImageSpec": (Field("image", 1, STRING),),
    "Capability": (
        Field("add_capabilities", 1, STRING, repeated=True),
        Field("drop_capabilities", 2, STRING, repeated=True),
    ),
    "LinuxContainerSecurityContext": (
        Field("capabilities", 1, MESSAGE, "Capability"),
        Field("privileged", 2, BOOL),
        Field("namespace_options", 3, MESSAGE, "NamespaceOption"),
        Field("run_as_user", 5, MESSAGE, "Int64Value"),
        Field("run_as_group", 12, MESSAGE, "Int64Value"),
        Field("readonly_rootfs", 7, BOOL),
        Field("supplemental_groups", 8, INT64, repeated=True),
        Field("apparmor_profile", 9, STRING),
        Field("seccomp_profile_path", 10, STRING),
        Field("no_new_privs", 11, BOOL),
        Field("masked_paths", 13, STRING, repeated=True),
        Field("readonly_paths", 14, STRING, repeated=True),
    ),
    "LinuxContainerResources": (
        Field("cpu_period", 1, INT64),
        Field("cpu_quota", 2, INT64),
        Field("cpu_shares", 3, INT64),
        Field("memory_limit_in_bytes", 4, INT64),
    ),
    "LinuxContainerConfig": (
        Field("resources", 1, MESSAGE, "LinuxContainerResources"),
        Field("security_context", 2, MESSAGE, "LinuxContainerSecurityContext"),
    ),
    "KeyValue": (Field("key", 1, STRING), Field("value", 2, STRING)),
    "Mount": (
        Field("container_path", 1, STRING),
        Field("host_path", 2, STRING),
        Field("readonly", 3, BOOL),
        Field("propagation", 5, ENUM, "MountPropagation"),
    ),
    "ContainerConfig": (
        Field("metadata", 1, MESSAGE, "ContainerMetadata"),
        Field("image", 2, MESSAGE, "ImageSpec"),
        Field("command", 3, STRING, repeated=True),
        Field("args", 4, STRING, repeated=True),
        Field("working_dir", 5, STRING),
        Field("envs", 6, MESSAGE, "KeyValue", repeated=True),
        Field("mounts", 7, MESSAGE, "Mount", repeated=True),
        map_field("labels", 9),
        map_field("annotations", 10),
        Field("log_path", 11, STRING),
        Field("linux", 15, MESSAGE, "LinuxContainerConfig"),
    ),
    "CreateContainerRequest": (
        Field("pod_sandbox_id", 1, STRING),
        Field("config", 2, MESSAGE, "ContainerConfig"),
        Field("sandbox_config", 3, MESSAGE, "PodSandboxConfig"),
    ),
    "CreateContainerResponse": (Field("container_id", 1, STRING),),
    "StartContainerRequest": (Field("container_id", 1, STRING),),
    "StartContainerResponse": (),
    "StopContainerRequest": (Field("container_id", 1, STRING), Field("timeout", 2, INT64)),
    "StopContainerResponse": (),
    "ContainerFilter": (Field("id", 1, STRING), Field("pod_sandbox_id", 3, STRING), map_field("label_selector", 4)),
    "ListContainersRequest": (Field("filter", 1, MESSAGE, "ContainerFilter"),),
    "Container": (
        Field("id", 1, STRING),
        Field("pod_sandbox_id", 2, STRING),
        Field("metadata", 3, MESSAGE, "ContainerMetadata"),
        Field("image", 4, MESSAGE, "ImageSpec"),
        Field("state", 6, ENUM, "ContainerState"),
        Field("created_at", 7, INT64),
        map_field("labels", 8),
        map_field("annotations", 9),
    ),
    "ListContainersResponse": (Field("containers", 1, MESSAGE, "Container", repeated=True),),
    "ContainerStatusRequest": (Field("container_id", 1, STRING), Field("verbose", 2, BOOL)),
    "ContainerStatus": (
        Field("id", 1, STRING),
        Field("metadata", 2, MESSAGE, "ContainerMetadata"),
        Field("state", 3, ENUM, "ContainerState"),
        Field("exit_code", 7, INT32),
        Field("reason", 10, STRING),
        Field("message", 11, STRING),
    ),
    "ContainerStatusResponse": (Field("status", 1, MESSAGE, "ContainerStatus"), map_field("info", 2)),
}

_HARNESS_METHODS: Final[dict[str, tuple[str, str]]] = {
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "CreateContainer": ("CreateContainerRequest", "CreateContainerResponse"),
    "StartContainer": ("StartContainerRequest", "StartContainerResponse"),
    "StopContainer": ("StopContainerRequest", "StopContainerResponse"),
    "ListContainers": ("ListContainersRequest", "ListContainersResponse"),
    "ContainerStatus": ("ContainerStatusRequest", "ContainerStatusResponse"),
}

HARNESS: Final = Declaration(
    enums={**ENUMS, **_HARNESS_ENUMS},
    messages={**MESSAGES, **_HARNESS_MESSAGES},
    methods={**METHODS, **_HARNESS_METHODS},
    file_name="tests/node/cri_runtime_v1.proto",
)
file_descriptor = HARNESS.file_descriptor
message_class = HARNESS.message_class
message = HARNESS.message


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, use_integers_for_enums=True)


def client(endpoint: str, *, timeout: float = 5.0) -> CriClient:
    """The agent's CRI client, able to make the harness's calls too."""
    return CriClient(endpoint, timeout=timeout, declaration=HARNESS)
