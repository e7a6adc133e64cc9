"""A node's own network as a capture target: the one stand-in "pod" both sides agree on.

A ``node/NAME`` capture stores and reports the node's traffic exactly like a pod's (one stream, per-"pod" files,
status, drops), so the collector represents it as a ``PodRef`` in the reserved namespace ``node``, named after the
node, with a uid no real pod has (real uids are UUIDs: no ``_``). The agent recognises that uid in a start command
and opens its handle in the node's network namespace instead of looking the pod up (``podcap.agent.pods.node_target``).
One capture holds either a node or pods, so the reserved namespace never shares a capture with a real one.
"""

from __future__ import annotations

import hashlib

from podcap.names import NodeName, PodUid
from podcap.pods import PodRef

NODE_NAMESPACE = "node"
NODE_UID_PREFIX = "node_"


def node_uid(node: str) -> PodUid:
    return PodUid(NODE_UID_PREFIX + hashlib.sha256(node.encode()).hexdigest()[:32])


def node_pod(node: NodeName) -> PodRef:
    """The stand-in pod of ``node``'s own network."""
    return PodRef(NODE_NAMESPACE, node, node_uid(node), node)


def is_node_pod(namespace: str, name: str, uid: str, node: str) -> bool:
    """The pod is ``node_pod(node)``: its uid is the node's and it names the node."""
    return namespace == NODE_NAMESPACE and name == node and uid == node_uid(node)
