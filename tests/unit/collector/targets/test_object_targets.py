"""Object targets: ``KIND/NAME`` as users type it (kubectl's names), what ``parse_target`` accepts and refuses, what
an object target matches before and after it is resolved, a workload's selector from its API JSON, a Service
without a selector, and the target's one-line text."""

from __future__ import annotations

import pytest

from podcap.collector.kube.kinds import ObjectKindError, ObjectRef, canonical_kind, split_object
from podcap.collector.kube.selectors import parse_selector
from podcap.collector.kube.workloads import (
    ServiceWithoutSelectorError,
    WorkloadSelectorError,
    label_selector_text,
    service_selector,
    workload_selector,
)
from podcap.collector.targets import TargetError, TargetSpec, parse_target, target_text
from podcap.names import InvalidNameError, NodeName, PodUid
from podcap.nodes import is_node_pod, node_pod
from podcap.pods import PodRef
from podcap.v1 import control_pb2


def pod(name: str, labels: dict[str, str], namespace: str = "shop", uid: str = "") -> PodRef:
    return PodRef(namespace, name, PodUid(uid or f"uid-{name}"), NodeName("n1"), labels)


@pytest.mark.parametrize("text,kind", [
    ("deploy", "deployment"), ("deployments", "deployment"), ("deployment.apps", "deployment"),
    ("sts", "statefulset"), ("ds", "daemonset"), ("daemonsets.apps", "daemonset"), ("job", "job"),
    ("jobs.batch", "job"), ("svc", "service"), ("services", "service"), ("no", "node"), ("Nodes", "node"),
])
def test_kubectl_names_of_each_kind(text: str, kind: str) -> None:
    assert canonical_kind(text) == kind


@pytest.mark.parametrize("text,says", [
    ("cronjob/nightly", "'cronjob' is not a kind podcap can capture"),
    ("rs/web-123", "'rs' is not a kind podcap can capture"),
    ("frobnicator.example.com/x", "is not a kind podcap knows"),
])
def test_unknown_or_unsupported_kind_lists_what_exists(text: str, says: str) -> None:
    with pytest.raises(ObjectKindError) as e:
        split_object(text)
    msg = str(e.value)
    assert says in msg and "\n" not in msg
    for form in ("deploy/NAME", "statefulset/NAME", "daemonset/NAME", "job/NAME", "svc/NAME", "node/NAME", "-l"):
        assert form in msg


def test_namespace_slash_pod_is_not_an_object() -> None:
    assert split_object("shop/web-0") is None
    assert split_object("web-0") is None
    assert split_object("deploy/web") == ObjectRef("deployment", "web")
    assert split_object("node/worker-1.example") == ObjectRef("node", "worker-1.example")
    with pytest.raises(InvalidNameError, match="invalid deployment name 'Web'"):
        split_object("deploy/Web")
    with pytest.raises(ObjectKindError, match="needs a name"):
        split_object("svc/")


def target(**kw: object) -> control_pb2.Target:
    obj = kw.pop("object", None)
    t = control_pb2.Target(**kw)  # type: ignore[arg-type]
    if obj is not None:
        kind, name = str(obj).split("/")
        t.object.CopyFrom(control_pb2.TargetObject(kind=kind, name=name))
    return t


@pytest.mark.parametrize("t,error", [
    (target(namespace="shop", object="deploy/web", pod_names=["a"]), "exclude each other"),
    (target(all_namespaces=True, object="svc/api"), "needs its namespace"),
    (target(object="node/n1", selector="app=web"), "takes no -l"),
    (target(namespace="shop", object="cronjob/x"), "not a kind podcap can capture"),
])
def test_parse_target_refuses(t: control_pb2.Target, error: str) -> None:
    with pytest.raises((TargetError, ObjectKindError), match=error):
        parse_target(t)


def test_an_unresolved_workload_matches_nothing_a_resolved_one_its_selector() -> None:
    spec = parse_target(target(namespace="shop", object="deploy/web", selector="tier=a"))
    assert spec.dynamic
    web = pod("web-0", {"app": "web", "tier": "a"})
    assert not spec.matches(web)  # nothing is attached by guess
    resolved = parse_target(target(namespace="shop", object="deploy/web", selector="tier=a", object_selector="app=web"))
    assert resolved.object_selector == parse_selector("app=web")
    assert resolved.matches(web)
    assert not resolved.matches(pod("web-1", {"app": "web", "tier": "b"}))  # -l still narrows
    assert not resolved.matches(pod("db-0", {"app": "db", "tier": "a"}))
    assert not resolved.matches(pod("web-2", {"app": "web", "tier": "a"}, namespace="other"))


class Members:
    def __init__(self, *uids: str) -> None:
        self.uids = set(uids)

    def __contains__(self, p: object) -> bool:
        return getattr(p, "uid", None) in self.uids


def test_a_service_matches_its_current_endpoints() -> None:
    spec = parse_target(target(namespace="shop", object="svc/api"))
    assert not spec.matches(pod("api-0", {}))
    members = Members("uid-api-0")
    spec = TargetSpec(spec.namespace, spec.selector, (), spec.object, members=members)
    assert spec.matches(pod("api-0", {})) and not spec.matches(pod("api-1", {}))
    members.uids.add("uid-api-1")
    assert spec.matches(pod("api-1", {}))


def test_a_node_target_is_no_namespace_and_matches_no_pod() -> None:
    spec = parse_target(target(namespace="shop", object="node/n1"))
    assert spec.namespace is None and not spec.dynamic
    assert not spec.matches(pod("web-0", {}))
    stand_in = node_pod(NodeName("n1"))
    assert stand_in.display == "node/n1" and is_node_pod("node", "n1", stand_in.uid, "n1")
    assert not is_node_pod("node", "n2", stand_in.uid, "n2")
    assert "_" in stand_in.uid  # never a real pod's uid (a UUID)


@pytest.mark.parametrize("t,text", [
    (target(namespace="shop", object="deploy/web"), "ns=shop deploy/web"),
    (target(namespace="shop", object="deployment/web", selector="tier=a"), "ns=shop deploy/web selector=tier=a"),
    (target(namespace="shop", object="svc/api"), "ns=shop svc/api"),
    (target(object="node/n1"), "node/n1"),
])
def test_target_text(t: control_pb2.Target, text: str) -> None:
    assert target_text(t) == text


def test_workload_selector_from_match_labels_and_expressions() -> None:
    sel = {"matchLabels": {"app": "web"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["b", "a"]},
        {"key": "canary", "operator": "DoesNotExist"},
        {"key": "team", "operator": "Exists"},
        {"key": "env", "operator": "NotIn", "values": ["dev"]}]}
    assert label_selector_text(sel) == "app=web,tier in (a,b),!canary,team,env notin (dev)"
    s = workload_selector("deployment", {"metadata": {"name": "web"}, "spec": {"selector": sel}})
    assert s.matches({"app": "web", "tier": "a", "team": "x"})
    assert not s.matches({"app": "web", "tier": "a", "team": "x", "canary": "1"})
    with pytest.raises(WorkloadSelectorError, match="empty selector"):
        workload_selector("job", {"metadata": {"name": "j"}, "spec": {"selector": {}}})
    with pytest.raises(WorkloadSelectorError, match="unknown selector operator"):
        workload_selector("job", {"metadata": {"name": "j"},
                                  "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}}})


def test_service_without_selector_is_one_clear_line() -> None:
    assert str(service_selector({"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}}})) == "app=api"
    with pytest.raises(ServiceWithoutSelectorError) as e:
        service_selector({"metadata": {"name": "external"}, "spec": {"ports": [{"port": 80}]}})
    assert "service 'external' has no selector" in str(e.value) and "\n" not in str(e.value)
