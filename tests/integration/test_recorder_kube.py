"""Issue 24: the recorder's Kubernetes triggers and Events, against the API stand-in (pods, events) with an
in-process collector that watches it and the fake ring agent (real gRPC). A restart count going up, an OOM kill, a
kubelet ``Unhealthy`` Event, Ready going false and a pod's deletion each make a save of the pod's ring with that
trigger; the saved pod gets a ``PacketsSaved`` Event naming the capture; a pod that appears later and matches is
recorded too; the save is in the audit trail and counted by reason. No root needed."""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from podcap.collector.cli.client import CollectorClient
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2, control_pb2
from tests.integration.recorder_agent import RingAgent
from tests.kubeapi.helpers import api_for
from tests.kubeapi.standin import KubeApiStandin

NODE = "node-k"
R = control_pb2


@pytest.fixture
def world(tmp_path: str) -> Iterator[tuple[KubeApiStandin, Collector, str, RingAgent]]:
    standin = KubeApiStandin()
    pods = [standin.add_pod("shop", f"web-{i}", labels={"app": "web"}, node=NODE, ip=f"10.1.0.{i + 2}")
            for i in range(2)]
    cluster = ClusterInventory(api_for(standin, str(tmp_path))).start()
    assert cluster.wait_synced(10)
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=cluster)
    agent = RingAgent(f"127.0.0.1:{c.port}", NODE, [
        common_pb2.Pod(namespace="shop", name=p["metadata"]["name"], uid=p["metadata"]["uid"], node=NODE,
                       labels={"app": "web"}) for p in pods])
    try:
        yield standin, c, f"127.0.0.1:{c.port}", agent
    finally:
        agent.close()
        c.stop(0)
        standin.close()


def wait_for(ok: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while not (v := ok()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return v


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["status"]["containerStatuses"][0]  # type: ignore[no-any-return]


def saves_by(cli: CollectorClient, rid: str, reason: int) -> list[control_pb2.RecorderSave]:
    return [s for s in cli.get_recorder(rid).saves if s.info.triggers and s.info.triggers[0].reason == reason]


def ended(cli: CollectorClient, cid: str) -> bool:
    return cli.get(cid).state == R.CAPTURE_STATE_DONE


def packets_saved_events(standin: KubeApiStandin, pod: str) -> list[dict[str, Any]]:
    return [e for e in standin.objects("events", "shop")
            if e.get("reason") == "PacketsSaved" and e["involvedObject"]["name"] == pod]


def test_kubernetes_triggers_save_the_pods_ring_and_post_an_event(
        world: tuple[KubeApiStandin, Collector, str, RingAgent]) -> None:
    standin, c, address, agent = world
    with CollectorClient(address) as cli:
        rec = cli.record(R.StartRecorderRequest(
            target=R.Target(namespace="shop", selector="app=web"), keep_seconds=60, before_ms=1000, after_ms=300,
            cooldown_seconds=1, on=[R.RECORDER_TRIGGER_RESTART, R.RECORDER_TRIGGER_OOMKILLED,
                                    R.RECORDER_TRIGGER_UNHEALTHY, R.RECORDER_TRIGGER_NOTREADY,
                                    R.RECORDER_TRIGGER_DELETED]))
        wait_for(lambda: len(agent.starts) == 2, what="starts")
        time.sleep(1.2)

        # restart: the restart count goes up.
        def restarted(o: dict[str, Any]) -> None:
            container(o)["restartCount"] = 1
            container(o)["lastState"] = {"terminated": {"reason": "Error", "exitCode": 1,
                                                        "finishedAt": now_rfc3339()}}
        standin.modify("pods", "shop", "web-0", restarted)
        (save,) = wait_for(lambda: saves_by(cli, rec.id, R.RECORDER_TRIGGER_RESTART), what="a restart save")
        wait_for(lambda: ended(cli, save.capture_id), what="the restart save's end")
        st = cli.get(save.capture_id)
        assert [p.pod.name for p in st.pods] == ["web-0"] and st.pods[0].packets > 0
        assert "container main restarted (restart count 0 -> 1)" in st.save.triggers[0].detail
        ev = wait_for(lambda: packets_saved_events(standin, "web-0"), what="the PacketsSaved Event")[0]
        assert save.capture_id in ev["message"] and "restart of shop/web-0" in ev["message"]
        assert ev["type"] == "Normal" and ev["involvedObject"]["uid"] == st.pods[0].pod.uid

        # unhealthy: the kubelet's Event about a failing probe.
        time.sleep(1.1)  # the cooldown
        web1 = standin.get("pods", "shop", "web-1")
        assert web1 is not None
        standin.add_event("shop", web1, reason="Unhealthy", message="Readiness probe failed: HTTP 503",
                          type_="Warning", component="kubelet")
        (save,) = wait_for(lambda: saves_by(cli, rec.id, R.RECORDER_TRIGGER_UNHEALTHY), what="an unhealthy save")
        assert save.info.triggers[0].detail == "Readiness probe failed: HTTP 503"
        assert save.info.triggers[0].pod.name == "web-1"

        # oomkilled (and restart): one save holds both triggers.
        time.sleep(1.1)

        def oom(o: dict[str, Any]) -> None:
            container(o)["restartCount"] = 2
            container(o)["lastState"] = {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                                        "finishedAt": now_rfc3339()}}
        standin.modify("pods", "shop", "web-0", oom)
        (save,) = wait_for(lambda: [s for s in cli.get_recorder(rec.id).saves
                                    if R.RECORDER_TRIGGER_OOMKILLED in [t.reason for t in s.info.triggers]
                                    and len(s.info.triggers) == 2],
                           what="an OOM save")
        assert sorted(t.reason for t in save.info.triggers) == [R.RECORDER_TRIGGER_RESTART,
                                                                 R.RECORDER_TRIGGER_OOMKILLED]
        wait_for(lambda: ended(cli, save.capture_id), what="the OOM save's end")
        assert not cli.get(save.capture_id).save.pod_from_unix_ns  # its pod's whole window
        assert cli.get(save.capture_id).pods[0].packets > 0

        # notready, then deleted: the ring of a pod that is gone is still saved.
        time.sleep(1.1)

        def unready(o: dict[str, Any]) -> None:
            o["status"]["conditions"][0]["status"] = "False"
        standin.modify("pods", "shop", "web-1", unready)
        wait_for(lambda: saves_by(cli, rec.id, R.RECORDER_TRIGGER_NOTREADY), what="a notready save")
        time.sleep(1.1)
        standin.delete("pods", "shop", "web-1")
        (save,) = wait_for(lambda: saves_by(cli, rec.id, R.RECORDER_TRIGGER_DELETED), what="a deleted save")
        wait_for(lambda: ended(cli, save.capture_id), what="the deleted pod's save")
        st = cli.get(save.capture_id)
        assert [p.pod.name for p in st.pods] == ["web-1"] and st.pods[0].packets > 0
        status = cli.get_recorder(rec.id)
        assert "pod gone" in next(p.message for p in status.pods if p.pod.name == "web-1")

        # A pod that appears later and matches is recorded too.
        standin.add_pod("shop", "web-2", labels={"app": "web"}, node=NODE)
        wait_for(lambda: any(s.pod.name == "web-2" for s in agent.starts), what="a start for the new pod")

        # Counted by reason; each save is in the audit trail.
        assert c.recorders is not None
        assert {k: v for k, v in c.recorders.saves_total.items()} == {
            "restart": 1, "unhealthy": 1, "oomkilled": 1, "notready": 1, "deleted": 1}
        saves = [a for a in cli.audit(limit=100) if a.action == "save"]
        assert len(saves) == 5 and all(a.user == "podcap-collector" for a in saves)
