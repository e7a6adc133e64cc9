"""PodCaptures with ``spec.recorder``: flight recorders through the Kubernetes API. The real ``kubectl`` against the
API stand-in with the CRD from deploy/base, an in-process collector watching it, the controller of
``--reconcile-podcaptures``, and the fake ring agent (real gRPC, the Ingest protocol's recorder messages).

Covers: apply -> a recorder starts (as ``podcap record`` would: the creator's payload cap on the rings' snaplen),
its id in the annotation and ``status.recorderId``, status shows its rings and its saves (capture id, ``podcap get``
command); a save made by a trigger shows up; a restarted collector (and a controller that never recorded the id)
resumes the same recorder, never a second; delete -> the recorder stops (its rings' stop sent to the agent) and its
saves are deleted, or kept with ``retainOnDelete``; a recorder spec with a capture's limits, or without keep, is
Failed with why. No root needed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from podcap.collector.api.auth import KubeAuthorizer
from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.podcaptures.controller import PodCaptureController, start_controller
from podcap.collector.podcaptures.resource import RECORDER_ANNOTATION
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2, control_pb2
from tests.conftest import tool
from tests.integration.recorder_agent import RingAgent
from tests.kubeapi.helpers import api_for, wait_for
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD = os.path.join(REPO, "deploy", "base", "crd-podcapture.yaml")
KUBECTL = tool("kubectl")
NODE = "node-r"
NS = "shop"

Obj = dict[str, Any]


@dataclass
class World:
    kube: KubeApiStandin
    api: KubeApi
    cluster: ClusterInventory
    collector: Collector
    agent: RingAgent
    tmp: str

    @property
    def recorders(self) -> RecorderManager:
        assert self.collector.recorders is not None
        return self.collector.recorders

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        home = os.path.join(self.tmp, "home")
        r = subprocess.run([KUBECTL, "--kubeconfig", os.path.join(self.tmp, "kubeconfig-kubectl"), "--cache-dir",
                            os.path.join(home, "c"), *args], input=stdin, capture_output=True, text=True,
                           timeout=60, env=dict(os.environ, HOME=home))
        assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    def controller(self) -> PodCaptureController:
        return start_controller(self.api, self.collector.captures, KubeAuthorizer(self.api),
                                recorders=self.collector.recorders, lease_namespace="podcap", identity="c1",
                                lease_duration_s=2, lease_renew_s=0.3, stop_wait_s=3.0, status_interval_s=0.3,
                                min_status_interval_s=0.3)

    def apply(self, name: str, spec: Obj, *, creator: str = "alice") -> None:
        doc = {"apiVersion": "podcap.io/v1alpha1", "kind": "PodCapture",
               "metadata": {"name": name, "namespace": NS, "annotations": {"podcap.io/created-by": creator}},
               "spec": spec}
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))

    def pc(self, name: str) -> Obj | None:
        return self.kube.get("podcaptures.podcap.io", NS, name)

    def wait_pc(self, name: str, ok: Callable[[Obj], bool], what: str, timeout: float = 20) -> Obj:
        wait_for(lambda: (o := self.pc(name)) is not None and ok(o), timeout,
                 f"PodCapture {name} {what} (now: {json.dumps(self.pc(name))[:2000]})")
        obj = self.pc(name)
        assert obj is not None
        return obj


def _status(o: Obj) -> Obj:
    return o.get("status") or {}


@pytest.fixture
def world(tmp_path: Any) -> Iterator[World]:
    tmp = str(tmp_path)
    kube = KubeApiStandin(bookmark_interval=0.5)
    pods = [kube.add_pod(NS, f"web-{i}", labels={"app": "web"}, node=NODE, ip=f"10.1.0.{i + 2}") for i in range(2)]
    kube.ensure_namespace("podcap")
    kube.modify("namespaces", None, NS, {"metadata": {"annotations": {"podcap.io/max-snaplen": "128"}}})
    api = api_for(kube, tmp)
    write_kubeconfig(os.path.join(tmp, "kubeconfig-kubectl"), kube.url, namespace=NS)
    cluster = ClusterInventory(api).start()
    collector: Collector | None = None
    agent: RingAgent | None = None
    try:
        assert cluster.wait_synced(10)
        collector = start_collector("127.0.0.1:0", os.path.join(tmp, "data"), cluster=cluster)
        agent = RingAgent(f"127.0.0.1:{collector.port}", NODE, [
            common_pb2.Pod(namespace=NS, name=p["metadata"]["name"], uid=p["metadata"]["uid"], node=NODE,
                           labels={"app": "web"}) for p in pods])
        w = World(kube, api, cluster, collector, agent, tmp)
        w.kubectl("apply", "-f", CRD)
        w.kubectl("wait", "--for=condition=established", "crd/podcaptures.podcap.io", "--timeout=10s")
        yield w
        collector = w.collector  # a test may have restarted it
    finally:
        if agent is not None:
            agent.close()
        if collector is not None:
            collector.stop(0)
        else:
            cluster.stop()
        kube.close()


RECORDER = {"selector": "app=web", "snaplen": 1000,
            "recorder": {"keep": "1m", "before": "1s", "after": "300ms", "triggers": ["restart"], "cooldown": "1s"}}


def _saved(w: World, name: str) -> Obj:
    """Trigger a save of the resource's recorder by hand and wait for the status to show it done."""
    rid = _status(w.wait_pc(name, lambda o: bool(_status(o).get("recorderId")), "recording"))["recorderId"]
    fire = w.recorders.trigger(rid, ["web-0"], "a test", by="alice")
    assert fire.save is not None
    cid = fire.save.capture_id
    obj = w.wait_pc(name, lambda o: any(s["captureId"] == cid and s["state"] == "done"
                                        for s in _status(o).get("saves", [])), "showing the save done")
    return next(s for s in obj["status"]["saves"] if s["captureId"] == cid)


def test_a_recorder_podcapture_records_saves_shows_them_and_deleting_it_stops_it_and_deletes_its_saves(
        world: World) -> None:
    w = world
    ctl = w.controller()
    try:
        w.apply("rec", RECORDER)
        w.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "podcapture/rec", "--timeout=20s")
        obj = w.wait_pc("rec", lambda o: [r.get("state") for r in _status(o).get("rings", [])]
                        == ["recording", "recording"], "with both rings recording")
        st = obj["status"]
        rid = st["recorderId"]
        assert rid.startswith("rec-") and obj["metadata"]["annotations"][RECORDER_ANNOTATION] == rid
        assert "captureId" not in st and st["podCount"] == 2 and st["saves"] == [] and st["saveCount"] == 0
        assert [r["name"] for r in st["rings"]] == ["web-0", "web-1"] and all(r["node"] == NODE for r in st["rings"])
        assert st["packets"] == sum(r["packets"] for r in st["rings"])
        # As podcap record would have started it: the resource's namespace, the creator's payload cap.
        rec = w.recorders.get(rid)
        assert rec.request.target.namespace == NS and not rec.request.target.all_namespaces
        assert rec.request.keep_seconds == 60 and rec.request.before_ms == 1000 and rec.request.after_ms == 300
        assert list(rec.request.on) == [control_pb2.RECORDER_TRIGGER_RESTART] and rec.by == "alice"
        assert st["payloadCap"]["snaplen"] == 128 and st["payloadCap"]["requested"] == 1000
        assert {s.settings.snaplen for s in w.agent.starts if s.recorder_id == rid} == {128}
        assert "Started" in w.kubectl("describe", "podcapture", "rec").stdout
        assert rid in w.kubectl("get", "pcap", "rec", "-o", "wide").stdout

        save = _saved(w, "rec")
        cid = save["captureId"]
        assert save["get"] == {"command": f"podcap get {cid}"} and save["triggers"] == ["manual"]
        assert save["packets"] > 0 and save["packets"] == w.collector.captures.get(cid).packets_total
        data = os.path.join(w.tmp, "data", "captures", cid)
        assert os.path.isdir(data)

        w.kubectl("delete", "podcapture", "rec", "--timeout=30s")
        assert w.pc("rec") is None
        assert not w.recorders.get(rid).recording
        wait_for(lambda: rid in {s.recorder_id for s in w.agent.stops}, 10, "the rings' stop")
        with pytest.raises(CaptureNotFoundError):
            w.collector.captures.get(cid)
        assert not os.path.exists(data)
        audit = [(a.action, a.capture_id) for a in reversed(w.collector.store.audit(limit=100))
                 if a.user == "alice" and a.action in ("record", "stop", "delete")]
        assert audit == [("record", rid), ("stop", rid), ("delete", rid)]
    finally:
        ctl.stop()


def test_a_restarted_collector_resumes_the_recorder_and_retain_on_delete_keeps_its_saves(world: World) -> None:
    w = world
    ctl = w.controller()
    try:
        w.apply("kept", {**RECORDER, "retainOnDelete": True})
        cid = _saved(w, "kept")["captureId"]
        rid = _status(w.wait_pc("kept", lambda o: bool(_status(o).get("recorderId")), "recording"))["recorderId"]
    finally:
        ctl.stop()
    # The collector restarts (its catalog keeps the recorder); the resource also lost its annotation, as if the
    # collector had died between starting the recorder and recording its id: its note names the resource.
    port = w.collector.port
    w.agent.close()
    w.collector.stop(0)
    w.cluster = ClusterInventory(w.api).start()
    assert w.cluster.wait_synced(10)
    w.collector = start_collector(f"127.0.0.1:{port}", os.path.join(w.tmp, "data"), cluster=w.cluster)
    w.kube.modify("podcaptures.podcap.io", NS, "kept", lambda o: o["metadata"]["annotations"].pop(RECORDER_ANNOTATION))
    w.kube.modify("podcaptures.podcap.io", NS, "kept", lambda o: o.pop("status"))
    ctl = w.controller()
    try:
        obj = w.wait_pc("kept", lambda o: _status(o).get("phase") == "Running"
                        and bool(o["metadata"]["annotations"].get(RECORDER_ANNOTATION)), "resumed")
        assert obj["status"]["recorderId"] == rid and obj["metadata"]["annotations"][RECORDER_ANNOTATION] == rid
        assert [r.id for r in w.recorders.all()] == [rid]  # never a second recorder
        assert [s["captureId"] for s in obj["status"]["saves"]] == [cid]
        w.kubectl("delete", "podcapture", "kept", "--timeout=30s")
        assert not w.recorders.get(rid).recording
        assert w.collector.captures.get(cid).packets_total > 0  # retainOnDelete: the save stays
    finally:
        ctl.stop()


@pytest.mark.parametrize("spec,needle", [
    ({**RECORDER, "limits": {"duration": "1m"}}, "spec.limits is a capture's"),
    ({"selector": "app=web", "recorder": {"before": "1s"}}, "spec.recorder needs keep"),
    ({"selector": "app=web", "recorder": {"keep": "1m", "before": "2m"}}, "--before 120s is longer than --keep"),
])
def test_a_recorder_spec_the_collector_cannot_take_is_failed_with_why(world: World, spec: Obj, needle: str) -> None:
    ctl = world.controller()
    try:
        world.apply("bad", spec)
        obj = world.wait_pc("bad", lambda o: _status(o).get("phase") == "Failed", "failed")
        assert needle in obj["status"]["message"], obj["status"]
        assert not world.recorders.all() and not world.agent.starts
    finally:
        ctl.stop()
