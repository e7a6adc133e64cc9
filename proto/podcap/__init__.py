"""podcap: packet capture for Kubernetes pods.

This package root holds what every podcap process shares, and only that:

- the contract: the generated gRPC code of ``podcap.v1`` (``podcap/v1``), and the parts of the wire contract that
  are not protobuf — identifiers and their validation (``names``), the pod reference both sides exchange (``pods``),
  the chunk path's varint framing (``framing``), the loss causes (``drops``) and the rule for the event that starts a
  stream (``stream_events``);
- podcap's C, in one place (``native``: the record walker, the agent's chunk cutter and the CLI's merge, one header,
  one library per program; ``pcapwalk`` calls the walker);
- the byte formats, each in one home (``formats``): the PCAP record walk, the pcapng blocks, the bucket's
  objects and manifest, and the read selection (window, filter, pods, segment overlap) both readers of a capture
  apply;
- what both sides build on: the error kinds (``errors``), mutual TLS (``tls``), a closable queue (``closable``), and
  the daemons' common command line and process tuning (``daemon``, ``malloc``).

The node side lives in ``podcap.agent``, the central side and the CLI in ``podcap.collector``; they never import
each other (``.importlinter``).
"""

__version__ = "0.1.0"
