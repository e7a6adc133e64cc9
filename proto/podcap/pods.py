"""``PodRef``: one pod as both sides of podcap name it, and its ``podcap.v1.Pod`` form on the wire.

The agent's inventory and the collector's targets, placement and Kubernetes view all speak about the same thing —
a pod by namespace, name and uid on a node, with its labels and IP — so there is one type for it here, beside the
contract, rather than one per side. Identity is (namespace, name, uid, node): labels, IP and the network mode can
change under the same pod and do not make it another one. ``sandbox_key`` is the agent's alone (which incarnation
of the pod's network namespace it saw; it changes when the sandbox is recreated): it is not on the wire and stays
empty on the collector.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from podcap.names import NodeName, PodUid
from podcap.v1 import common_pb2


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: PodUid
    node: NodeName
    labels: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)
    ip: str = field(default="", compare=False)
    host_network: bool = field(default=False, compare=False)
    # Agent side only: changes when the pod's sandbox (and so its network namespace) is recreated.
    sandbox_key: str = field(default="", compare=False)

    @property
    def display(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_proto(self) -> common_pb2.Pod:
        return common_pb2.Pod(namespace=self.namespace, name=self.name, uid=self.uid, node=self.node,
                              labels=dict(self.labels), ip=self.ip, host_network=self.host_network)

    @staticmethod
    def from_proto(p: common_pb2.Pod) -> PodRef:
        return PodRef(p.namespace, p.name, PodUid(p.uid), NodeName(p.node), dict(p.labels), p.ip, p.host_network)
