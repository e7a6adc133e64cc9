"""A capture's live stream (``Control.Follow``) as pcapng, each pod its own interface: what Wireshark reads
through the extcap, and what ``podcap follow`` writes.

Every pod becomes an Interface Description Block named ``<namespace>/<pod>`` — as in ``get --merge`` — and its
records Enhanced Packet Blocks on that interface, in time order across pods, each packet once
(``podcap.collector.cli.live.order``: a pod's records are held until no pod can still deliver older ones, at most
``HOLD_NS`` after they arrived; a packet seen on two pods is written once unless every copy is asked for). Pods
are announced by the collector as they start streaming, so an IDB may follow packets of other pods: the pcapng
format allows it and dumpcap/tshark 4.0 keep each packet on its interface (checked by the tshark test). A pod
whose format changes (a restarted stream with another link type) gets a new interface of the same name, since an
IDB cannot change. The caller calls ``tick`` now and then (a quiet view's held packets go out by time, not only
when the next message comes) and ``finish`` at the end (what is held goes out).

Every block is encoded by ``podcap.formats.pcapng`` (the one encoder: the section header, IDBs and ISBs through its
``PcapngWriter``, which here takes interfaces after packets), with the content ``get --merge`` gives them
(``podcap.collector.cli.get.pcapng``: the section's comments, the pods' final counters); the records are ordered
and turned into EPBs in C (no Python per packet) and written with one ``write`` per batch.

Losses are reported in-band, as Interface Statistics Blocks (dumpcap passes them through into the file Wireshark
saves, measured with 4.0.17): when this live view falls behind, the collector drops packets for it alone (they
are stored all the same) and says how many (``FollowGap``); the pod's interface then gets an ISB whose
``isb_ifdrop`` counts every packet the view missed so far, so Wireshark shows them as dropped. When the capture
ends by itself (a limit, ``podcap stop``) each interface gets the capture's final counters too (received, kernel
and podcap drops by cause, stored: ``podcap.collector.cli.get.pcapng.pod_stats``, as ``get --merge`` writes them),
and how many second sightings of packets this view left out on it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import IO

from podcap.collector.cli.dedup import WINDOW_NS
from podcap.collector.cli.get.pcapng import capture_section, pod_stats
from podcap.collector.cli.live.order import HOLD_NS, MAX_BUFFERED, live_order
from podcap.formats.pcap import FileFormat, PcapFormatError
from podcap.formats.pcapng import InterfaceInfo, InterfaceStats, PcapngWriter
from podcap.v1 import common_pb2, control_pb2

_FOREVER = (1 << 64) - 1
_NO_INTERFACE = 0xFFFFFFFF  # a placeholder's: it never writes a packet
_ANY_FORMAT = FileFormat(1, 65535, True)
_MAY_STREAM = (common_pb2.POD_CAPTURE_STATE_PENDING, common_pb2.POD_CAPTURE_STATE_CAPTURING,
               common_pb2.POD_CAPTURE_STATE_UNSPECIFIED)


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
        if self.received is None:
            return view
        return f"{super().comment()}; {view}" if self.missed else super().comment()


def interface_info(pod: common_pb2.Pod, status: control_pb2.CaptureStatus) -> InterfaceInfo:
    return InterfaceInfo(name=f"{pod.namespace}/{pod.name}",
                         description=f"pod {pod.namespace}/{pod.name} uid {pod.uid} on node {pod.node}, podcap "
                         f"capture {status.id}", filter=status.settings.filter)


class PcapngStream:
    """Writes one capture's follow messages to ``out`` as one pcapng section, in time order across pods; with
    ``one_copy`` each packet once (``podcap.collector.cli.dedup``). ``clock``: monotonic nanoseconds (tests)."""

    def __init__(self, out: IO[bytes], status: control_pb2.CaptureStatus, *, one_copy: bool = True,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self.out = out
        self.status = status
        self.ended: control_pb2.CaptureStatus | None = None
        self.clock = clock
        self._writer = PcapngWriter(out, capture_section(status), interfaces_first=False)
        self._order = live_order(WINDOW_NS if one_copy else 0)
        # Follow index -> (pcapng interface id, format of the pod's records, the pod, its input in the order).
        self._interfaces: dict[int, tuple[int, FileFormat, common_pb2.Pod, int]] = {}
        self._missed: dict[int, int] = {}  # packets missed per index
        # The capture's pods that may still start streaming, until the collector announces them: each holds the
        # view's order back as a pod that delivered nothing yet does (a view started with its capture).
        self._expected = {ps.pod.uid: self._order.add(_NO_INTERFACE, _ANY_FORMAT) for ps in status.pods
                          if ps.pod.uid and ps.state in _MAY_STREAM}
        out.flush()

    @property
    def missed(self) -> int:
        """Packets this view missed by falling behind, all pods."""
        return sum(self._missed.values())

    @property
    def left_out(self) -> int:
        """Second sightings of packets this view left out, all pods."""
        return sum(self._order.counts()[1])

    @property
    def pods(self) -> int:
        return len(self._interfaces)

    def write(self, msg: control_pb2.FollowMessage) -> None:
        kind = msg.WhichOneof("kind")
        if kind == "pod":
            pf = msg.pod.format
            fmt = FileFormat(pf.linktype, pf.snaplen, pf.nanosecond)
            known = self._interfaces.get(msg.pod.index)
            if known is None or known[1] != fmt:
                iface = self._writer.add_interface(interface_info(msg.pod.pod, self.status), linktype=fmt.linktype,
                                                   snaplen=fmt.snaplen, nanosecond=fmt.nanosecond)
                self._interfaces[msg.pod.index] = (iface, fmt, msg.pod.pod, self._order.add(iface, fmt))
                if known is not None:
                    self._order.retire(known[3])  # the pod's earlier stream: it delivers nothing more
            placeholder = self._expected.pop(msg.pod.pod.uid, None)
            if placeholder is not None:
                self._order.retire(placeholder)
        elif kind == "records":
            *_, order_index = self._interfaces[msg.records.index]
            try:
                self._order.push(order_index, msg.records.records, self.clock())
            except PcapFormatError as e:
                raise LiveRecordsError(str(e)) from e
            self._release()
        elif kind == "gap":
            index = msg.gap.index
            self._missed[index] = self._missed.get(index, 0) + msg.gap.packets
            if index in self._interfaces:
                now = time.time_ns()
                self._write_stats(index, LiveViewStats(start_ns=self.status.created_unix_ns or now, end_ns=now,
                                                       missed=self._missed[index], capture_id=self.status.id))
        elif kind == "ended":
            self.ended = msg.ended
            self.finish()
            left_out = self._order.counts()[1]
            for index, (_, _, pod, order_index) in self._interfaces.items():
                final = pod_stats(msg.ended, pod)
                if final is not None:
                    fields = {f.name: getattr(final, f.name) for f in dataclasses.fields(final)}
                    fields["duplicates"] = left_out[order_index]
                    self._write_stats(index, LiveViewStats(**fields, missed=self._missed.get(index, 0),
                                                           capture_id=self.status.id))
        self.out.flush()

    def tick(self) -> None:
        """Write what has been held long enough (call it now and then: a quiet view gets no messages)."""
        if self._release():
            self.out.flush()

    def finish(self) -> None:
        """Write everything still held (the stream ended, or the view is closing)."""
        if data := self._order.pop(_FOREVER):
            self.out.write(data)
            self.out.flush()

    def close(self) -> None:
        self._order.close()

    def _release(self) -> bool:
        until = self._order.release(self.clock(), HOLD_NS)
        if self._order.buffered > MAX_BUFFERED:  # memory stays bounded: everything held goes, in order
            until = _FOREVER
        data = self._order.pop(until)
        if data:
            self.out.write(data)
        return bool(data)

    def _write_stats(self, index: int, stats: LiveViewStats) -> None:
        self._writer.write_stats(self._interfaces[index][0], stats)


class LiveRecordsError(PcapFormatError):
    """Records from the collector that are not well-formed pcap (a collector bug: it checked them on ingest)."""
