"""Flood sequence-numbered frames from a pod (run inside its namespace): flood_send.py INDEX COUNT PPS.

Each frame is Ethernet/IPv4/UDP to a MAC address nobody owns, so the pods' bridge floods it to every other pod's
port: every pod's host veth sees every sender's frames. The UDP payload is udp_send.py's: b"PODCAPSEQ", the
4-byte sender index, the 4-byte sequence number, padding. COUNT frames at PPS (sent in 5 ms bursts), so the
traffic is bounded in count and time. Prints ``SENT <n>`` at the end.
"""

import socket
import sys
import time

FRAME_LEN = 200


def checksum(header: bytes) -> bytes:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, len(header), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).to_bytes(2, "big")


def frame(index: int, seq: int) -> bytes:
    payload = b"PODCAPSEQ" + index.to_bytes(4, "big") + seq.to_bytes(4, "big")
    payload += b"x" * (FRAME_LEN - 42 - len(payload))
    udp = (4000).to_bytes(2, "big") + (9).to_bytes(2, "big") + (8 + len(payload)).to_bytes(2, "big") + b"\0\0"
    ip = (b"\x45\x00" + (20 + len(udp) + len(payload)).to_bytes(2, "big") + b"\x00\x00\x40\x00\x40\x11\x00\x00"
          + bytes([10, 99, 1, index + 1]) + bytes([10, 99, 1, 250]))
    # A valid header checksum: with br_netfilter loaded (as on Kubernetes nodes) the bridge drops bad IPv4 headers.
    ip = ip[:10] + checksum(ip) + ip[12:]
    eth = bytes.fromhex("0299000000ff") + bytes([2, 0x99, 0, 0, 1, index + 1]) + b"\x08\x00"
    return eth + ip + udp + payload


def main() -> None:
    index, count, pps = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    burst = max(1, int(pps * 0.005))
    start = time.monotonic()
    seq = 0
    while seq < count:
        for _ in range(min(burst, count - seq)):
            s.send(frame(index, seq))
            seq += 1
        delay = start + seq / pps - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    print(f"SENT {seq}", flush=True)


if __name__ == "__main__":
    main()
