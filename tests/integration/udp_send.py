"""Send sequence-numbered UDP datagrams (run inside a pod's namespace): udp_send.py PORT COUNT IP [IP ...].

Payload: b"PODCAPSEQ" + 4-byte big-endian destination index + 4-byte sequence number, padded to a length that
depends on the sequence number (so lengths can be checked too)."""

import socket
import sys
import time


def payload(dst: int, seq: int) -> bytes:
    body = b"PODCAPSEQ" + dst.to_bytes(4, "big") + seq.to_bytes(4, "big")
    return body + b"x" * (seq % 200)


def main() -> None:
    port, count, ips = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for seq in range(count):
        for d, ip in enumerate(ips):
            s.sendto(payload(d, seq), (ip, port))
        if seq % 100 == 99:
            time.sleep(0.002)  # stay well below what one veth can queue


if __name__ == "__main__":
    main()
