"""``PodWatch``: the pod cache stays current through one list and one long watch; changes reach the callbacks once
each, across 410 Gone (in-band and HTTP), forbidden and unreachable API servers; bookmarks spare re-lists; stop()
is prompt. Runs against the stand-in API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.errors import KubeForbiddenError, KubeUnavailableError
from podcap.collector.kube.watch import PodWatch
from tests.kubeapi.helpers import Recorder, api_for, wait_for
from tests.kubeapi.standin import KubeApiStandin


@pytest.fixture
def standin() -> Iterator[KubeApiStandin]:
    with KubeApiStandin(bookmark_interval=0.2) as s:
        s.add_pod("default", "a", labels={"app": "web"}, node="node-1", ip="10.0.0.1")
        yield s


def start_watch(api: KubeApi, rec: Recorder, **kw: Any) -> PodWatch:
    kw.setdefault("backoff_initial_s", 0.05)
    kw.setdefault("backoff_max_s", 0.3)
    w = PodWatch(api, on_added=rec.added, on_modified=rec.modified, on_deleted=rec.deleted, **kw).start()
    return w


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def watch(api: KubeApi, rec: Recorder) -> Iterator[PodWatch]:
    w = start_watch(api, rec)
    assert w.wait_synced(5)
    yield w
    w.stop()
    assert not w._thread.is_alive()


def test_watch_delivers_added_modified_deleted(watch: PodWatch, rec: Recorder, standin: KubeApiStandin) -> None:
    assert rec.wait_count(1) == [("added", "default/a")]
    standin.add_pod("prod", "b", labels={"app": "db"}, node="node-2")
    standin.modify_pod("default", "a", labels={"app": "web", "v": "2"})
    standin.modify_pod("default", "a", labels={"app": "web", "v": "2"})  # no visible change: not reported
    standin.modify_pod("prod", "b", ip="10.0.0.9")
    standin.delete_pod("default", "a")
    events = rec.wait_count(5)
    time.sleep(0.3)
    assert rec.snapshot() == events == [("added", "default/a"), ("added", "prod/b"), ("modified", "default/a"),
                                        ("modified", "prod/b"), ("deleted", "default/a")]
    assert rec.pods["default/a"].labels == {"app": "web", "v": "2"} and rec.pods["prod/b"].ip == "10.0.0.9"
    assert [p.display for p in watch.pods()] == ["prod/b"]
    assert watch.lists == 1 and watch.watches == 1


def test_scheduling_and_finishing_enter_and_leave_the_cache(watch: PodWatch, rec: Recorder,
                                                            standin: KubeApiStandin) -> None:
    rec.wait_count(1)
    standin.add_pod("default", "pending", node=None, phase="Pending")
    standin.modify_pod("default", "pending", node="node-1")  # scheduled: now it has a node
    standin.modify_pod("default", "pending", phase="Running")
    standin.modify_pod("default", "pending", phase="Succeeded")  # finished: no network any more
    assert rec.wait_count(4)[1:] == [("added", "default/pending"), ("modified", "default/pending"),
                                     ("deleted", "default/pending")]
    kp = watch.get(rec.pods["default/a"].uid)
    assert kp is not None and kp.phase == "Running"


def test_selectors_are_evaluated_by_the_server(api: KubeApi, rec: Recorder, standin: KubeApiStandin) -> None:
    w = start_watch(api, rec, namespace="default", label_selector="app=web", field_selector="spec.nodeName=node-1")
    try:
        assert w.wait_synced(5)
        standin.add_pod("default", "b", labels={"app": "web"}, node="node-2")  # wrong node
        standin.add_pod("prod", "c", labels={"app": "web"}, node="node-1")  # wrong namespace
        standin.modify_pod("default", "a", labels={"app": "other"})  # stops matching
        standin.modify_pod("default", "b", node="node-1")  # starts matching
        assert rec.wait_count(3) == [("added", "default/a"), ("deleted", "default/a"), ("added", "default/b")]
    finally:
        w.stop()


@pytest.mark.parametrize("gone_as_http", [False, True], ids=["in-band-ERROR", "http-410"])
def test_410_relists_and_continues_without_losing_or_repeating(tmp_path: Any, rec: Recorder,
                                                               gone_as_http: bool) -> None:
    with KubeApiStandin(bookmark_interval=0.2, watch_gone_as_http=gone_as_http) as standin:
        for n in ("keep", "change", "remove"):
            standin.add_pod("default", n, labels={"app": "web"})
        api = api_for(standin, str(tmp_path))
        w = start_watch(api, rec)
        try:
            assert w.wait_synced(5)
            rec.wait_count(3)
            rec.clear()
            # While the collector cannot see the API server, pods change and history is compacted away.
            standin.stop_serving()
            standin.modify_pod("default", "change", labels={"app": "web", "v": "2"})
            standin.delete_pod("default", "remove")
            standin.add_pod("default", "new")
            standin.compact()
            standin.start_serving()
            events = rec.wait_count(3)
            standin.add_pod("default", "after")  # and the watch goes on from the re-list
            events = rec.wait_count(4)
            time.sleep(0.3)
            assert sorted(rec.snapshot()[:3]) == [("added", "default/new"), ("deleted", "default/remove"),
                                                  ("modified", "default/change")]
            assert rec.snapshot() == events and events[3] == ("added", "default/after")
            assert w.lists == 2
            assert sorted(p.name for p in w.pods()) == ["after", "change", "keep", "new"]
        finally:
            w.stop()
            api.close()


def test_bookmarks_keep_the_resource_version_fresh_so_reconnects_do_not_relist(
        api: KubeApi, rec: Recorder, standin: KubeApiStandin) -> None:
    w = start_watch(api, rec, label_selector="app=web")
    try:
        assert w.wait_synced(5)
        rec.wait_count(1)
        for i in range(3):
            standin.add_pod("other", f"db-{i}", labels={"app": "db"})  # not sent to this watch: RV moves on
        wait_for(lambda: w.resource_version == str(standin.resource_version), 5, "a bookmark")
        standin.compact()
        standin.disconnect_watches()  # a watch timeout: resume from the bookmark's RV, which is not compacted
        standin.add_pod("default", "web-2", labels={"app": "web"})
        assert rec.wait_count(2)[1] == ("added", "default/web-2")
        assert w.lists == 1 and w.watches == 2
    finally:
        w.stop()


def test_no_polling_when_idle(watch: PodWatch, standin: KubeApiStandin) -> None:
    wait_for(lambda: standin.open_watches() == 1, 5, "the watch to open")
    time.sleep(1.0)
    assert standin.count("list") == 1 and standin.count("watch") == 1


def test_forbidden_is_reported_and_the_watch_recovers_once_allowed(api: KubeApi, rec: Recorder,
                                                                   standin: KubeApiStandin) -> None:
    standin.deny("list", None)
    w = start_watch(api, rec)
    try:
        wait_for(lambda: w.last_error is not None, 5, "an error")
        assert isinstance(w.last_error, KubeForbiddenError)
        assert "not allowed to list pods in all namespaces" in str(w.last_error)
        assert not w.synced
        standin.allow_all()
        assert w.wait_synced(5)
        assert rec.wait_count(1) == [("added", "default/a")]
        wait_for(lambda: w.last_error is None, 5, "the error to clear")
    finally:
        w.stop()


def test_api_down_is_unavailable_and_the_watch_recovers(watch: PodWatch, rec: Recorder,
                                                         standin: KubeApiStandin) -> None:
    rec.wait_count(1)
    standin.stop_serving()
    wait_for(lambda: isinstance(watch.last_error, KubeUnavailableError), 5, "KubeUnavailableError")
    assert "cannot reach the Kubernetes API server" in str(watch.last_error)
    standin.add_pod("default", "while-down")
    standin.start_serving()
    assert rec.wait_count(2)[1] == ("added", "default/while-down")
    standin.add_pod("default", "after")
    assert rec.wait_count(3)[2] == ("added", "default/after")
    assert watch.lists == 1  # history was still there: resumed from the last resourceVersion, no re-list


def test_stop_is_prompt_on_an_idle_watch_and_during_backoff(tmp_path: Any, rec: Recorder) -> None:
    with KubeApiStandin(bookmark_interval=60) as standin:
        api = api_for(standin, str(tmp_path))
        w = start_watch(api, rec, watch_timeout_s=3600)
        assert w.wait_synced(5)
        wait_for(lambda: standin.open_watches() == 1, 5, "the watch to open")
        t = time.monotonic()
        w.stop()
        assert time.monotonic() - t < 0.5 and not w._thread.is_alive()
        wait_for(lambda: standin.open_watches() == 0, 5, "the server to see the watch end")

        standin.stop_serving()
        w = start_watch(api, rec, backoff_initial_s=30, backoff_max_s=30)
        wait_for(lambda: w.last_error is not None, 5, "an error")
        t = time.monotonic()
        w.stop()
        assert time.monotonic() - t < 0.5 and not w._thread.is_alive()
        api.close()
