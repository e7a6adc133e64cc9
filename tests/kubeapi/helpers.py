"""Helpers for tests against the stand-in API server: a client on it, listing and reading pods through it (the
collector itself only lists pod objects and watches), a recorder of watch callbacks and a polling wait."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from podcap.collector.kube.client import CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S, KubeApi, load_api
from podcap.collector.kube.inventory import ClusterListener
from podcap.collector.kube.pods import KubePod, pod_from_object
from podcap.pods import PodRef
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig


def api_for(standin: KubeApiStandin, directory: str) -> KubeApi:
    """A ``KubeApi`` on the stand-in, through a kubeconfig written in ``directory`` (as a user's would be)."""
    return load_api(write_kubeconfig(os.path.join(directory, "kubeconfig"), standin.url))


def list_pods(api: KubeApi, namespace: str | None, label_selector: str = "",
              field_selector: str = "") -> tuple[list[PodRef], str]:
    """Scheduled, not finished pods matching the selectors (evaluated by the API server), and the list's
    resourceVersion."""
    objs, rv = api.list_pod_objects(namespace, label_selector, field_selector)
    return [p.ref for p in map(pod_from_object, objs) if p is not None], rv


def read_pod(api: KubeApi, namespace: str, name: str) -> KubePod | None:
    """One pod (None when it is unscheduled or finished), through the client's request path and its error
    translation. Raises KubeNotFoundError when it does not exist."""
    obj = api._request(api._describe("get", "pods", namespace), "a pod",
                       lambda: api._core.read_namespaced_pod(
                           name, namespace, _preload_content=False,
                           _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))
    return pod_from_object(obj)


def wait_for(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Recorder(ClusterListener):
    """Collects (event, "namespace/name") from PodWatch callbacks or ClusterListener calls, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.pods: dict[str, PodRef] = {}
        self._lock = threading.Lock()

    def _add(self, kind: str, pod: PodRef) -> None:
        with self._lock:
            self.events.append((kind, pod.display))
            self.pods[pod.display] = pod

    def added(self, pod: PodRef) -> None:
        self._add("added", pod)

    def modified(self, pod: PodRef) -> None:
        self._add("modified", pod)

    def deleted(self, pod: PodRef) -> None:
        self._add("deleted", pod)

    def pod_added(self, pod: PodRef) -> None:
        self.added(pod)

    def pod_changed(self, pod: PodRef) -> None:
        self.modified(pod)

    def pod_deleted(self, pod: PodRef) -> None:
        self.deleted(pod)

    def snapshot(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.events)

    def wait_count(self, n: int, timeout: float = 10.0) -> list[tuple[str, str]]:
        wait_for(lambda: len(self.snapshot()) >= n, timeout, f"{n} events (have {self.snapshot()})")
        return self.snapshot()

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
