"""``podcap start``, ``podcap stop`` and ``podcap delete``."""

from __future__ import annotations

import math
import time

import click

from podcap.collector.cli.capture.progress import wait_for_end
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.complete import (
    complete_ended_capture_id,
    complete_running_capture_id,
)
from podcap.collector.cli.errors import collector_hint, one_line
from podcap.collector.cli.objects import split_pod_names, target_arguments, target_object
from podcap.collector.cli.record.render import echo_recorder, is_recorder_id
from podcap.collector.cli.render import capture_table, dump, output_option, print_table, to_dict
from podcap.collector.cli.words import INTERFACES
from podcap.unit_options import count_param, duration_param, size_param
from podcap.units import human_bytes
from podcap.v1 import common_pb2, control_pb2


def _target_pods(ctx: click.Context, pods: tuple[str, ...], namespace: str,
                 all_namespaces: bool) -> tuple[str, list[str]]:
    """The namespace and pod names of the target. A pod may be named ``namespace/name`` (as ``get``, ``follow``
    and the extcap name pods): then every such pod is in one namespace, the one of ``-n`` if given."""
    namespace_given = ctx.get_parameter_source("namespace") == click.core.ParameterSource.COMMANDLINE
    if all_namespaces and namespace_given:
        raise click.UsageError("-n/--namespace and -A/--all-namespaces exclude each other: give one", ctx)
    spaces, names = split_pod_names(ctx, pods)
    if spaces:
        if all_namespaces or len(spaces) > 1 or (namespace_given and spaces != {namespace}):
            chosen = sorted(spaces | ({namespace} if namespace_given else set()))
            raise click.UsageError(f"one capture covers pods of one namespace, not {', '.join(chosen)}"
                                   + (" (-A takes no pod names)" if all_namespaces else ""), ctx)
        namespace = spaces.pop()
    elif all_namespaces and pods:
        raise click.UsageError("-A/--all-namespaces takes no pod names: name pods with -n NAMESPACE", ctx)
    return namespace, names


@click.command()
@target_arguments
@click.option("--field-selector", default="",
              help="Field selector, e.g. 'spec.nodeName=node-1' (metadata.name, metadata.namespace, spec.nodeName, "
              "status.phase; =, ==, !=).")
@click.option("--filter", "bpf", default="", help="BPF capture filter (tcpdump syntax).")
@click.option("--snaplen", type=click.IntRange(0, 262144), default=0, help="Bytes kept per packet (0 = all).")
@click.option("--buffer-size", callback=size_param, help="Kernel ring per pod, e.g. 4MiB (default: agent decides).")
@click.option("--interface", type=click.Choice(list(INTERFACES)), default="veth", show_default=True,
              help="veth: the pod's host-side veth; eth0: the pod's eth0 from inside; all: every interface "
              "in the pod, loopback included.")
@click.option("--duration", callback=duration_param, help="Stop after this long (90, 15m, 1h30m).")
@click.option("--max-bytes", callback=size_param, help="Stop once this much is stored (all pods, e.g. 100MiB).")
@click.option("--max-packets", callback=count_param, help="Stop once this many packets are stored.")
@click.option("--segment-size", callback=size_param, help="Rotate each pod's pcap file at this size (default 64MiB).")
@click.option("--segment-time", callback=duration_param, help="Rotate each pod's pcap file after this long.")
@click.option("--keep-bytes", callback=size_param,
              help="Flight recorder: keep at most this much per pod, deleting the oldest segments (e.g. 500MiB).")
@click.option("--keep-duration", callback=duration_param,
              help="Flight recorder: keep per pod only the last this long (e.g. 1h).")
@click.option("--keep-total-bytes", callback=size_param,
              help="Keep at most this much for the whole capture, oldest segments of any pod first.")
@click.option("--note", default="", help="Free text stored with the capture.")
@click.option("--wait", is_flag=True, help="Block until the capture ends (Ctrl+C stops it).")
@output_option()
@click.pass_context
def start(ctx: click.Context, pods: tuple[str, ...], namespace: str, all_namespaces: bool, selector: str,
          field_selector: str, bpf: str,
          snaplen: int, buffer_size: int, interface: str, duration: float, max_bytes: int, max_packets: int,
          segment_size: int, segment_time: float, keep_bytes: int, keep_duration: float, keep_total_bytes: int,
          note: str, wait: bool, output: str) -> None:
    """Start capturing PODS (NAME or NAMESPACE/NAME), or every pod matching -n/-l, or the pods of a workload
    (deploy/NAME, statefulset/NAME, daemonset/NAME, job/NAME) or Service (svc/NAME) as they come and go, or a
    node's own network (node/NAME: needs create nodes/capture). Prints the capture id on the last line."""
    obj, pods = target_object(ctx, pods, all_namespaces)
    namespace, names = _target_pods(ctx, pods, namespace, all_namespaces)
    target = control_pb2.Target(namespace=namespace, all_namespaces=all_namespaces and obj is None,
                                selector=selector, field_selector=field_selector, pod_names=names)
    if obj is not None:
        target.object.CopyFrom(obj)
    req = control_pb2.StartCaptureRequest(
        target=target,
        settings=common_pb2.CaptureSettings(filter=bpf, snaplen=snaplen, buffer_bytes=buffer_size,
                                            interface=INTERFACES[interface]),
        # Whole seconds, rounded up: --duration 0.4 is a short capture, not "no limit".
        limits=control_pb2.Limits(duration_seconds=math.ceil(duration), max_bytes=max_bytes,
                                  max_packets=max_packets),
        rotation=control_pb2.Rotation(segment_bytes=segment_size, segment_seconds=math.ceil(segment_time)),
        retention=control_pb2.Retention(keep_bytes=keep_bytes, keep_seconds=math.ceil(keep_duration),
                                        keep_total_bytes=keep_total_bytes),
        note=note,
    )
    with CollectorClient(ctx.obj["collector"]) as client:
        status = client.start(req)
        if output == "table":
            names_text = ", ".join(f"{p.pod.namespace}/{p.pod.name}" for p in status.pods)
            click.echo(f"capturing {len(status.pods)} pod(s): {names_text}", err=True)
            if status.target.HasField("payload_cap"):
                click.echo(f"snaplen capped at {status.target.payload_cap.snaplen} bytes: "
                           f"{status.target.payload_cap.reason}", err=True)
        if wait:
            status = wait_for_end(client, status.id, live=output == "table")
            if output == "table":
                print_table(capture_table(status), stderr=True)
    if output != "table":
        click.echo(dump(to_dict(status), output))
    click.echo(status.id)


@click.command()
@click.argument("capture_id", shell_complete=complete_running_capture_id)
@output_option()
@click.pass_obj
def stop(obj: dict[str, str], capture_id: str, output: str) -> None:
    """Stop a capture; returns when every pod's last packets are stored. A recorder (rec-…): its rings are deleted on
    the nodes once the saves asked for are done; its saves stay."""
    with CollectorClient(obj["collector"]) as client:
        if is_recorder_id(capture_id):  # a flight recorder (issue 24): its saves stay
            rec = client.stop_recorder(capture_id)
            echo_recorder(rec, output)
            return
        before = client.get(capture_id)
        if before.state in (control_pb2.CAPTURE_STATE_RUNNING, control_pb2.CAPTURE_STATE_STOPPING):
            status = client.stop(capture_id)
        else:
            status = before
            ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(before.ended_unix_ns / 1e9))
            why = f"{before.end_reason}, " if before.end_reason else ""
            click.echo(f"capture {capture_id} had already ended ({why}{ended}): nothing to stop", err=True)
    if output == "table":
        print_table(capture_table(status))
    else:
        click.echo(dump(to_dict(status), output))


@click.command()
@click.argument("capture_ids", nargs=-1, required=True, metavar="ID...", shell_complete=complete_ended_capture_id)
@click.option("--force", is_flag=True, help="Delete running captures too (each is stopped first).")
@click.pass_context
def delete(ctx: click.Context, capture_ids: tuple[str, ...], force: bool) -> None:
    """Delete ended captures: their files, their records and, with object storage, their objects in the bucket.

    A running capture is refused unless --force. Prints a line per capture deleted; a capture that cannot be
    deleted is a line on stderr, and the exit status is 1.
    """
    prog = ctx.find_root().info_name or "podcap"
    failed = 0
    with CollectorClient(ctx.obj["collector"]) as client:
        for cid in capture_ids:
            try:
                d = client.delete(cid, force=force)
            except CollectorError as e:
                if len(capture_ids) == 1:
                    raise  # one line with its hint, as for every verb
                click.echo(f"{prog}: {one_line(str(e), collector_hint(e, prog=prog, command='delete'))}", err=True)
                failed += 1
                continue
            line = f"deleted {d.capture_id}\t{human_bytes(d.bytes)}"
            if d.pending:
                line += f"\tstill to delete (the collector retries): {d.pending}"
            click.echo(line)
    if failed:
        ctx.exit(1)
