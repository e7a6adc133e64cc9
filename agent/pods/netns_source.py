"""Pods from named network namespaces: the pod source for demos and tests without a container runtime.

``<dir>/<namespace>.<pod>`` (``ip netns add``'s ``/run/netns`` by default) is pod ``<pod>`` in ``<namespace>``.
There is no runtime to ask for a uid, so one is derived from node, namespace and name (stable across agent
restarts), and the namespace's inode is the ``sandbox_key`` (a recreated namespace is a new sandbox).
"""

from __future__ import annotations

import os
import uuid

from podcap.agent import netns
from podcap.agent.pods.source import PodNetwork, PodNotFoundError, PodSourceError, host_veth_of
from podcap.names import InvalidNameError, NodeName, PodUid, check_namespace, check_pod_name
from podcap.pods import PodRef

_NETNS_UID_NAMESPACE = uuid.UUID("6f1c1f4e-8a3e-4c55-9b8e-6f2d2b1c0a11")


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

    def list_pods(self) -> list[PodRef]:
        pods = []
        for namespace, pod, path in self._entries():
            try:
                key = str(netns.netns_inode(path))
            except OSError:
                continue
            pods.append(
                PodRef(namespace, pod, self.uid_for(namespace, pod), self.node, sandbox_key=key)
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
