"""Keeping a capture's description in the second tier in step with the capture: its manifest and segment pages.

After each archiving round the archiver asks ``Describer.sync`` to bring the bucket's description of a capture up to
date (``podcap.formats.bucket.manifest``). A page lists up to ``PAGE_SEGMENTS`` consecutive segments of one pod;
only the pages whose list of archived segments changed are written again (a segment archived, or deleted by
retention), and a page with none left is deleted, so the cost of a round does not grow with the capture's length.
The pages that may have changed are known without looking at the others: those of the segments archived since the
last round (``add``), and those retention reached since (it deletes each pod's oldest first, so they lie between
the pod's ``retired_through`` then and now); each is read from the segment index by its range of indices. Only
the first round after a start looks at every page (which pages hold archived segments: one scan of the catalog).

A page's entries come from the copies archived since it was last written (their block index was just computed,
``add``) or from the page as last written (read back). A segment found in neither — archived by a collector that died
before describing it — is listed without its block index, and readers take that from the object's end. After a
restart a page that already lists what it should is read, compared and left alone. The manifest is written after
its pages, so it never names a page that lists less than it says.
"""

from __future__ import annotations

import logging

from podcap.collector.captures.model import Capture, PodState
from podcap.collector.captures.pods import location
from podcap.collector.captures.segments import SegmentIndex
from podcap.collector.storage.base import ArchivedCopy, PodLocation
from podcap.formats.bucket.manifest import (
    ArchivedSegment,
    Manifest,
    ManifestError,
    PageRef,
    page_from_json,
    page_number,
    page_span,
    page_to_json,
)

log = logging.getLogger(__name__)


class Describer:
    def __init__(self, index: SegmentIndex) -> None:
        self.index = index
        self.storage = index.storage
        self._fresh: dict[tuple[str, str, int], ArchivedCopy] = {}  # (capture, uid, segment) -> not yet in a page
        self._written: dict[tuple[str, str, int], tuple[int, ...]] = {}  # (capture, uid, page) -> what it lists
        self._refs: dict[tuple[str, str], dict[int, PageRef]] = {}  # (capture, uid) -> its pages
        self._complete: set[str] = set()  # captures whose final manifest is written
        self._through: dict[tuple[str, str], int] = {}  # (capture, uid) -> its retired_through at the last sync

    def add(self, capture_id: str, uid: str, segment_index: int, copy: ArchivedCopy) -> None:
        """A segment just archived: its copy's header and index go into its page at the next ``sync``."""
        self._fresh[(capture_id, uid, segment_index)] = copy

    def sync(self, cap: Capture, *, complete: bool) -> bool:
        """Write the pages that changed, then the manifest if anything did (or the capture is ``complete``: over, and
        everything of it in the bucket). Returns whether the manifest was written; raises ``PodcapError`` (the next
        round tries again)."""
        completing = complete and cap.id not in self._complete  # the final manifest is still to be written
        with cap.lock:
            pods = [(ps, str(ps.pod.uid), ps.retired_through) for ps in cap.pods.values()]
        fresh: dict[str, set[int]] = {}
        for capture_id, uid, index in self._fresh:
            if capture_id == cap.id:
                fresh.setdefault(uid, set()).add(page_number(index))
        work = []
        for ps, uid, through in pods:
            key = (cap.id, uid)
            refs = self._refs.get(key, {})
            if key not in self._through:  # the first round since the start: every page that lists something
                pages = self.index.archived_pages(cap, ps, len(page_span(0))) | set(refs)
            else:
                pages = fresh.get(uid, set())
                if through > self._through[key]:  # retention reached these pages since the last round
                    first, last = page_number(self._through[key] + 1), page_number(through)
                    pages |= {n for n in refs if first <= n <= last}
            if pages or key not in self._through:
                work.append((ps, uid, through, pages))
        if not work and not completing:
            return False  # (retention may still delete segments of a complete capture: then it is written again)
        changed = False
        for ps, uid, through, pages in work:
            changed |= self._sync_pod(cap, ps, uid, pages)
            self._through[(cap.id, uid)] = through
        if not changed and not completing:
            return False
        status = cap.status()
        with cap.lock:
            formats = {str(ps.pod.uid): ps.fmt for ps in cap.pods.values() if ps.fmt is not None}
        pages_of = {uid: [ref for _n, ref in sorted(self._refs.get((cap.id, uid), {}).items())] for _p, uid, _t in pods}
        complete = complete or cap.id in self._complete
        self.storage.describe(cap.id, Manifest(status, formats, pages_of, complete).to_json())
        if complete:
            self._complete.add(cap.id)
        return True

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of captures not in ``keep`` (deleted)."""
        self._fresh = {k: v for k, v in self._fresh.items() if k[0] in keep}
        self._written = {k: v for k, v in self._written.items() if k[0] in keep}
        self._refs = {k: v for k, v in self._refs.items() if k[0] in keep}
        self._complete &= keep
        self._through = {k: v for k, v in self._through.items() if k[0] in keep}

    def _sync_pod(self, cap: Capture, ps: PodState, uid: str, pages: set[int]) -> bool:
        loc = location(self.storage, cap, ps)
        refs = self._refs.setdefault((cap.id, uid), {})
        changed = False
        for number in sorted(pages):
            span = page_span(number)
            listed = [ArchivedSegment(s.archived, s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns)
                      for s in self.index.archived(cap, ps, span.start, span.stop)]
            want = tuple(s.index for s in listed)
            key = (cap.id, uid, number)
            if self._written.get(key) == want:
                pass
            elif not listed:
                loc.put_page(number, None)
                refs.pop(number, None)
                self._written.pop(key, None)
                changed = True
            else:
                old = self._old_page(loc, number)
                entries = [self._entry(cap.id, uid, seg, old) for seg in listed]
                if key in self._written or entries != list(old.values()):  # else: after a restart, already so
                    loc.put_page(number, page_to_json(entries))
                    changed = True
                refs[number] = PageRef.of(loc.page_locator(number), number, entries)
                self._written[key] = want
            for index in span:
                self._fresh.pop((cap.id, uid, index), None)
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
