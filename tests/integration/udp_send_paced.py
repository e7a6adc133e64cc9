"""Send sequence-numbered UDP datagrams at a steady pace: udp_send_paced.py PORT COUNT SECONDS IP [IP ...].

Same payload as udp_send.py; COUNT datagrams per destination spread evenly over SECONDS (bounded in time)."""

import socket
import sys
import time

from udp_send import payload  # type: ignore[import-not-found]


def main() -> None:
    port, count, seconds, ips = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = time.monotonic()
    for seq in range(count):
        for d, ip in enumerate(ips):
            s.sendto(payload(d, seq), (ip, port))
        delay = start + (seq + 1) * seconds / count - time.monotonic()
        if delay > 0:
            time.sleep(delay)


if __name__ == "__main__":
    main()
