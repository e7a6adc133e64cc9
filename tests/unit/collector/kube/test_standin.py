"""The stand-in API server is faithful: kubectl and the official ``kubernetes`` client accept it, and it keeps the
API server's contracts (resourceVersion, watch replay, bookmarks, 410 Expired, selectors, 401/403/404 Status bodies).

No root needed: the stand-in listens on 127.0.0.1 on an ephemeral port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config, watch

from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed (this machine image ships it "
                                                           "at /usr/bin/kubectl)")


@pytest.fixture
def api() -> Iterator[KubeApiStandin]:
    with KubeApiStandin(bookmark_interval=0.2) as s:
        s.add_pod("default", "web-1", labels={"app": "web", "tier": "front"}, node="node-1", ip="10.1.0.5")
        s.add_pod("prod", "web-2", labels={"app": "web"}, node="node-2", ip="10.1.0.6")
        s.add_pod("prod", "db-1", labels={"app": "db"}, node="node-2", ip="10.1.0.7")
        s.add_pod("prod", "job-1", labels={"app": "job"}, node="node-1", phase="Succeeded")
        yield s


def core(api: KubeApiStandin, tmp_path: Any, token: str | None = None) -> Any:  # the typed client is all Optional
    kc = write_kubeconfig(str(tmp_path / "kubeconfig"), api.url, token=token)
    cfg = client.Configuration()
    config.load_kube_config(kc, client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


def kubectl(api: KubeApiStandin, tmp_path: Any, *args: str) -> subprocess.CompletedProcess[str]:
    kc = write_kubeconfig(str(tmp_path / "kubeconfig"), api.url)
    env = dict(os.environ, HOME=str(tmp_path), KUBECONFIG=kc)
    assert KUBECTL is not None
    return subprocess.run([KUBECTL, "--kubeconfig", kc, "--cache-dir", str(tmp_path / "cache"), *args],
                          capture_output=True, text=True, env=env, timeout=30)


# ---- kubectl ----


@needs_kubectl
def test_kubectl_lists_by_label_across_namespaces_as_json(api: KubeApiStandin, tmp_path: Any) -> None:
    r = kubectl(api, tmp_path, "get", "pods", "-A", "-l", "app=web", "-o", "json")
    assert r.returncode == 0, r.stderr
    items = json.loads(r.stdout)["items"]
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in items) == [
        ("default", "web-1"), ("prod", "web-2")]
    assert {p["status"]["podIP"] for p in items} == {"10.1.0.5", "10.1.0.6"}


@needs_kubectl
def test_kubectl_gets_one_pod_and_reports_not_found(api: KubeApiStandin, tmp_path: Any) -> None:
    r = kubectl(api, tmp_path, "get", "pod", "db-1", "-n", "prod")
    assert r.returncode == 0, r.stderr
    header, row = r.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "READY", "STATUS"] and row.split()[:3] == ["db-1", "1/1", "Running"]
    r = kubectl(api, tmp_path, "get", "pod", "nope", "-n", "prod")
    assert r.returncode == 1 and 'Error from server (NotFound): pods "nope" not found' in r.stderr


@needs_kubectl
@pytest.mark.parametrize(("selector", "names"), [
    ("spec.nodeName=node-2", ["db-1", "web-2"]),
    ("spec.nodeName!=node-2", ["job-1", "web-1"]),
    ("status.phase=Succeeded", ["job-1"]),
    ("metadata.namespace==default", ["web-1"]),
])
def test_kubectl_field_selector(api: KubeApiStandin, tmp_path: Any, selector: str, names: list[str]) -> None:
    r = kubectl(api, tmp_path, "get", "pods", "-A", "--field-selector", selector, "-o", "name")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == [f"pod/{n}" for n in names]


@needs_kubectl
def test_kubectl_shows_forbidden_and_bad_field(api: KubeApiStandin, tmp_path: Any) -> None:
    api.deny("list", None)
    r = kubectl(api, tmp_path, "get", "pods", "-A")
    assert r.returncode == 1
    assert ('Error from server (Forbidden): pods is forbidden: User "admin" cannot list resource "pods" in API '
            'group "" at the cluster scope') in r.stderr
    r = kubectl(api, tmp_path, "get", "pods", "-n", "prod", "--field-selector", "spec.bogus=1")
    assert r.returncode == 1 and "field label not supported: spec.bogus" in r.stderr


# ---- the official Python client ----


def test_client_list_with_label_and_field_selectors(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    pods = v1.list_pod_for_all_namespaces(label_selector="app in (web,db),tier notin (back)",
                                          field_selector="spec.nodeName=node-2,status.phase!=Failed")
    assert sorted(p.metadata.name for p in pods.items) == ["db-1", "web-2"]
    assert int(pods.metadata.resource_version) == api.resource_version
    ns = v1.list_namespaced_pod("prod", label_selector="!tier")
    assert sorted(p.metadata.name for p in ns.items) == ["db-1", "job-1", "web-2"]
    one = v1.read_namespaced_pod("web-1", "default")
    assert one.spec.node_name == "node-1" and one.status.pod_ip == "10.1.0.5"


def test_client_pagination_and_expired_continue(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    first = v1.list_pod_for_all_namespaces(limit=2)
    assert len(first.items) == 2 and first.metadata._continue and first.metadata.remaining_item_count == 2
    api.add_pod("zzz", "late")  # after the first page's snapshot: not in the paginated list
    rest = v1.list_pod_for_all_namespaces(limit=10, _continue=first.metadata._continue)
    names = [p.metadata.name for p in first.items + rest.items]
    assert len(names) == 4 and "late" not in names and not rest.metadata._continue
    api.compact()
    with pytest.raises(client.ApiException) as e:
        v1.list_pod_for_all_namespaces(limit=10, _continue=first.metadata._continue)
    assert e.value.status == 410 and json.loads(e.value.body)["reason"] == "Expired"


def test_client_watch_replays_after_resource_version_with_bookmarks(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    rv = v1.list_pod_for_all_namespaces().metadata.resource_version
    api.modify_pod("prod", "web-2", labels={"app": "web", "v": "2"})
    api.delete_pod("prod", "db-1")
    threading.Timer(0.3, lambda: api.add_pod("default", "web-3", labels={"app": "web"})).start()
    seen: list[tuple[str, str]] = []
    bookmarks: list[str] = []
    w = watch.Watch()
    for ev in w.stream(v1.list_pod_for_all_namespaces, resource_version=rv, allow_watch_bookmarks=True,
                       timeout_seconds=5):
        if ev["type"] == "BOOKMARK":
            bookmarks.append(ev["object"]["metadata"]["resourceVersion"])
        else:
            seen.append((ev["type"], ev["object"].metadata.name))
        if len(seen) == 3 and bookmarks and int(bookmarks[-1]) == api.resource_version:
            w.stop()
    assert seen == [("MODIFIED", "web-2"), ("DELETED", "db-1"), ("ADDED", "web-3")]
    assert [int(b) for b in bookmarks] == sorted(int(b) for b in bookmarks)


def test_watch_without_resource_version_starts_with_current_state(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    w = watch.Watch()
    names = []
    for ev in w.stream(v1.list_namespaced_pod, "prod", timeout_seconds=1):
        names.append((ev["type"], ev["object"].metadata.name))
    assert names == [("ADDED", "db-1"), ("ADDED", "job-1"), ("ADDED", "web-2")]


def test_watch_with_selector_sends_transitions_as_added_and_deleted(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    rv = v1.list_pod_for_all_namespaces(label_selector="app=web").metadata.resource_version
    api.modify_pod("prod", "web-2", labels={"app": "other"})  # leaves the selection
    api.modify_pod("prod", "db-1", labels={"app": "web"})  # enters it
    api.modify_pod("prod", "job-1", labels={"app": "job2"})  # never matches: not sent
    got = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        v1.list_pod_for_all_namespaces, label_selector="app=web", resource_version=rv, timeout_seconds=1)]
    assert got == [("DELETED", "web-2"), ("ADDED", "db-1")]


def test_watch_timeout_seconds_ends_the_stream(api: KubeApiStandin, tmp_path: Any) -> None:
    v1 = core(api, tmp_path)
    rv = v1.list_pod_for_all_namespaces().metadata.resource_version
    resp = v1.list_pod_for_all_namespaces(watch=True, resource_version=rv, timeout_seconds=1,
                                          _preload_content=False)
    assert resp.data == b""  # ended cleanly by the server after 1 s, nothing happened
    wait_for(lambda: api.open_watches() == 0, 5, "the server's watch handler to finish")


def test_too_old_resource_version_is_410_in_band_and_over_http(tmp_path: Any) -> None:
    for as_http in (False, True):
        with KubeApiStandin(watch_gone_as_http=as_http) as api:
            api.add_pod("default", "a")
            v1 = core(api, tmp_path)
            old = v1.list_pod_for_all_namespaces().metadata.resource_version
            api.add_pod("default", "b")
            api.compact()
            if not as_http:  # the watch cache's way: HTTP 200, then an ERROR event holding the Status
                resp = v1.list_pod_for_all_namespaces(watch=True, resource_version=old, _preload_content=False)
                events = [json.loads(line) for line in resp.data.splitlines()]
                assert [e["type"] for e in events] == ["ERROR"]
                status = events[0]["object"]
            else:
                with pytest.raises(client.ApiException) as e:
                    v1.list_pod_for_all_namespaces(watch=True, resource_version=old, _preload_content=False)
                assert e.value.status == 410
                status = json.loads(e.value.body)
            assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
            assert status["message"] == f"too old resource version: {old} ({api.resource_version})"
            # The official Watch turns it into ApiException(410) (after its one retry): the caller must re-list.
            with pytest.raises(client.ApiException) as e:
                list(watch.Watch().stream(v1.list_pod_for_all_namespaces, resource_version=old, timeout_seconds=1))
            assert e.value.status == 410
            with pytest.raises(client.ApiException) as e:
                v1.list_pod_for_all_namespaces(resource_version=old, resource_version_match="Exact")
            assert e.value.status == 410


def test_status_bodies_for_forbidden_unauthorized_not_found(tmp_path: Any) -> None:
    with KubeApiStandin(tokens={"good": "system:serviceaccount:podcap:collector"}) as api:
        api.add_pod("prod", "web")
        api.deny("list", "prod")
        v1 = core(api, tmp_path, token="good")
        with pytest.raises(client.ApiException) as e:
            v1.list_namespaced_pod("prod")
        body = json.loads(e.value.body)
        assert (e.value.status, body["kind"], body["reason"], body["code"]) == (403, "Status", "Forbidden", 403)
        assert body["details"] == {"kind": "pods"}
        assert body["message"] == ('pods is forbidden: User "system:serviceaccount:podcap:collector" cannot list '
                                   'resource "pods" in API group "" in the namespace "prod"')
        assert [p.metadata.name for p in v1.list_pod_for_all_namespaces().items] == ["web"]
        with pytest.raises(client.ApiException) as e:
            v1.read_namespaced_pod("missing", "prod")
        body = json.loads(e.value.body)
        assert (e.value.status, body["reason"], body["details"]) == (404, "NotFound",
                                                                     {"name": "missing", "kind": "pods"})
        with pytest.raises(client.ApiException) as e:
            core(api, tmp_path, token="bad").list_pod_for_all_namespaces()
        assert e.value.status == 401 and json.loads(e.value.body)["reason"] == "Unauthorized"


def test_token_review_and_subject_access_review(tmp_path: Any) -> None:
    with KubeApiStandin(tokens={"good": "alice"}) as api:
        api.deny("watch", "*", user="bob")
        kc = write_kubeconfig(str(tmp_path / "kc"), api.url, token="good")
        cfg = client.Configuration()
        config.load_kube_config(kc, client_configuration=cfg)
        c = client.ApiClient(cfg)
        tr = client.AuthenticationV1Api(c).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token="good")))
        assert tr.status.authenticated and tr.status.user.username == "alice"
        tr = client.AuthenticationV1Api(c).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token="nope")))
        assert not tr.status.authenticated

        def sar(user: str) -> bool:
            review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
                user=user, resource_attributes=client.V1ResourceAttributes(verb="watch", resource="pods",
                                                                           namespace="prod")))
            return bool(client.AuthorizationV1Api(c).create_subject_access_review(review).status.allowed)

        assert sar("alice") and not sar("bob")


def test_close_leaves_nothing_running(tmp_path: Any) -> None:
    api = KubeApiStandin(bookmark_interval=5)
    v1 = core(api, tmp_path)
    rv = v1.list_pod_for_all_namespaces().metadata.resource_version
    resp = v1.list_pod_for_all_namespaces(watch=True, resource_version=rv, _preload_content=False)
    assert api.open_watches() == 1
    server = api._server
    assert server is not None
    handlers = list(server._threads)  # type: ignore[attr-defined]
    assert handlers
    api.close()
    resp.release_conn()
    # The accept loop and every connection's handler thread (the open watch, the idle keep-alive) have ended.
    assert not api._serve_thread.is_alive()
    assert not [t for t in handlers if t.is_alive()]
