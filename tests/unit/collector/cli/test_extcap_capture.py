"""The extcap's capture lifecycle with a hand-written fake collector client: the capture is stopped when Wireshark
stops (a signal during the stream, or during the start itself), kept when asked, stopped on the way out of a
failure; failures are one line after the fifo was opened. No network, no Wireshark (a plain file as the fifo)."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
import pytest

from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.cli.extcap.capture import ExtcapCapture, StopSignals, WiresharkStoppedError
from podcap.collector.cli.extcap.options import CaptureOptions, CollectorSettings
from podcap.v1 import common_pb2, control_pb2
from tests.pcapng_reader import read_pcapng


def _sigterm() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class FakeClient:
    """What ExtcapCapture uses of CollectorClient; each step can be replaced."""

    on_start: Callable[[], None] = lambda: None
    messages: list[control_pb2.FollowMessage | Callable[[], None]] = field(default_factory=list)
    follow_error: CollectorError | None = None
    started: list[control_pb2.StartCaptureRequest] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    closed: bool = False

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def start(self, req: control_pb2.StartCaptureRequest) -> control_pb2.CaptureStatus:
        self.started.append(req)
        self.on_start()
        return control_pb2.CaptureStatus(id="cap000000001", state=control_pb2.CAPTURE_STATE_RUNNING)

    def follow(self, capture_id: str) -> Iterator[control_pb2.FollowMessage]:
        for m in self.messages:
            if callable(m):
                m()
            else:
                yield m
        if self.follow_error is not None:
            raise self.follow_error

    def stop(self, capture_id: str) -> control_pb2.CaptureStatus:
        self.stopped.append(capture_id)
        return control_pb2.CaptureStatus(id=capture_id, state=control_pb2.CAPTURE_STATE_DONE)


def _opts(*, keep: bool = False, pods: tuple[str, ...] = ("shop/web-0",)) -> CaptureOptions:
    return CaptureOptions(collector=CollectorSettings("c:1", "", ""), namespace="", pods=pods, selector="",
                          filter="", snaplen=0, interface="veth", keep=keep)


def _run(tmp_path: str, client: FakeClient, **kw: object) -> tuple[int, str, str]:
    fifo = os.path.join(tmp_path, "fifo")
    err = io.StringIO()
    cap = ExtcapCapture(_opts(**kw), fifo, "", stderr=err,  # type: ignore[arg-type]
                        connect=lambda s: client)  # type: ignore[arg-type,return-value]
    code = cap.run()
    return code, err.getvalue(), fifo


POD = control_pb2.FollowMessage(pod=control_pb2.FollowPod(
    index=0, pod=common_pb2.Pod(namespace="shop", name="web-0", uid="u"),
    format=common_pb2.PcapFormat(linktype=1, snaplen=65535, nanosecond=True)))
RECORD = control_pb2.FollowMessage(records=control_pb2.FollowRecords(
    index=0, records=b"\x01\0\0\0\x02\0\0\0\x04\0\0\0\x04\0\0\0abcd"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_wireshark_stopping_mid_stream_stops_the_capture_after_what_was_written(tmp_path: str, signum: int) -> None:
    def stop_after_what_came() -> None:
        time.sleep(0.5)  # the stream is read in a thread of its own: the view takes what came before the stop
        os.kill(os.getpid(), signum)

    client = FakeClient(messages=[POD, RECORD, stop_after_what_came, RECORD])
    code, err, fifo = _run(tmp_path, client)
    assert (code, err) == (0, "")
    assert client.stopped == ["cap000000001"] and client.closed
    f = read_pcapng(fifo)
    assert [i.name for i in f.interfaces] == ["shop/web-0"] and len(f.packets) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_keep_leaves_the_capture_running(tmp_path: str) -> None:
    client = FakeClient(messages=[POD, RECORD, _sigterm])
    assert _run(tmp_path, client, keep=True)[0] == 0
    assert client.stopped == []


def test_a_stop_during_the_start_stops_the_capture_the_start_made(tmp_path: str) -> None:
    client = FakeClient(on_start=_sigterm, messages=[POD, RECORD])
    code, err, _ = _run(tmp_path, client)
    assert (code, err) == (0, "")
    assert len(client.started) == 1 and client.stopped == ["cap000000001"]


def test_a_failure_mid_stream_is_one_line_and_the_capture_is_stopped(tmp_path: str) -> None:
    client = FakeClient(messages=[POD], follow_error=CollectorError(
        "cannot reach the collector at c:1 (gone)", grpc.StatusCode.UNAVAILABLE))
    code, err, fifo = _run(tmp_path, client)
    assert code == 1 and err.count("\n") == 1 and err.startswith("podcap: cannot reach the collector"), err
    assert client.stopped == ["cap000000001"]
    assert os.path.getsize(fifo) > 0  # the stream had begun


def test_a_refused_start_is_one_line_with_the_clis_hint_and_stops_nothing(tmp_path: str) -> None:
    def refuse() -> None:
        raise CollectorError("permission denied: user 'alice' may not create pods/capture in namespace 'shop'",
                             grpc.StatusCode.PERMISSION_DENIED)

    client = FakeClient(on_start=refuse)
    code, err, fifo = _run(tmp_path, client)
    assert code == 1 and client.stopped == []
    assert err == ("podcap: permission denied: user 'alice' may not create pods/capture in namespace 'shop'; ask an "
                   "administrator for podcap rights on that namespace\n")
    assert os.path.exists(fifo)  # opened, so that dumpcap stops waiting and reads the error


def test_held_signals_are_noted_not_raised() -> None:
    signals = StopSignals()
    previous = signals.install()
    try:
        with signals.held():
            _sigterm()
        assert signals.pending == "SIGTERM"
        with pytest.raises(WiresharkStoppedError):
            signals.raise_pending()
        with pytest.raises(WiresharkStoppedError):
            _sigterm()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)  # type: ignore[arg-type]


def test_the_fake_has_what_extcap_capture_uses_of_the_real_client() -> None:
    for name in ("start", "follow", "stop", "__enter__", "__exit__"):
        assert callable(getattr(CollectorClient, name)), name
