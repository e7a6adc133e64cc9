"""What agents say about their pods' streams: started, re-attached, broken, ended, and their counters.

A ``PodCaptureEvent`` either starts a stream (CAPTURING with its format), reports on one (its kernel counters,
what it delivered, what only the node knows it lost — cumulative, so a report sent again changes nothing), or
moves the pod's state (only its current stream does that). A new stream after an earlier one is a
re-attachment: the pod's message says when and how long nothing was captured. What a report says was lost since
the previous one goes to the pod's gap log. A stream's final report names its last chunk (``last_seq``): the
stream is complete once that chunk was written. A terminal event may end the capture (``on_terminal``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from podcap.collector.agents import AgentConnection
from podcap.collector.captures.model import TERMINAL, Capture, PodState
from podcap.collector.captures.pods import Gap, note_gaps, request_close, settle_closes
from podcap.collector.captures.streams import StreamState
from podcap.collector.captures.table import CaptureTable, heard_from
from podcap.collector.storage.base import CaptureStorage
from podcap.drops import Drops
from podcap.names import PodUid
from podcap.stream_events import starts_stream
from podcap.v1 import common_pb2, ingest_pb2

log = logging.getLogger(__name__)


class PodEvents:
    def __init__(self, table: CaptureTable, storage: CaptureStorage, on_terminal: Callable[[Capture], None]) -> None:
        self.table = table
        self.storage = storage
        self.on_terminal = on_terminal

    def on_pod_event(self, conn: AgentConnection, ev: ingest_pb2.PodCaptureEvent) -> None:
        cap = self.table.find(ev.capture_id)
        if cap is None:
            log.warning("agent %s: event for unknown capture %r ignored", conn.node, ev.capture_id)
            return
        if not cap.live and ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING:
            # A stream of a capture that is over (e.g. a start that crossed a stop on the wire): end it.
            conn.send(ingest_pb2.CollectorMessage(stop=ingest_pb2.StopPodCapture(capture_id=cap.id,
                                                                                 pod_uid=ev.pod_uid)))
        gaps: list[Gap] = []
        with cap.lock:
            ps = cap.pods.get(PodUid(ev.pod_uid))
            if ps is None or ps.pod.node != conn.node:
                log.warning("agent %s: event for a pod it does not own (%r) ignored", conn.node, ev.pod_uid)
                return
            heard_from(cap)
            st = ps.streams.get(ev.stream_id) if ev.stream_id else None
            if starts_stream(ev) and st is None:
                if ps.state in TERMINAL:
                    return  # a stream for a pod that already ended
                st = self._new_stream(cap, ps, ev)
            elif ev.stream_id and st is None:
                return  # news of a stream whose start never came: nothing to count it against
            if st is not None:
                self._report(cap, ps, st, ev, gaps)
            if st is None or st.id == ps.current:  # the pod's state follows its current stream only
                self._pod_state(cap, ps, ev)
            ps.dirty = True
            cap.dirty = True
        note_gaps(self.storage, cap, gaps)
        settle_closes(cap)
        if ev.state in TERMINAL:
            self.on_terminal(cap)

    @staticmethod
    def _pod_state(cap: Capture, ps: PodState, ev: ingest_pb2.PodCaptureEvent) -> None:
        if ev.state == common_pb2.POD_CAPTURE_STATE_CAPTURING:
            if starts_stream(ev) and ps.state not in (*TERMINAL, common_pb2.POD_CAPTURE_STATE_CAPTURING):
                # The same stream, continued after a reconnect or a collector restart: nothing was lost.
                ps.state = common_pb2.POD_CAPTURE_STATE_CAPTURING
                ps.message = ""
                ps.gap_since_ns = 0
        elif ev.state == common_pb2.POD_CAPTURE_STATE_PENDING and ev.stream_id and ps.state not in TERMINAL:
            # The stream broke (the pod's interface vanished); the agent re-attaches or reports the pod gone.
            ps.state = common_pb2.POD_CAPTURE_STATE_PENDING
            ps.message = ev.message
            ps.gap_since_ns = time.time_ns()
        elif ev.state in TERMINAL:
            ps.state = ev.state
            ps.message = ev.message
            ps.reported_end = True
            request_close(ps)
            if ev.state == common_pb2.POD_CAPTURE_STATE_FAILED:
                log.warning("capture %s: pod %s failed: %s", cap.id, ps.pod.display, ev.message)

    @staticmethod
    def _report(cap: Capture, ps: PodState, st: StreamState, ev: ingest_pb2.PodCaptureEvent,
                gaps: list[Gap]) -> None:
        now = time.time_ns()
        if ev.HasField("kernel"):
            kernel = (ev.kernel.received, ev.kernel.dropped, ev.kernel.if_dropped)
            if kernel[1] > st.kernel[1]:
                gaps.append(Gap(ps, st.id, "kernel", kernel[1] - st.kernel[1], st.reported_ns, now))
            st.kernel = kernel
        st.delivered = max(st.delivered, ev.delivered)
        if ev.HasField("drops"):
            reported = Drops.from_proto(ev.drops)
            for cause in ("unread", "past_limit"):
                more = getattr(reported, cause) - getattr(st.reported, cause)
                if more > 0:
                    gaps.append(Gap(ps, st.id, cause, more, st.reported_ns, now))
            st.reported = reported
        st.reported_ns = now
        if ev.state in TERMINAL and ev.last_seq > st.last_seq:
            log.error("capture %s: pod %s: stream %s ended at chunk %d; chunks %d..%d never arrived", cap.id,
                      ps.pod.display, st.id, ev.last_seq, st.last_seq + 1, ev.last_seq)
        if ev.state != common_pb2.POD_CAPTURE_STATE_CAPTURING:
            st.final = True
            st.final_seq = max(st.final_seq, ev.last_seq)

    @staticmethod
    def _new_stream(cap: Capture, ps: PodState, ev: ingest_pb2.PodCaptureEvent) -> StreamState:
        had_stream = bool(ps.streams)
        # Earlier streams that have not reported their end never will: a new one starts only once its agent is done
        # with them (or it is a new agent).
        ps.abandon_streams()
        if ps.fmt != ev.format:
            request_close(ps)
        st = ps.add_stream(ev.stream_id, ev.format)
        ps.interface = ev.interface
        ps.state = common_pb2.POD_CAPTURE_STATE_CAPTURING
        ps.message = ""
        if had_stream:
            ps.reattachments += 1
            now = time.strftime("%H:%M:%S")
            gap = (time.time_ns() - ps.gap_since_ns) / 1e9 if ps.gap_since_ns else 0.0
            ps.message = f"re-attached at {now}; no capture for {gap:.1f} s before" if gap else f"re-attached at {now}"
            log.info("capture %s: pod %s %s", cap.id, ps.pod.display, ps.message)
        ps.gap_since_ns = 0
        return st
