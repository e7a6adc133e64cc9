"""The bucket tier's description of a capture kept in step with it: its manifest and segment pages (tiered storage).

After each archiving round the archiver asks the tiered storage to ``describe`` a capture, and ``Describer.sync``
brings the bucket's description of it up to date (``podcap.formats.bucket.manifest``); the capture logic hands
over the capture's status and, per pod, a view of the catalog's archived segments (``storage.base.ArchivedIndex``),
and never sees the format. A page lists up to ``PAGE_SEGMENTS`` consecutive segments of one pod; only the pages
whose list of archived segments changed are written again (a segment archived, or deleted by retention), and a page
with none left is deleted, so the cost of a round does not grow with the capture's length. The pages that may have
changed are known without looking at the others: those of the segments archived since the last round (``add``, as
the tier archives them), and those retention reached since (it deletes each pod's oldest first, so they lie between
the pod's ``retired_through`` then and now); each is read from the segment index by its range of indices. Only the
first round after a start looks at every page (which pages hold archived segments: one scan of the catalog).

A page's entries come from the copies archived since it was last written (their block index was just computed,
``add``) or from the page as last written (read back). A segment found in neither — archived by a collector that died
before describing it — is listed without its block index, and readers take that from the object's end. After a
restart a page that already lists what it should is read, compared and left alone. The manifest is written after
its pages, so it never names a page that lists less than it says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from podcap.collector.bucket.objects import ObjectNotFoundError, ObjectStore
from podcap.collector.storage.base import CaptureDescription, DescribedPod, PodKey
from podcap.formats.bucket.manifest import (
    NAME,
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


@dataclass(frozen=True)
class ArchivedCopy:
    """A segment's copy just archived: its object key, and the copy's own file header and block index (which go
    into its page)."""

    locator: str
    header: bytes
    index: bytes


class Describer:
    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects
        self._fresh: dict[tuple[str, str, int], ArchivedCopy] = {}  # (capture, uid, segment) -> not yet in a page
        self._written: dict[tuple[str, str, int], tuple[int, ...]] = {}  # (capture, uid, page) -> what it lists
        self._refs: dict[tuple[str, str], dict[int, PageRef]] = {}  # (capture, uid) -> its pages
        self._complete: set[str] = set()  # captures whose final manifest is written
        self._through: dict[tuple[str, str], int] = {}  # (capture, uid) -> its retired_through at the last sync

    def add(self, pod: PodKey, segment_index: int, copy: ArchivedCopy) -> None:
        """A segment just archived: its copy's header and index go into its page at the next ``sync`` (if retention
        deleted it meanwhile, its page no longer lists it and the copy is dropped there)."""
        self._fresh[(pod.capture_id, pod.uid, segment_index)] = copy

    def page_key(self, pod: PodKey, number: int) -> str:
        return self.objects.url.key(pod.capture_id, pod.namespace, pod.dir_name, f"segments-{number:06d}.json")

    def sync(self, cap: CaptureDescription) -> bool:
        """Write the pages that changed, then the manifest if anything did (or the capture is ``complete``: over, and
        everything of it in the bucket). Returns whether the manifest was written; raises ``PodcapError`` (the next
        round tries again)."""
        cid = cap.capture_id
        completing = cap.complete and cid not in self._complete  # the final manifest is still to be written
        fresh: dict[str, set[int]] = {}
        for capture_id, uid, index in self._fresh:
            if capture_id == cid:
                fresh.setdefault(uid, set()).add(page_number(index))
        work = []
        for dp in cap.pods:
            key = (cid, dp.key.uid)
            refs = self._refs.get(key, {})
            if key not in self._through:  # the first round since the start: every page that lists something
                pages = dp.index.archived_groups(len(page_span(0))) | set(refs)
            else:
                pages = fresh.get(dp.key.uid, set())
                if dp.retired_through > self._through[key]:  # retention reached these pages since the last round
                    first, last = page_number(self._through[key] + 1), page_number(dp.retired_through)
                    pages |= {n for n in refs if first <= n <= last}
            if pages or key not in self._through:
                work.append((dp, pages))
        if not work and not completing:
            return False  # (retention may still delete segments of a complete capture: then it is written again)
        changed = False
        for dp, pages in work:
            changed |= self._sync_pod(dp, pages)
            self._through[(cid, dp.key.uid)] = dp.retired_through
        if not changed and not completing:
            return False
        formats = {dp.key.uid: dp.fmt for dp in cap.pods if dp.fmt is not None}
        pages_of = {dp.key.uid: [ref for _n, ref in sorted(self._refs.get((cid, dp.key.uid), {}).items())]
                    for dp in cap.pods}
        complete = cap.complete or cid in self._complete
        manifest = Manifest(cap.status(), formats, pages_of, complete).to_json()
        self.objects.put_bytes(self.objects.url.key(cid, NAME), manifest, "application/json")
        if complete:
            self._complete.add(cid)
        return True

    def forget(self, keep: set[str]) -> None:
        """Drop what is known of captures not in ``keep`` (deleted)."""
        self._fresh = {k: v for k, v in self._fresh.items() if k[0] in keep}
        self._written = {k: v for k, v in self._written.items() if k[0] in keep}
        self._refs = {k: v for k, v in self._refs.items() if k[0] in keep}
        self._complete &= keep
        self._through = {k: v for k, v in self._through.items() if k[0] in keep}

    def _sync_pod(self, dp: DescribedPod, pages: set[int]) -> bool:
        pod = dp.key
        refs = self._refs.setdefault((pod.capture_id, pod.uid), {})
        changed = False
        for number in sorted(pages):
            span = page_span(number)
            listed = [ArchivedSegment(s.archived, s.index, s.bytes, s.packets, s.first_ts_ns, s.last_ts_ns)
                      for s in dp.index.archived(span.start, span.stop)]
            want = tuple(s.index for s in listed)
            key = (pod.capture_id, pod.uid, number)
            page_key = self.page_key(pod, number)
            if self._written.get(key) == want:
                pass
            elif not listed:
                self.objects.delete([page_key])
                refs.pop(number, None)
                self._written.pop(key, None)
                changed = True
            else:
                old = self._old_page(page_key)
                entries = [self._entry(pod, seg, old) for seg in listed]
                if key in self._written or entries != list(old.values()):  # else: after a restart, already so
                    self.objects.put_bytes(page_key, page_to_json(entries), "application/json")
                    changed = True
                refs[number] = PageRef.of(page_key, number, entries)
                self._written[key] = want
            for index in span:
                self._fresh.pop((pod.capture_id, pod.uid, index), None)
        return changed

    def _entry(self, pod: PodKey, seg: ArchivedSegment, old: dict[int, ArchivedSegment]) -> ArchivedSegment:
        copy = self._fresh.get((pod.capture_id, pod.uid, seg.index))
        if copy is not None and copy.locator == seg.key:
            return ArchivedSegment(seg.key, seg.index, seg.size, seg.packets, seg.first_ts_ns, seg.last_ts_ns,
                                   copy.header, copy.index)
        prev = old.get(seg.index)
        if prev is not None and prev.key == seg.key:
            return ArchivedSegment(seg.key, seg.index, seg.size, seg.packets, seg.first_ts_ns, seg.last_ts_ns,
                                   prev.header, prev.blocks)
        return seg

    def _old_page(self, page_key: str) -> dict[int, ArchivedSegment]:
        try:
            body = self.objects.get(page_key)
            return {s.index: s for s in page_from_json(body)}
        except ObjectNotFoundError:
            return {}
        except ManifestError as e:
            log.warning("%s is unreadable (%s): written again", page_key, e)
            return {}
