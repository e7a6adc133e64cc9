"""What the CLI says, and the same everywhere (issue 26, items 9, 11 and 12): a snapshot of a running capture says
so; limits of 0 are refused; ``list`` says when a capture started and how long it ran; stopping a stopped capture
says so; ``-o`` takes table|json|yaml on every verb; JSON shows the CLI's words for enums; ``start`` takes
NAMESPACE/NAME and refuses ``-n`` with ``-A``; ``--s3-endpoint`` belongs to ``--from``; a missing bucket is not a
missing capture; a write refused for permissions does not suggest freeing space; completion offers namespaces,
pods, and only running captures to ``stop`` and ``follow``; the extcap's errors show no Python repr and hints that
mean something in Wireshark."""

from __future__ import annotations

import errno
import json
import os
from typing import Any

import click
import grpc
import pytest
from click.testing import CliRunner

from podcap.collector.bucket import objects
from podcap.collector.cli import main
from podcap.collector.cli.client import CollectorError
from podcap.collector.cli.errors import collector_hint
from podcap.collector.cli.extcap.capture import failure_line
from podcap.collector.cli.extcap.options import CaptureOptions, CollectorSettings, ExtcapOptionError, start_request
from podcap.collector.cli.get import command as get_cmd
from podcap.collector.cli.get.bucket import BucketClient
from podcap.v1 import common_pb2, control_pb2
from tests.unit.collector.cli.fakes import CID, FakeClient, capture, invoke, pcap_bytes, run_main


def test_get_of_a_running_capture_says_it_is_a_snapshot(fake: FakeClient, tmp_path: str) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3)}
    r = invoke("get", CID, "-o", str(tmp_path))
    assert r.exit_code == 0 and f"capture {CID} is still running: this is what it had stored at" in r.stderr
    fake.get = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    assert "still running" not in invoke("get", CID, "-o", str(tmp_path)).stderr


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--duration", "0", "leave --duration out for no time limit"),
    ("--max-bytes", "0", "leave --max-bytes out for no size limit"),
    ("--max-packets", "0", "leave --max-packets out for no packet limit"),
    ("--keep-duration", "0s", "leave --keep-duration out for no retention by time"),
])
def test_a_limit_of_0_is_refused_with_what_leaving_it_out_does(option: str, value: str, said: str,
                                                               fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main("podcap", ["start", "-n", "shop", option, value], monkeypatch, capsys)
    assert code == 2 and "must be more than 0" in err and said in err, err


def test_a_fraction_of_a_second_is_not_no_limit(fake: FakeClient) -> None:
    seen: list[control_pb2.StartCaptureRequest] = []
    fake.start = lambda req: seen.append(req) or capture()  # type: ignore[func-returns-value]
    assert invoke("start", "-n", "shop", "--duration", "0.4").exit_code == 0
    assert seen[0].limits.duration_seconds == 1


def test_list_says_when_a_capture_started_and_how_long_it_ran(fake: FakeClient) -> None:
    header = invoke("list").output.splitlines()[1]
    assert "started" in header and "ran" in header and "age" not in header


def test_stopping_a_stopped_capture_says_so(fake: FakeClient) -> None:
    ended = capture(control_pb2.CAPTURE_STATE_DONE)
    ended.end_reason = "duration reached"
    stops: list[str] = []
    fake.get = lambda cid: ended
    fake.stop = lambda cid: stops.append(cid) or ended  # type: ignore[func-returns-value]
    r = invoke("stop", CID)
    assert r.exit_code == 0 and stops == []
    assert f"capture {CID} had already ended (duration reached, " in r.stderr and "nothing to stop" in r.stderr


def _commands(group: click.Group) -> list[click.Command]:
    out: list[click.Command] = []
    for cmd in group.commands.values():
        out += _commands(cmd) if isinstance(cmd, click.Group) else [cmd]
    return out


def test_every_output_option_takes_the_same_choices() -> None:
    choices = {cmd.name: tuple(p.type.choices) for cmd in _commands(main.cli) for p in cmd.params
               if isinstance(p, click.Option) and "-o" in p.opts and isinstance(p.type, click.Choice)}
    assert set(choices) >= {"start", "stop", "status", "list", "audit"}
    assert set(choices.values()) == {("table", "json", "yaml")}, choices


def test_json_says_the_clis_words_not_protobuf_names(fake: FakeClient) -> None:
    st = capture()
    st.settings.interface = common_pb2.CAPTURE_INTERFACE_POD_ALL
    st.pods[0].state = common_pb2.POD_CAPTURE_STATE_NO_AGENT
    fake.get = lambda cid: st
    doc = json.loads(invoke("status", CID, "-o", "json").output)
    assert doc["settings"]["interface"] == "all" and doc["pods"][0]["state"] == "no-agent"
    assert "CAPTURE_" not in json.dumps(doc)
    assert json.loads(invoke("status", CID, "-o", "json").output)["state"] == "running"


def test_start_takes_namespace_slash_name(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[control_pb2.StartCaptureRequest] = []
    fake.start = lambda req: seen.append(req) or capture()  # type: ignore[func-returns-value]
    assert invoke("start", "shop/web-1", "shop/web-0").exit_code == 0
    assert seen[-1].target.namespace == "shop" and list(seen[-1].target.pod_names) == ["web-1", "web-0"]
    for args, needle in [(["shop/web-1", "bank/web-0"], "one capture covers pods of one namespace"),
                         (["-n", "bank", "shop/web-1"], "not bank, shop"),
                         (["-n", "shop", "-A"], "-n/--namespace and -A/--all-namespaces exclude each other")]:
        code, _, err = run_main("podcap", ["start", *args], monkeypatch, capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_s3_endpoint_without_from_is_refused(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str], tmp_path: str) -> None:
    code, _, err = run_main("podcap", ["get", CID, "-o", str(tmp_path), "--s3-endpoint", "http://x:1"],
                            monkeypatch, capsys)
    assert code == 2 and "--s3-endpoint applies to --from s3://… only" in err


class _Store:
    """An object store with no manifest, where the bucket exists or not."""

    bucket_exists = True

    def __init__(self, url: objects.BucketUrl, **_: Any) -> None:
        self.url = url

    def get(self, key: str) -> bytes:
        raise objects.ObjectNotFoundError(f"GET {key}: not found (NoSuchKey)")

    def check(self) -> None:
        if not _Store.bucket_exists:
            raise objects.ObjectNotFoundError(f"bucket {self.url.bucket}: not found (404)")


@pytest.mark.parametrize(("exists", "said"), [(True, "no capture at s3://b/p/abc: s3://b/p/abc/manifest.json"),
                                              (False, "no bucket b at http://s3.example (reading s3://b/p/abc)")])
def test_a_missing_bucket_is_not_a_missing_capture(exists: bool, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podcap.collector.cli.get.bucket.ObjectStore", _Store)
    _Store.bucket_exists = exists
    with pytest.raises(objects.ObjectNotFoundError, match=said.replace("(", r"\(").replace(")", r"\)")):
        BucketClient("s3://b/p/abc", endpoint="http://s3.example").manifest()


@pytest.mark.parametrize(("code", "hint"), [(errno.EACCES, "path you may write to"),
                                            (errno.EROFS, "path you may write to"),
                                            (errno.ENOSPC, "free some space")])
def test_a_write_failure_suggests_what_fits_its_cause(code: int, hint: str) -> None:
    said = get_cmd._write_hint(OSError(code, os.strerror(code)))
    assert hint in said and ("free some space" in said) == (code == errno.ENOSPC)


def complete(words: str) -> list[str]:
    r = CliRunner().invoke(main.cli, [], prog_name="podcap", env={
        "_PODCAP_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)})
    return [line.split(",", 1)[1] for line in r.output.splitlines() if line]


def test_completion_offers_namespaces_pods_and_only_running_captures_to_stop(fake: FakeClient) -> None:
    done = capture(control_pb2.CAPTURE_STATE_DONE)
    done.id = "done00000000"
    fake.list_captures = lambda: [capture(), done]
    fake.capturable = control_pb2.ListCapturablePodsResponse(
        namespaces=["bank", "shop"], pods=[common_pb2.Pod(namespace="shop", name=n, node="node-1")
                                          for n in ("web-0", "web-1")])
    assert complete("podcap stop ") == [CID]
    assert complete("podcap delete ") == ["done00000000"]
    assert complete("podcap follow ") == [CID]
    assert complete("podcap status ") == [CID, "done00000000"]
    assert complete("podcap start -n ") == ["bank", "shop"]
    assert complete("podcap start -n shop web-") == ["web-0", "web-1"]
    assert complete("podcap start shop/") == ["shop/web-0", "shop/web-1"]
    assert complete(f"podcap follow {CID} ") == ["shop/web-0", "shop/web-1"]
    assert complete(f"podcap get {CID} web-1") == ["shop/web-1"]


def test_extcap_errors_show_no_python_repr_and_hints_for_wireshark() -> None:
    opts = CaptureOptions(collector=CollectorSettings("c:1", "", ""), namespace="", pods=("web-1",), selector="",
                          filter="", snaplen=0, interface="veth", keep=False)
    with pytest.raises(ExtcapOptionError) as e:
        start_request(opts, "")
    line = failure_line(e.value)
    assert "('web-1',)" not in line and "not web-1" in line and "podcap interface's options" in line
    for code, message in [(grpc.StatusCode.INVALID_ARGUMENT, "invalid filter 'x'"),
                          (grpc.StatusCode.NOT_FOUND, "no pod 'x' in namespace 'shop'; pods there: a")]:
        line = failure_line(CollectorError(message, code))
        assert "-h'" not in line and "-n/--namespace" not in line and "podcap interface's options" in line, line


def test_a_missing_token_is_not_a_missing_right(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    def refuse() -> list[control_pb2.CaptureStatus]:
        raise CollectorError("not authenticated: missing or unknown token", grpc.StatusCode.UNAUTHENTICATED)

    fake.list_captures = refuse
    code, _, err = run_main("podcap", ["list"], monkeypatch, capsys)
    assert code == 1 and "pass your token with --token or PODCAP_TOKEN" in err and "namespace" not in err, err


def test_an_empty_list_says_so(fake: FakeClient) -> None:
    fake.list_captures = lambda: []
    r = invoke("list")
    assert r.exit_code == 0 and r.stdout == "" and "no captures" in r.stderr


def test_merge_never_takes_an_option_for_its_file(fake: FakeClient, tmp_path: str) -> None:
    """``get ID --merge -o x.pcapng`` took ``-o`` as the merged file's name and ``x.pcapng`` as a pod."""
    r = invoke("get", CID, "--merge", "-o", str(tmp_path))
    assert r.exit_code == 2 and "--merge" in r.stderr and "not '-o'" in r.stderr, r.stderr


@pytest.mark.parametrize(("code", "message"), [
    (grpc.StatusCode.NOT_FOUND, "no recorder 'nope' (see `podcap list`)"),
    (grpc.StatusCode.FAILED_PRECONDITION, "recorder rec-x was stopped at 00:42:34 (stopped by user): nothing to "
                                          "trigger; its saves: abc"),
])
def test_a_refused_trigger_gets_no_hint_about_pods_or_agents(code: grpc.StatusCode, message: str) -> None:
    """The hints for a refused start (selectors, a node without an agent) misled after ``podcap trigger``."""
    hint = collector_hint(CollectorError(message, code=code), prog="podcap", command="trigger")
    assert "selector" not in hint and "podcap-agent" not in hint, hint
