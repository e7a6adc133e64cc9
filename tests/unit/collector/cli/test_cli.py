"""The podcap CLI against a hand-written fake collector client: output formats (table, json, yaml), status
--watch, get --merge / --format pcapng, shell completion, the kubectl plugin name, and one-line errors."""

from __future__ import annotations

import json
import os
import sys

import grpc
import pytest
import yaml
from click.testing import CliRunner

from podcap.collector.cli import main
from podcap.collector.cli.client import CollectorError
from podcap.collector.targets import target_text
from podcap.formats.pcapng import ISB_IFDROP, ISB_USRDELIV
from podcap.v1 import control_pb2
from tests.pcapng_reader import read_pcapng
from tests.unit.collector.cli.fakes import CID, FakeClient, capture, invoke, pcap_bytes, run_main

# ---- output formats ----


@pytest.mark.parametrize("command", [["status", CID], ["stop", CID]])
def test_json_and_yaml_are_the_same_document_with_numbers(fake: FakeClient, command: list[str]) -> None:
    as_json = json.loads(invoke(*command, "-o", "json").output)
    as_yaml = yaml.safe_load(invoke(*command, "-o", "yaml").output)
    assert as_json == as_yaml
    assert as_json["id"] == CID
    assert as_json["packets"] == 20 and isinstance(as_json["packets"], int)
    assert as_json["pods"][0]["kernel"]["dropped"] == 2 and as_json["pods"][1]["agent_dropped_packets"] == 5
    assert as_json["pods"][1]["drops"]["buffer_full"] == 5 and as_json["pods"][1]["drops"]["late"] == 0
    assert as_json["pods"][1]["unaccounted"] == 0
    assert as_json["pods"][0]["state"] == "capturing"
    assert as_json["created_unix_ns"] == 1_700_000_000 * 10**9


def test_list_formats(fake: FakeClient) -> None:
    assert [c["id"] for c in json.loads(invoke("list", "-o", "json").output)] == [CID]
    assert [c["id"] for c in yaml.safe_load(invoke("list", "-o", "yaml").output)] == [CID]
    table = invoke("list").output
    assert CID in table and "ns=shop selector=app=web" in table and "udp port 9999" in table


def test_list_json_and_yaml_have_the_recorders_after_the_captures(fake: FakeClient,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rec = control_pb2.RecorderStatus(
        id="rec-0a1b2c3d4e5f", state=control_pb2.RECORDER_STATE_RECORDING, created_unix_ns=2 * 10**18,
        request=control_pb2.StartRecorderRequest(target=control_pb2.Target(namespace="shop", selector="app=web"),
                                                 keep_seconds=600, on=[control_pb2.RECORDER_TRIGGER_RESTART]),
        saves=[control_pb2.RecorderSave(capture_id="c0ffee", state=control_pb2.CAPTURE_STATE_DONE, packets=7)])
    monkeypatch.setattr(fake, "list_all", lambda: control_pb2.ListCapturesResponse(
        captures=fake.list_captures(), recorders=[rec]))
    as_json = json.loads(invoke("list", "-o", "json").output)
    assert as_json == yaml.safe_load(invoke("list", "-o", "yaml").output)
    assert [(d["kind"], d["id"]) for d in as_json] == [("capture", CID), ("recorder", rec.id)]
    r = as_json[1]
    assert r["state"] == "recording" and r["request"]["on"] == ["restart"] and r["request"]["keep_seconds"] == 600
    assert r["saves"][0] == {**r["saves"][0], "capture_id": "c0ffee", "state": "done", "packets": 7}
    assert r["created_unix_ns"] == 2 * 10**18
    assert rec.id in invoke("list").output  # and the table, as before


@pytest.mark.parametrize("target,text", [
    (control_pb2.Target(namespace="shop", selector="app=web", field_selector="spec.nodeName=n1", pod_names=["a", "b"]),
     "ns=shop selector=app=web fields=spec.nodeName=n1 pods=a,b"),
    (control_pb2.Target(all_namespaces=True, field_selector="status.phase=Running"),
     "all namespaces fields=status.phase=Running"),
    (control_pb2.Target(), "ns=default"),
])
def test_target_text_is_the_audit_records_text_with_field_selectors(target: control_pb2.Target, text: str) -> None:
    assert target_text(target) == text


def test_status_table_names_every_pod_and_every_drop(fake: FakeClient) -> None:
    r = invoke("status", CID, "-o", "table")
    assert r.exit_code == 0
    for text in (f"capture {CID}: running", "shop/web-0", "shop/web-1", "node-1", "vethabc", "kernel 2",
                 "buffer-full 5"):
        assert text in r.output
    assert "packets the kernel delivered" not in r.output  # the accounting is told once the capture is over
    fake.get = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    assert "all 27 packets the kernel delivered are stored" in invoke("status", CID).output


def test_status_says_what_waits_for_the_bucket_and_why(fake: FakeClient) -> None:
    waiting = capture()
    waiting.archive_backlog_bytes, waiting.archive_oldest_seconds = 3 << 20, 95
    waiting.archive_error = "PUT k: EndpointConnectionError"
    fake.get = lambda cid: waiting
    out = invoke("status", CID).output
    assert "3.0 MiB waiting on the collector's disk for the bucket" in out and "EndpointConnectionError" in out
    fake.get = lambda cid: capture()
    assert "waiting on the collector's disk" not in invoke("status", CID).output


def test_start_prints_yaml_then_the_id(fake: FakeClient) -> None:
    r = invoke("start", "-n", "shop", "-l", "app=web", "-o", "yaml")
    lines = r.output.strip().splitlines()
    assert lines[-1] == CID
    assert yaml.safe_load("\n".join(lines[:-1]))["target"]["selector"] == "app=web"


def test_status_watch_prints_each_change_until_the_capture_ends(fake: FakeClient) -> None:
    states = iter([capture(packets=1), capture(packets=1), capture(packets=5),
                   capture(control_pb2.CAPTURE_STATE_DONE, packets=9)])
    fake.get = lambda cid: next(states)
    r = invoke("status", CID, "--watch", "--interval", "0", "-o", "json")
    docs = [json.loads(line) for line in r.output.splitlines()]
    assert [d["packets"] for d in docs] == [2, 10, 18]  # the unchanged second poll is not printed again
    assert docs[-1]["state"] == "done"


def test_status_watch_yaml_documents(fake: FakeClient) -> None:
    states = iter([capture(packets=1), capture(control_pb2.CAPTURE_STATE_DONE, packets=2)])
    fake.get = lambda cid: next(states)
    docs = list(yaml.safe_load_all(invoke("status", CID, "-w", "--interval", "0", "-o", "yaml").output))
    assert [d["state"] for d in docs] == ["running", "done"]


# ---- get ----


def test_get_merge_writes_one_pcapng_with_pod_metadata(fake: FakeClient, tmp_path: str) -> None:
    fake.files = {"web-0": pcap_bytes(1_700_000_001 * 10**9, 30), "web-1": pcap_bytes(1_700_000_001 * 10**9 + 500, 20)}
    fake.get = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    out = os.path.join(tmp_path, "all.pcapng")
    r = invoke("get", CID, "--merge", out)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(out + "\t") and "50 packets from 2 pod(s)" in r.output
    f = read_pcapng(out)
    assert [i.name for i in f.interfaces] == ["shop/web-0", "shop/web-1"]
    assert "node node-1" in f.interfaces[0].description and "uid uid-web-0" in f.interfaces[0].description
    assert f.interfaces[1].filter == "udp port 9999"
    assert [p.ts_ns for p in f.packets] == sorted(p.ts_ns for p in f.packets)
    assert f.comments[0] == f"podcap capture {CID}"
    assert [(s.counter(ISB_IFDROP), s.counter(ISB_USRDELIV)) for s in f.stats] == [(2, 10), (5, 10)]
    assert os.listdir(tmp_path) == ["all.pcapng"], "temporary files left behind"


def test_get_pcapng_per_pod_and_merge_together(fake: FakeClient, tmp_path: str) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3), "web-1": pcap_bytes(10**18, 4)}
    out_dir = os.path.join(tmp_path, "out")
    merged = os.path.join(tmp_path, "m.pcapng")
    r = invoke("get", CID, "-o", out_dir, "--format", "pcapng", "--merge", merged)
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(os.path.join(out_dir, "shop"))) == ["web-0.pcapng", "web-1.pcapng"]
    assert len(read_pcapng(os.path.join(out_dir, "shop", "web-1.pcapng")).packets) == 4
    assert len(read_pcapng(merged).packets) == 7


def test_get_merge_to_stdout_is_only_the_pcapng(fake: FakeClient, tmp_path: str) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3), "web-1": pcap_bytes(10**18, 2)}
    r = CliRunner().invoke(main.cli, ["get", CID, "--merge", "-", "-o", str(tmp_path)], prog_name="podcap",
                           catch_exceptions=False)
    assert r.exit_code == 0
    path = os.path.join(tmp_path, "merged.pcapng")
    with open(path, "wb") as f:
        f.write(r.stdout_bytes)
    assert len(read_pcapng(path).packets) == 5
    assert "merged 5 packets from 2 pod(s)" in r.stderr and "web-0.pcap" in r.stderr


def test_get_pcap_files_as_before(fake: FakeClient, tmp_path: str) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3)}
    r = invoke("get", CID, "-o", str(tmp_path))
    assert r.exit_code == 0
    with open(os.path.join(tmp_path, "shop", "web-0.pcap"), "rb") as f:
        assert f.read() == fake.files["web-0"]


def test_incomplete_download_leaves_nothing_that_looks_whole(fake: FakeClient, tmp_path: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    fake.files = {"web-0": pcap_bytes(10**18, 3)}
    fake.truncate = 5
    code, _, err = run_main("podcap", ["get", CID, "-o", str(tmp_path)], monkeypatch, capsys)
    assert code == 1 and "incomplete" in err and len(err.strip().splitlines()) == 1
    assert os.listdir(os.path.join(tmp_path, "shop")) == []


def test_get_needs_a_destination(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main("podcap", ["get", CID], monkeypatch, capsys)
    assert code == 2
    assert err.strip() == ("podcap get: say where to: -o DIR (one file per pod) or --merge FILE.pcapng (one file); "
                           "see 'podcap get -h'")


# ---- errors ----


@pytest.mark.parametrize(("args", "needle"), [
    (["start", "--max-bytes", "10XB"], "invalid size '10XB'"),
    (["start", "--duration", "1h-"], "invalid duration '1h-'"),
    (["start", "--snaplen", "-1"], "--snaplen"),
    (["status", CID, "-o", "xml"], "'xml' is not one of"),
    (["status"], "Missing argument 'CAPTURE_ID'"),
    (["completion", "tcsh"], "'tcsh' is not one of"),
])
def test_bad_parameters_are_one_line_ending_with_what_to_do(args: list[str], needle: str, fake: FakeClient,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_main("/usr/local/bin/podcap", args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and out == ""
    assert len(lines) == 1 and needle in lines[0], err
    assert lines[0].startswith(f"podcap {args[0]}: ") and lines[0].endswith(f"see 'podcap {args[0]} -h'")


@pytest.mark.parametrize(("command", "code", "message", "hint"), [
    (["status", CID], grpc.StatusCode.NOT_FOUND, "no capture 'x'", "'podcap list' shows the capture ids"),
    (["status", CID], grpc.StatusCode.NOT_FOUND, "no capture 'x' (see `podcap list`)", ""),
    (["start", "-n", "shop"], grpc.StatusCode.NOT_FOUND, "no pod 'x' in namespace 'shop'; pods there: a",
     "check -n/--namespace"),
    (["start", "--filter", "x"], grpc.StatusCode.INVALID_ARGUMENT, "invalid filter 'x'", "'podcap start -h'"),
    (["start"], grpc.StatusCode.FAILED_PRECONDITION, "pod a runs on node n, which has no connected podcap agent",
     "start podcap-agent on that node"),
    (["list"], grpc.StatusCode.DEADLINE_EXCEEDED, "the collector did not answer in time", "retry"),
    (["stop", CID], grpc.StatusCode.INTERNAL, "boom", "collector's log"),
])
def test_collector_errors_are_one_line_with_a_hint(command: list[str], code: grpc.StatusCode, message: str,
                                                   hint: str, fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def fail(*_: object) -> control_pb2.CaptureStatus:
        raise CollectorError(message, code)

    fake.get = fake.stop = fake.start = fail
    fake.list_captures = lambda: fail()  # type: ignore[assignment,return-value]
    exit_code, _, err = run_main("podcap", command, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert exit_code == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"podcap: {message.rstrip('.')}")
    if hint:
        assert hint in lines[0].split("; ")[-1]
    else:
        assert lines[0] == f"podcap: {message}"


def test_kubectl_plugin_names_itself_kubectl_podcap(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main("/usr/local/bin/kubectl-podcap", ["status", "-h"], monkeypatch, capsys)
    assert code == 0 and out.startswith("Usage: kubectl podcap status [OPTIONS] CAPTURE_ID")
    code, _, err = run_main("/usr/local/bin/kubectl-podcap", ["stop"], monkeypatch, capsys)
    assert code == 2 and err.strip().endswith("see 'kubectl podcap stop -h'")
    assert main.prog_name("podcap") == "podcap"


# ---- completion ----


@pytest.mark.parametrize(("shell", "needle"), [
    ("bash", "_PODCAP_COMPLETE=bash_complete"),
    ("zsh", "#compdef podcap"),
    ("fish", "complete --no-files --command podcap"),
])
def test_completion_scripts(shell: str, needle: str) -> None:
    r = invoke("completion", shell)
    assert r.exit_code == 0 and needle in r.output


def test_builtin_completion_matches_the_command() -> None:
    builtin = CliRunner().invoke(main.cli, [], prog_name="podcap", env={"_PODCAP_COMPLETE": "bash_source"})
    assert builtin.output.strip() == invoke("completion", "bash").output.strip()


def complete_words(words: str, fake: FakeClient) -> list[str]:
    r = CliRunner().invoke(main.cli, [], prog_name="podcap", env={
        "_PODCAP_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1)})
    return [line.split(",", 1)[1] for line in r.output.splitlines() if line]


def test_commands_options_and_capture_ids_complete(fake: FakeClient) -> None:
    assert complete_words("podcap st", fake) == ["start", "status", "stop"]
    assert "--merge" in complete_words("podcap get x --", fake)
    assert complete_words("podcap status ", fake) == [CID]
    assert complete_words("podcap status zz", fake) == []
    assert complete_words("podcap status -o ", fake) == ["table", "json", "yaml"]


def test_capture_ids_complete_to_nothing_when_the_collector_is_down(fake: FakeClient) -> None:
    def down() -> list[control_pb2.CaptureStatus]:
        raise CollectorError("cannot reach the collector", grpc.StatusCode.UNAVAILABLE)

    fake.list_captures = down
    assert complete_words("podcap stop ", fake) == []


def test_kubectl_complete_protocol(fake: FakeClient, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["kubectl_complete-podcap", "sta"])
    main.kubectl_complete()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[:-1]] == ["start", "status"] and lines[-1] == ":4"
    monkeypatch.setattr(sys, "argv", ["kubectl_complete-podcap", "get", CID, "--merge", ""])
    main.kubectl_complete()
    assert capsys.readouterr().out.splitlines()[-1] == ":0"  # a file name: let the shell complete paths


def test_real_kubectl_runs_the_plugin_and_its_completion() -> None:
    """kubectl finds ``kubectl-podcap`` and ``kubectl_complete-podcap`` on PATH (the console scripts)."""
    import shutil
    import subprocess

    bin_dir = os.path.dirname(sys.executable)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    kubectl = shutil.which("kubectl", path=path)
    if kubectl is None or shutil.which("kubectl-podcap", path=bin_dir) is None:
        pytest.skip("kubectl or the kubectl-podcap console script is not installed")
    env = {**os.environ, "PATH": path}
    r = subprocess.run([kubectl, "podcap", "status", "-h"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("Usage: kubectl podcap status"), r.stderr
    r = subprocess.run([kubectl, "__complete", "podcap", "status", "-o", ""], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.stdout.split() == ["table", "json", "yaml", ":4"], r.stdout + r.stderr
