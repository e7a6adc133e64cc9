"""``PREFIX/<capture>/manifest.json`` and its pages: a capture in a bucket that explains itself.

The manifest holds the capture's status as the ``podcap status -o json`` shape (``status``: request, state, per-pod
states and counters, drops by cause), each pod's record format, and, per pod, the pages that list its archived
segments: each page's key, how many segments it lists and their bytes, packets and time range. A page
(``PREFIX/<capture>/<namespace>/<pod>/segments-NNNNNN.json``) lists up to ``PAGE_SEGMENTS`` consecutive segments of
the pod in order, each with its object key, size, packet count, time range, file header and block index
(``podcap.formats.bucket.blocks``, base64). That is enough for ``podcap get --from s3://...`` to rebuild the
per-pod files, or a time window of them, without the collector, its database or its disk: the manifest, the pages
the window overlaps, then only the blocks it overlaps, by ranged GETs.

Pages keep the manifest small for captures of any length (one line per page, not per segment or block): the
collector rewrites the manifest whenever segments reach the bucket, and only the pages that changed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from podcap.errors import InvalidInputError
from podcap.formats.selection import overlaps
from podcap.v1 import common_pb2, control_pb2

VERSION = 2
NAME = "manifest.json"


class ManifestError(InvalidInputError):
    """A manifest that is not one this podcap can read."""


PAGE_SEGMENTS = 64


def page_number(segment_index: int) -> int:
    return segment_index // PAGE_SEGMENTS


def page_span(number: int) -> range:
    """The segment indices page ``number`` may list."""
    return range(number * PAGE_SEGMENTS, (number + 1) * PAGE_SEGMENTS)


@dataclass(frozen=True)
class ArchivedSegment:
    key: str
    index: int
    size: int  # bytes, file header included
    packets: int
    first_ts_ns: int
    last_ts_ns: int
    header: bytes = b""  # the segment's pcap file header
    blocks: bytes = b""  # its object's block index (``blocks.pack_index``); b"": read it from the object's end


@dataclass(frozen=True)
class PageRef:
    key: str
    number: int
    segments: int
    size: int  # bytes of its segments
    packets: int
    first_ts_ns: int
    last_ts_ns: int

    @classmethod
    def of(cls, key: str, number: int, segments: list[ArchivedSegment]) -> PageRef:
        firsts = [s.first_ts_ns for s in segments if s.first_ts_ns]
        return cls(key, number, len(segments), sum(s.size for s in segments), sum(s.packets for s in segments),
                   min(firsts, default=0), max((s.last_ts_ns for s in segments), default=0))

    def overlaps(self, since_ns: int, until_ns: int) -> bool:
        return overlaps(self.first_ts_ns, self.last_ts_ns, since_ns, until_ns)


def page_to_json(segments: list[ArchivedSegment]) -> bytes:
    doc = {"version": VERSION, "segments": [
        {"key": s.key, "index": s.index, "size": s.size, "packets": s.packets, "first_ts_ns": s.first_ts_ns,
         "last_ts_ns": s.last_ts_ns, "header": base64.b64encode(s.header).decode(),
         "blocks": base64.b64encode(s.blocks).decode()} for s in segments]}
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def page_from_json(data: bytes) -> list[ArchivedSegment]:
    try:
        doc = json.loads(data)
        _check_version(doc)
        return [ArchivedSegment(s["key"], s["index"], s["size"], s["packets"], s["first_ts_ns"], s["last_ts_ns"],
                                base64.b64decode(s["header"]), base64.b64decode(s["blocks"]))
                for s in doc["segments"]]
    except ManifestError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"unreadable segment page: {e}") from e


def _check_version(doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        version = doc.get("version") if isinstance(doc, dict) else None
        raise ManifestError(f"manifest version {version!r}; this podcap reads version {VERSION}")


@dataclass
class Manifest:
    status: control_pb2.CaptureStatus
    formats: dict[str, common_pb2.PcapFormat] = field(default_factory=dict)  # by pod uid
    pages: dict[str, list[PageRef]] = field(default_factory=dict)  # by pod uid, in order
    complete: bool = False  # the capture is over and every segment of it is in the bucket

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": VERSION, "complete": self.complete,
            "status": json_format.MessageToDict(self.status, preserving_proto_field_name=True),
            "formats": {uid: {"linktype": f.linktype, "snaplen": f.snaplen, "nanosecond": f.nanosecond}
                        for uid, f in self.formats.items()},
            "pages": {uid: [p.__dict__ for p in pages] for uid, pages in self.pages.items()},
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
            _check_version(doc)
            status = json_format.ParseDict(doc["status"], control_pb2.CaptureStatus(), ignore_unknown_fields=True)
            formats = {uid: common_pb2.PcapFormat(**f) for uid, f in doc["formats"].items()}
            pages = {uid: [PageRef(**p) for p in refs] for uid, refs in doc["pages"].items()}
            return cls(status, formats, pages, bool(doc.get("complete")))
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, json_format.ParseError) as e:
            raise ManifestError(f"unreadable manifest: {e}") from e
