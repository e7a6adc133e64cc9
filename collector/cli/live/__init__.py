"""Live views of a running capture: ``podcap follow`` and the stream the extcap hands Wireshark, in time order
across pods, one copy per packet."""
