"""``podcap record`` (start a flight recorder) and ``podcap trigger`` (save its window now).

``record`` takes a capture's target and settings plus the recorder's own: ``--keep`` (a duration, a size, or
both: whichever is tighter), the save window (``--before``, ``--after``), what saves (``--on``, the packet
trigger), how much (``--save pod|all``) and how often (``--cooldown``, ``--max-saves-per-hour``). It prints the
recorder's id on its last line. ``trigger`` waits for the save to be stored and prints its capture id on its last
line (``podcap get ID`` downloads it).
"""

from __future__ import annotations

import math
import re

import click

from podcap.collector.cli.client import CollectorClient
from podcap.collector.cli.complete import complete_recorder_id
from podcap.collector.cli.objects import split_pod_names, target_arguments, target_object
from podcap.collector.cli.record.render import echo_recorder
from podcap.collector.cli.render import capture_table, dump, output_option, print_table, to_dict
from podcap.collector.cli.words import INTERFACES
from podcap.trigger_words import TRIGGER_NAMES
from podcap.unit_options import any_duration_param
from podcap.units import MAX_BYTES, human_bytes, parse_duration, parse_size
from podcap.v1 import common_pb2, control_pb2

MAX_SECONDS = 7 * 86400  # the longest --keep, --before, --after the collector takes (it checks tighter bounds)
# A duration is digits and the lower-case units s, m, h, d ("5m", "1h30m", "90"); anything else is a size.
_DURATION = re.compile(r"^\d+(\.\d+)?([smhd](\d+(\.\d+)?[smhd])*)?$")


def keep_param(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[int, int]:
    """``--keep`` (once or twice): (bytes, seconds); ``5m`` is a duration, ``200MiB``/``200M`` a size."""
    nbytes, seconds = 0, 0
    for v in values:
        t = v.strip()
        try:
            if _DURATION.match(t):
                seconds = math.ceil(parse_duration(t))
                if not 0 < seconds <= MAX_SECONDS:
                    raise ValueError("must be more than 0 and at most 7d")
            else:
                nbytes = parse_size(t)
                if not 0 < nbytes <= MAX_BYTES:
                    raise ValueError(f"must be more than 0 and at most {human_bytes(MAX_BYTES)}")
        except ValueError as e:
            raise click.BadParameter(f"{v!r}: {e} (a duration such as 5m or 1h, or a size such as 500MiB)") from e
    if not values:
        raise click.BadParameter("is required: how much of each pod's past to keep (5m, 1h, 500MiB)")
    return nbytes, seconds


def triggers_param(ctx: click.Context, param: click.Parameter,
                   value: str) -> list[control_pb2.RecorderTrigger.ValueType]:
    out: list[control_pb2.RecorderTrigger.ValueType] = []
    for name in filter(None, (n.strip().lower() for n in value.split(","))):
        if name not in TRIGGER_NAMES:
            raise click.BadParameter(f"unknown trigger {name!r}: choose from {', '.join(TRIGGER_NAMES)} "
                                     "(manual triggers are `podcap trigger`)")
        out.append(TRIGGER_NAMES[name])
    return out


def _target(ctx: click.Context, pods: tuple[str, ...], namespace: str, all_namespaces: bool) -> tuple[str, list[str]]:
    """The namespace and pod names of the target, pods given as NAME or NAMESPACE/NAME of one namespace."""
    if all_namespaces and pods:
        raise click.UsageError("-A/--all-namespaces takes no pod names: name pods with -n NAMESPACE", ctx)
    spaces, names = split_pod_names(ctx, pods)
    if len(spaces) > 1:
        raise click.UsageError(f"one recorder covers pods of one namespace, not {', '.join(sorted(spaces))}", ctx)
    return (spaces.pop() if spaces else namespace), names


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def window_param(ctx: click.Context, param: click.Parameter, value: str | None) -> int:
    """click callback: a duration in milliseconds (``--before``, ``--after``, ``--trigger-window``), at most 7d."""
    seconds = any_duration_param(ctx, param, value)
    if seconds > MAX_SECONDS:
        raise click.BadParameter(f"{value!r} is more than 7d")
    return _ms(seconds)


@click.command()
@target_arguments
@click.option("--field-selector", default="", help="Field selector, e.g. 'spec.nodeName=node-1'.")
@click.option("--filter", "bpf", default="", help="BPF filter of what the rings keep (tcpdump syntax).")
@click.option("--snaplen", type=click.IntRange(0, 262144), default=0, help="Bytes kept per packet (0 = all).")
@click.option("--interface", type=click.Choice(list(INTERFACES)), default="veth", show_default=True,
              help="Which interface of each pod to record (as for podcap start).")
@click.option("--keep", "keep", multiple=True, callback=keep_param, metavar="DURATION|SIZE",
              help="How much of each pod's past its node keeps: 5m, 1h, 500MiB (give both to bound both).")
@click.option("--before", default="60s", show_default=True, callback=window_param,
              help="A save starts this long before the trigger (at most --keep).")
@click.option("--after", default="10s", show_default=True, callback=window_param,
              help="... and ends this long after it.")
@click.option("--on", "on", default="", callback=triggers_param, metavar="TRIGGERS",
              help="What saves, comma-separated: restart, oomkilled, unhealthy, notready, deleted, packets.")
@click.option("--trigger-filter", default="", help="Packet trigger: a BPF expression, e.g. "
              "'tcp[tcpflags] & tcp-rst != 0' (implies --on packets).")
@click.option("--trigger-count", type=click.IntRange(1, 65536), default=1, show_default=True,
              help="Packet trigger: matches needed within --trigger-window.")
@click.option("--trigger-window", default="1s", show_default=True, callback=window_param,
              help="Packet trigger: the window of those matches.")
@click.option("--save", "scope", type=click.Choice(["pod", "all"]), default="pod", show_default=True,
              help="Save the triggering pod, or every pod of the recorder.")
@click.option("--cooldown", default="60s", show_default=True, callback=any_duration_param,
              help="After a save, automatic triggers start no new save for this long.")
@click.option("--max-saves-per-hour", type=click.IntRange(1, 10000), default=12, show_default=True,
              help="At most this many saves by automatic triggers in any hour.")
@click.option("--note", default="", help="Free text stored with the recorder.")
@output_option()
@click.pass_context
def record(ctx: click.Context, pods: tuple[str, ...], namespace: str, all_namespaces: bool, selector: str,
           field_selector: str, bpf: str, snaplen: int, interface: str, keep: tuple[int, int], before: int,
           after: int, on: list[control_pb2.RecorderTrigger.ValueType], trigger_filter: str, trigger_count: int,
           trigger_window: int, scope: str,
           cooldown: float, max_saves_per_hour: int, note: str, output: str) -> None:
    """Keep the last minutes of PODS (or every pod matching -n/-l, or the pods of a workload or Service:
    deploy/NAME, statefulset/NAME, daemonset/NAME, job/NAME, svc/NAME, as they come and go) on their nodes, and save
    them when something happens (--on) or on `podcap trigger`. Prints the recorder id on the last line."""
    obj, pods = target_object(ctx, pods, all_namespaces, what="recorder")
    namespace, names = _target(ctx, pods, namespace, all_namespaces)
    keep_bytes, keep_seconds = keep
    req = control_pb2.StartRecorderRequest(
        target=control_pb2.Target(namespace=namespace, all_namespaces=all_namespaces and obj is None,
                                  selector=selector, field_selector=field_selector, pod_names=names),
        settings=common_pb2.CaptureSettings(filter=bpf, snaplen=snaplen, interface=INTERFACES[interface]),
        keep_bytes=keep_bytes, keep_seconds=keep_seconds, before_ms=before, after_ms=after, on=on,
        save=control_pb2.RECORDER_SAVE_SCOPE_ALL if scope == "all" else control_pb2.RECORDER_SAVE_SCOPE_POD,
        cooldown_seconds=math.ceil(cooldown) or 1, max_saves_per_hour=max_saves_per_hour, note=note)
    if obj is not None:
        req.target.object.CopyFrom(obj)
    if trigger_filter:
        req.packet_trigger.CopyFrom(control_pb2.RecorderPacketTrigger(
            filter=trigger_filter, count=trigger_count, window_ms=max(1, trigger_window)))
    with CollectorClient(ctx.obj["collector"]) as client:
        st = client.record(req)
    echo_recorder(st, output, stderr=True)
    click.echo(st.id)


@click.command()
@click.argument("recorder_id", shell_complete=complete_recorder_id)
@click.argument("pods", nargs=-1)
@click.option("--reason", default="", help="Why (kept with the save, its Event and its pcapng comment).")
@click.option("--no-wait", is_flag=True, help="Print the save's capture id at once instead of waiting for it.")
@output_option()
@click.pass_obj
def trigger(obj: dict[str, str], recorder_id: str, pods: tuple[str, ...], reason: str, no_wait: bool,
            output: str) -> None:
    """Save a recorder's window now: of PODS (NAME, NAMESPACE/NAME or uid), else of every pod. Waits until the save
    is stored and prints its capture id on the last line."""
    with CollectorClient(obj["collector"]) as client:
        rec = client.get_recorder(recorder_id)
        wait_s = (rec.request.after_ms / 1000) + 90
        answer = client.trigger(recorder_id, list(pods), reason=reason, no_wait=no_wait, timeout=wait_s)
    st = answer.capture
    if output == "table":
        if answer.joined:
            click.echo(f"joined save {answer.capture_id}, still waiting for its window", err=True)
        print_table(capture_table(st), stderr=True)
    else:
        click.echo(dump(to_dict(st), output))
    click.echo(answer.capture_id)
