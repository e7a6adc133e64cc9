"""``podcap.v1.Control``: the collector's API for the CLI.

Every call is authenticated (bearer token in the ``authorization`` metadata) and authorized per namespace by the
``Authorizer`` (``podcap.collector.api.auth``), and recorded in the audit trail — allowed, denied or failed: a read
is checked (its pods, window and filter; a follow, that the capture still runs) before it is recorded, so a refused
read is recorded as failed, with why. A record's detail names pods as ``namespace/name`` and times in RFC 3339, and
a read's filter column holds the read's own filter (the capture's is in its start record). Our
errors become gRPC status codes with one-line messages a user can act on, through the one table in
``podcap.collector.api.errors``; anything else is a bug and surfaces as UNKNOWN. Downloads stream
one pcap file per pod (segments joined: the first file header, then every segment's records), optionally only a
time window and the packets matching a BPF filter, each pod's file from an offset when the client holds its start
(``podcap.collector.downloads``: the resume check); a capture deleted meanwhile ends the stream with NOT_FOUND.
"""

from __future__ import annotations

import datetime
import logging
import tempfile
import time
from collections.abc import Iterator

import grpc

from podcap.collector.api.auth import PODS_CAPTURE, AuthError, Authorizer, DeniedError, Principal, target_scopes
from podcap.collector.api.errors import abort_for
from podcap.collector.api.payload import KubeNamespacePolicies, NamespacePolicies, NoPolicies, effective_snaplen
from podcap.collector.api.recorders import RecorderCalls
from podcap.collector.captures.lifecycle import CaptureDeletedError
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.captures.model import Capture
from podcap.collector.captures.pods import file_format
from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.downloads import Piece, PodFile, ShortPieceError, check_resume_points, file_messages, given
from podcap.collector.filters import compile_filter, linktype_for
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.targets import target_text
from podcap.errors import InvalidInputError, NotFoundError, PodcapError, PreconditionError
from podcap.formats.pcap import FILE_HEADER_LEN, MAX_SNAPLEN, FileFormat
from podcap.formats.selection import Window, names_pod, select_records
from podcap.names import check_namespace
from podcap.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger(__name__)


class PodNotInCaptureError(NotFoundError):
    """A read names a pod the capture does not have."""


class InvalidWindowError(InvalidInputError):
    """A read's time window holds nothing by construction (--since after --until)."""


class CaptureEndedError(PreconditionError):
    """A follow of a capture that has ended."""


def rfc3339(ns: int) -> str:
    dt = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


MAX_AUDIT = 10000
MAX_CAPTURABLE = 10000


def target_namespaces(t: control_pb2.Target) -> list[str | None]:
    """Where permissions are checked for a target: its namespace, or cluster-wide for --all-namespaces and nodes
    (``auth.target_scopes`` says on which resource)."""
    return target_scopes(t)[1]


class ControlServicer(RecorderCalls, control_pb2_grpc.ControlServicer):
    def __init__(self, captures: CaptureManager, authorizer: Authorizer,
                 policies: NamespacePolicies | None = None, recorders: RecorderManager | None = None) -> None:
        self.captures = captures
        self.auth = authorizer
        cluster = captures.placement.cluster
        # The namespaces' payload policy (``podcap.collector.api.payload``): from the API server when there is one.
        self.policies = policies or (KubeNamespacePolicies(cluster.api) if cluster is not None else NoPolicies())
        self.recorders = recorders  # flight recorders' calls: ``podcap.collector.api.recorders``
        if recorders is not None:
            recorders.on_save.append(self._audit_save)

    # ---- authentication, authorization, audit ----

    def _audit(self, who: str, action: str, *, capture: Capture | None = None, target: control_pb2.Target | None = None,
               bpf: str = "", read: bool = False, result: str, detail: str = "", capture_id: str = "") -> None:
        """One audit record. ``read``: the filter is the read's own (``bpf``, maybe none), not the capture's."""
        t = target if target is not None else (capture.request.target if capture is not None else None)
        shown = bpf if read else bpf or (capture.request.settings.filter if capture else "")
        rec = control_pb2.AuditRecord(
            unix_ns=time.time_ns(), user=who, action=action, capture_id=capture.id if capture else capture_id,
            target=target_text(t) if t is not None else "", filter=shown, result=result, detail=detail[:2000])
        log.info("audit: %s %s %s %s %s", who, action, rec.capture_id or "-", result, detail[:200])
        try:
            self.captures.store.add_audit(rec)
        except Exception:
            log.exception("cannot write the audit record")

    def _principal(self, context: grpc.ServicerContext, action: str) -> Principal:
        token = None
        for key, value in context.invocation_metadata():
            if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
                token = value[7:]
        try:
            return self.auth.authenticate(token)
        except AuthError as e:
            self._audit("unauthenticated", action, result="denied", detail=str(e))
            abort_for(context, e)

    def _authorize(self, context: grpc.ServicerContext, who: Principal, action: str, verb: str,
                   namespaces: list[str | None], *, capture: Capture | None = None,
                   target: control_pb2.Target | None = None) -> None:
        t = target if target is not None else capture.request.target if capture is not None else None
        resource = target_scopes(t)[0] if t is not None else PODS_CAPTURE
        for ns in namespaces:
            try:
                self.auth.check(who, verb, ns, resource)
            except DeniedError as e:
                self._audit(who.user, action, capture=capture, target=target, result="denied", detail=str(e))
                abort_for(context, e)

    def _capture_for(self, context: grpc.ServicerContext, who: Principal, action: str, capture_id: str,
                     verb: str) -> Capture:
        try:
            cap = self.captures.get(capture_id)
        except CaptureNotFoundError as e:
            self._audit(who.user, action, capture_id=capture_id[:64], result="failed", detail=str(e))
            if isinstance(e, CaptureDeletedError) and not all(
                    self._may(who, "get", ns, target_scopes(e.deletion.target)[0])
                    for ns in target_namespaces(e.deletion.target)):
                e = CaptureNotFoundError(f"no capture {capture_id!r} (see `podcap list`)")  # not theirs to know
            abort_for(context, e)
        self._authorize(context, who, action, verb, target_namespaces(cap.request.target), capture=cap)
        return cap

    # ---- calls ----

    def StartCapture(  # noqa: N802
        self, request: control_pb2.StartCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.StartCaptureResponse:
        who = self._principal(context, "start")
        request.target.ClearField("object_selector")  # set by the collector only
        request.target.ClearField("payload_cap")
        self._authorize(context, who, "start", "create", target_namespaces(request.target), target=request.target)
        try:
            effective_snaplen(self.policies, self.auth, who, request.target, request.settings.snaplen).apply(request)
            cap = self.captures.start(request)
        except PodcapError as e:
            log.info("start refused: %s", e)
            self._audit(who.user, "start", target=request.target, bpf=request.settings.filter, result="failed",
                        detail=str(e))
            abort_for(context, e)
        n = len(cap.pods)
        detail = f"{n} pod{'' if n == 1 else 's'}"
        if request.target.HasField("payload_cap"):
            detail += f"; snaplen capped at {request.target.payload_cap.snaplen}: {request.target.payload_cap.reason}"
        self._audit(who.user, "start", capture=cap, result="allowed", detail=detail)
        return control_pb2.StartCaptureResponse(capture=self.captures.status(cap))

    def StopCapture(  # noqa: N802
        self, request: control_pb2.StopCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.CaptureStatus:
        who = self._principal(context, "stop")
        cap = self._capture_for(context, who, "stop", request.capture_id, "delete")
        self._audit(who.user, "stop", capture=cap, result="allowed")
        return self.captures.status(self.captures.stop(cap.id))

    def DeleteCapture(  # noqa: N802
        self, request: control_pb2.DeleteCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.DeleteCaptureResponse:
        who = self._principal(context, "delete")
        cap = self._capture_for(context, who, "delete", request.capture_id, "delete")
        try:
            deletion = self.captures.delete(cap.id, by=who.user, force=request.force)
        except PodcapError as e:  # running without --force; deleted meanwhile; the catalog failing
            self._audit(who.user, "delete", capture=cap, result="failed", detail=str(e))
            abort_for(context, e)
        detail = f"{deletion.reason}; {deletion.bytes} bytes"
        if deletion.pending:
            detail += f"; still to delete: {deletion.pending}"
        self._audit(who.user, "delete", capture=cap, result="allowed", detail=detail)
        return control_pb2.DeleteCaptureResponse(deletion=deletion)

    def ListCaptures(  # noqa: N802
        self, request: control_pb2.ListCapturesRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListCapturesResponse:
        who = self._principal(context, "list")
        allowed: dict[str | None, bool] = {}  # one check per namespace, however many captures it has

        allowed_nodes: list[bool] = []

        def may_see(target: control_pb2.Target) -> bool:
            resource, namespaces = target_scopes(target)
            if resource != PODS_CAPTURE:
                if not allowed_nodes:
                    allowed_nodes.append(self._may(who, "get", None, resource))
                return allowed_nodes[0]
            for ns in namespaces:
                if ns not in allowed:
                    allowed[ns] = self._may(who, "get", ns)
                if not allowed[ns]:
                    return False
            return True

        visible = [self.captures.status(cap) for cap in self.captures.all() if may_see(cap.request.target)]
        deleted = [d for d in self.captures.deleted() if may_see(d.target)]
        return control_pb2.ListCapturesResponse(captures=visible, deleted=deleted,
                                                recorders=self._visible_recorders(may_see))

    def GetCapture(  # noqa: N802
        self, request: control_pb2.GetCaptureRequest, context: grpc.ServicerContext
    ) -> control_pb2.CaptureStatus:
        who = self._principal(context, "status")
        return self.captures.status(self._capture_for(context, who, "status", request.capture_id, "get"))

    def ListAudit(  # noqa: N802
        self, request: control_pb2.ListAuditRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListAuditResponse:
        who = self._principal(context, "audit")
        self._authorize(context, who, "audit", "list", [None])
        limit = min(request.limit or 1000, MAX_AUDIT)
        return control_pb2.ListAuditResponse(records=self.captures.store.audit(limit=limit,
                                                                               capture_id=request.capture_id))

    def ListCapturablePods(  # noqa: N802
        self, request: control_pb2.ListCapturablePodsRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListCapturablePodsResponse:
        # Not audited when allowed (as `list`): it reads no packets and starts nothing; pickers call it often.
        who = self._principal(context, "pods")
        try:
            only = check_namespace(request.namespace) if request.namespace else ""
            pods = self.captures.capturable_pods()
        except PodcapError as e:
            abort_for(context, e)
        cluster_wide = self._may(who, "create", None)
        namespaces = {p.namespace for p in pods if not only or p.namespace == only}
        allowed = {ns for ns in namespaces if cluster_wide or self._may(who, "create", ns)}
        visible = sorted((p for p in pods if p.namespace in allowed), key=lambda p: (p.namespace, p.name, p.uid))
        return control_pb2.ListCapturablePodsResponse(
            pods=[p.to_proto() for p in visible[:MAX_CAPTURABLE]], namespaces=sorted(allowed),
            all_namespaces=cluster_wide, truncated=len(visible) > MAX_CAPTURABLE)

    def _may(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> bool:
        try:
            self.auth.check(who, verb, namespace, resource)
        except DeniedError:
            return False
        return True

    def _pods_named(self, cap: Capture, selectors: list[str]) -> list[str]:
        """The pods ``selectors`` name, as ``namespace/name``; raises PodNotInCaptureError for one naming none."""
        with cap.lock:
            pods = [ps.pod for ps in cap.pods.values()]
        named: list[str] = []
        for sel in selectors:
            match = [p.display for p in pods if names_pod(sel, p)]
            if not match:
                have = ", ".join(sorted(p.display for p in pods)) or "none yet"
                raise PodNotInCaptureError(f"capture {cap.id} has no pod {sel!r} (its pods: {have})")
            named += [m for m in match if m not in named]
        return named

    def _check_read(self, cap: Capture, request: control_pb2.DownloadRequest) -> str:
        """What the audit record says of a download (its pods and window), once the request checked out. Raises
        our errors for pods the capture does not have, an empty window and a filter that does not compile."""
        named = self._pods_named(cap, list(request.pods))
        since, until = request.since_unix_ns, request.until_unix_ns
        if since and until and since > until:
            raise InvalidWindowError(f"--since {rfc3339(since)} is after --until {rfc3339(until)}")
        if request.filter:
            with cap.lock:
                formats = {file_format(ps.fmt) for ps in cap.pods.values() if ps.fmt is not None}
            snaplen = cap.request.settings.snaplen or MAX_SNAPLEN
            for fmt in formats or {FileFormat(linktype_for(cap.request.settings.interface), snaplen, True)}:
                compile_filter(request.filter, fmt)
        detail = [f"pods {', '.join(named)}"] if named else []
        if since or until:
            start, end = rfc3339(since) if since else "the start", rfc3339(until) if until else "the end"
            detail.append(f"from {start} to {end}")
        return "; ".join(detail)

    def Download(  # noqa: N802
        self, request: control_pb2.DownloadRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.DownloadChunk]:
        who = self._principal(context, "download")
        cap = self._capture_for(context, who, "download", request.capture_id, "get")
        try:
            detail = self._check_read(cap, request)
        except PodcapError as e:
            self._audit(who.user, "download", capture=cap, bpf=request.filter, read=True, result="failed",
                        detail=str(e))
            abort_for(context, e)
        if request.resume:
            detail = "; ".join(filter(None, [detail, f"resuming {len(request.resume)} pod(s)"]))
        self._audit(who.user, "download", capture=cap, bpf=request.filter, read=True, result="allowed",
                    detail=detail)
        window = Window(since_ns=request.since_unix_ns, until_ns=request.until_unix_ns, bpf=request.filter)
        try:
            resume = check_resume_points(request.resume)
            yield from self._download(context, cap, list(request.pods), window, resume)
        except ShortPieceError as e:
            context.abort(grpc.StatusCode.DATA_LOSS, str(e))
        except PodcapError as e:  # a resume offset past the end; a segment in the bucket that cannot be read now
            if cap.deleted:  # its objects went while they were read
                context.abort(grpc.StatusCode.NOT_FOUND, _deleted_text(cap))
            abort_for(context, e)

    def _download(self, context: grpc.ServicerContext, cap: Capture, selectors: list[str], window: Window,
                  resume: dict[str, control_pb2.ResumePoint]) -> Iterator[control_pb2.DownloadChunk]:
        """Find each selected pod's segments that overlap the window, then select their records
        (``podcap.formats.selection``, as ``podcap get --from s3://`` does with the bucket's)."""
        for ps, fmt, segments in self.captures.pod_files(cap, selectors, since_ns=window.since_ns,
                                                         until_ns=window.until_ns):
            if not window.whole:
                selected = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the pod's pieces below)
                try:
                    size = select_records(segments, fmt, selected, since_ns=window.since_ns,
                                          until_ns=window.until_ns, bpf=compile_filter(window.bpf, fmt))
                except PodcapError as e:  # a bad filter; a segment in the bucket that cannot be read now
                    selected.close()
                    abort_for(context, e)
                finally:
                    for f, _ in segments:
                        f.close()
                segments = [(selected, size)]
            pieces = [Piece(length - FILE_HEADER_LEN, given(f), name=f"a segment of {ps.pod.display}")
                      for f, length in segments]
            try:
                with PodFile(fmt.header(), pieces) as pf:
                    for msg in file_messages(ps.pod.to_proto(), pf, resume.get(str(ps.pod.uid))):
                        if cap.deleted:  # the files may be gone already: what was read of them is not the file
                            context.abort(grpc.StatusCode.NOT_FOUND, _deleted_text(cap))
                        if msg.WhichOneof("kind") == "data":
                            self.captures.note_downloaded(len(msg.data))
                        yield msg
            finally:
                for f, _ in segments:
                    f.close()

    def Follow(  # noqa: N802
        self, request: control_pb2.FollowRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.FollowMessage]:
        who = self._principal(context, "follow")
        cap = self._capture_for(context, who, "follow", request.capture_id, "get")
        try:
            if not cap.live:
                why = f" ({cap.end_reason})" if cap.end_reason else ""
                raise CaptureEndedError(f"capture {cap.id} has ended{why}: nothing to follow; its packets are "
                                        f"stored (podcap get {cap.id})")
            named = self._pods_named(cap, list(request.pods))
        except PodcapError as e:
            self._audit(who.user, "follow", capture=cap, read=True, result="failed", detail=str(e))
            abort_for(context, e)
        self._audit(who.user, "follow", capture=cap, read=True, result="allowed",
                    detail=f"pods {', '.join(named)}" if named else "")
        sub = self.captures.follow(cap.id, list(request.pods))
        context.add_callback(lambda: self.captures.unfollow(cap.id, sub))
        yield from sub.messages()


def _deleted_text(cap: Capture) -> str:
    return f"capture {cap.id} was {cap.deleted}, while it was being downloaded"

