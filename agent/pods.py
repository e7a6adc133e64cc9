"""Pods on this node and where their network lives: the pluggable pod source.

A ``PodSource`` answers two questions: which pods run on this node (``list_pods``, the inventory sent to the
collector) and, for one pod, which network namespace it lives in and which host interface is its veth
(``locate``). Sources: ``netns`` (named namespaces ``/run/netns/<namespace>.<pod>``, for demos and tests without
a container runtime); ``cri`` and ``proc`` (the container runtime and ``/proc/*/cgroup``, for real nodes) plug in
behind the same protocol. ``sandbox_key`` changes whenever the pod's network namespace is recreated, which is how
a sandbox restart is noticed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from podcap.agent import netlink, netns
from podcap.names import InvalidNameError, NodeName, PodUid, check_namespace, check_pod_name
from podcap.v1 import common_pb2

_NETNS_UID_NAMESPACE = uuid.UUID("6f1c1f4e-8a3e-4c55-9b8e-6f2d2b1c0a11")


class PodSourceError(RuntimeError):
    """The pod source cannot answer (runtime socket unreachable, permission denied, ...)."""


class PodNotFoundError(PodSourceError):
    """The pod is not (or no longer) on this node."""


@dataclass(frozen=True)
class PodInfo:
    namespace: str
    name: str
    uid: PodUid
    node: NodeName
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str = ""
    host_network: bool = False
    # Changes when the pod's sandbox (and so its network namespace) is recreated.
    sandbox_key: str = ""

    def to_proto(self) -> common_pb2.Pod:
        return common_pb2.Pod(
            namespace=self.namespace,
            name=self.name,
            uid=self.uid,
            node=self.node,
            labels=dict(self.labels),
            ip=self.ip,
            host_network=self.host_network,
        )


@dataclass(frozen=True)
class PodNetwork:
    """Where a pod's traffic can be captured."""

    # A path that opens the pod's network namespace (/run/netns/..., /proc/<pid>/ns/net).
    netns_path: str
    # Host-side veth of the pod's eth0, None when the pod has no veth (e.g. macvlan, ipvlan).
    host_veth: str | None
    sandbox_key: str


class PodSource(Protocol):
    name: str

    def list_pods(self) -> list[PodInfo]: ...

    def locate(self, uid: PodUid) -> PodNetwork: ...


def host_veth_of(netns_path: str, ifname: str = "eth0") -> str | None:
    """The host-side peer of the pod's ``ifname``, read over netlink inside the pod's namespace."""
    try:
        return netlink.host_peer_of(netns_path, ifname)
    except (OSError, netlink.NetlinkError):
        return None


class NetnsPodSource:
    """Pods from named network namespaces: ``<dir>/<namespace>.<pod>`` is pod ``<pod>`` in ``<namespace>``.

    Entries whose name does not have that shape or are not valid Kubernetes names are ignored. The uid is derived
    from node, namespace and name, so it is stable across agent restarts; ``sandbox_key`` is the namespace inode.
    """

    name = "netns"

    def __init__(self, node: NodeName, directory: str = "/run/netns") -> None:
        self.node = node
        self.directory = directory
        self._uids: dict[tuple[str, str], PodUid] = {}  # the inventory is re-read every second

    def uid_for(self, namespace: str, pod: str) -> PodUid:
        uid = self._uids.get((namespace, pod))
        if uid is None:
            uid = PodUid(str(uuid.uuid5(_NETNS_UID_NAMESPACE, f"{self.node}/{namespace}/{pod}")))
            self._uids[(namespace, pod)] = uid
        return uid

    def _entries(self) -> list[tuple[str, str, str]]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise PodSourceError(f"cannot list {self.directory}: {e.strerror}") from e
        out = []
        for entry in names:
            namespace, sep, pod = entry.partition(".")
            if not sep:
                continue
            try:
                check_namespace(namespace)
                check_pod_name(pod)
            except InvalidNameError:
                continue
            out.append((namespace, pod, os.path.join(self.directory, entry)))
        return out

    def list_pods(self) -> list[PodInfo]:
        pods = []
        for namespace, pod, path in self._entries():
            try:
                key = str(netns.netns_inode(path))
            except OSError:
                continue
            pods.append(
                PodInfo(namespace, pod, self.uid_for(namespace, pod), self.node, sandbox_key=key)
            )
        return pods

    def locate(self, uid: PodUid) -> PodNetwork:
        for namespace, pod, path in self._entries():
            if self.uid_for(namespace, pod) == uid:
                try:
                    key = str(netns.netns_inode(path))
                except OSError as e:
                    raise PodNotFoundError(f"pod {namespace}/{pod}: namespace {path} vanished") from e
                return PodNetwork(netns_path=path, host_veth=host_veth_of(path), sandbox_key=key)
        raise PodNotFoundError(f"no pod with uid {uid} on this node")
