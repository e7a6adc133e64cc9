"""A capture as pcapng metadata: what the section header, each pod's interface and its statistics say, from the
capture's status.

The blocks themselves are encoded by ``podcap.formats.pcapng`` (the one encoder); this module decides their content
for a podcap capture: the section's comments (which capture, of what, how it ended), each pod's interface (named
``<namespace>/<pod>``, described by node, uid, ip, capture interface and filter) and its final counters (received,
kernel and podcap drops by cause, stored, deleted by retention); a recorder's save adds one section comment per
trigger, and in a file of the trigger's pod (or of a trigger about no pod) a comment on the first packet at or
after it (``merge_section``'s marks, placed by ``podcap.collector.cli.get.merge``). ``get --merge``, ``get --format
pcapng`` and the live stream (``podcap.collector.cli.live.stream``) all take them from here, so a merged file and a
live view say the same of a pod.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from podcap.collector.cli.get.merge import Mark
from podcap.collector.cli.render import capture_state
from podcap.collector.cli.words import enum_word
from podcap.collector.targets import target_text
from podcap.drops import Drops
from podcap.formats.pcapng import InterfaceInfo, InterfaceStats, SectionInfo
from podcap.v1 import common_pb2, control_pb2


def _pod_status(status: control_pb2.CaptureStatus, pod: common_pb2.Pod) -> control_pb2.PodStatus | None:
    for ps in status.pods:
        if ps.pod.uid == pod.uid:
            return ps
    for ps in status.pods:
        if (ps.pod.namespace, ps.pod.name) == (pod.namespace, pod.name):
            return ps
    return None


def pod_interface(status: control_pb2.CaptureStatus, pod: common_pb2.Pod) -> InterfaceInfo:
    """The pcapng interface of one pod: ``<namespace>/<pod>``, described by node, uid, ip, handle and filter."""
    ps = _pod_status(status, pod)
    node = pod.node or (ps.pod.node if ps is not None else "") or "?"
    parts = [f"node {node}", f"uid {pod.uid or '?'}"]
    if pod.ip:
        parts.append(f"ip {pod.ip}")
    if ps is not None and ps.interface:
        parts.append(f"captured on {ps.interface}")
    parts.append(f"filter {status.settings.filter!r}" if status.settings.filter else "no filter")
    parts.append(f"podcap capture {status.id}")
    return InterfaceInfo(name=f"{pod.namespace}/{pod.name}", description=f"pod {pod.namespace}/{pod.name}: "
                         + ", ".join(parts), filter=status.settings.filter)


def pod_stats(status: control_pb2.CaptureStatus, pod: common_pb2.Pod) -> InterfaceStats | None:
    ps = _pod_status(status, pod)
    if ps is None:
        return None
    return InterfaceStats(
        start_ns=status.created_unix_ns,
        end_ns=status.ended_unix_ns or time.time_ns(),
        received=ps.kernel.received,
        kernel_dropped=ps.kernel.dropped,
        if_dropped=ps.kernel.if_dropped,
        drops=Drops.from_proto(ps.drops),
        delivered=ps.packets,
        retired=ps.retired_packets,
    )


def capture_section(status: control_pb2.CaptureStatus, *, triggers: bool = True) -> SectionInfo:
    """Section header comments: which capture, of what, and how it ended (and a save's triggers, unless
    ``triggers`` is off: ``merge_section`` makes them marks)."""
    detail = [f"target {target_text(status.target)}",
              f"filter {status.settings.filter!r}" if status.settings.filter else "no filter",
              f"state {capture_state(status.state)}" + (f" ({status.end_reason})" if status.end_reason else ""),
              f"{len(status.pods)} pod(s)"]
    comments = [f"podcap capture {status.id}", "; ".join(detail)]
    if status.note:
        comments.append(f"note: {status.note}")
    if triggers and status.HasField("save"):  # a recorder's save: what made it, when, on which pod (issue 24)
        comments += [trigger_comment(status.save, t) for t in status.save.triggers]
    return SectionInfo(comments=tuple(comments))


def merge_section(status: control_pb2.CaptureStatus, pods: Sequence[common_pb2.Pod]) -> tuple[SectionInfo, list[Mark]]:
    """The section header and the marks of a file of ``pods`` (interface i = pods[i]): a save's trigger about one of
    them, or about no pod, becomes a mark (a comment on the first packet at or after it, of that pod or of any: issue
    24); a trigger about another pod stays a section comment."""
    section = capture_section(status, triggers=False)
    if not status.HasField("save"):
        return section, []
    others: list[str] = []
    marks: list[Mark] = []
    for t in status.save.triggers:
        text = trigger_comment(status.save, t)
        at = max(0, t.unix_ns)  # packet times are unsigned
        if not t.pod.name:
            marks.append(Mark(at, None, text))
        elif (i := _pod_index(pods, t.pod)) is not None:
            marks.append(Mark(at, i, text))
        else:
            others.append(text)
    return replace(section, comments=(*section.comments, *others)), marks


def _pod_index(pods: Sequence[common_pb2.Pod], pod: common_pb2.Pod) -> int | None:
    """Which of ``pods`` is ``pod``: by uid, else by namespace and name."""
    for i, p in enumerate(pods):
        if pod.uid and p.uid == pod.uid:
            return i
    for i, p in enumerate(pods):
        if (p.namespace, p.name) == (pod.namespace, pod.name):
            return i
    return None


def _rfc3339_ns(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def trigger_comment(save: control_pb2.RecorderSaveInfo, t: control_pb2.SaveTrigger) -> str:
    """One trigger of a save as a pcapng comment: ``podcap recorder R: trigger restart at <RFC 3339 ns> on pod
    ns/name: <detail> (by <who>); window <from> to <to>``."""
    pod = f" on pod {t.pod.namespace}/{t.pod.name}" if t.pod.name else ""
    return (f"podcap recorder {save.recorder_id}: trigger {enum_word(control_pb2.RecorderTrigger.DESCRIPTOR, t.reason)}"
            f" at {_rfc3339_ns(t.unix_ns)}{pod}: {t.detail}" + (f" (by {t.by})" if t.by else "")
            + f"; window {_rfc3339_ns(save.from_unix_ns)} to {_rfc3339_ns(save.to_unix_ns)}")
