"""podcap.agent: the node side. Finds pods' network namespaces, captures them with libpcap, streams PCAP chunks
to the collector over one agent-initiated gRPC session.

Layout, one concern per module:

- ``main``: the ``podcap-agent`` command line and process lifecycle; ``metrics``: Prometheus and gRPC health.
- ``session``: the collector session (register, inventory, heartbeats, commands); it ties the three subpackages
  together and is the only module that knows all of them.
- ``pods/``: which pods run on this node and where their network lives (the ``PodSource`` protocol, the CRI,
  ``/proc`` and named-netns sources, the minimal CRI client).
- ``capture/``: the capture engine, one libpcap handle per (capture, pod) on one loop thread; the libpcap binding
  and the C record writer.
- ``upload/``: the chunk as it travels and the upload log that keeps it until the collector acknowledges it.
- ``netns``, ``netlink``: entering a network namespace and reading its interfaces (used by both ``pods`` and
  ``capture``).
"""
