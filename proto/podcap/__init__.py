"""podcap: packet capture for Kubernetes pods.

This package root holds the contract shared by every podcap process: the generated gRPC code of ``podcap.v1``
(``podcap/v1``) and the small pieces of the wire contract that are not protobuf — identifiers and their validation
(``podcap.names``), the PCAP record format carried in chunks (``podcap.pcapfile``) and Kubernetes label selectors
(``podcap.labels``). The node side lives in ``podcap.agent``, the central side and the CLI in ``podcap.collector``.
"""

__version__ = "0.1.0"
