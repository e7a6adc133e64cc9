"""A recorder as the catalog keeps it and rebuilds it (issue 24): pods (gone ones too), saves with their windows,
triggers and end state, and what follows from them (up to where each pod is saved, the debounce of automatic
saves); and the metrics computed from the recorders: saves by reason, ring bytes and span per node."""

from __future__ import annotations

from typing import Any, cast

from podcap.collector.kube.selectors import parse_selector
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.recorders.metrics import RecorderMetrics
from podcap.collector.recorders.model import Recorder, RingPod, Save, from_status
from podcap.collector.recorders.windows import Debounce, saved_until
from podcap.collector.targets import TargetSpec
from podcap.names import CaptureId, NodeName, PodUid
from podcap.pods import PodRef
from podcap.v1 import control_pb2, ingest_pb2

S = 1_000_000_000
SPEC = TargetSpec("shop", parse_selector("app=web"), ())


def pod(i: int, node: str = "n1") -> PodRef:
    return PodRef("shop", f"web-{i}", PodUid(f"u{i}"), NodeName(node))


def recorder() -> Recorder:
    req = control_pb2.StartRecorderRequest(keep_seconds=300, before_ms=60000, after_ms=10000, cooldown_seconds=60,
                                           max_saves_per_hour=2, on=[control_pb2.RECORDER_TRIGGER_RESTART])
    rec = Recorder("rec-abc", req, SPEC, 100 * S, "alice",
                   debounce=Debounce(cooldown_ns=60 * S, per_hour=2))
    rec.pods = {PodUid("u0"): RingPod(pod(0)), PodUid("u1"): RingPod(pod(1), gone="pod gone since 12:00:00")}
    auto = control_pb2.RecorderSaveInfo(recorder_id="rec-abc", from_unix_ns=1000 * S, to_unix_ns=1070 * S,
                                        dispatched=True, triggers=[control_pb2.SaveTrigger(
                                            reason=control_pb2.RECORDER_TRIGGER_RESTART, unix_ns=1060 * S)])
    manual = control_pb2.RecorderSaveInfo(recorder_id="rec-abc", from_unix_ns=1070 * S, to_unix_ns=1200 * S,
                                          pod_from_unix_ns={"u0": 1070 * S}, triggers=[control_pb2.SaveTrigger(
                                              reason=control_pb2.RECORDER_TRIGGER_MANUAL, unix_ns=1140 * S)])
    rec.saves = [Save(CaptureId("cap1"), auto, [PodUid("u0")], True, control_pb2.CAPTURE_STATE_DONE),
                 Save(CaptureId("cap2"), manual, [PodUid("u0"), PodUid("u1")], False)]
    return rec


def test_a_recorder_survives_the_catalog() -> None:
    st = recorder().to_status()
    assert [s.capture_id for s in st.saves] == ["cap2", "cap1"]  # newest first
    back = from_status(st, SPEC, {"cap1": [PodUid("u0")], "cap2": [PodUid("u0"), PodUid("u1")]})
    assert (back.id, back.by, back.request, back.created_ns) == ("rec-abc", "alice", st.request, 100 * S)
    assert back.pods[PodUid("u1")].gone == "pod gone since 12:00:00" and not back.pods[PodUid("u0")].gone
    assert [(s.capture_id, s.automatic, s.ended_state) for s in back.saves] == [
        ("cap1", True, control_pb2.CAPTURE_STATE_DONE), ("cap2", False, control_pb2.CAPTURE_STATE_UNSPECIFIED)]
    held = saved_until([(s.info.from_unix_ns, s.info.to_unix_ns, s.pods) for s in back.saves], 2000 * S)
    assert held == {PodUid("u0"): 1200 * S, PodUid("u1"): 1200 * S}  # never saved again
    assert back.saves[1].window.start_of(PodUid("u0")) == 1070 * S
    assert "cooldown" in back.debounce.held_back(1150 * S)  # the manual save's cooldown holds
    assert back.debounce.held_back(1300 * S) == ""


def test_a_saves_capture_that_is_gone_has_no_pods_and_saves_nothing_twice() -> None:
    back = from_status(recorder().to_status(), SPEC, {})
    assert [s.pods for s in back.saves] == [[], []]


def ring(bytes_: int, oldest: int, newest: int, state: int = ingest_pb2.RING_STATE_RECORDING
         ) -> ingest_pb2.RingStatus:
    return ingest_pb2.RingStatus(state=state, bytes=bytes_, oldest_unix_ns=oldest, newest_unix_ns=newest)


def test_metrics_count_saves_by_reason_and_rings_per_node() -> None:
    rec = recorder()
    rec.pods[PodUid("u0")].ring = ring(1000, 10 * S, 70 * S)
    rec.pods[PodUid("u1")].ring = ring(500, 0, 0, ingest_pb2.RING_STATE_KEPT)
    rec.pods[PodUid("u2")] = RingPod(pod(2, "n2"), ring=ring(300, 40 * S, 70 * S))
    fake = cast(Any, type("Fake", (), {"saves_total": {"restart": 3, "manual": 1}, "all": lambda self: [rec]})())
    families = {f.name: f for f in RecorderMetrics(cast(RecorderManager, fake)).collect()}
    samples = {(f, tuple(s.labels.values())): s.value for f, fam in families.items() for s in fam.samples}
    assert samples[("podcap_recorder_saves", ("restart",))] == 3
    assert samples[("podcap_recorder_ring_bytes", ("n1",))] == 1500
    assert samples[("podcap_recorder_ring_span_seconds", ("n1",))] == 60
    assert samples[("podcap_recorder_ring_span_seconds", ("n2",))] == 30
    assert samples[("podcap_recorders_active", ())] == 1
