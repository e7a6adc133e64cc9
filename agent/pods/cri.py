"""A minimal client for the Kubernetes Container Runtime Interface (CRI ``runtime.v1``) over its unix socket.

The agent asks the container runtime (containerd, CRI-O) two things: which pod sandboxes run on this node
(``ListPodSandbox``) and, for one sandbox, where its network lives (``PodSandboxStatus`` with ``verbose=true``,
whose ``info`` JSON holds the sandbox pid, the netns path and the CNI result). Only those messages and fields are
declared here, with the upstream field numbers and types; protobuf skips every field it does not know, so a newer
runtime's extra fields are harmless. The test harness also drives a real node through this client
(``RunPodSandbox``, ``CreateContainer``, ...), so those few messages are declared as well, but the agent never calls
them.

The messages are built at import time from a ``FileDescriptorProto`` written in Python, in a private descriptor
pool: there is no generated code to drift from this declaration, nothing is registered in the process-wide pool
(so another ``runtime.v1`` there cannot clash), and ``tests/integration/test_cri_wire.py`` compares every message,
field, enum and method declared here with the descriptor compiled into the installed containerd binary.

gRPC errors leave this module as ``PodSourceError`` / ``PodNotFoundError`` with messages a user can act on.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Self

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from podcap.agent.pods.source import PodNotFoundError, PodSourceError

PACKAGE: Final = "runtime.v1"
_FILE_NAME: Final = "podcap/agent/cri_runtime_v1.proto"

# Well-known CRI sockets, in the order they are tried. CRI-O and containerd are the runtimes a node has today;
# k3s/rke2 ship their own containerd under /run/k3s; cri-dockerd serves CRI for Docker Engine nodes.
DEFAULT_SOCKETS: Final[tuple[str, ...]] = (
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/run/cri-dockerd.sock",
    "/var/run/cri-dockerd.sock",
)
# Where a containerized agent usually finds the host's filesystem (a hostPath mount of /).
DEFAULT_HOST_ROOTS: Final[tuple[str, ...]] = ("", "/host")

# Enum values (upstream numbers).
SANDBOX_READY: Final = 0
SANDBOX_NOTREADY: Final = 1
NAMESPACE_MODE_POD: Final = 0
NAMESPACE_MODE_CONTAINER: Final = 1
NAMESPACE_MODE_NODE: Final = 2
NAMESPACE_MODE_TARGET: Final = 3

# ---------------------------------------------------------------------------------------------------------------
# The declaration: message -> fields (name, number, type, type name for messages/enums), upstream numbering.

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT64, _UINT32, _INT32 = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_INT32
_MESSAGE, _ENUM = _F.TYPE_MESSAGE, _F.TYPE_ENUM


@dataclass(frozen=True)
class _Field:
    name: str
    number: int
    type: int
    type_name: str = ""  # short name of a message or enum in this package
    repeated: bool = False
    map_value: int | None = None  # set for map<string, X> fields (X scalar)


def _map(name: str, number: int, value: int = _STRING) -> _Field:
    return _Field(name, number, _MESSAGE, repeated=True, map_value=value)


_ENUMS: Final[dict[str, tuple[tuple[str, int], ...]]] = {
    "PodSandboxState": (("SANDBOX_READY", 0), ("SANDBOX_NOTREADY", 1)),
    "NamespaceMode": (("POD", 0), ("CONTAINER", 1), ("NODE", 2), ("TARGET", 3)),
    "ContainerState": (
        ("CONTAINER_CREATED", 0),
        ("CONTAINER_RUNNING", 1),
        ("CONTAINER_EXITED", 2),
        ("CONTAINER_UNKNOWN", 3),
    ),
}

_MESSAGES: Final[dict[str, tuple[_Field, ...]]] = {
    # -- used by the agent ------------------------------------------------------------------------------------
    "VersionRequest": (_Field("version", 1, _STRING),),
    "VersionResponse": (
        _Field("version", 1, _STRING),
        _Field("runtime_name", 2, _STRING),
        _Field("runtime_version", 3, _STRING),
        _Field("runtime_api_version", 4, _STRING),
    ),
    "PodSandboxMetadata": (
        _Field("name", 1, _STRING),
        _Field("uid", 2, _STRING),
        _Field("namespace", 3, _STRING),
        _Field("attempt", 4, _UINT32),
    ),
    "PodSandboxStateValue": (_Field("state", 1, _ENUM, "PodSandboxState"),),
    "PodSandboxFilter": (
        _Field("id", 1, _STRING),
        _Field("state", 2, _MESSAGE, "PodSandboxStateValue"),
        _map("label_selector", 3),
    ),
    "ListPodSandboxRequest": (_Field("filter", 1, _MESSAGE, "PodSandboxFilter"),),
    "PodSandbox": (
        _Field("id", 1, _STRING),
        _Field("metadata", 2, _MESSAGE, "PodSandboxMetadata"),
        _Field("state", 3, _ENUM, "PodSandboxState"),
        _Field("created_at", 4, _INT64),
        _map("labels", 5),
        _map("annotations", 6),
    ),
    "ListPodSandboxResponse": (_Field("items", 1, _MESSAGE, "PodSandbox", repeated=True),),
    "PodSandboxStatusRequest": (_Field("pod_sandbox_id", 1, _STRING), _Field("verbose", 2, _BOOL)),
    "PodIP": (_Field("ip", 1, _STRING),),
    "PodSandboxNetworkStatus": (
        _Field("ip", 1, _STRING),
        _Field("additional_ips", 2, _MESSAGE, "PodIP", repeated=True),
    ),
    "NamespaceOption": (
        _Field("network", 1, _ENUM, "NamespaceMode"),
        _Field("pid", 2, _ENUM, "NamespaceMode"),
        _Field("ipc", 3, _ENUM, "NamespaceMode"),
    ),
    "Namespace": (_Field("options", 2, _MESSAGE, "NamespaceOption"),),
    "LinuxPodSandboxStatus": (_Field("namespaces", 1, _MESSAGE, "Namespace"),),
    "PodSandboxStatus": (
        _Field("id", 1, _STRING),
        _Field("metadata", 2, _MESSAGE, "PodSandboxMetadata"),
        _Field("state", 3, _ENUM, "PodSandboxState"),
        _Field("created_at", 4, _INT64),
        _Field("network", 5, _MESSAGE, "PodSandboxNetworkStatus"),
        _Field("linux", 6, _MESSAGE, "LinuxPodSandboxStatus"),
        _map("labels", 7),
        _map("annotations", 8),
    ),
    "PodSandboxStatusResponse": (_Field("status", 1, _MESSAGE, "PodSandboxStatus"), _map("info", 2)),
    # -- used only by the test harness (tests/node) -----------------------------------------------------------
    "DNSConfig": (
        _Field("servers", 1, _STRING, repeated=True),
        _Field("searches", 2, _STRING, repeated=True),
        _Field("options", 3, _STRING, repeated=True),
    ),
    "Int64Value": (_Field("value", 1, _INT64),),
    "LinuxSandboxSecurityContext": (
        _Field("namespace_options", 1, _MESSAGE, "NamespaceOption"),
        _Field("run_as_user", 3, _MESSAGE, "Int64Value"),
    ),
    "LinuxPodSandboxConfig": (
        _Field("cgroup_parent", 1, _STRING),
        _Field("security_context", 2, _MESSAGE, "LinuxSandboxSecurityContext"),
    ),
    "PodSandboxConfig": (
        _Field("metadata", 1, _MESSAGE, "PodSandboxMetadata"),
        _Field("hostname", 2, _STRING),
        _Field("log_directory", 3, _STRING),
        _Field("dns_config", 4, _MESSAGE, "DNSConfig"),
        _map("labels", 6),
        _map("annotations", 7),
        _Field("linux", 8, _MESSAGE, "LinuxPodSandboxConfig"),
    ),
    "RunPodSandboxRequest": (
        _Field("config", 1, _MESSAGE, "PodSandboxConfig"),
        _Field("runtime_handler", 2, _STRING),
    ),
    "RunPodSandboxResponse": (_Field("pod_sandbox_id", 1, _STRING),),
    "StopPodSandboxRequest": (_Field("pod_sandbox_id", 1, _STRING),),
    "StopPodSandboxResponse": (),
    "RemovePodSandboxRequest": (_Field("pod_sandbox_id", 1, _STRING),),
    "RemovePodSandboxResponse": (),
    "ContainerMetadata": (_Field("name", 1, _STRING), _Field("attempt", 2, _UINT32)),
    "ImageSpec": (_Field("image", 1, _STRING),),
    "LinuxContainerSecurityContext": (
        _Field("namespace_options", 3, _MESSAGE, "NamespaceOption"),
        _Field("run_as_user", 5, _MESSAGE, "Int64Value"),
        _Field("run_as_group", 12, _MESSAGE, "Int64Value"),
    ),
    "LinuxContainerConfig": (_Field("security_context", 2, _MESSAGE, "LinuxContainerSecurityContext"),),
    "ContainerConfig": (
        _Field("metadata", 1, _MESSAGE, "ContainerMetadata"),
        _Field("image", 2, _MESSAGE, "ImageSpec"),
        _Field("command", 3, _STRING, repeated=True),
        _Field("args", 4, _STRING, repeated=True),
        _Field("working_dir", 5, _STRING),
        _map("labels", 9),
        _map("annotations", 10),
        _Field("log_path", 11, _STRING),
        _Field("linux", 15, _MESSAGE, "LinuxContainerConfig"),
    ),
    "CreateContainerRequest": (
        _Field("pod_sandbox_id", 1, _STRING),
        _Field("config", 2, _MESSAGE, "ContainerConfig"),
        _Field("sandbox_config", 3, _MESSAGE, "PodSandboxConfig"),
    ),
    "CreateContainerResponse": (_Field("container_id", 1, _STRING),),
    "StartContainerRequest": (_Field("container_id", 1, _STRING),),
    "StartContainerResponse": (),
    "ContainerFilter": (_Field("id", 1, _STRING), _Field("pod_sandbox_id", 3, _STRING), _map("label_selector", 4)),
    "ListContainersRequest": (_Field("filter", 1, _MESSAGE, "ContainerFilter"),),
    "Container": (
        _Field("id", 1, _STRING),
        _Field("pod_sandbox_id", 2, _STRING),
        _Field("metadata", 3, _MESSAGE, "ContainerMetadata"),
        _Field("image", 4, _MESSAGE, "ImageSpec"),
        _Field("state", 6, _ENUM, "ContainerState"),
        _Field("created_at", 7, _INT64),
        _map("labels", 8),
        _map("annotations", 9),
    ),
    "ListContainersResponse": (_Field("containers", 1, _MESSAGE, "Container", repeated=True),),
    "ContainerStatusRequest": (_Field("container_id", 1, _STRING), _Field("verbose", 2, _BOOL)),
    "ContainerStatus": (
        _Field("id", 1, _STRING),
        _Field("metadata", 2, _MESSAGE, "ContainerMetadata"),
        _Field("state", 3, _ENUM, "ContainerState"),
        _Field("exit_code", 7, _INT32),
    ),
    "ContainerStatusResponse": (_Field("status", 1, _MESSAGE, "ContainerStatus"), _map("info", 2)),
}

# RuntimeService methods: name -> (request message, response message). All unary.
METHODS: Final[dict[str, tuple[str, str]]] = {
    "Version": ("VersionRequest", "VersionResponse"),
    "ListPodSandbox": ("ListPodSandboxRequest", "ListPodSandboxResponse"),
    "PodSandboxStatus": ("PodSandboxStatusRequest", "PodSandboxStatusResponse"),
    "RunPodSandbox": ("RunPodSandboxRequest", "RunPodSandboxResponse"),
    "StopPodSandbox": ("StopPodSandboxRequest", "StopPodSandboxResponse"),
    "RemovePodSandbox": ("RemovePodSandboxRequest", "RemovePodSandboxResponse"),
    "CreateContainer": ("CreateContainerRequest", "CreateContainerResponse"),
    "StartContainer": ("StartContainerRequest", "StartContainerResponse"),
    "ListContainers": ("ListContainersRequest", "ListContainersResponse"),
    "ContainerStatus": ("ContainerStatusRequest", "ContainerStatusResponse"),
}


def _entry_name(field_name: str) -> str:
    # protoc's name for the synthetic map entry type: "label_selector" -> "LabelSelectorEntry".
    return "".join(part[:1].upper() + part[1:] for part in field_name.split("_")) + "Entry"


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The declaration above as a FileDescriptorProto (also what the wire-compatibility test compares)."""
    fd = descriptor_pb2.FileDescriptorProto(name=_FILE_NAME, package=PACKAGE, syntax="proto3")
    for enum_name, values in _ENUMS.items():
        enum = fd.enum_type.add(name=enum_name)
        for value_name, number in values:
            enum.value.add(name=value_name, number=number)
    for msg_name, fields in _MESSAGES.items():
        msg = fd.message_type.add(name=msg_name)
        for f in fields:
            label = _F.LABEL_REPEATED if f.repeated else _F.LABEL_OPTIONAL
            fp = msg.field.add(name=f.name, number=f.number, type=f.type, label=label)
            if f.map_value is not None:
                entry = msg.nested_type.add(name=_entry_name(f.name))
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_STRING, label=_F.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=f.map_value, label=_F.LABEL_OPTIONAL)
                fp.type_name = f".{PACKAGE}.{msg_name}.{entry.name}"
            elif f.type_name:
                fp.type_name = f".{PACKAGE}.{f.type_name}"
    service = fd.service.add(name="RuntimeService")
    for method, (req, resp) in METHODS.items():
        service.method.add(name=method, input_type=f".{PACKAGE}.{req}", output_type=f".{PACKAGE}.{resp}")
    return fd


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(file_descriptor())


def message_class(name: str) -> type[Message]:
    """The generated class of message ``name`` (short name, e.g. ``"PodSandboxConfig"``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


def message(name: str, fields: Mapping[str, Any] | None = None) -> Message:
    """A message built from a dict in protobuf JSON mapping (snake_case keys accepted), unknown keys rejected."""
    msg = message_class(name)()
    if fields:
        try:
            json_format.ParseDict(dict(fields), msg)
        except json_format.ParseError as e:
            raise ValueError(f"bad {name}: {e}") from e
    return msg


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, use_integers_for_enums=True)


# ---------------------------------------------------------------------------------------------------------------
# Endpoint discovery


def socket_path(endpoint: str) -> str:
    """``unix:///run/x.sock``, ``unix:/run/x.sock`` or ``/run/x.sock`` -> ``/run/x.sock``."""
    path = endpoint
    if path.startswith("unix://"):
        path = path[len("unix://") :]
    elif path.startswith("unix:"):
        path = path[len("unix:") :]
    if not path.startswith("/"):
        raise PodSourceError(f"CRI endpoint {endpoint!r}: only absolute unix socket paths are supported")
    return path


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def detect_endpoint(*, host_roots: Sequence[str] = DEFAULT_HOST_ROOTS, sockets: Sequence[str] = DEFAULT_SOCKETS) -> str:
    """The first well-known CRI socket that exists, tried under each host root ("" = this filesystem)."""
    tried = []
    for root in host_roots:
        for sock in sockets:
            path = root.rstrip("/") + sock
            if _is_socket(path):
                return path
            tried.append(path)
    raise PodSourceError(
        "no container runtime (CRI) socket found; tried " + ", ".join(tried) + ". Mount the runtime's socket into "
        "the agent (hostPath) and pass it explicitly, or use the /proc pod source"
    )


# ---------------------------------------------------------------------------------------------------------------
# Typed views of what the agent reads


@dataclass(frozen=True)
class Sandbox:
    """One pod sandbox from ``ListPodSandbox``."""

    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    state: int
    created_at: int  # nanoseconds since the epoch
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.state == SANDBOX_READY


@dataclass(frozen=True)
class SandboxStatus:
    """``PodSandboxStatus``: the parts the agent uses, plus the runtime's verbose ``info`` decoded from JSON."""

    sandbox: Sandbox
    ip: str
    network_mode: int  # NAMESPACE_MODE_*; NODE means hostNetwork
    info: Mapping[str, Any] = field(default_factory=dict)


def _sandbox(msg: Any) -> Sandbox:
    return Sandbox(
        id=msg.id,
        name=msg.metadata.name,
        namespace=msg.metadata.namespace,
        uid=msg.metadata.uid,
        attempt=msg.metadata.attempt,
        state=msg.state,
        created_at=msg.created_at,
        labels=dict(msg.labels),
    )


def decode_info(info: Mapping[str, str]) -> dict[str, Any]:
    # containerd puts one JSON document under "info"; CRI-O may use several keys. Values that are not JSON are
    # kept as strings.
    out: dict[str, Any] = {}
    for key, raw in info.items():
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# ---------------------------------------------------------------------------------------------------------------
# The client


class CriClient:
    """A gRPC channel to one CRI runtime socket. Every call has a deadline; errors become ``PodSourceError``."""

    def __init__(self, endpoint: str, *, timeout: float = 5.0) -> None:
        self.path = socket_path(endpoint)
        self.endpoint = "unix://" + self.path
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.endpoint,
            # A busy node's sandbox list with verbose info can exceed the default 4 MiB.
            options=[("grpc.max_receive_message_length", 64 << 20)],
        )
        self._stubs: dict[str, Callable[..., Any]] = {}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stub(self, method: str) -> Callable[..., Any]:
        stub = self._stubs.get(method)
        if stub is None:
            _req, resp = METHODS[method]
            stub = self._channel.unary_unary(
                f"/{PACKAGE}.RuntimeService/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=message_class(resp).FromString,
            )
            self._stubs[method] = stub
        return stub

    def _check_socket(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise PodSourceError(
                f"CRI socket {self.path} does not exist: is the container runtime running, and is its socket "
                "mounted into the agent at that path?"
            ) from None
        except PermissionError:
            raise PodSourceError(f"CRI socket {self.path}: permission denied (run the agent as root)") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise PodSourceError(f"CRI endpoint {self.path} is not a unix socket")
        if not os.access(self.path, os.R_OK | os.W_OK):
            raise PodSourceError(f"CRI socket {self.path}: permission denied (run the agent as root)")

    def call(self, method: str, request: Message, *, timeout: float | None = None) -> Any:
        """Invoke RuntimeService/``method``; the response message (typed ``Any``: its class is built at runtime)."""
        if method not in METHODS:
            raise ValueError(f"CRI method {method} is not declared in podcap.agent.pods.cri")
        deadline = self.timeout if timeout is None else timeout
        try:
            return self._stub(method)(request, timeout=deadline)
        except grpc.RpcError as e:
            raise self._translate(method, e, deadline) from e

    def invoke(self, method: str, request: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Like ``call`` with the request given as a dict (protobuf JSON mapping); used by the test harness."""
        return self.call(method, message(METHODS[method][0], request), timeout=timeout)

    def _translate(self, method: str, e: grpc.RpcError, deadline: float) -> PodSourceError:
        code = e.code() if isinstance(e, grpc.Call) else None
        details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
        where = f"CRI {method} at {self.endpoint}"
        if code == grpc.StatusCode.NOT_FOUND:
            return PodNotFoundError(f"{where}: {details}")
        if code == grpc.StatusCode.UNAVAILABLE:
            try:
                self._check_socket()
            except PodSourceError as cause:
                return cause
            return PodSourceError(f"{where}: runtime unavailable ({details}); is the container runtime running?")
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return PodSourceError(f"{where}: no answer within {deadline:g}s (runtime overloaded or hung?)")
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return PodSourceError(
                f"{where}: not implemented ({details}); the runtime must serve CRI runtime.v1 "
                "(containerd >= 1.6 with the cri plugin enabled, CRI-O >= 1.20)"
            )
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return PodSourceError(f"{where}: permission denied ({details})")
        name = code.name if code is not None else "error"
        return PodSourceError(f"{where} failed: {name}: {details}")

    # -- what the agent uses --------------------------------------------------------------------------------

    def version(self) -> tuple[str, str]:
        """(runtime name, runtime version); a cheap liveness check of the endpoint."""
        resp = self.invoke("Version", {"version": "v1"})
        return resp.runtime_name, resp.runtime_version

    def list_sandboxes(self, *, ready_only: bool = True) -> list[Sandbox]:
        flt: dict[str, Any] = {"state": {"state": SANDBOX_READY}} if ready_only else {}
        resp = self.invoke("ListPodSandbox", {"filter": flt})
        return [_sandbox(item) for item in resp.items]

    def sandbox_status(self, sandbox_id: str, *, verbose: bool = False) -> SandboxStatus:
        resp = self.invoke("PodSandboxStatus", {"pod_sandbox_id": sandbox_id, "verbose": verbose})
        status = resp.status
        return SandboxStatus(
            sandbox=_sandbox(status),
            ip=status.network.ip,
            network_mode=status.linux.namespaces.options.network,
            info=decode_info(resp.info) if verbose else {},
        )


def sandbox_pid(info: Mapping[str, Any]) -> int:
    """The sandbox process id from verbose info (containerd and CRI-O both report ``pid``); 0 when absent."""
    for doc in _info_docs(info):
        pid = doc.get("pid")
        if isinstance(pid, int) and pid > 0:
            return pid
    return 0


def sandbox_netns_path(info: Mapping[str, Any]) -> str:
    """``runtimeSpec.linux.namespaces[type=network].path`` from verbose info; "" when absent (hostNetwork)."""
    for doc in _info_docs(info):
        spec = doc.get("runtimeSpec")
        if not isinstance(spec, dict):
            continue
        linux = spec.get("linux")
        namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
        for ns in namespaces if isinstance(namespaces, list) else []:
            if isinstance(ns, dict) and ns.get("type") == "network" and isinstance(ns.get("path"), str):
                return str(ns["path"])
    return ""


def cni_host_interfaces(info: Mapping[str, Any]) -> list[str]:
    """Host-side interfaces of the CNI result (``Sandbox`` empty): the pod's veth and, with bridge, the bridge."""
    out = []
    for doc in _info_docs(info):
        result = doc.get("cniResult")
        ifaces = result.get("Interfaces") if isinstance(result, dict) else None
        if not isinstance(ifaces, dict):
            continue
        for name, cfg in ifaces.items():
            if isinstance(cfg, dict) and not cfg.get("Sandbox"):
                out.append(str(name))
    return out


def _info_docs(info: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    return (v for v in info.values() if isinstance(v, dict))
