"""PodCapture resources, end to end: the real ``kubectl`` against the API stand-in (tests/kubeapi) with the PodCapture
CRD from deploy/base, a collector (in this process, with the stand-in's pod cache) and a real ``podcap-agent``
capturing DemoNode netns pods, and the controller of ``--reconcile-podcaptures``.

Covers: apply -> the capture starts, status shows phase, pods, packets, the capture id (``kubectl get podcaptures
-A`` printer columns), ``kubectl describe`` shows the controller's Events; delete -> capture stopped and its data
deleted, or kept with ``retainOnDelete``; a selector that would match pods of another namespace captures none; a
creator without ``create pods/capture`` is refused and audited; a restarted controller resumes the capture (also
when the capture id was never recorded), and so does a restarted collector, without starting a second one; the watch
re-lists after 410 Gone; a pod appearing mid-capture joins and the status follows; with two controllers only the
Lease holder reconciles, and the other takes over when it leaves.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from podcap.collector.captures.table import CaptureNotFoundError
from podcap.collector.demo.node import DemoNode
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.podcaptures.resource import CAPTURE_ANNOTATION
from podcap.collector.server import start_collector
from podcap.formats.pcap import read_file
from podcap.v1 import common_pb2, control_pb2
from tests.conftest import podcap, start_proc, tool
from tests.integration.podcapture_env import KubeEnv, Obj, kube_env, phase
from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin

NETNS_UID = uuid.UUID("6f1c1f4e-8a3e-4c55-9b8e-6f2d2b1c0a11")  # agent/pods/netns_source.py derives uids so

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="DemoNode pods need root (network namespaces)")

@dataclass
class Env(KubeEnv):
    node: DemoNode

    def traffic(self) -> None:
        sender = self.node.pod("sender")
        for rx in self.node.pods[1:]:
            self.node.exec(sender, ["ping", "-c", "3", "-i", "0.2", "-W", "1", rx.ip])


@pytest.fixture
def env(tmp_path: Any) -> Iterator[Env]:
    old_umask = os.umask(0o077)
    os.umask(old_umask)
    node = DemoNode()
    node.create(["sender", "rx-0", "rx-1", "rx-2"])
    node_name = "node-" + node.tag

    def setup(kube: KubeApiStandin) -> None:
        for pod in node.pods:
            kube.add_pod(node.namespace, pod.name, node=node_name, ip=pod.ip,
                         labels={"app": "rx" if pod.name.startswith("rx") else "sender"},
                         uid=str(uuid.uuid5(NETNS_UID, f"{node_name}/{node.namespace}/{pod.name}")))
        kube.add_pod("elsewhere", "rx-9", node=node_name, ip="10.99.0.9", labels={"app": "rx"})

    try:
        with kube_env(Env, str(tmp_path), node.namespace, setup, node=node) as e:
            agent = start_proc([tool("podcap-agent"), "--insecure", "--collector", f"127.0.0.1:{e.collector.port}",
                                "--node", node_name, "--pod-source", "netns"], os.path.join(e.tmp, "agent.log"))
            try:
                c = e.collector
                wait_for(lambda: len([p for p in c.captures.capturable_pods() if p.namespace == node.namespace])
                         == 4, 20, "the agent's pods")
                yield e
            finally:
                agent.stop()
    finally:
        node.destroy()
        os.umask(old_umask)


def test_apply_capture_status_describe_and_delete_with_its_data(env: Env) -> None:
    ctl = env.controller()
    try:
        env.apply("web", {"selector": "app=rx", "filter": "icmp"})
        env.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "podcapture/web", "--timeout=20s")
        obj = env.wait_pc("web", lambda o: (o.get("status") or {}).get("podCount") == 3
                          and phase("Running")(o), "running with 3 pods")
        cid = obj["status"]["captureId"]
        assert obj["metadata"]["annotations"][CAPTURE_ANNOTATION] == cid
        assert "podcap.io/capture" in obj["metadata"]["finalizers"]
        assert obj["status"]["get"] == {"command": f"podcap get {cid}"}
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 1
        cap = env.collector.captures.get(cid)
        assert cap.request.target.namespace == env.node.namespace and not cap.request.target.all_namespaces
        assert sorted(p.pod.name for p in cap.pods.values()) == ["rx-0", "rx-1", "rx-2"]
        env.traffic()
        obj = env.wait_pc("web", lambda o: o["status"].get("packets", 0) >= 18, "counting the pings")
        assert sum(p["packets"] for p in obj["status"]["pods"]) == obj["status"]["packets"]
        # The printer columns, as kubectl shows them.
        out = env.kubectl("get", "podcaptures", "-A").stdout.splitlines()
        assert out[0].split() == ["NAMESPACE", "NAME", "PHASE", "PODS", "PACKETS", "DROPS", "AGE"]
        row = out[1].split()
        assert row[:4] == [env.node.namespace, "web", "Running", "3"] and int(row[4]) >= 18 and row[5] == "0"
        wide = env.kubectl("get", "pcap", "web", "-o", "wide").stdout
        assert cid in wide
        described = env.kubectl("describe", "podcapture", "web").stdout
        assert "Started" in described and f"capture {cid} started: 3 pods" in described, described
        assert "Capture Id:" in described and cid in described
        audit = env.collector.store.audit(limit=100, capture_id=cid)
        assert [(a.user, a.action, a.result) for a in audit] == [("alice", "start", "allowed")]
        # Status writes are bounded: at most one per min_status_interval_s (0.5 s here) per resource, though the
        # counters changed more often and the resource was reconciled more often.
        writes = [r.at for r in env.kube.requests if r.method == "PUT" and r.path.endswith("/podcaptures/web/status")]
        assert len(writes) >= 2 and min(b - a for a, b in zip(writes, writes[1:], strict=False)) >= 0.45
        assert len(writes) < ctl.reconciles
        # Delete: the capture is stopped and its data deleted, then the resource goes.
        data = os.path.join(env.tmp, "data", "captures", cid)
        assert os.path.isdir(data)
        env.kubectl("delete", "podcapture", "web", "--timeout=30s")
        assert env.podcapture("web") is None
        with pytest.raises(CaptureNotFoundError):
            env.collector.captures.get(cid)
        assert not os.path.exists(data)
        # Newest first.
        assert [a.action for a in env.collector.store.audit(limit=100, capture_id=cid)] == ["delete", "stop",
                                                                                           "start"]
    finally:
        ctl.stop()


def test_retain_on_delete_keeps_the_data_of_the_stopped_capture(env: Env) -> None:
    ctl = env.controller()
    try:
        env.apply("keep", {"pods": ["rx-0"], "retainOnDelete": True, "filter": "icmp"})
        cid = env.wait_pc("keep", phase("Running"), "running")["status"]["captureId"]
        env.node.exec(env.node.pod("sender"), ["ping", "-c", "3", "-i", "0.2", env.node.pod("rx-0").ip])
        env.wait_pc("keep", lambda o: o["status"].get("packets", 0) >= 6, "counting")
        env.kubectl("delete", "podcapture", "keep", "--timeout=30s")
        assert env.podcapture("keep") is None
        cap = env.collector.captures.get(cid)
        assert cap.state == control_pb2.CAPTURE_STATE_DONE
        assert len(_stored(env, cid, "rx-0")) >= 6  # still there to download
    finally:
        ctl.stop()


def test_a_selector_never_reaches_another_namespace(env: Env) -> None:
    """Pods labelled app=rx exist in the DemoNode's namespace and in "elsewhere"; a PodCapture in a third namespace
    with that selector captures none of them (and one in "elsewhere" only pods of "elsewhere")."""
    ctl = env.controller()
    try:
        env.kube.ensure_namespace("tenant")
        env.apply("sneaky", {"selector": "app=rx"}, namespace="tenant")
        obj = env.wait_pc("sneaky", phase("Pending"), "pending", namespace="tenant")
        assert obj["status"]["podCount"] == 0 and "captureId" not in obj["status"]
        assert "no pod" in obj["status"]["message"].lower(), obj["status"]
        assert env.captures_of(obj) == []

        def status_writes() -> int:
            return sum(1 for r in env.kube.requests if r.method == "PUT"
                       and r.path.endswith("/namespaces/tenant/podcaptures/sneaky/status"))

        writes = status_writes()
        reconciles = ctl.reconciles
        time.sleep(1.5)  # retried, still nothing; an unchanged status is not written again
        assert ctl.reconciles > reconciles and status_writes() == writes
        assert env.captures_of(obj) == [] and not any(c.request.target.namespace == "tenant"
                                                       for c in env.collector.captures.all())
    finally:
        ctl.stop()


def test_a_creator_without_the_right_is_refused_and_audited(env: Env) -> None:
    env.kube.deny("create", env.node.namespace, user="mallory")
    ctl = env.controller()
    try:
        env.apply("nope", {"selector": "app=rx"}, creator="mallory")
        obj = env.wait_pc("nope", phase("Refused"), "refused")
        assert "mallory" in obj["status"]["message"] and env.captures_of(obj) == []
        cond = {c["type"]: c for c in obj["status"]["conditions"]}
        assert cond["Authorized"]["status"] == "False" and cond["Authorized"]["reason"] == "CreatorDenied"
        denied = [a for a in env.collector.store.audit(limit=100) if a.user == "mallory"]
        assert [(a.action, a.result) for a in denied] == [("start", "denied")]
        assert "Refused" in env.kubectl("describe", "podcapture", "nope").stdout
    finally:
        ctl.stop()


def test_a_restarted_controller_resumes_without_a_second_capture(env: Env) -> None:
    ctl = env.controller()
    env.apply("web", {"selector": "app=rx"})
    obj = env.wait_pc("web", phase("Running"), "running")
    cid = obj["status"]["captureId"]
    ctl.stop()
    env.traffic()
    ctl = env.controller()
    try:
        obj = env.wait_pc("web", lambda o: o["status"].get("packets", 0) >= 18, "counting after the restart")
        assert obj["status"]["captureId"] == cid and env.captures_of(obj) == [cid]
    finally:
        ctl.stop()
    # The crash window: the capture started but its id was never recorded in the resource. The capture's note
    # ties it to the resource's uid: the next controller adopts it.
    def forget(o: Obj) -> None:
        del o["metadata"]["annotations"][CAPTURE_ANNOTATION]
        o["status"].pop("captureId")

    env.kube.modify("podcaptures.podcap.io", env.node.namespace, "web", forget)
    ctl = env.controller()
    try:
        obj = env.wait_pc("web", lambda o: o["metadata"]["annotations"].get(CAPTURE_ANNOTATION) == cid
                          and o["status"].get("captureId") == cid, "adopting its capture")
        assert env.captures_of(obj) == [cid]
        starts = [a for a in env.collector.store.audit(limit=100) if a.action == "start" and a.result == "allowed"]
        assert len(starts) == 1
    finally:
        ctl.stop()


def test_only_the_lease_holder_reconciles_and_the_other_takes_over(env: Env) -> None:
    first = env.controller("c1")
    wait_for(lambda: first.lease is not None and first.lease.is_leader, 10, "c1 leading")
    second = env.controller("c2")
    try:
        env.apply("one", {"pods": ["rx-1"]})
        env.wait_pc("one", phase("Running"), "running")
        time.sleep(1.0)
        assert second.lease is not None and not second.lease.is_leader and second.reconciles == 0
        assert first.reconciles > 0
        lease = env.kube.get("leases", "podcap", "podcap-podcaptures")
        assert lease is not None and lease["spec"]["holderIdentity"] == "c1"
        first.stop()  # releases the Lease
        wait_for(lambda: second.lease is not None and second.lease.is_leader, 10, "c2 taking over")
        env.apply("two", {"pods": ["rx-2"]})
        env.wait_pc("two", phase("Running"), "running under c2")
        assert second.reconciles > 0
    finally:
        first.stop()
        second.stop()


def test_the_watch_relists_after_410_gone(env: Env) -> None:
    ctl = env.controller()
    try:
        wait_for(ctl.synced.is_set, 10, "the first list")
        lists = env.kube.count("list", "podcaptures")
        # While the API server is away, a PodCapture is created and history is compacted: the watch resumes from
        # a resourceVersion that is gone (410) and must re-list to see it.
        env.kube.stop_serving()
        env.kube.create("podcaptures.podcap.io", {
            "metadata": {"name": "after", "namespace": env.node.namespace,
                         "annotations": {"podcap.io/created-by": "alice"}}, "spec": {"pods": ["rx-0"]}})
        env.kube.compact()
        env.kube.start_serving()
        env.wait_pc("after", phase("Running"), "running after the re-list")
        assert env.kube.count("list", "podcaptures") > lists
    finally:
        ctl.stop()


def test_a_pod_that_appears_mid_capture_joins_and_the_status_follows(env: Env) -> None:
    """A selector capture follows pods as they come (a Deployment scaled up, as the API and the node see it)."""
    ctl = env.controller()
    try:
        env.apply("web", {"selector": "app=rx"})
        env.wait_pc("web", lambda o: (o.get("status") or {}).get("podCount") == 3, "3 pods")
        pod = env.node.add_pod("rx-3")
        node_name = "node-" + env.node.tag
        env.kube.add_pod(env.node.namespace, "rx-3", node=node_name, ip=pod.ip, labels={"app": "rx"},
                         uid=str(uuid.uuid5(NETNS_UID, f"{node_name}/{env.node.namespace}/rx-3")))
        obj = env.wait_pc("web", lambda o: o["status"].get("podCount") == 4
                          and any(p["name"] == "rx-3" and p["state"] == "capturing" for p in o["status"]["pods"]),
                          "rx-3 capturing")
        sender = env.node.pod("sender")
        env.node.exec(sender, ["ping", "-c", "3", "-i", "0.2", "-W", "1", pod.ip])
        obj = env.wait_pc("web", lambda o: any(p["name"] == "rx-3" and p["packets"] >= 6
                                               for p in o["status"]["pods"]), "rx-3 counting")
        assert env.captures_of(obj) == [obj["status"]["captureId"]]
    finally:
        ctl.stop()


def test_a_restarted_collector_resumes_the_capture_and_its_status(env: Env) -> None:
    """The whole collector restarts (same data dir and port; the agent reconnects): the running capture is
    recovered from the catalog, and the new controller finds it by the recorded id instead of starting another."""
    ctl = env.controller()
    env.apply("web", {"selector": "app=rx"})
    obj = env.wait_pc("web", lambda o: (o.get("status") or {}).get("podCount") == 3
                      and phase("Running")(o), "running")
    cid = obj["status"]["captureId"]
    env.traffic()
    before = env.wait_pc("web", lambda o: o["status"].get("packets", 0) >= 18, "counting")["status"]["packets"]
    ctl.stop()
    port, data = env.collector.port, os.path.join(env.tmp, "data")
    env.collector.stop(0)
    cluster = ClusterInventory(env.api).start()
    assert cluster.wait_synced(10)
    env.collector = start_collector(f"127.0.0.1:{port}", data, cluster=cluster)
    ctl = env.controller()
    try:
        c = env.collector
        capturing = common_pb2.POD_CAPTURE_STATE_CAPTURING
        wait_for(lambda: sum(p.state == capturing for p in c.captures.status(c.captures.get(cid)).pods) == 3, 30,
                 "the agent re-attached the capture's pods")
        env.traffic()
        obj = env.wait_pc("web", lambda o: o["status"].get("packets", 0) >= before + 18, "counting after restart")
        assert obj["status"]["captureId"] == cid and env.captures_of(obj) == [cid]
        starts = [a for a in env.collector.store.audit(limit=100) if a.action == "start" and a.result == "allowed"]
        assert len(starts) == 1
    finally:
        ctl.stop()


def test_status_writes_that_conflict_are_retried_on_the_fresh_object(env: Env,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer changes the resource all the time (labels): the controller's status writes meet 409
    Conflicts, re-read the object and succeed, and the other writer's changes are kept."""
    import threading

    import tests.kubeapi.registry as registry

    conflicts = [0]
    real = registry.conflict

    def counting(kind: Any, name: str) -> Any:
        conflicts[0] += 1
        return real(kind, name)

    monkeypatch.setattr(registry, "conflict", counting)
    ctl = env.controller(min_status_interval_s=0.0, status_interval_s=0.05)
    done = threading.Event()

    def relabel() -> None:
        i = 0
        while not done.is_set():
            i += 1
            if env.podcapture("web") is not None:
                env.kube.modify("podcaptures.podcap.io", env.node.namespace, "web",
                                {"metadata": {"labels": {"n": str(i)}}})
            time.sleep(0.002)

    t = threading.Thread(target=relabel)
    try:
        env.apply("web", {"selector": "app=rx"})
        t.start()
        env.wait_pc("web", phase("Running"), "running")
        for _ in range(3):
            env.traffic()
        done.set()
        t.join()
        obj = env.wait_pc("web", lambda o: o["status"].get("packets", 0) >= 54, "counting every ping")
        assert conflicts[0] > 0 and obj["metadata"]["labels"]["n"]
        assert env.captures_of(obj) == [obj["status"]["captureId"]]
    finally:
        done.set()
        if t.is_alive():
            t.join()
        ctl.stop()


def _stored(env: Env, cid: str, pod: str) -> list[Any]:
    """The records stored for ``pod``, read from the file ``podcap get`` writes."""
    out = os.path.join(env.tmp, "get-" + cid)
    podcap(f"127.0.0.1:{env.collector.port}", "get", cid, "-o", out)
    return read_file(os.path.join(out, env.node.namespace, f"{pod}.pcap"))[1]


def test_a_deployment_target_captures_its_pods_and_one_added_by_a_scale_up(env: Env) -> None:
    ns, node_name = env.node.namespace, "node-" + env.node.tag
    env.kube.create("deployments", {
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "rx"}},
                 "template": {"metadata": {"labels": {"app": "rx"}},
                              "spec": {"containers": [{"name": "main", "image": "busybox:stable"}]}}}})
    ctl = env.controller()
    try:
        env.apply("deploy", {"targets": ["deploy/web"]})
        obj = env.wait_pc("deploy", lambda o: (o.get("status") or {}).get("podCount") == 3, "the Deployment's pods")
        cap = env.collector.captures.get(obj["status"]["captureId"])
        assert (cap.request.target.object.kind, cap.request.target.object.name) == ("deployment", "web")
        env.kubectl("scale", "deployment/web", "--replicas=4")  # what the ReplicaSet controller then does:
        pod = env.node.add_pod("rx-3")
        env.kube.add_pod(ns, "rx-3", node=node_name, ip=pod.ip, labels={"app": "rx"},
                         uid=str(uuid.uuid5(NETNS_UID, f"{node_name}/{ns}/rx-3")))
        env.wait_pc("deploy", lambda o: o["status"]["podCount"] == 4, "the scaled-up pod")
        env.apply("badkind", {"targets": ["cronjob/nightly"]})
        bad = env.wait_pc("badkind", phase("Failed"), "refused")
        assert "cronjob" in bad["status"]["message"] and "deploy/NAME" in bad["status"]["message"]
    finally:
        ctl.stop()


def test_the_namespaces_payload_cap_holds_for_a_podcapture_unless_the_creator_has_the_right(env: Env) -> None:
    ns = env.node.namespace
    env.kube.modify("namespaces", None, ns, {"metadata": {"annotations": {"podcap.io/max-snaplen": "128"}}})
    env.kube.grant("create", ns, user="bob", resource="pods", subresource="capture-payload")
    ctl = env.controller()
    try:
        env.apply("capped", {"pods": ["rx-0"]}, creator="alice")
        env.apply("whole", {"pods": ["rx-1"]}, creator="bob")
        capped = env.wait_pc("capped", phase("Running"), "running")
        whole = env.wait_pc("whole", phase("Running"), "running")
        assert capped["status"]["payloadCap"]["snaplen"] == 128 and "alice" in capped["status"]["payloadCap"]["reason"]
        assert "payloadCap" not in whole["status"]
        sender = env.node.pod("sender")
        for rx in ("rx-0", "rx-1"):
            env.node.exec(sender, ["ping", "-c", "3", "-i", "0.2", "-s", "1000", env.node.pod(rx).ip])
        for name in ("capped", "whole"):
            env.wait_pc(name, lambda o: o["status"].get("packets", 0) >= 6, "counting")
        big_capped = [r for r in _stored(env, capped["status"]["captureId"], "rx-0") if r.wirelen > 1000]
        big_whole = [r for r in _stored(env, whole["status"]["captureId"], "rx-1") if r.wirelen > 1000]
        assert len(big_capped) >= 6 and all(r.caplen == 128 for r in big_capped)
        assert len(big_whole) >= 6 and all(r.caplen == r.wirelen for r in big_whole)
        [start] = [a for a in env.collector.store.audit(limit=10, capture_id=capped["status"]["captureId"])
                   if a.action == "start"]
        assert start.user == "alice" and "snaplen capped at 128" in start.detail
    finally:
        ctl.stop()
