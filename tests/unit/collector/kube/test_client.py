"""``podcap.collector.kube.client`` (with ``errors`` and ``pods``): configuration, listing and reading pods as
``PodRef``, and errors translated into our own types with messages that name the verb, the resource and the
namespace. Runs against the stand-in API server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.kube import client
from podcap.collector.kube.client import KubeApi, load_api
from podcap.collector.kube.errors import (
    KubeApiError,
    KubeConfigError,
    KubeForbiddenError,
    KubeNotFoundError,
    KubeUnavailableError,
)
from tests.kubeapi.helpers import list_pods, read_pod
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig


@pytest.fixture
def standin() -> Iterator[KubeApiStandin]:
    with KubeApiStandin() as s:
        s.add_pod("default", "web-1", labels={"app": "web", "tier": "front"}, node="node-1", ip="10.1.0.5")
        s.add_pod("prod", "web-2", labels={"app": "web"}, node="node-2", ip="10.1.0.6")
        s.add_pod("prod", "db-1", labels={"app": "db"}, node="node-2", ip="10.1.0.7")
        s.add_pod("prod", "host-1", labels={"app": "web"}, node="node-1", ip="10.0.0.1", host_network=True)
        s.add_pod("prod", "unscheduled", labels={"app": "web"}, node=None, phase="Pending")
        s.add_pod("prod", "done", labels={"app": "web"}, node="node-1", phase="Succeeded")
        s.add_pod("prod", "crashed", labels={"app": "web"}, node="node-2", phase="Failed")
        yield s


def names(pods: list[Any]) -> list[str]:
    return sorted(p.display for p in pods)


def test_list_pods_as_podrefs_skipping_unscheduled_and_finished(api: KubeApi, standin: KubeApiStandin) -> None:
    pods, rv = list_pods(api, None)
    assert rv == str(standin.resource_version)
    assert names(pods) == ["default/web-1", "prod/db-1", "prod/host-1", "prod/web-2"]
    web1 = next(p for p in pods if p.name == "web-1")
    assert (web1.namespace, web1.node, web1.ip, dict(web1.labels), web1.host_network) == (
        "default", "node-1", "10.1.0.5", {"app": "web", "tier": "front"}, False)
    assert web1.uid == standin.store.current[("default", "web-1")]["metadata"]["uid"]
    assert next(p for p in pods if p.name == "host-1").host_network


@pytest.mark.parametrize(("namespace", "labels", "fields", "expected"), [
    ("prod", "app=web", "", ["prod/host-1", "prod/web-2"]),
    (None, "app in (web,db),!tier", "spec.nodeName=node-2", ["prod/db-1", "prod/web-2"]),
    (None, "", "metadata.name=web-1", ["default/web-1"]),
    (None, "app", "metadata.namespace!=prod", ["default/web-1"]),
    (None, "", "status.phase==Running,spec.nodeName!=node-2", ["default/web-1", "prod/host-1"]),
    ("empty", "", "", []),
])
def test_list_pods_with_selectors(api: KubeApi, namespace: str | None, labels: str, fields: str,
                                  expected: list[str]) -> None:
    pods, _ = list_pods(api, namespace, labels, fields)
    assert names(pods) == expected


def test_list_pages_through_continue_tokens(api: KubeApi, standin: KubeApiStandin,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "LIST_PAGE", 2)
    for i in range(5):
        standin.add_pod("bulk", f"p-{i}", node="node-3")
    pods, rv = list_pods(api, "bulk")
    assert names(pods) == [f"bulk/p-{i}" for i in range(5)]
    assert rv == str(standin.resource_version)
    assert standin.count("list") == 3


def test_read_pod_and_not_found(api: KubeApi) -> None:
    pod = read_pod(api, "prod", "web-2")
    assert pod is not None and pod.ref.ip == "10.1.0.6" and pod.phase == "Running"
    assert read_pod(api, "prod", "done") is None
    with pytest.raises(KubeNotFoundError, match=r'get pods in namespace "prod": not found: pods "nope" not found'):
        read_pod(api, "prod", "nope")


def test_forbidden_names_verb_resource_namespace_and_fix(api: KubeApi, standin: KubeApiStandin) -> None:
    standin.deny("list", None)
    with pytest.raises(KubeForbiddenError) as e:
        list_pods(api, None)
    msg = str(e.value)
    assert "not allowed to list pods in all namespaces (cluster scope) (403 Forbidden)" in msg
    assert 'cannot list resource "pods"' in msg and "ClusterRole" in msg
    assert e.value.code == 403
    standin.deny("list", "prod")
    with pytest.raises(KubeForbiddenError, match='list pods in namespace "prod"'):
        list_pods(api, "prod")
    assert list_pods(api, "default")[0]  # other namespaces still work


def test_unauthorized_is_forbidden_with_credentials_hint(tmp_path: Any) -> None:
    with KubeApiStandin(tokens={"right": "collector"}) as s:
        api = load_api(write_kubeconfig(str(tmp_path / "kc"), s.url, token="wrong"))
        with pytest.raises(KubeForbiddenError, match=r"rejected podcap's credentials \(401 Unauthorized\)") as e:
            list_pods(api, None)
        assert e.value.code == 401
        api.close()
        api = load_api(write_kubeconfig(str(tmp_path / "kc"), s.url, token="right"))
        assert list_pods(api, None) == ([], str(s.resource_version))
        api.close()


def test_bad_field_selector_is_an_api_error_with_the_servers_message(api: KubeApi) -> None:
    with pytest.raises(KubeApiError, match="field label not supported: spec.bogus") as e:
        list_pods(api, None, field_selector="spec.bogus=1")
    assert e.value.code == 400 and not isinstance(e.value, KubeForbiddenError)


def test_api_down_is_unavailable(api: KubeApi, standin: KubeApiStandin) -> None:
    standin.stop_serving()
    with pytest.raises(KubeUnavailableError, match=f"cannot reach the Kubernetes API server at {standin.url} to "
                                                   "list pods in all namespaces"):
        list_pods(api, None)
    standin.start_serving()
    assert len(list_pods(api, None)[0]) == 4


def test_missing_kubeconfig_and_no_cluster(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KubeConfigError, match="does not exist"):
        load_api(str(tmp_path / "nope"))
    bad = tmp_path / "bad"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    with pytest.raises(KubeConfigError, match="is not usable"):
        load_api(str(bad))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not client.in_cluster()
    with pytest.raises(KubeConfigError, match="pass --kubeconfig PATH"):
        load_api(None)
