"""podcap.agent.capture: one libpcap handle per (capture, pod), all driven by one loop thread.

``engine`` owns the streams and the loop; ``libpcap`` is the only module that loads libpcap; ``chunkbuf`` (with
``proto/podcap/native/chunks.c``) is where each packet's record is written, straight into the outgoing chunk.
"""
