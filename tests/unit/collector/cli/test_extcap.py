"""The Wireshark extcap without Wireshark: the lines it prints, the capture request its options make, the live
pcapng stream (pods announced late, a pod whose format changes), failures before anything starts, and the
installed wrapper. tshark itself is in ``tests/integration/test_extcap_tshark.py``."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from podcap.collector.cli.client import CollectorError
from podcap.collector.cli.extcap import install as extcap_cmd
from podcap.collector.cli.extcap.main import main
from podcap.collector.cli.extcap.options import (
    ALL_NAMESPACES,
    CaptureOptions,
    CollectorSettings,
    ExtcapOptionError,
    config_lines,
    start_request,
)
from podcap.collector.cli.extcap.protocol import ExtcapArg, clean
from podcap.collector.cli.get import pcapmerge
from podcap.collector.cli.live.order import PyLiveOrder
from podcap.collector.cli.live.stream import PcapngStream
from podcap.collector.cli.main import cli
from podcap.formats.pcap import LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL2, FileFormat, PcapFormatError
from podcap.formats.pcapng import ISB_IFDROP, ISB_IFRECV, ISB_OSDROP, ISB_USRDELIV, OPT_COMMENT
from podcap.v1 import common_pb2, control_pb2
from tests.pcapng_reader import read_pcapng

SETTINGS = CollectorSettings("collector:7420", "", "tok")
FIELD = re.compile(r"\{(\w+)=([^{}]*)\}")


def _parse(line: str) -> tuple[str, dict[str, str]]:
    kind, rest = line.split(" ", 1)
    assert "".join(f"{{{k}={v}}}" for k, v in FIELD.findall(rest)) == rest, f"unparseable: {line}"
    return kind, dict(FIELD.findall(rest))


def _listing() -> control_pb2.ListCapturablePodsResponse:
    pods = [common_pb2.Pod(namespace=ns, name=name, node="node-1") for ns, name in
            [("bank", "ledger-0"), ("shop", "web-0"), ("shop", "web-1")]]
    return control_pb2.ListCapturablePodsResponse(pods=pods, namespaces=["bank", "shop"], all_namespaces=True)


def test_config_offers_the_collectors_namespaces_and_pods_as_lists() -> None:
    seen: list[CollectorSettings] = []

    def lister(s: CollectorSettings) -> control_pb2.ListCapturablePodsResponse:
        seen.append(s)
        return _listing()

    parsed = [_parse(line) for line in config_lines(SETTINGS, lister)]
    assert seen == [SETTINGS]
    args = {a["call"]: a for kind, a in parsed if kind == "arg"}
    assert {"--collector", "--tls-ca", "--token", "--token-file", "--namespace", "--pods", "--selector", "--object",
            "--filter", "--snaplen", "--interface", "--keep", "--all-copies"} == set(args)
    assert args["--collector"]["default"] == "collector:7420"
    assert args["--namespace"]["type"] == "selector" and args["--namespace"]["reload"] == "true"
    assert args["--pods"]["type"] == "multicheck" and args["--keep"]["type"] == "boolflag"
    assert len({a["number"] for a in args.values()}) == len(args)
    values = [v for kind, v in parsed if kind == "value"]
    ns_arg, pods_arg = args["--namespace"]["number"], args["--pods"]["number"]
    assert [(v["value"], v.get("default")) for v in values if v["arg"] == ns_arg] == [
        ("bank", "true"), ("shop", None), (ALL_NAMESPACES, None)]
    pods = [(v["value"], v.get("parent"), v.get("enabled")) for v in values if v["arg"] == pods_arg]
    assert pods == [("bank", None, "false"), ("bank/ledger-0", "bank", None),
                    ("shop", None, "false"), ("shop/web-0", "shop", None), ("shop/web-1", "shop", None)]
    # The reload button of the namespace selector: its values only.
    reloaded = [_parse(line) for line in config_lines(SETTINGS, lister, reload_option="namespace")]
    assert [v["value"] for _, v in reloaded] == ["bank", "shop", ALL_NAMESPACES]


def test_a_listing_failure_shows_in_the_lists_and_the_dialog_still_opens() -> None:
    def lister(s: CollectorSettings) -> control_pb2.ListCapturablePodsResponse:
        raise CollectorError("permission denied: user 'x' may not {create} pods/capture", None)

    lines = config_lines(SETTINGS, lister)
    parsed = [_parse(line) for line in lines]  # braces in the message do not break Wireshark's parser
    assert sum(kind == "arg" for kind, _ in parsed) == 13
    texts = [v["display"] for kind, v in parsed if kind == "value" and "permission denied" in v["display"]]
    assert len(texts) == 2 and "(create)" in texts[0]


def test_an_unreadable_token_file_is_a_listing_failure_too(tmp_path: str) -> None:
    settings = CollectorSettings("c:1", "", "", token_file=os.path.join(tmp_path, "missing"))
    lines = config_lines(settings, lambda s: (s.bearer_token(), _listing())[1])
    assert any("cannot read the token file" in line for line in lines)


def _opts(**kw: object) -> CaptureOptions:
    base: dict[str, object] = dict(collector=SETTINGS, namespace="", pods=(), selector="", filter="", snaplen=0,
                                   interface="veth", keep=False)
    base.update(kw)
    return CaptureOptions(**base)  # type: ignore[arg-type]


def test_the_options_make_the_same_request_as_podcap_start() -> None:
    req = start_request(_opts(pods=("shop/web-0", "shop/web-1"), filter="udp", snaplen=96), "port 53")
    assert (req.target.namespace, list(req.target.pod_names)) == ("shop", ["web-0", "web-1"])
    assert req.settings.filter == "(udp) and (port 53)" and req.settings.snaplen == 96
    assert "Wireshark" in req.note
    req = start_request(_opts(namespace="shop", selector="app=web", interface="eth0"), "")
    assert (req.target.namespace, req.target.selector, list(req.target.pod_names)) == ("shop", "app=web", [])
    assert req.settings.interface == common_pb2.CAPTURE_INTERFACE_POD_ETH0
    assert start_request(_opts(namespace=ALL_NAMESPACES), "").target.all_namespaces
    assert start_request(_opts(), "tcp").target.namespace == "default"  # as `podcap start`
    assert start_request(_opts(), "tcp").settings.filter == "tcp"


@pytest.mark.parametrize(("kw", "needle"), [
    (dict(pods=("shop/web-0", "bank/ledger-0")), "several namespaces"),
    (dict(namespace="bank", pods=("shop/web-0",)), "not in the chosen namespace"),
    (dict(pods=("web-0",)), r"^pods are chosen as namespace/name, not web-0: choose them in the dialog's list"),
    (dict(pods=("shop/web-0", "web-1", "/web-2")), r"namespace/name, not web-1, /web-2: "),
])
def test_options_that_are_not_one_capture_are_refused(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ExtcapOptionError, match=needle):
        start_request(_opts(**kw), "")


def _records(*packets: tuple[int, int, bytes]) -> bytes:
    """Bare pcap records (seconds, fraction, data)."""
    return b"".join(struct.pack("<IIII", s, f, len(d), len(d) + 4) + d for s, f, d in packets)


def _pod_msg(index: int, name: str, linktype: int, nanosecond: bool) -> control_pb2.FollowMessage:
    return control_pb2.FollowMessage(pod=control_pb2.FollowPod(
        index=index, pod=common_pb2.Pod(namespace="shop", name=name, uid=f"u-{name}", node="n1"),
        format=common_pb2.PcapFormat(linktype=linktype, snaplen=65535, nanosecond=nanosecond)))


def _rec_msg(index: int, data: bytes) -> control_pb2.FollowMessage:
    return control_pb2.FollowMessage(records=control_pb2.FollowRecords(index=index, records=data))


def test_live_stream_is_pcapng_with_one_interface_per_pod_announced_as_they_come(tmp_path: str) -> None:
    status = control_pb2.CaptureStatus(id="abc123def456", settings=common_pb2.CaptureSettings(filter="udp"),
                                       created_unix_ns=9_000_000_000)
    ended = control_pb2.CaptureStatus(id=status.id, created_unix_ns=9_000_000_000, ended_unix_ns=14_000_000_000, pods=[
        control_pb2.PodStatus(pod=_pod_msg(0, "web-0", 1, True).pod.pod, packets=3,
                              kernel=common_pb2.KernelStats(received=10, dropped=1),
                              drops=common_pb2.PodcapDrops(buffer_full=4)),
        control_pb2.PodStatus(pod=_pod_msg(1, "web-1", 1, True).pod.pod, packets=2,
                              kernel=common_pb2.KernelStats(received=2))])
    path = os.path.join(tmp_path, "live.pcapng")
    with open(path, "wb") as out:
        stream = PcapngStream(out, status)
        for msg in [
            _pod_msg(0, "web-0", LINKTYPE_ETHERNET, True),
            _rec_msg(0, _records((10, 5, b"a" * 60), (10, 7, b"b" * 61))),
            _pod_msg(1, "web-1", LINKTYPE_ETHERNET, False),  # announced after packets of web-0
            _rec_msg(1, _records((11, 3, b"c" * 62))),
            _pod_msg(0, "web-0", LINKTYPE_ETHERNET, True),  # announced again, same format: same interface
            _rec_msg(0, _records((12, 0, b"d" * 63))),
            _pod_msg(1, "web-1", LINKTYPE_LINUX_SLL2, False),  # a new stream with another link type
            _rec_msg(1, _records((13, 9, b"e" * 64))),
            control_pb2.FollowMessage(gap=control_pb2.FollowGap(index=1, packets=7)),
            control_pb2.FollowMessage(gap=control_pb2.FollowGap(index=1, packets=2)),
            control_pb2.FollowMessage(ended=ended),
        ]:
            stream.write(msg)
    f = read_pcapng(path)
    assert f.comments[0] == "podcap capture abc123def456"
    assert [(i.name, i.linktype, i.tsresol) for i in f.interfaces] == [
        ("shop/web-0", LINKTYPE_ETHERNET, 9), ("shop/web-1", LINKTYPE_ETHERNET, 6),
        ("shop/web-1", LINKTYPE_LINUX_SLL2, 6)]
    assert all(i.filter == "udp" and "abc123def456" in i.description for i in f.interfaces)
    assert [(p.interface_id, p.ts_ns, p.wirelen, p.data[:1]) for p in f.packets] == [
        (0, 10_000_000_005, 64, b"a"), (0, 10_000_000_007, 65, b"b"), (1, 11_000_003_000, 66, b"c"),
        (0, 12_000_000_000, 67, b"d"), (2, 13_000_009_000, 68, b"e")]
    assert stream.missed == 9
    # Losses in-band: an ISB per gap (what this view missed so far), then the capture's final counters.
    gaps = [(st.interface_id, st.counter(ISB_IFDROP)) for st in f.stats[:2]]
    assert gaps == [(2, 7), (2, 9)]
    assert "missed 7 packets" in f.stats[0].options[OPT_COMMENT][0].decode()
    final = {st.interface_id: st for st in f.stats[2:]}
    assert sorted(final) == [0, 2]  # the pods' current interfaces
    assert (final[0].counter(ISB_IFRECV), final[0].counter(ISB_USRDELIV), final[0].counter(ISB_IFDROP),
            final[0].counter(ISB_OSDROP)) == (10, 3, 1 + 4, 1)
    assert (final[2].counter(ISB_IFRECV), final[2].counter(ISB_IFDROP)) == (2, 9)
    assert "buffer full 4" in final[0].options[OPT_COMMENT][0].decode().replace("_", " ")
    assert stream.ended == ended


def test_bad_options_are_reported_after_opening_the_fifo(tmp_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = os.path.join(tmp_path, "fifo")  # a plain file: open_fifo creates it, as Wireshark's fifo is opened
    with pytest.raises(SystemExit) as e:
        main(["--capture", "--extcap-interface", "podcap", "--fifo", fifo, "--pods", "a/x,b/y",
              "--collector", "127.0.0.1:1"])
    assert e.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("podcap: the chosen pods are in several namespaces"), err
    assert os.path.exists(fifo)


def test_unknown_interface_and_no_phase(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--extcap-interface", "other", "--extcap-dlts"])
    assert e.value.code == 1 and "no extcap interface 'other'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_interfaces_and_dlts_lines(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--extcap-interfaces", "--extcap-version=4.0"])
    main(["--extcap-interface", "podcap", "--extcap-dlts"])
    lines = capsys.readouterr().out.splitlines()
    assert [_parse(line)[0] for line in lines] == ["extcap", "interface", "dlt"]
    assert _parse(lines[1])[1]["value"] == "podcap" and _parse(lines[2])[1]["number"] == "1"


def test_text_is_made_safe_for_wiresharks_parser() -> None:
    assert clean("a {b}\nc") == "a (b) c"
    assert ExtcapArg(0, "--keep-stored", "K", "boolflag").name == "keepstored"  # tshark: -o extcap.podcap.keepstored


@pytest.mark.parametrize(("version", "env", "expected"), [
    ((4, 0), {"HOME": "/h"}, "/h/.config/wireshark/extcap"),
    ((3, 6), {"HOME": "/h", "XDG_CONFIG_HOME": "/x"}, "/x/wireshark/extcap"),
    (None, {"HOME": "/h"}, "/h/.config/wireshark/extcap"),
    ((4, 2), {"HOME": "/h", "XDG_CONFIG_HOME": "/x"}, "/h/.local/lib/wireshark/extcap"),
])
def test_personal_extcap_folder_follows_the_wireshark_version(version: tuple[int, int] | None,
                                                              env: dict[str, str], expected: str) -> None:
    assert extcap_cmd.personal_extcap_dir(version, env) == expected


def test_wrapper_runs_this_python_with_preset_defaults_the_environment_overrides(tmp_path: str) -> None:
    script = os.path.join(tmp_path, "podcap-extcap")
    with open(script, "w") as f:
        f.write(extcap_cmd.wrapper_script(sys.executable, collector="127.0.0.1:2", tls_ca="/ca dir/ca.pem"))
    os.chmod(script, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODCAP_")}
    out = subprocess.run([script, "--extcap-interfaces"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "interface {value=podcap}" in out.stdout, out.stderr
    # The preset collector is the default of the collector option; PODCAP_COLLECTOR wins over it.
    for extra, expected in [({}, "127.0.0.1:2"), ({"PODCAP_COLLECTOR": "127.0.0.1:1"}, "127.0.0.1:1")]:
        r = subprocess.run([script, "--extcap-interface", "podcap", "--extcap-config"], env={**env, **extra},
                           capture_output=True, text=True, timeout=60)
        collector = next(_parse(line)[1] for line in r.stdout.splitlines() if "{call=--collector}" in line)
        assert collector["default"] == expected


def test_install_and_uninstall_touch_only_podcaps_own_file(tmp_path: str) -> None:
    target = os.path.join(tmp_path, "extcap")
    runner = CliRunner()
    r = runner.invoke(cli, ["--collector", "127.0.0.1:3", "extcap", "install", "--dir", target])
    path = os.path.join(target, "podcap-extcap")
    assert r.exit_code == 0 and f"installed {path}" in r.output, r.output
    assert os.access(path, os.X_OK)
    with open(path) as f:
        assert "127.0.0.1:3" in f.read()
    r = runner.invoke(cli, ["extcap", "install", "--dir", target])  # again: replaces its own file
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["extcap", "uninstall", "--dir", target])
    assert r.exit_code == 0 and f"removed {path}" in r.output and not os.path.exists(path)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n# somebody else's\n")
    for verb in ("install", "uninstall"):
        r = runner.invoke(cli, ["extcap", verb, "--dir", target])
        assert r.exit_code == 1 and "not installed by podcap" in r.output, (verb, r.output)
    with open(path) as f:
        assert "somebody else's" in f.read()


def _live_orders() -> list[Any]:
    orders: list[Any] = [PyLiveOrder]
    if pcapmerge.one_copy_available():
        orders.append(pcapmerge.NativeLive)
    return orders


@pytest.mark.parametrize("order", _live_orders())
@pytest.mark.parametrize(("records", "needle"), [
    (struct.pack("<IIII", 1, 0, 10, 10) + b"x" * 9, "bad record|truncated record at offset 0"),  # data cut short
    (struct.pack("<IIII", 1, 0, 10, 9) + b"x" * 10, "bad record|caplen 10 exceeds"),  # caplen above wire length
    (struct.pack("<IIII", 1, 0, 4, 4) + b"xxxx" + b"\0" * 7, "truncated record header at offset 20"),
])
def test_malformed_live_records_are_refused_not_written(order: Any, records: bytes, needle: str) -> None:
    live = order(0)
    live.add(0, FileFormat(LINKTYPE_ETHERNET, 65535, True))
    with pytest.raises(PcapFormatError, match=needle):
        live.push(0, records, 1)
    assert live.pop(1 << 63) == b"" and live.buffered == 0
    live.close()
