"""A capture's live stream (``Control.Follow``) as pcapng, each pod its own interface: what Wireshark reads.

``podcap follow`` writes classic pcap (one link type for the whole stream); Wireshark's extcap pipe takes pcapng,
so here every pod becomes an Interface Description Block named ``<namespace>/<pod>`` — as in ``get --merge`` —
and its records Enhanced Packet Blocks on that interface. Pods are announced by the collector as they start
streaming, so an IDB may follow packets of other pods: the pcapng format allows it and dumpcap/tshark 4.0 keep
each packet on its interface (checked by the tshark test). A pod whose format changes (a restarted stream with
another link type) gets a new interface of the same name, since an IDB cannot change.

The section header comes from ``podcap.collector.cli.pcapng`` (as do the IDBs); the records are turned into EPBs
here, one message at a time, and written with one ``write`` per message. Packets this reader missed because it
fell behind (``FollowGap``) are counted in ``missed``; they are stored all the same.
"""

from __future__ import annotations

import struct
from typing import IO

from podcap.collector.cli.pcapng import BLOCK_EPB, InterfaceInfo, PcapngWriter, SectionInfo
from podcap.pcapfile import FileFormat, iter_records
from podcap.v1 import common_pb2, control_pb2

_EPB_HEAD = struct.Struct("<IIIIIII")
_U32 = struct.Struct("<I")


def epbs(interface_id: int, fmt: FileFormat, records: bytes) -> bytes:
    """Bare pcap records in ``fmt`` as Enhanced Packet Blocks on ``interface_id`` (timestamps kept in the pod's
    own resolution, which its IDB declares)."""
    parts: list[bytes] = []
    divisor = 1 if fmt.nanosecond else 1000
    for rec in iter_records(records, fmt):
        ts = rec.ts_ns // divisor
        pad = -rec.caplen % 4
        total = 32 + rec.caplen + pad
        parts += (_EPB_HEAD.pack(BLOCK_EPB, total, interface_id, (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF,
                                 rec.caplen, rec.wirelen), rec.data, b"\0" * pad, _U32.pack(total))
    return b"".join(parts)


def interface_info(pod: common_pb2.Pod, status: control_pb2.CaptureStatus) -> InterfaceInfo:
    return InterfaceInfo(name=f"{pod.namespace}/{pod.name}",
                         description=f"pod {pod.namespace}/{pod.name} uid {pod.uid} on node {pod.node}, podcap "
                         f"capture {status.id}", filter=status.settings.filter)


class PcapngStream:
    """Writes one capture's follow messages to ``out`` as one pcapng section."""

    def __init__(self, out: IO[bytes], status: control_pb2.CaptureStatus) -> None:
        self.out = out
        self.status = status
        self.missed = 0
        self.ended: control_pb2.CaptureStatus | None = None
        self._writer = PcapngWriter(out, SectionInfo(comments=(f"podcap capture {status.id}",)))
        # Follow index -> (pcapng interface id, format of the pod's records).
        self._interfaces: dict[int, tuple[int, FileFormat]] = {}
        out.flush()

    def write(self, msg: control_pb2.FollowMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "pod":
            pf = msg.pod.format
            fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)
            known = self._interfaces.get(msg.pod.index)
            if known is None or known[1] != fmt:
                iface = self._writer.add_interface(interface_info(msg.pod.pod, self.status), linktype=fmt.linktype,
                                                   snaplen=fmt.snaplen, nanosecond=fmt.nanosecond)
                self._interfaces[msg.pod.index] = (iface, fmt)
        elif kind == "records":
            iface, fmt = self._interfaces[msg.records.index]
            self.out.write(epbs(iface, fmt, msg.records.records))
        elif kind == "gap":
            self.missed += msg.gap.packets
        elif kind == "ended":
            self.ended = msg.ended
        self.out.flush()
