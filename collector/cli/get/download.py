"""Downloading a capture's per-pod pcap files (what pcapng output says of each pod is in
``podcap.collector.cli.get.pcapng``).

The collector's ``Download`` RPC streams one pcap file per pod, one after the other, each announced by a
``FileStart`` with its exact size. Each file is written as ``<path>.part`` and renamed once it is complete, so an
interrupted download never leaves a file that looks whole; the part stays, and a later run can resume it from
where it stopped (``FileStart.offset``: see ``podcap.collector.cli.get.resume``). Paths are built only from validated
names.

A merge cannot start before every pod's file is there (the stream sends pods one after the other), so merged
output goes through files on disk; the merge itself then streams (``podcap.collector.cli.get.merge``).

Whoever wants to follow a download (the progress display, the resume journal) passes a ``DownloadObserver``: it
hears of each file's start (with its exact size), every block received, and each file completed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.formats.pcap import FILE_HEADER_LEN
from podcap.names import InvalidNameError, check_namespace, check_pod_name
from podcap.v1 import common_pb2, control_pb2


@dataclass(frozen=True)
class DownloadedFile:
    pod: common_pb2.Pod
    path: str
    size: int


class CaptureSource(Protocol):
    """Where ``podcap get`` reads a capture from: a collector (``CollectorClient``) or a bucket (``BucketClient``)."""

    def get(self, capture_id: str) -> control_pb2.CaptureStatus: ...

    def download(self, capture_id: str, pods: list[str], *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "", resume: Sequence[control_pb2.ResumePoint] = ()
                 ) -> Iterator[control_pb2.DownloadChunk]: ...


class DownloadObserver(Protocol):
    """Told what a download does, as it does it (called in the downloading thread; must be quick). ``size`` is
    what will be received of the file (less than the file when it resumes part-way)."""

    def file_started(self, pod: common_pb2.Pod, size: int) -> None: ...

    def received(self, pod: common_pb2.Pod, n: int) -> None: ...

    def file_done(self, done: DownloadedFile) -> None: ...


def download_files(client: CaptureSource, capture_id: str, pods: list[str],
                   dest: Callable[[common_pb2.Pod], str], *, since_ns: int = 0, until_ns: int = 0,
                   bpf: str = "", observers: Sequence[DownloadObserver] = (),
                   resume: Sequence[control_pb2.ResumePoint] = (),
                   note: Callable[[str], None] = lambda _text: None) -> list[DownloadedFile]:
    """Download every selected pod's pcap file to ``dest(pod)``; return them in the order the collector sent.

    ``resume``: pods whose ``dest(pod).part`` holds the start of their file (``podcap.collector.downloads.
    resume_point``); the collector sends each from where it accepts, and the part is completed in place. An
    interrupted download keeps its part (what was written is the start of the file: a later run resumes it);
    ``note`` hears of a resume the collector refused."""
    done: list[DownloadedFile] = []

    def finished(f: DownloadedFile) -> None:
        done.append(f)
        for o in observers:
            o.file_done(f)

    current: tuple[common_pb2.Pod, str, int] | None = None
    part = ""
    written = 0
    f = None
    kwargs = {"resume": list(resume)} if resume else {}  # (sources from before resuming need not know of it)
    try:
        for msg in client.download(capture_id, pods, since_ns=since_ns, until_ns=until_ns, bpf=bpf, **kwargs):
            if msg.WhichOneof("kind") == "file":
                if f is not None and current is not None:
                    f.close()
                    f = None
                    finished(_finish(current, part, written))
                pod = msg.file.pod
                try:
                    check_namespace(pod.namespace)
                    check_pod_name(pod.name)
                except InvalidNameError as e:
                    raise CollectorError(f"collector sent an unusable file name: {e}") from e
                path = dest(pod)
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                part = path + ".part"
                offset = msg.file.offset
                if msg.file.resume_refused:
                    note(f"{path}: {msg.file.resume_refused}")
                for o in observers:
                    o.file_started(pod, msg.file.size - offset)
                f = _open_part(part, offset)
                current = (pod, path, msg.file.size)
                written = offset
                if written == current[2]:  # resumed at its end: nothing more to come
                    f.close()
                    f = None
                    finished(_finish(current, part, written))
                    current = None
            else:
                if f is None or current is None:
                    raise CollectorError("collector sent data before a file header, or more than a file's size")
                f.write(msg.data)
                written += len(msg.data)
                for o in observers:
                    o.received(current[0], len(msg.data))
                if written == current[2]:  # complete: kept at once (what a resume finds after a cut)
                    f.close()
                    f = None
                    finished(_finish(current, part, written))
                    current = None
        if f is not None and current is not None:
            f.close()
            f = None
            finished(_finish(current, part, written))
    finally:
        if f is not None:
            f.close()  # the part holds the file's start, and stays for a later run to resume
    return done


def _open_part(part: str, offset: int) -> BinaryIO:
    """The part file, holding the file's first ``offset`` bytes (kept from an earlier run) and ready for more."""
    if not offset:
        return open(part, "wb")  # noqa: SIM115 (closed once complete, or when the next file starts or at the end)
    f = open(part, "r+b")  # noqa: SIM115 (as above)
    try:
        if os.fstat(f.fileno()).st_size < offset:
            raise CollectorError(f"{part} holds less than the {offset} bytes the resume was asked from")
        f.truncate(offset)
        f.seek(offset)
    except BaseException:
        f.close()
        raise
    return f


def _finish(current: tuple[common_pb2.Pod, str, int], part: str, written: int) -> DownloadedFile:
    pod, path, expected = current
    if written != expected:
        os.unlink(part)
        raise CollectorError(f"download of {path} incomplete: {written} of {expected} bytes")
    os.replace(part, path)
    return DownloadedFile(pod, path, written)


def per_pod_paths(out_dir: str, suffix: str) -> Callable[[common_pb2.Pod], str]:
    """``<out_dir>/<namespace>/<pod><suffix>``; a second pod with the same name (re-created under a new uid
    during the capture) gets its uid appended instead of overwriting the first. The same pod always gets the
    same path (so paths can be planned from the capture's status before the download names them)."""
    used: set[str] = set()
    given: dict[tuple[str, str, str], str] = {}

    def dest(pod: common_pb2.Pod) -> str:
        key = (pod.uid, pod.namespace, pod.name)
        if key in given:
            return given[key]
        path = os.path.join(out_dir, pod.namespace, pod.name + suffix)
        if path in used:
            path = os.path.join(out_dir, pod.namespace, f"{pod.name}.{pod.uid[:12] or len(used)}{suffix}")
        used.add(path)
        given[key] = path
        return path

    return dest


def expected_size(ps: control_pb2.PodStatus) -> int:
    """The size of the pod's whole download (no window): its segments joined under one file header."""
    return FILE_HEADER_LEN + ps.bytes - FILE_HEADER_LEN * ps.segments


def download_capture(client: CollectorClient, capture_id: str, out_dir: str, pods: list[str]) -> list[tuple[str, int]]:
    """Write ``<out_dir>/<namespace>/<pod>.pcap`` for each pod; return (path, bytes) per file."""
    files = download_files(client, capture_id, pods, per_pod_paths(out_dir, ".pcap"))
    return [(f.path, f.size) for f in files]
