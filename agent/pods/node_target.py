"""A ``node/NAME`` capture on the agent's side: the node's own network namespace as the "pod" to capture.

The collector sends a node target as a start command for the node's stand-in pod (``podcap.nodes``: a reserved
namespace and a uid no real pod has); the session asks ``locate`` before it looks the pod up in its inventory. The
node's network is the agent's own namespace (the DaemonSet runs with ``hostNetwork``): ``/proc/self/ns/net``,
unless ``PODCAP_NODE_NETNS`` names another one (tests use a network namespace of their own as the "node", so they
never capture the machine's real interfaces). The handle opens inside that namespace on every interface (libpcap's
``any``; the collector asks for that unless ``--interface eth0``), never on a veth: a node has none of its own.
"""

from __future__ import annotations

import os

from podcap.agent.pods.source import PodNetwork
from podcap.nodes import is_node_pod
from podcap.pods import PodRef
from podcap.v1 import common_pb2

NODE_NETNS_ENV = "PODCAP_NODE_NETNS"


def node_netns() -> str:
    return os.environ.get(NODE_NETNS_ENV) or "/proc/self/ns/net"


def is_node_uid(pod: common_pb2.Pod, node: str) -> bool:
    return is_node_pod(pod.namespace, pod.name, pod.uid, node)


def locate(pod: common_pb2.Pod, node: str) -> tuple[PodRef, PodNetwork] | None:
    """The node's stand-in pod and its network when ``pod`` is this node's; None for a real pod."""
    if not is_node_uid(pod, node):
        return None
    path = node_netns()
    try:
        key = str(os.stat(path).st_ino)
    except OSError:
        key = path  # opening the handle reports what is wrong with the path
    return PodRef.from_proto(pod), PodNetwork(netns_path=path, host_veth=None, sandbox_key=key)
