"""A capture's live stream (``Control.Follow``) as pcapng, each pod its own interface: what Wireshark reads.

``podcap follow`` writes classic pcap (one link type for the whole stream); Wireshark's extcap pipe takes pcapng,
so here every pod becomes an Interface Description Block named ``<namespace>/<pod>`` — as in ``get --merge`` —
and its records Enhanced Packet Blocks on that interface. Pods are announced by the collector as they start
streaming, so an IDB may follow packets of other pods: the pcapng format allows it and dumpcap/tshark 4.0 keep
each packet on its interface (checked by the tshark test). A pod whose format changes (a restarted stream with
another link type) gets a new interface of the same name, since an IDB cannot change.

The section header comes from ``podcap.collector.cli.pcapng`` (as do the IDBs, and the section's comments are
``get --merge``'s); the records are turned into EPBs one message at a time, in C (the merge core's converter: no
Python per packet), and written with one ``write`` per message.

Losses are reported in-band, as Interface Statistics Blocks (dumpcap passes them through into the file Wireshark
saves, measured with 4.0.17): when this live view falls behind, the collector drops packets for it alone (they
are stored all the same) and says how many (``FollowGap``); the pod's interface then gets an ISB whose
``isb_ifdrop`` counts every packet the view missed so far, so Wireshark shows them as dropped. When the capture
ends by itself (a limit, ``podcap stop``) each interface gets the capture's final counters too (received, kernel
and podcap drops by cause, stored: ``podcap.collector.cli.download.pod_stats``, as ``get --merge`` writes them).
These ISBs are written here rather than with ``PcapngWriter.write_stats`` because that writer refuses interfaces
after its first packet or statistics (right for files, where readers want IDBs first), and a live view announces
pods as they come.
"""

from __future__ import annotations

import dataclasses
import struct
import time
from typing import IO

from podcap.collector.cli import pcapmerge
from podcap.collector.cli.download import capture_section, pod_stats
from podcap.collector.cli.pcapng import (
    BLOCK_EPB,
    BLOCK_ISB,
    ISB_ENDTIME,
    ISB_IFDROP,
    ISB_IFRECV,
    ISB_OSDROP,
    ISB_STARTTIME,
    ISB_USRDELIV,
    OPT_COMMENT,
    OPT_ENDOFOPT,
    InterfaceInfo,
    InterfaceStats,
    PcapngWriter,
)
from podcap.pcapfile import FileFormat, PcapFormatError
from podcap.v1 import common_pb2, control_pb2

_RECORD_HEAD = struct.Struct("<IIII")
_EPB_HEAD = struct.Struct("<IIIIIII")
_ISB_HEAD = struct.Struct("<IIIII")
_OPT_HEAD = struct.Struct("<HH")
_U64 = struct.Struct("<Q")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")
_MAX_COMMENT = 4096


@dataclasses.dataclass(frozen=True)
class LiveViewStats(InterfaceStats):
    """A pod's counters as this live view knows them: the capture's (when it has ended) plus ``missed``, the
    packets this view lost by falling behind (stored all the same)."""

    missed: int = 0
    capture_id: str = ""

    @property
    def lost(self) -> int:
        return super().lost + self.missed

    def comment(self) -> str:
        view = (f"this live view missed {self.missed} packets by falling behind; they are stored in podcap capture "
                f"{self.capture_id}")
        return f"{super().comment()}; {view}" if self.received is not None else view


def _option(code: int, value: bytes) -> bytes:
    return _OPT_HEAD.pack(code, len(value)) + value + _PADS[len(value) % 4]


def isb(interface_id: int, ts: int, stats: InterfaceStats, divisor: int) -> bytes:
    """An Interface Statistics Block for ``stats`` (timestamps in the interface's units: ns // ``divisor``)."""
    opts = [_option(OPT_COMMENT, stats.comment().encode()[:_MAX_COMMENT]),
            _option(ISB_STARTTIME, struct.pack("<II", *_words(stats.start_ns // divisor))),
            _option(ISB_ENDTIME, struct.pack("<II", *_words(stats.end_ns // divisor)))]
    if stats.received is not None:
        opts.append(_option(ISB_IFRECV, _U64.pack(stats.received)))
    opts += [_option(ISB_IFDROP, _U64.pack(stats.lost)), _option(ISB_OSDROP, _U64.pack(stats.kernel_dropped))]
    if stats.delivered is not None:
        opts.append(_option(ISB_USRDELIV, _U64.pack(stats.delivered)))
    body = b"".join(opts) + _OPT_HEAD.pack(OPT_ENDOFOPT, 0)
    total = _ISB_HEAD.size + len(body) + 4
    return _ISB_HEAD.pack(BLOCK_ISB, total, interface_id, *_words(ts)) + body + total.to_bytes(4, "little")


def _words(ts: int) -> tuple[int, int]:
    return (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF


class LiveRecordsError(PcapFormatError):
    """Records from the collector that are not well-formed pcap (a collector bug: it checked them on ingest)."""


def epbs(interface_id: int, fmt: FileFormat, records: bytes) -> bytes | bytearray:
    """Bare pcap records in ``fmt`` as Enhanced Packet Blocks on ``interface_id``, timestamps kept in the pod's own
    resolution (which its IDB declares): in C, with the merge's own checks and layout (``pcapmerge.epbs``), or in
    Python when the C library is not built (``epbs_python``)."""
    try:
        native = pcapmerge.epbs(interface_id, fmt, records)
    except PcapFormatError as e:
        raise LiveRecordsError(str(e)) from e
    return native if native is not None else epbs_python(interface_id, fmt, records)


def epbs_python(interface_id: int, fmt: FileFormat, records: bytes) -> bytes:
    """``epbs`` without the C library: one tight loop (about 0.7 million packets a second on one core)."""
    unpack = _RECORD_HEAD.unpack_from
    pack = _EPB_HEAD.pack
    per_second = 1_000_000_000 if fmt.nanosecond else 1_000_000
    snaplen = fmt.snaplen
    view = memoryview(records)
    end = len(view)
    off = 0
    parts: list[bytes | memoryview] = []
    append = parts.append
    while off < end:
        if off + 16 > end:
            raise LiveRecordsError(f"truncated record header at offset {off}")
        sec, frac, caplen, wirelen = unpack(view, off)
        nxt = off + 16 + caplen
        if caplen > snaplen or caplen > wirelen or nxt > end:
            raise LiveRecordsError(f"bad record at offset {off}: caplen {caplen}, length {wirelen}, snaplen "
                                   f"{snaplen}, {end - off} bytes left")
        ts = sec * per_second + frac
        total = 32 + caplen + (-caplen % 4)
        append(pack(BLOCK_EPB, total, interface_id, ts >> 32, ts & 0xFFFFFFFF, caplen, wirelen))
        append(view[off + 16 : nxt])
        append(_PADS[caplen % 4] + total.to_bytes(4, "little"))
        off = nxt
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
        self.ended: control_pb2.CaptureStatus | None = None
        self._writer = PcapngWriter(out, capture_section(status))
        # Follow index -> (pcapng interface id, format of the pod's records, the pod); packets missed per index.
        self._interfaces: dict[int, tuple[int, FileFormat, common_pb2.Pod]] = {}
        self._missed: dict[int, int] = {}
        out.flush()

    @property
    def missed(self) -> int:
        """Packets this view missed by falling behind, all pods."""
        return sum(self._missed.values())

    def write(self, msg: control_pb2.FollowMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "pod":
            pf = msg.pod.format
            fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)
            known = self._interfaces.get(msg.pod.index)
            if known is None or known[1] != fmt:
                iface = self._writer.add_interface(interface_info(msg.pod.pod, self.status), linktype=fmt.linktype,
                                                   snaplen=fmt.snaplen, nanosecond=fmt.nanosecond)
                self._interfaces[msg.pod.index] = (iface, fmt, msg.pod.pod)
        elif kind == "records":
            iface, fmt, _ = self._interfaces[msg.records.index]
            self.out.write(epbs(iface, fmt, msg.records.records))
        elif kind == "gap":
            index = msg.gap.index
            self._missed[index] = self._missed.get(index, 0) + msg.gap.packets
            if index in self._interfaces:
                now = time.time_ns()
                self._write_stats(index, LiveViewStats(start_ns=self.status.created_unix_ns or now, end_ns=now,
                                                       missed=self._missed[index], capture_id=self.status.id))
        elif kind == "ended":
            self.ended = msg.ended
            for index, (_, _, pod) in self._interfaces.items():
                final = pod_stats(msg.ended, pod)
                if final is not None:
                    fields = {f.name: getattr(final, f.name) for f in dataclasses.fields(final)}
                    self._write_stats(index, LiveViewStats(**fields, missed=self._missed.get(index, 0),
                                                           capture_id=self.status.id))
        self.out.flush()

    def _write_stats(self, index: int, stats: LiveViewStats) -> None:
        iface, fmt, _ = self._interfaces[index]
        divisor = 1 if fmt.nanosecond else 1000
        self.out.write(isb(iface, stats.end_ns // divisor, stats, divisor))
