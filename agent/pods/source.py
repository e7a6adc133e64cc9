"""The pod source interface: which pods run on this node, and where each one's network lives.

A ``PodSource`` answers two questions: which pods run on this node (``list_pods``, the inventory sent to the
collector) and, for one pod, which network namespace it lives in and which host interface is its veth
(``locate``). The implementations live beside this module: ``netns_source`` (named namespaces, for demos and
tests without a container runtime), ``cri_source`` (the container runtime, for real nodes) and ``proc_source``
(``/proc/*/cgroup``, the fallback when the runtime's socket is out of reach). ``sandbox_key`` changes whenever the
pod's network namespace is recreated, which is how a sandbox restart is noticed.

Pods are ``podcap.pods.PodRef``, the type the collector uses too (with the agent's ``sandbox_key``). The neutral types
and the protocol are kept apart from every source so that a source (and the CRI client behind one) can be replaced
without touching the session or the capture engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from podcap.agent import netlink
from podcap.errors import UnavailableError
from podcap.names import PodUid
from podcap.pods import PodRef


class PodSourceError(UnavailableError):
    """The pod source cannot answer (runtime socket unreachable, permission denied, ...)."""


class PodNotFoundError(PodSourceError):
    """The pod is not (or no longer) on this node."""


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

    def list_pods(self) -> list[PodRef]: ...

    def locate(self, uid: PodUid) -> PodNetwork: ...


def host_veth_of(netns_path: str, ifname: str = "eth0") -> str | None:
    """The host-side peer of the pod's ``ifname``, read over netlink inside the pod's namespace."""
    try:
        return netlink.host_peer_of(netns_path, ifname)
    except (OSError, netlink.NetlinkError):
        return None
