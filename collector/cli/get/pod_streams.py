"""One Download stream per pod, read side by side: what lets ``podcap get --merge`` merge while it downloads.

The Download RPC sends the selected pods one after the other, so a merge of its output has to wait for the last
pod and goes through files on disk (written, read back, deleted: the cost that made ``get --merge`` slower than
``get -o`` plus mergecap). Asking for each pod in a request of its own gives the C merge core
(``pcapmerge.FedInput``) every pod's records as they arrive; it pulls the next block of whichever pod holds the
earliest packet, and HTTP/2 flow control holds the others back, so memory stays at a few blocks per pod and
nothing but the merged file is written.

Each stream is one pod's file exactly as the single Download sends it (``FileStart`` with its exact size, the
24-byte pcap header, the records); the header is read here (the pod's interface needs its link type, snaplen and
timestamp resolution before any packet is written), the size checked at the end. The collector serves a bounded
number of RPCs at once (its ``--max-workers``), so only captures of up to ``MAX_STREAMS`` pods are read this way;
larger ones go through files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from podcap.collector.cli.client import CollectorError
from podcap.collector.cli.get.download import CaptureSource, DownloadedFile, DownloadObserver
from podcap.formats.pcap import FILE_HEADER_LEN, FileFormat, parse_file_header
from podcap.names import InvalidNameError, check_namespace, check_pod_name
from podcap.v1 import common_pb2, control_pb2

MAX_STREAMS = 16


@dataclass
class PodStream:
    """One pod's download: its pod, file size and format (from the header); ``blocks`` yields the records after
    the header in blocks as they arrive and fails if the file ends short of its size."""

    pod: common_pb2.Pod
    size: int
    fmt: FileFormat
    blocks: Iterator[bytes]


def _selector(pod: common_pb2.Pod) -> str:
    return pod.uid or f"{pod.namespace}/{pod.name}"


def _open(messages: Iterator[control_pb2.DownloadChunk], observers: Sequence[DownloadObserver]) -> PodStream | None:
    first = next(messages, None)
    if first is None:
        return None  # the pod has nothing to download (as in a single Download, it gets no file)
    if first.WhichOneof("kind") != "file":
        raise CollectorError("collector sent data before a file header")
    pod, size = first.file.pod, first.file.size
    try:
        check_namespace(pod.namespace)
        check_pod_name(pod.name)
    except InvalidNameError as e:
        raise CollectorError(f"collector sent an unusable file name: {e}") from e
    for o in observers:
        o.file_started(pod, size)
    head = b""
    while len(head) < FILE_HEADER_LEN:
        msg = next(messages, None)
        if msg is None or msg.WhichOneof("kind") != "data":
            raise CollectorError(f"download of {pod.namespace}/{pod.name} incomplete: {len(head)} of {size} bytes")
        head += msg.data
    for o in observers:
        o.received(pod, len(head))
    fmt = parse_file_header(head[:FILE_HEADER_LEN])
    return PodStream(pod, size, fmt, _blocks(messages, pod, size, head[FILE_HEADER_LEN:], len(head), observers))


def _blocks(messages: Iterator[control_pb2.DownloadChunk], pod: common_pb2.Pod, size: int, rest: bytes,
            received: int, observers: Sequence[DownloadObserver]) -> Iterator[bytes]:
    if rest:
        yield rest
    for msg in messages:
        if msg.WhichOneof("kind") != "data":
            raise CollectorError(f"collector sent a second file for {pod.namespace}/{pod.name}")
        received += len(msg.data)
        for o in observers:
            o.received(pod, len(msg.data))
        yield msg.data
    if received != size:
        raise CollectorError(f"download of {pod.namespace}/{pod.name} incomplete: {received} of {size} bytes")
    for o in observers:
        o.file_done(DownloadedFile(pod, "", size))


class PodStreams:
    """The selected pods' streams, opened in the given order (a context manager: leaving it cancels every stream
    still open)."""

    def __init__(self, client: CaptureSource, capture_id: str, pods: Sequence[control_pb2.PodStatus], *,
                 since_ns: int = 0, until_ns: int = 0, bpf: str = "",
                 observers: Sequence[DownloadObserver] = ()) -> None:
        self._client = client
        self._capture_id = capture_id
        self._pods = list(pods)
        self._window = (since_ns, until_ns, bpf)
        self._observers = observers
        self._messages: list[Iterator[control_pb2.DownloadChunk]] = []
        self.streams: list[PodStream] = []

    def __enter__(self) -> PodStreams:
        since_ns, until_ns, bpf = self._window
        try:
            for ps in self._pods:
                messages = self._client.download(self._capture_id, [_selector(ps.pod)], since_ns=since_ns,
                                                 until_ns=until_ns, bpf=bpf)
                self._messages.append(messages)
                stream = _open(messages, self._observers)
                if stream is not None:
                    self.streams.append(stream)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for messages in self._messages:
            close = getattr(messages, "close", None)
            if close is not None:
                close()  # a generator over a gRPC call: closing it ends the call
        self._messages.clear()
