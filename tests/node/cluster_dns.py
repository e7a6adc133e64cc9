"""The test cluster's DNS: a few A records for Service names, served over UDP on the node's bridge address.

Pods of the deploy tests resolve ``podcap-collector.podcap.svc`` as in a cluster (``dnsPolicy`` ClusterFirst or
ClusterFirstWithHostNet: the kubelet points the pod's resolv.conf here with the cluster search domains). There is
no kube-proxy on the test node, so a Service name answers with the address of its one ready endpoint. Names not in
the table get NXDOMAIN (so resolvers walk their search list), other record types of a known name an empty answer.
"""

from __future__ import annotations

import socket
import struct
import threading

_A, _IN = 1, 1


class ClusterDns:
    """Serve ``records`` (name -> IPv4, names without the trailing dot) on ``host``:``port`` until ``close()``."""

    def __init__(self, host: str, port: int = 53) -> None:
        self.records: dict[str, str] = {}
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.2)
        self.address = host
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="cluster-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except TimeoutError:
                continue
            except OSError:
                return
            answer = self.answer(query)
            if answer is not None:
                self._sock.sendto(answer, peer)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        ident, _flags, qdcount = struct.unpack_from("!HHH", query)
        if qdcount != 1:
            return None
        labels, pos = [], 12
        while pos < len(query) and query[pos]:
            length = query[pos]
            labels.append(query[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
            pos += 1 + length
        pos += 1
        if pos + 4 > len(query):
            return None
        qtype, qclass = struct.unpack_from("!HH", query, pos)
        question = query[12 : pos + 4]
        name = ".".join(labels).lower()
        ip = self.records.get(name)
        rcode = 0 if ip is not None else 3
        answers = b""
        if ip is not None and qtype == _A and qclass == _IN:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", _A, _IN, 5, 4) + socket.inet_aton(ip)
        flags = 0x8400 | 0x0100 | 0x0080 | rcode  # response, authoritative, recursion desired+available
        header = struct.pack("!HHHHHH", ident, flags, 1, 1 if answers else 0, 0, 0)
        return header + question + answers

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=5)
