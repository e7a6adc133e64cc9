"""``PREFIX/<capture>/manifest.json``: a capture in a bucket that explains itself.

The collector rewrites it whenever segments of the capture reach the bucket, and once more when the capture is over
and everything is there. It holds the capture's status as the ``podcap status -o json`` shape (``status``: request,
state, per-pod states and counters, drops by cause), each pod's record format, and each pod's archived segments in
order with their object key, size, packet count and time range — enough for ``podcap get --from s3://...`` to
rebuild the per-pod files, or a time window of them, without the collector, its database or its disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from podcap.errors import InvalidInputError
from podcap.v1 import common_pb2, control_pb2

VERSION = 1
NAME = "manifest.json"


class ManifestError(InvalidInputError):
    """A manifest that is not one this podcap can read."""


@dataclass(frozen=True)
class ArchivedSegment:
    key: str
    index: int
    bytes: int
    packets: int
    first_ts_ns: int
    last_ts_ns: int


@dataclass
class Manifest:
    status: control_pb2.CaptureStatus
    formats: dict[str, common_pb2.PcapFormat] = field(default_factory=dict)  # by pod uid
    segments: dict[str, list[ArchivedSegment]] = field(default_factory=dict)  # by pod uid, in order
    complete: bool = False  # the capture is over and every segment of it is in the bucket

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "version": VERSION, "complete": self.complete,
            "status": json_format.MessageToDict(self.status, preserving_proto_field_name=True),
            "formats": {uid: {"linktype": f.linktype, "snaplen": f.snaplen, "nanosecond": f.nanosecond}
                        for uid, f in self.formats.items()},
            "segments": {uid: [s.__dict__ for s in segs] for uid, segs in self.segments.items()},
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("version") != VERSION:
                raise ManifestError(f"manifest version {doc.get('version')!r}; this podcap reads version {VERSION}")
            status = json_format.ParseDict(doc["status"], control_pb2.CaptureStatus(), ignore_unknown_fields=True)
            formats = {uid: common_pb2.PcapFormat(**f) for uid, f in doc["formats"].items()}
            segments = {uid: [ArchivedSegment(**s) for s in segs] for uid, segs in doc["segments"].items()}
            return cls(status, formats, segments, bool(doc.get("complete")))
        except ManifestError:
            raise
        except (ValueError, KeyError, TypeError, json_format.ParseError) as e:
            raise ManifestError(f"unreadable manifest: {e}") from e
