"""A minimal client for the Kubernetes Container Runtime Interface (CRI ``runtime.v1``) over its unix socket.

The agent asks the container runtime (containerd, CRI-O) two things: which pod sandboxes run on this node
(``ListPodSandbox``) and, for one sandbox, where its network lives (``PodSandboxStatus`` with ``verbose=true``,
whose ``info`` JSON holds the sandbox pid, the netns path and the CNI result), plus ``Version`` as a liveness
check. Only those messages and fields are declared here, with the upstream field numbers and types; protobuf skips
every field it does not know, so a newer runtime's extra fields are harmless. The calls that create pods
(``RunPodSandbox``, ``CreateContainer``, ...) belong to the test harness, which declares them on top of these
(``tests/node/cri_runtime.py``) and hands its ``Declaration`` to the same client.

What is declared, and how, is ``podcap.agent.pods.cri_declaration``; this module finds the runtime's socket,
calls it, and reads a sandbox's network from its verbose status.

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
from google.protobuf.message import Message

from podcap.agent.pods.cri_declaration import PACKAGE, RUNTIME, SANDBOX_READY, Declaration
from podcap.agent.pods.source import PodNotFoundError, PodSourceError

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

    def __init__(self, endpoint: str, *, timeout: float = 5.0, declaration: Declaration = RUNTIME) -> None:
        """``declaration``: the messages and methods this client may call (the agent's, unless a test harness
        brings its own)."""
        self.declaration = declaration
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
            _req, resp = self.declaration.methods[method]
            stub = self._channel.unary_unary(
                f"/{PACKAGE}.RuntimeService/{method}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=self.declaration.message_class(resp).FromString,
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
        if method not in self.declaration.methods:
            raise ValueError(f"CRI method {method} is not declared in {self.declaration.file_name}")
        deadline = self.timeout if timeout is None else timeout
        try:
            return self._stub(method)(request, timeout=deadline)
        except grpc.RpcError as e:
            raise self._translate(method, e, deadline) from e

    def invoke(self, method: str, request: Mapping[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """Like ``call`` with the request given as a dict (protobuf JSON mapping)."""
        return self.call(method, self.declaration.message(self.declaration.methods[method][0], request),
                         timeout=timeout)

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
