"""``podcap get``: download a capture as one file per pod (pcap or pcapng), or merged into one pcapng file.

``--merge FILE.pcapng`` writes one pcapng file (each pod its own interface, packets in time order, per-pod drop
counters in Interface Statistics Blocks) into ``FILE.part`` and renames it. Up to ``pod_streams.MAX_STREAMS`` pods
are downloaded side by side, one stream each, and merged in C as they arrive (no per-pod files at all); more pods
(or no C library) go through per-pod files in a temporary directory next to FILE (large captures may not fit in
/tmp), merged once all are there; ``--merge -`` writes the merged file to stdout
(``podcap get ID --merge - | wireshark -k -i -``). With ``-o DIR`` as well, the per-pod files are kept in DIR.
The capture's status is read after the download, so the counters in the file are as recent as its packets.

On a terminal, stderr shows the download's progress (``download_progress``). ``-o DIR`` keeps a journal of the pod
files it started and completed, so that the same command run again after an interruption (Ctrl+C, a kill, a cut
connection) fetches only what is missing: the pods it had not completed, and each file it was writing from where it
stopped, checked against the collector's bytes (``resume``); a complete run removes it.
"""

from __future__ import annotations

import datetime
import errno
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, NamedTuple

import click
import grpc

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.complete import complete_capture_id, complete_capture_pod
from podcap.collector.cli.dedup import WINDOW_NS
from podcap.collector.cli.errors import CommandError
from podcap.collector.cli.get.bucket import BucketClient
from podcap.collector.cli.get.download import (
    CaptureSource,
    DownloadedFile,
    download_files,
    expected_size,
    per_pod_paths,
)
from podcap.collector.cli.get.merge import (
    MergeInput,
    StreamInput,
    can_merge_streams,
    merge_pcaps,
    merge_streams,
    pcap_to_pcapng,
)
from podcap.collector.cli.get.pcapng import capture_section, merge_section, pod_interface, pod_stats
from podcap.collector.cli.get.pod_streams import MAX_STREAMS, PodStreams
from podcap.collector.cli.get.progress import DownloadProgress
from podcap.collector.cli.get.resume import Journal
from podcap.collector.downloads import ResumeOffsetError
from podcap.errors import PodcapError
from podcap.formats.pcap import PcapFormatError
from podcap.formats.pcapng import InterfaceStats, PcapngError
from podcap.formats.selection import Window, names_pod, pod_selected
from podcap.units import human_bytes, parse_duration
from podcap.v1 import control_pb2


def rfc3339(ns: int) -> str:
    """``2026-11-26T10:00:00.123Z``: a time as --since/--until take it (UTC, milliseconds)."""
    dt = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_time(text: str) -> int:
    """Nanoseconds since the epoch for an RFC 3339 time or a duration before now (``10m``)."""
    try:
        return time.time_ns() - int(parse_duration(text) * 1e9)
    except ValueError:
        pass
    try:
        dt = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"invalid time {text!r}: use RFC 3339 (2026-11-26T10:00:00Z) or a duration (10m)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


@contextmanager
def _merge_output(path: str) -> Iterator[IO[bytes]]:
    """The merged file: stdout for ``-``, else ``path.part`` renamed to ``path`` on success."""
    if path == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    part = path + ".part"
    try:
        with open(part, "wb") as f:
            yield f
        os.replace(part, path)
    finally:
        if os.path.exists(part):
            os.unlink(part)


class Merged(NamedTuple):
    """Packets written per pod, and per pod the second sightings left out (one copy per packet)."""

    packets: list[int]
    left_out: list[int]


def _merge(status: control_pb2.CaptureStatus, files: list[DownloadedFile], path: str, one_copy_ns: int) -> Merged:
    inputs = [MergeInput(f.path, pod_interface(status, f.pod), pod_stats(status, f.pod)) for f in files]
    section, marks = merge_section(status, [f.pod for f in files])
    left_out: list[int] = []
    with _merge_output(path) as out:
        counts = merge_pcaps(inputs, out, section=section, one_copy_ns=one_copy_ns, dropped=left_out, marks=marks)
    return Merged(counts, left_out)


def _streamable(path: str, one_copy_ns: int) -> bool:
    """Whether the merge can run while downloading: the C core is built and the output is a real descriptor."""
    return can_merge_streams(sys.stdout.buffer if path == "-" else None, one_copy=bool(one_copy_ns))


def _merge_while_downloading(client: CaptureSource, status: control_pb2.CaptureStatus, capture_id: str,
                             wanted: list[control_pb2.PodStatus], window: Window, path: str,
                             one_copy_ns: int) -> Merged:
    """One Download stream per pod, merged in C as the packets arrive: no per-pod files (``pod_streams``)."""
    with _progress(wanted, window) as progress, \
            PodStreams(client, capture_id, wanted, since_ns=window.since_ns, until_ns=window.until_ns,
                       bpf=window.bpf, observers=[progress]) as pods, _merge_output(path) as out:
        inputs = [StreamInput(f"{s.pod.namespace}/{s.pod.name}", pod_interface(status, s.pod), s.fmt, s.blocks)
                  for s in pods.streams]

        def stats() -> list[InterfaceStats | None]:
            final = client.get(capture_id)  # after the last packet: counters as recent as the packets
            return [pod_stats(final, s.pod) for s in pods.streams]

        left_out: list[int] = []
        counts = merge_streams(inputs, out, section=capture_section(status), stats=stats, one_copy_ns=one_copy_ns,
                               dropped=left_out)
        return Merged(counts, left_out)


def _download_then_merge(client: CaptureSource, capture_id: str, pods: list[str],
                         wanted: list[control_pb2.PodStatus], window: Window, path: str, one_copy_ns: int) -> Merged:
    """The pods' files into a temporary directory next to the output (large captures may not fit in /tmp), then
    merged from there."""
    parent = None if path == "-" else os.path.dirname(os.path.abspath(path))
    with tempfile.TemporaryDirectory(prefix=".podcap-merge-", dir=parent) as tmp:
        with _progress(wanted, window) as progress:
            files = download_files(client, capture_id, pods, _Numbered(tmp), since_ns=window.since_ns,
                                   until_ns=window.until_ns, bpf=window.bpf, observers=[progress])
        status = client.get(capture_id)
        return _merge(status, files, path, one_copy_ns)


def _to_pcapng(status: control_pb2.CaptureStatus, files: list[DownloadedFile]) -> list[tuple[str, int]]:
    """Replace each downloaded ``.pcap`` by a one-interface ``.pcapng`` beside it."""
    out: list[tuple[str, int]] = []
    for f in files:
        dst = f.path.removesuffix(".pcap") + ".pcapng"
        section, marks = merge_section(status, [f.pod])
        pcap_to_pcapng(f.path, dst, pod_interface(status, f.pod), stats=pod_stats(status, f.pod), section=section,
                       marks=marks)
        os.unlink(f.path)
        out.append((dst, os.path.getsize(dst)))
    return out


def _merge_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--merge -o x.pcapng`` took ``-o`` as the file's name (and ``x.pcapng`` as a pod): an option's name is
    never a file name here; ``-`` alone is stdout."""
    if value and value.startswith("-") and value != "-":
        raise click.BadParameter(f"takes a FILE to write ('-' for stdout), not {value!r}: podcap get ID --merge "
                                 "FILE")
    return value


@click.command()
@click.argument("capture_id", required=False, shell_complete=complete_capture_id)
@click.argument("pods", nargs=-1, shell_complete=complete_capture_pod)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory to write one file per pod into: <namespace>/<pod>.pcap (or .pcapng).")
@click.option("--format", "file_format", type=click.Choice(["pcap", "pcapng"]), default="pcap", show_default=True,
              help="Per-pod file format for -o; pcapng adds the pod's name, node, uid, filter and drop counters.")
@click.option("--merge", "merge_path", type=click.Path(dir_okay=False, allow_dash=True), callback=_merge_path,
              help="Write ONE pcapng file, each pod its own interface, packets in time order, each packet once "
              "('-' = stdout).")
@click.option("--all-copies", is_flag=True,
              help="With --merge: keep every pod's copy of a packet seen on two pods (by default the second "
              "sighting is left out and counted).")
@click.option("--since", default="", help="Only packets from this time: RFC 3339 (2026-11-26T10:00:00Z) or "
              "relative to now (10m, 1h30m).")
@click.option("--until", default="", help="Only packets up to this time (same forms as --since).")
@click.option("--filter", "bpf", default="", help="Only packets matching this BPF filter (tcpdump syntax).")
@click.option("--from", "bucket", default="", metavar="s3://BUCKET/PREFIX/CAPTURE",
              help="Read the capture straight from its bucket (no collector), with your own AWS credentials.")
@click.option("--s3-endpoint", default="", envvar="S3_ENDPOINT", help="With --from: an S3 endpoint other than AWS.")
@click.option("--s3-region", default="", envvar="AWS_REGION", help="With --from: the bucket's region.")
@click.pass_context
def get(ctx: click.Context, capture_id: str | None, pods: tuple[str, ...], out_dir: str | None, file_format: str,
        merge_path: str | None, all_copies: bool, since: str, until: str, bpf: str, bucket: str, s3_endpoint: str,
        s3_region: str) -> None:
    """Download a capture (optionally only PODS, as name, namespace/name or uid).

    \b
      podcap get ID -o DIR                    DIR/<namespace>/<pod>.pcap, one file per pod
      podcap get ID -o DIR --format pcapng    the same as pcapng, with pod metadata and drop counters
      podcap get ID --merge all.pcapng        one file, one interface per pod (Wireshark: frame.interface_name)
      podcap get ID --merge - | wireshark -k -i -
      podcap get --from s3://BUCKET/PREFIX/ID -o DIR   from the bucket, without a collector
    """
    if not out_dir and not merge_path:
        raise click.UsageError("say where to: -o DIR (one file per pod) or --merge FILE.pcapng (one file)", ctx)
    prog = ctx.find_root().info_name or "podcap"
    if merge_path == "-" and sys.stdout.isatty():
        raise click.UsageError("--merge - writes binary pcapng to stdout, which is a terminal: pipe it "
                               "(| wireshark -k -i -) or give a file name", ctx)
    for name in ("s3_endpoint", "s3_region"):
        if not bucket and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--{name.replace('_', '-')} applies to --from s3://… only (a read through the "
                                   "collector uses the collector's bucket settings)", ctx)
    window = _window(ctx, since, until, bpf)
    one_copy_ns = 0 if all_copies else WINDOW_NS
    client: CollectorClient | BucketClient
    given_id = ""  # with --from: a first argument that is not the URL's capture (a pod of it, or a mistake)
    if bucket:
        try:
            client = BucketClient(bucket, endpoint=s3_endpoint, region=s3_region)
        except PodcapError as e:
            raise click.UsageError(str(e), ctx) from e
        given_id = capture_id if capture_id and capture_id != client.capture_id else ""
        if given_id:
            pods = (given_id, *pods)  # with --from the capture is the URL's: another argument names a pod
        capture_id = client.capture_id
    elif not capture_id:
        raise click.UsageError("which capture? give its ID (see `podcap list`), or --from s3://BUCKET/PREFIX/ID", ctx)
    else:
        client = CollectorClient(ctx.obj["collector"])
    with client:
        try:
            status = client.get(capture_id)  # an unknown id fails here, before any file is created
        except PodcapError as e:
            if not bucket:
                raise
            raise CommandError(str(e), "check the s3:// URL (s3://BUCKET/PREFIX/CAPTURE) and your credentials",
                               prog=prog) from e
        if given_id and not any(names_pod(given_id, ps.pod) for ps in status.pods):
            names = ", ".join(f"{ps.pod.namespace}/{ps.pod.name}" for ps in status.pods) or "none"
            raise CommandError(f"capture {capture_id} has no pod {given_id}", f"--from names capture {capture_id} "
                               f"(the URL's last part), so an argument besides it names a pod; its pods: {names}",
                               prog=prog)
        _check_request(status, list(pods), window, prog=prog)
        started_ns = time.time_ns()
        try:
            if out_dir:
                files, journal = _fetch_into_dir(client, status, capture_id, list(pods), out_dir, window)
                status = client.get(capture_id)
                _get_into_dir(status, files, file_format, merge_path, one_copy_ns)
                journal.finish()
            else:
                assert merge_path is not None
                wanted = [ps for ps in status.pods if pod_selected(ps.pod, pods)]
                # A save's triggers are marked on packets: that needs the files before the section header (merge).
                if 0 < len(wanted) <= MAX_STREAMS and not status.save.triggers and _streamable(merge_path,
                                                                                                 one_copy_ns):
                    merged = _merge_while_downloading(client, status, capture_id, wanted, window, merge_path,
                                                      one_copy_ns)
                else:
                    merged = _download_then_merge(client, capture_id, list(pods), wanted, window, merge_path,
                                                  one_copy_ns)
                _report_merge(merge_path, merged)
            _snapshot_note(status, prog=prog, started_ns=started_ns)
        except (PcapFormatError, PcapngError) as e:
            hint = f"the stored file is damaged: '{prog} get {capture_id} -o DIR' keeps the per-pod files as they are"
            raise CommandError(f"capture {capture_id}: {e}", hint, prog=prog) from e
        except OSError as e:
            where = f" {e.filename}" if e.filename else ""
            raise CommandError(f"cannot write{where}: {e.strerror or e}", _write_hint(e), prog=prog) from e


def _write_hint(e: OSError) -> str:
    """What to do when writing the output failed: it depends on why."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space, or choose another -o/--merge path"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose an -o/--merge path you may write to"
    return "choose another -o/--merge path"


def _window(ctx: click.Context, since: str, until: str, bpf: str) -> Window:
    """The time window and filter of the read; an empty window (``--since`` after ``--until``) is a mistake."""
    try:
        window = Window(since_ns=parse_time(since) if since else 0, until_ns=parse_time(until) if until else 0,
                        bpf=bpf)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param_hint="--since/--until") from e
    if window.since_ns and window.until_ns and window.since_ns > window.until_ns:
        raise click.UsageError(f"--since {rfc3339(window.since_ns)} is after --until {rfc3339(window.until_ns)}: "
                               "the window holds nothing", ctx)
    return window


def _check_request(status: control_pb2.CaptureStatus, pods: list[str], window: Window, *, prog: str) -> None:
    """Refuse a read that cannot hold anything by mistake: pods the capture does not have, a capture with no pods."""
    names = ", ".join(f"{ps.pod.namespace}/{ps.pod.name}" for ps in status.pods) or "none"
    unknown = [p for p in pods if not any(names_pod(p, ps.pod) for ps in status.pods)]
    if unknown:
        raise CommandError(f"capture {status.id} has no pod {', '.join(unknown)}", f"its pods: {names}", prog=prog)
    if not status.pods:
        raise CommandError(f"capture {status.id} has no pods: nothing to read", f"'{prog} status {status.id}' "
                           "says why", prog=prog)
    # A window outside the capture's lifetime (by the collector's clock) is not refused here: records carry their
    # node's clock, which may differ from the collector's, and data brought in from elsewhere may predate the
    # capture. Whether a window holds packets is the segment index's to say (left for the collector's Download).


def _snapshot_note(status: control_pb2.CaptureStatus, *, prog: str, started_ns: int) -> None:
    """Say on stderr that the files are what a running capture stored so far (after them: errors stay one line)."""
    if status.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
        click.echo(f"{prog} get: capture {status.id} is still running: this is what it had stored at "
                   f"{rfc3339(started_ns)}; get it again once it has ended for all of it", err=True)


def _progress(pods: list[control_pb2.PodStatus], window: Window, note: str = "", *, held: int = 0
              ) -> DownloadProgress:
    """The progress display of a download of these pods (their total size is known without a window; ``held``: of
    it, bytes already there, which a resume does not fetch)."""
    total = max(0, sum(expected_size(ps) for ps in pods) - held) if window.whole else None
    return DownloadProgress(total_bytes=total, pods=len(pods), note=note)


def _fetch_into_dir(client: CaptureSource, status: control_pb2.CaptureStatus, capture_id: str, pods: list[str],
                    out_dir: str, window: Window, *, resume: bool = True) -> tuple[list[DownloadedFile], Journal]:
    """Download the selected pods into ``out_dir``, except those an interrupted run of the same get completed, and
    each pod file it left part-way from where it stopped (``resume``)."""
    dest = per_pod_paths(out_dir, ".pcap")
    path_of = {ps.pod.uid: dest(ps.pod) for ps in status.pods if ps.pod.uid}  # the download's own paths
    journal = Journal(out_dir, capture_id, window, dest)
    kept = journal.complete(status, pods, path_of)
    wanted = [ps for ps in status.pods if pod_selected(ps.pod, pods)]
    kept_uids = {f.pod.uid for f in kept}
    todo = [ps for ps in wanted if ps.pod.uid not in kept_uids]
    points: list[control_pb2.ResumePoint] = []
    if resume:
        points, notes = journal.resumable(status, pods, path_of, kept_uids)
        for line in notes:
            click.echo(line, err=True)
    note = ""
    if kept:
        note = f", {len(kept)} already complete"
        click.echo(f"resuming: {len(kept)} of {len(wanted)} pod file(s) already complete in {out_dir}, "
                   f"fetching {len(todo)}", err=True)
        if not todo:
            return kept, journal
        pods = [ps.pod.uid for ps in todo]
    if points:
        held = sum(p.offset for p in points)
        click.echo(f"resuming {len(points)} pod file(s) part-way in {out_dir}: {human_bytes(held)} already there",
                   err=True)
    with _progress(todo, window, note, held=sum(p.offset for p in points)) as progress:
        try:
            files = download_files(client, capture_id, pods, dest, since_ns=window.since_ns,
                                   until_ns=window.until_ns, bpf=window.bpf, observers=[progress, journal],
                                   resume=points, note=lambda text: click.echo(text, err=True))
        except PodcapError as e:
            past_end = isinstance(e, ResumeOffsetError) or getattr(e, "code", None) == grpc.StatusCode.OUT_OF_RANGE
            if not (points and past_end):
                raise
            # A kept part is longer than the pod's file is now (retention deleted its oldest segments since).
            click.echo(f"{e}; downloading without resuming", err=True)
            return _fetch_into_dir(client, status, capture_id, pods, out_dir, window, resume=False)
    if not kept:
        return files, journal
    order = {ps.pod.uid: i for i, ps in enumerate(status.pods)}  # the collector's order, as without a resume
    return sorted(kept + files, key=lambda f: order.get(f.pod.uid, len(order))), journal


def _get_into_dir(status: control_pb2.CaptureStatus, files: list[DownloadedFile], file_format: str,
                  merge_path: str | None, one_copy_ns: int) -> None:
    if merge_path:
        _report_merge(merge_path, _merge(status, files, merge_path, one_copy_ns))
    listed = _to_pcapng(status, files) if file_format == "pcapng" else [(f.path, f.size) for f in files]
    for path, n in listed:
        click.echo(f"{path}\t{human_bytes(n)}", err=merge_path == "-")  # stdout carries the merged file


class _Numbered:
    """Download destinations ``<dir>/000000.pcap``, ``000001.pcap`` …: no name can collide in a merge."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.n = 0

    def __call__(self, pod: object) -> str:
        self.n += 1
        return os.path.join(self.directory, f"{self.n - 1:06d}.pcap")


def _report_merge(path: str, merged: Merged) -> None:
    counts = merged.packets
    line = f"{sum(counts)} packets from {len(counts)} pod(s)"
    if left_out := sum(merged.left_out):
        line += f" ({left_out} second sightings of packets seen on two pods left out; --all-copies keeps them)"
    if path == "-":
        click.echo(f"merged {line}", err=True)
    else:
        click.echo(f"{path}\t{human_bytes(os.path.getsize(path))}\t{line}")
