"""Resuming an interrupted ``podcap get ID -o DIR``: which pod files in DIR are already complete, and which hold the
start of their file, so that running the same command again fetches only what is missing.

A download writes a journal, ``DIR/.podcap-get.json``, naming the capture, the window (``--since/--until/
--filter``) and each pod file it started (its uid and path: the ``<pod>.pcap.part`` being written) or completed (its
path and size); a complete run removes it. Nothing is taken from a directory whose journal is for another capture
or another window.

- **Complete files** are kept, and their pods not asked for at all, when the journal names this pod with this
  path and size, the capture has ended (a running capture's files still grow), and, without a window, the file
  also holds exactly what the collector reports for the pod now: the size its segments make and as many packets
  (counted by walking the records, in C when built).
- **Files to resume part-way** (``resumable``): a part the journal says was started for this pod, or a completed
  file that is not known complete any more (the capture runs and grew since, or the collector reports more for it):
  its bytes are the start of the pod's file, so the download asks for the rest (``ResumePoint``: offset, and the
  hash of the last 64 KiB, ``podcap.collector.downloads``). Without a window a file larger than the collector's is
  started again at once; otherwise the collector decides: it checks the hash against its own bytes there and sends
  only what follows, or, when they differ (retention deleted the pod's oldest segments, the kept bytes are torn),
  the whole file again. A completed file being extended is renamed back to ``.part`` first: until it is whole again
  nothing in DIR looks complete that is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from podcap.collector.cli.get.download import DownloadedFile, expected_size
from podcap.collector.downloads import resume_point
from podcap.formats.pcap import PcapFormatError, count_file_records
from podcap.formats.selection import Window, pod_selected
from podcap.v1 import common_pb2, control_pb2

JOURNAL = ".podcap-get.json"
_LIVE = (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING)


def _count_packets(path: str) -> int | None:
    """Packets in a pcap file (every record checked), or None when it is not a whole, valid pcap file."""
    try:
        return count_file_records(path)
    except (OSError, ValueError, PcapFormatError):
        return None


class Journal:
    """The journal of one ``get -o DIR``: a ``DownloadObserver`` that records each completed pod file."""

    def __init__(self, out_dir: str, capture_id: str, window: Window,
                 dest: Callable[[common_pb2.Pod], str] | None = None) -> None:
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, JOURNAL)
        self.capture_id = capture_id
        self.window = window
        self.dest = dest  # where each pod's file goes (to record the parts started)
        self.files: dict[str, dict[str, Any]] = {}
        self._earlier: dict[str, dict[str, Any]] | None = None

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._earlier is None:
            self._earlier = self._load()
        return self._earlier

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
        earlier = self._loaded()
        kept: list[DownloadedFile] = []
        for ps in status.pods:
            entry = earlier.get(ps.pod.uid)
            path = path_of.get(ps.pod.uid)
            if not ps.pod.uid or entry is None or path is None or not pod_selected(ps.pod, selectors):
                continue
            if entry.get("path") != os.path.relpath(path, self.out_dir) or entry.get("partial"):
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

    def resumable(self, status: control_pb2.CaptureStatus, selectors: list[str], path_of: dict[str, str],
                  complete: set[str]) -> tuple[list[control_pb2.ResumePoint], list[str]]:
        """Resume points of the selected pods (but those in ``complete``) whose start an earlier run of the same get
        left in DIR, and what was set aside (a line each, for the user)."""
        earlier = self._loaded()
        points: list[control_pb2.ResumePoint] = []
        notes: list[str] = []
        for ps in status.pods:
            uid = ps.pod.uid
            entry = earlier.get(uid)
            path = path_of.get(uid)
            if not uid or uid in complete or entry is None or path is None or not pod_selected(ps.pod, selectors):
                continue
            if entry.get("path") != os.path.relpath(path, self.out_dir):
                continue
            part = path + ".part"
            if not entry.get("partial") and not os.path.exists(part) and os.path.exists(path):
                os.replace(path, part)  # a complete file to extend: a part again until it is whole
            try:
                size = os.path.getsize(part)
            except OSError:
                continue
            if not size:
                continue
            if self.window.whole and size > expected_size(ps):
                notes.append(f"{part} holds more than the collector has for the pod ({size} of "
                             f"{expected_size(ps)} bytes): downloading it again")
                continue
            points.append(resume_point(uid, part))
        return points, notes

    def _write(self) -> None:
        doc = {"capture": self.capture_id, "window": asdict(self.window), "files": self.files}
        tmp = self.path + ".tmp"
        os.makedirs(self.out_dir, exist_ok=True)
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)

    # DownloadObserver

    def file_started(self, pod: common_pb2.Pod, size: int) -> None:
        if pod.uid and self.dest is not None:  # recorded before the part is written: a later run may resume it
            self.files[pod.uid] = {"path": os.path.relpath(self.dest(pod), self.out_dir), "partial": True}
            self._write()

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
