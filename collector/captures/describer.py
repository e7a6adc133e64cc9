"""Keeping a capture's description in the second tier in step with the capture: its manifest and segment pages.

After each archiving round the archiver asks ``Describer.sync`` to bring the bucket's description of a capture up to
date (``podcap.collector.bucket.manifest``). A page lists up to ``PAGE_SEGMENTS`` consecutive segments of one pod;
only the pages whose list of archived segments changed are written again (a segment archived, or deleted by
retention), and a page with none left is deleted, so the cost of a round does not grow with the capture's length.

A page's entries come from the copies archived since it was last written (their block index was just computed,
``add``) or from the page as last written (read back). A segment found in neither — archived by a collector that died
before describing it — is listed without its block index, and readers take that from the object's end. After a
restart a page that already lists what it should is read, compared and left alone. The manifest is written after
its pages, so it never names a page that lists less than it says.
"""

from __future__ import annotations

import logging

from podcap.collector.bucket.manifest import (
    ArchivedSegment,
    Manifest,
    ManifestError,
    PageRef,
    page_from_json,
    page_number,
    page_to_json,
)
from podcap.collector.captures.model import Capture
from podcap.collector.captures.pods import location
from podcap.collector.storage.base import ArchivedCopy, CaptureStorage, PodLocation

log = logging.getLogger(__name__)


class Describer:
    def __init__(self, storage: CaptureStorage) -> None:
        self.storage = storage
        self._fresh: dict[tuple[str, str, int], ArchivedCopy] = {}  # (capture, uid, segment) -> not yet in a page
        self._written: dict[tuple[str, str, int], tuple[int, ...]] = {}  # (capture, uid, page) -> what it lists
        self._refs: dict[tuple[str, str], dict[int, PageRef]] = {}  # (capture, uid) -> its pages
        self._complete: set[str] = set()  # captures whose final manifest is written
        self._seen: dict[str, tuple[tuple[int, int], ...]] = {}  # per capture: what the last sync found

    def add(self, capture_id: str, uid: str, segment_index: int, copy: ArchivedCopy) -> None:
        """A segment just archived: its copy's header and index go into its page at the next ``sync``."""
        self._fresh[(capture_id, uid, segment_index)] = copy

    def sync(self, cap: Capture, *, complete: bool) -> bool:
        """Write the pages that changed, then the manifest if anything did (or the capture is ``complete``: over, and
        everything of it in the bucket). Returns whether the manifest was written; raises ``PodcapError`` (the next
        round tries again)."""
        completing = complete and cap.id not in self._complete  # the final manifest is still to be written
        with cap.lock:  # cheap, without copying: has any pod's set of archived segments changed?
            seen = tuple((sum(1 for s in ps.segments if s.archived),
                          next((s.index for s in ps.segments if s.archived), -1)) for ps in cap.pods.values())
        if seen == self._seen.get(cap.id) and not completing:
            return False  # (retention may still delete segments of a complete capture: then it is written again)
        status = cap.status()
        with cap.lock:
            formats = {str(ps.pod.uid): ps.fmt for ps in cap.pods.values() if ps.fmt is not None}
            pods = [(str(ps.pod.uid), location(self.storage, cap, ps),
                     [ArchivedSegment(s.archived, s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns)
                      for s in ps.segments if s.archived])
                    for ps in cap.pods.values()]
        changed = False
        for uid, loc, segments in pods:
            changed |= self._sync_pod(cap.id, uid, loc, segments)
        if not changed and not completing:
            self._seen[cap.id] = seen
            return False
        pages = {uid: [ref for _n, ref in sorted(self._refs.get((cap.id, uid), {}).items())] for uid, _l, _s in pods}
        complete = complete or cap.id in self._complete
        self.storage.describe(cap.id, Manifest(status, formats, pages, complete).to_json())
        self._seen[cap.id] = seen
        if complete:
            self._complete.add(cap.id)
        return True

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of captures not in ``keep`` (deleted)."""
        self._fresh = {k: v for k, v in self._fresh.items() if k[0] in keep}
        self._written = {k: v for k, v in self._written.items() if k[0] in keep}
        self._refs = {k: v for k, v in self._refs.items() if k[0] in keep}
        self._complete &= keep
        self._seen = {k: v for k, v in self._seen.items() if k in keep}

    def _sync_pod(self, capture_id: str, uid: str, loc: PodLocation, segments: list[ArchivedSegment]) -> bool:
        by_page: dict[int, list[ArchivedSegment]] = {}
        for seg in segments:
            by_page.setdefault(page_number(seg.index), []).append(seg)
        refs = self._refs.setdefault((capture_id, uid), {})
        changed = False
        for number in sorted(set(by_page) | set(refs)):
            listed = by_page.get(number, [])
            want = tuple(s.index for s in listed)
            key = (capture_id, uid, number)
            if self._written.get(key) == want:
                continue
            if not listed:
                loc.put_page(number, None)
                refs.pop(number, None)
                self._written.pop(key, None)
                changed = True
                continue
            old = self._old_page(loc, number)
            entries = [self._entry(capture_id, uid, seg, old) for seg in listed]
            if key in self._written or entries != list(old.values()):  # else: after a restart, already so
                loc.put_page(number, page_to_json(entries))
                changed = True
            refs[number] = PageRef.of(loc.page_locator(number), number, entries)
            self._written[key] = want
            for seg in listed:
                self._fresh.pop((capture_id, uid, seg.index), None)
        return changed

    def _entry(self, capture_id: str, uid: str, seg: ArchivedSegment,
               old: dict[int, ArchivedSegment]) -> ArchivedSegment:
        copy = self._fresh.get((capture_id, uid, seg.index))
        if copy is not None and copy.locator == seg.key:
            return ArchivedSegment(seg.key, seg.index, seg.size, seg.packets, seg.first_ts_ns, seg.last_ts_ns,
                                   copy.header, copy.index)
        prev = old.get(seg.index)
        if prev is not None and prev.key == seg.key:
            return ArchivedSegment(seg.key, seg.index, seg.size, seg.packets, seg.first_ts_ns, seg.last_ts_ns,
                                   prev.header, prev.blocks)
        return seg

    @staticmethod
    def _old_page(loc: PodLocation, number: int) -> dict[int, ArchivedSegment]:
        try:
            body = loc.get_page(number)
            return {s.index: s for s in page_from_json(body)} if body is not None else {}
        except ManifestError as e:
            log.warning("%s is unreadable (%s): written again", loc.page_locator(number), e)
            return {}
