"""podcap.agent: the node side. Finds pods' network namespaces, captures them with libpcap, streams PCAP chunks
to the collector over one agent-initiated gRPC session."""
