"""podcap.agent.pods: the pods on this node and where their network lives.

``source`` holds the neutral types and the ``PodSource`` protocol; ``netns_source``, ``cri_source`` and
``proc_source`` are its implementations; ``cri`` is the minimal CRI client the ``cri`` source needs (nothing the
agent does not call). The interface and the runtime-free source are re-exported here for callers that only pick a
source.
"""

from podcap.agent.pods.netns_source import NetnsPodSource
from podcap.agent.pods.source import PodNetwork, PodNotFoundError, PodSource, PodSourceError

__all__ = ["NetnsPodSource", "PodNetwork", "PodNotFoundError", "PodSource", "PodSourceError"]
