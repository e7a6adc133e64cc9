"""Resuming an interrupted ``podcap get ID -o DIR``: which pod files in DIR are already complete, so that running
the same command again fetches only the others.

The Download RPC has no byte ranges, so a pod is either complete (kept) or fetched again whole; a partial
``<pod>.pcap.part`` is always refetched. A download writes a journal, ``DIR/.podcap-get.json``, naming the capture,
the window (``--since/--until/--filter``) and each pod file completed so far (its uid, path and size); a complete
run removes it. A file is kept only when all of these hold, so that a stale or foreign file is never taken for a
complete one:

- the journal is for the same capture and the same window, and names this pod with this path and size;
- the capture has ended (a running capture's files still grow: they are all fetched again);
- without a window, the file also holds exactly what the collector reports for the pod now: the size its
  segments make and as many packets (counted by walking the records, in C when built).
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import asdict, dataclass
from typing import Any

from podcap.collector.cli.download import DownloadedFile, expected_size
from podcap.pcapfile import FILE_HEADER_LEN, PcapFormatError, parse_file_header, scan_records
from podcap.v1 import common_pb2, control_pb2

JOURNAL = ".podcap-get.json"
_LIVE = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


@dataclass(frozen=True)
class Window:
    """What a download selects besides pods; a journal only applies to the same window."""

    since_ns: int = 0
    until_ns: int = 0
    bpf: str = ""

    @property
    def whole(self) -> bool:
        return not (self.since_ns or self.until_ns or self.bpf)


def selected(ps: control_pb2.PodStatus, selectors: list[str]) -> bool:
    """Whether the collector's Download would include this pod for these selectors (its own rule)."""
    pod = ps.pod
    return not selectors or pod.uid in selectors or f"{pod.namespace}/{pod.name}" in selectors \
        or pod.name in selectors


def _count_packets(path: str) -> int | None:
    """Packets in a pcap file (every record checked), or None when it is not a whole, valid pcap file."""
    try:
        with open(path, "rb") as f:
            fmt = parse_file_header(f.read(FILE_HEADER_LEN))
            size = os.fstat(f.fileno()).st_size
            if size == FILE_HEADER_LEN:
                return 0
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                view = memoryview(m)
                try:
                    res = scan_records(view[FILE_HEADER_LEN:], fmt)
                finally:
                    view.release()
        return res.packets if res.length == size - FILE_HEADER_LEN else None
    except (OSError, ValueError, PcapFormatError):
        return None


class Journal:
    """The journal of one ``get -o DIR``: a ``DownloadObserver`` that records each completed pod file."""

    def __init__(self, out_dir: str, capture_id: str, window: Window) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, JOURNAL)
        self.capture_id = capture_id
        self.window = window
        self.files: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            return {}
        if not isinstance(doc, dict) or doc.get("capture") != self.capture_id or \
                doc.get("window") != asdict(self.window) or not isinstance(doc.get("files"), dict):
            return {}
        return {uid: e for uid, e in doc["files"].items() if isinstance(e, dict)}

    def complete(self, status: control_pb2.CaptureStatus, selectors: list[str],
                 path_of: dict[str, str]) -> list[DownloadedFile]:
        """The selected pods' files that an earlier, interrupted run of the same get completed (kept in the
        journal from now on); ``path_of`` maps each pod's uid to where this run puts its file."""
        if status.state in _LIVE:
            return []
        earlier = self._load()
        kept: list[DownloadedFile] = []
        for ps in status.pods:
            entry = earlier.get(ps.pod.uid)
            path = path_of.get(ps.pod.uid)
            if not ps.pod.uid or entry is None or path is None or not selected(ps, selectors):
                continue
            if entry.get("path") != os.path.relpath(path, self.out_dir):
                continue
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size != entry.get("size"):
                continue
            if self.window.whole and (size != expected_size(ps) or _count_packets(path) != ps.packets):
                continue
            kept.append(DownloadedFile(ps.pod, path, size))
            self.files[ps.pod.uid] = entry
        return kept

    def _write(self) -> None:
        doc = {"capture": self.capture_id, "window": asdict(self.window), "files": self.files}
        tmp = self.path + ".tmp"
        os.makedirs(self.out_dir, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    # DownloadObserver

    def file_started(self, pod: common_pb2.Pod, size: int) -> None:
        pass

    def received(self, pod: common_pb2.Pod, n: int) -> None:
        pass

    def file_done(self, done: DownloadedFile) -> None:
        if done.pod.uid:
            self.files[done.pod.uid] = {"path": os.path.relpath(done.path, self.out_dir), "size": done.size}
            self._write()

    def finish(self) -> None:
        """The whole get succeeded: nothing to resume."""
        for p in (self.path, self.path + ".tmp"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
