"""UDP of random sizes, run inside a pod's namespace (the small-and-large mix of the traffic-shape tests).

    udp_mix.py send IP PORT COUNT SECONDS SEED   COUNT datagrams of 60..9000 payload bytes, paced over SECONDS;
                                                 prints "SENT <datagrams> <payload bytes>"
    udp_mix.py sink IP PORT SECONDS              reads and discards for SECONDS (no ICMP unreachable replies)

IPv4 or IPv6 by the address. Datagrams past the MTU leave as IP fragments: frames of every size on the wire.
"""

import random
import socket
import sys
import time


def send(ip: str, port: int, count: int, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    blob = bytes(rng.getrandbits(8) for _ in range(9000))
    start = time.monotonic()
    sent = total = 0
    for i in range(count):
        size = rng.randint(60, 9000)
        try:
            s.sendto(blob[:size], (ip, port))
        except OSError:  # a full socket buffer: the datagram is not on the wire, so it is not counted
            continue
        sent += 1
        total += size
        ahead = start + seconds * (i + 1) / count - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    print(f"SENT {sent} {total}", flush=True)


def sink(ip: str, port: int, seconds: float) -> None:
    s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((ip, port))
    s.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            s.recv(65536)
        except TimeoutError:
            pass


def main() -> None:
    cmd, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "send":
        send(ip, port, int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6]))
    else:
        sink(ip, port, float(sys.argv[4]))


if __name__ == "__main__":
    main()
