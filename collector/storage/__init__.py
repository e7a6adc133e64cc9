"""Where captured packets are stored. ``local`` writes rotating pcap segments per pod under the data dir."""
