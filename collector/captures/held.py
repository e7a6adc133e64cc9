"""What agents hold that the collector has not acknowledged yet, as they last said (``Register.held``,
``Heartbeat.held``).

Data an agent holds (in memory or on its spool disk) is on its way: neither stored nor lost. ``podcap status``
shows it per pod (``PodStatus.held``), a pod is not ``final`` while any of it is on its way, and once a stream is
given up on (its agent never came back before the capture ended) what the agent last held for it is a floor of
what was lost with the agent (``podcap.collector.captures.streams``).

Each report is an agent's complete list: every stream holding data, so a stream the report omits holds nothing
and its entry goes. A report replaces the node's previous one pod by pod; the pods the previous report named
are remembered per node, so a report costs what it and the previous one name, not every pod of every capture.
Entries are kept while the agent is away (they are the last thing known of its data) and are replaced by its
report at registration when it comes back. An entry for a stream the collector has whole (final report, every
chunk it announced written) is not kept: the agent holds only chunks waiting for their acknowledgement.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from podcap.collector.captures.streams import Held
from podcap.collector.captures.table import CaptureTable
from podcap.names import NodeName, PodUid
from podcap.v1 import ingest_pb2

_PodKey = tuple[str, str]  # (capture id, pod uid) as the agent named them


class HeldReports:
    def __init__(self, table: CaptureTable) -> None:
        self.table = table
        # One report applied at a time (a node's sessions may overlap while one replaces another); taken before
        # any capture's lock.
        self._lock = threading.Lock()
        self._named: dict[NodeName, set[_PodKey]] = {}

    def apply(self, node: NodeName, report: Iterable[ingest_pb2.StreamHeld]) -> None:
        """The agent of ``node`` holds ``report`` (complete: streams not in it hold nothing)."""
        by_pod: dict[_PodKey, dict[str, Held]] = {}
        for sh in report:
            held = Held.from_proto(sh.held)
            if held:
                streams = by_pod.setdefault((sh.capture_id, sh.pod_uid), {})
                sid = sh.stream_id[:64]
                streams[sid] = streams.get(sid, Held()) + held
        with self._lock:
            named: set[_PodKey] = set()
            for key in self._named.get(node, set()) | set(by_pod):
                if self._apply_pod(node, key, by_pod.get(key, {})):
                    named.add(key)
            if named:
                self._named[node] = named
            else:
                self._named.pop(node, None)

    def _apply_pod(self, node: NodeName, key: _PodKey, streams: dict[str, Held]) -> bool:
        """Replace one pod's entries; whether it has any now."""
        cap = self.table.find(key[0])
        if cap is None:
            return False
        with cap.lock:
            ps = cap.pods.get(PodUid(key[1]))
            if ps is None or ps.pod.node != node:
                return False
            kept = {}
            for sid, held in streams.items():
                st = ps.streams.get(sid)
                if st is None or not st.complete:
                    kept[sid] = held
            if kept != ps.held:
                ps.held = kept
                ps.dirty = True  # recorded with the pod's streams: a stream given up on keeps its floor
            return bool(kept)
