"""A hand-written stand-in for the CLI's collector client, the capture statuses it answers with, and ways to run
the CLI (click's runner, or the real entry point as the shell runs it): shared by the CLI's unit tests."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from click.testing import CliRunner

from podcap.collector.cli import main
from podcap.formats.pcap import FileFormat
from podcap.v1 import common_pb2, control_pb2

CID = "abc123def456"


def pod_status(name: str, *, packets: int = 10, dropped: int = 0, agent: int = 0) -> control_pb2.PodStatus:
    return control_pb2.PodStatus(
        pod=common_pb2.Pod(namespace="shop", name=name, uid=f"uid-{name}", node="node-1", ip="10.0.0.9"),
        state=common_pb2.POD_CAPTURE_STATE_CAPTURING, packets=packets, bytes=packets * 100 + 24,
        kernel=common_pb2.KernelStats(received=packets + dropped + agent, dropped=dropped),
        agent_dropped_packets=agent, drops=common_pb2.PodcapDrops(buffer_full=agent), interface="vethabc")


def capture(state: control_pb2.CaptureState.ValueType = control_pb2.CAPTURE_STATE_RUNNING,
            packets: int = 10) -> control_pb2.CaptureStatus:
    pods = [pod_status("web-0", packets=packets, dropped=2), pod_status("web-1", packets=packets, agent=5)]
    for p in pods:  # an ended capture's pods sent their final counters
        p.final = state != control_pb2.CAPTURE_STATE_RUNNING
    return control_pb2.CaptureStatus(
        id=CID, state=state, target=control_pb2.Target(namespace="shop", selector="app=web"),
        settings=common_pb2.CaptureSettings(filter="udp port 9999"), created_unix_ns=1_700_000_000 * 10**9,
        ended_unix_ns=0 if state == control_pb2.CAPTURE_STATE_RUNNING else 1_700_000_010 * 10**9,
        pods=pods, packets=2 * packets, bytes=2 * (packets * 100 + 24))


def pcap_bytes(first_ts_ns: int, n: int) -> bytes:
    out = [FileFormat(1, 65535, True).header()]
    for i in range(n):
        frame = bytes(14) + bytes([i % 256]) * (40 + i)
        ts = first_ts_ns + i * 1000
        out.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, len(frame), len(frame)) + frame)
    return b"".join(out)


@dataclass
class FakeClient:
    """Stands in for CollectorClient; each RPC is a callable a test may replace."""

    get: Callable[[str], control_pb2.CaptureStatus] = lambda cid: capture()
    stop: Callable[[str], control_pb2.CaptureStatus] = lambda cid: capture(control_pb2.CAPTURE_STATE_DONE)
    start: Callable[[control_pb2.StartCaptureRequest], control_pb2.CaptureStatus] = lambda req: capture()
    list_captures: Callable[[], list[control_pb2.CaptureStatus]] = lambda: [capture()]
    files: dict[str, bytes] = field(default_factory=dict)
    truncate: int = 0
    addresses: list[str] = field(default_factory=list)
    audit_records: list[control_pb2.AuditRecord] = field(default_factory=list)
    follow_messages: list[control_pb2.FollowMessage] = field(default_factory=list)
    capturable: control_pb2.ListCapturablePodsResponse = field(
        default_factory=control_pb2.ListCapturablePodsResponse)

    def __call__(self, address: str | None = None, **_: Any) -> FakeClient:
        self.addresses.append(address or "")
        return self

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def list_all(self) -> control_pb2.ListCapturesResponse:
        return control_pb2.ListCapturesResponse(captures=self.list_captures())

    def audit(self, *, limit: int = 100, capture_id: str = "") -> list[control_pb2.AuditRecord]:
        return self.audit_records[:limit]

    def follow(self, capture_id: str, pods: list[str] | None = None) -> Iterator[control_pb2.FollowMessage]:
        yield from self.follow_messages

    def capturable_pods(self, namespace: str = "", *,
                        timeout: float | None = None) -> control_pb2.ListCapturablePodsResponse:
        return self.capturable

    def download(self, capture_id: str, pods: list[str] | None = None, *, since_ns: int = 0, until_ns: int = 0,
                 bpf: str = "") -> Iterator[control_pb2.DownloadChunk]:
        for name, blob in self.files.items():
            pod = pod_status(name).pod
            if pods and not {pod.uid, pod.name, f"{pod.namespace}/{pod.name}"} & set(pods):
                continue  # the collector's selection
            yield control_pb2.DownloadChunk(file=control_pb2.FileStart(pod=pod, path=f"shop/{name}.pcap",
                                                                       size=len(blob)))
            data = blob[: len(blob) - self.truncate]
            for off in range(0, len(data), 1000):
                yield control_pb2.DownloadChunk(data=data[off : off + 1000])


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(main.cli, list(args), prog_name="podcap", env=env, catch_exceptions=False)


def run_main(argv0: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
             capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The real entry point, as the shell runs it (``argv0`` decides the program name)."""
    monkeypatch.setattr(sys, "argv", [argv0, *args])
    code = 0
    try:
        main.main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
