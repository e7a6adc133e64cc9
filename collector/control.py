"""``podcap.v1.Control``: the collector's API for the CLI.

Translates the capture manager's exceptions into gRPC status codes with one-line messages a user can act on, and
streams stored packets back as one pcap file per pod (segments joined: the first file header, then every
segment's records).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from podcap.collector.captures import CaptureManager, CaptureNotFoundError, NoAgentError
from podcap.collector.storage.window import WindowFilterError, compile_filter, select_records
from podcap.collector.targets import NoMatchError
from podcap.pcapfile import FILE_HEADER_LEN
from podcap.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)

DOWNLOAD_BLOCK = 1 << 20


def _abort_for(context: grpc.ServicerContext, e: Exception) -> None:
    if isinstance(e, (NoMatchError, CaptureNotFoundError)):
        context.abort(grpc.StatusCode.NOT_FOUND, str(e))
    if isinstance(e, NoAgentError):
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
    if isinstance(e, ValueError):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    raise e


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, captures: CaptureManager) -> None:
        self.captures = captures

    def StartCapture(  # noqa: N802
        self, request: control_pb2.StartCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.StartCaptureResponse:
        try:
            cap = self.captures.start(request)
        except (ValueError, LookupError, NoAgentError) as e:
            log.info("start refused: %s", e)
            _abort_for(context, e)
            raise
        return control_pb2.StartCaptureResponse(capture=self.captures.status(cap))

    def StopCapture(  # noqa: N802
        self, request: control_pb2.StopCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.CaptureStatus:
        try:
            cap = self.captures.stop(request.capture_id)
        except CaptureNotFoundError as e:
            _abort_for(context, e)
            raise
        return self.captures.status(cap)

    def ListCaptures(  # noqa: N802
        self, request: control_pb2.ListCapturesRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListCapturesResponse:
        return control_pb2.ListCapturesResponse(captures=[self.captures.status(c) for c in self.captures.all()])

    def GetCapture(  # noqa: N802
        self, request: control_pb2.GetCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.CaptureStatus:
        try:
            return self.captures.status(self.captures.get(request.capture_id))
        except CaptureNotFoundError as e:
            _abort_for(context, e)
            raise

    def Download(  # noqa: N802
        self, request: control_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.DownloadChunk]:
        try:
            cap = self.captures.get(request.capture_id)
        except CaptureNotFoundError as e:
            _abort_for(context, e)
            raise
        windowed = bool(request.since_unix_ns or request.until_unix_ns or request.filter)
        if request.since_unix_ns and request.until_unix_ns and request.since_unix_ns > request.until_unix_ns:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "--since is after --until")
        for ps, fmt, segments in self.captures.pod_files(cap, list(request.pods), since_ns=request.since_unix_ns,
                                                         until_ns=request.until_unix_ns):
            if windowed:
                try:
                    bpf = compile_filter(request.filter, fmt)
                    selected = select_records(segments, fmt, since_ns=request.since_unix_ns,
                                              until_ns=request.until_unix_ns, bpf=bpf)
                except WindowFilterError as e:
                    for f, _ in segments:
                        f.close()
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
                for f, _ in segments:
                    f.close()
                selected.seek(0, 2)
                segments = [(selected, selected.tell())]
            try:
                size = FILE_HEADER_LEN + sum(n - FILE_HEADER_LEN for _, n in segments)
                yield control_pb2.DownloadChunk(file=control_pb2.FileStart(
                    pod=ps.pod.to_proto(), path=f"{ps.pod.namespace}/{ps.pod.name}.pcap", size=size))
                yield control_pb2.DownloadChunk(data=fmt.header())
                for f, length in segments:
                    f.seek(FILE_HEADER_LEN)
                    left = length - FILE_HEADER_LEN
                    while left > 0:
                        block = f.read(min(DOWNLOAD_BLOCK, left))
                        if not block:
                            context.abort(grpc.StatusCode.DATA_LOSS, f"segment of {ps.pod.display} is shorter "
                                          "than recorded")
                        left -= len(block)
                        yield control_pb2.DownloadChunk(data=block)
            finally:
                for f, _ in segments:
                    f.close()

    def Follow(  # noqa: N802
        self, request: control_pb2.FollowRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.FollowMessage]:
        try:
            sub = self.captures.follow(request.capture_id, list(request.pods))
        except CaptureNotFoundError as e:
            _abort_for(context, e)
            raise
        context.add_callback(lambda: self.captures.unfollow(request.capture_id, sub))
        yield from sub.messages()
