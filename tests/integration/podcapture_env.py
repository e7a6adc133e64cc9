"""What the PodCapture integration tests share: the API stand-in serving the PodCapture CRD from deploy/base, the
real ``kubectl`` against it, a collector (in this process, with the stand-in's pod cache) and the controller of
``--reconcile-podcaptures``. The pods and the agent are the caller's (DemoNode netns pods in test_podcaptures.py,
real containerd pods in test_podcapture_containerd.py): ``kube_env`` registers them through ``setup``."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml  # type: ignore[import-untyped]

from podcap.collector.api.auth import KubeAuthorizer
from podcap.collector.kube.client import KubeApi, load_api
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.podcaptures.controller import PodCaptureController, start_controller
from podcap.collector.podcaptures.resource import capture_marker
from podcap.collector.server import Collector, start_collector
from tests.conftest import tool
from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRD = os.path.join(REPO, "deploy", "base", "crd-podcapture.yaml")
KUBECTL = tool("kubectl")

Obj = dict[str, Any]


@dataclass
class KubeEnv:
    """The stand-in, a kubeconfig for it, the collector; ``namespace`` is where the pods and PodCaptures live."""

    kube: KubeApiStandin
    api: KubeApi
    collector: Collector
    namespace: str
    kubeconfig: str
    home: str
    tmp: str

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([KUBECTL, "--kubeconfig", self.kubeconfig, "--cache-dir", os.path.join(self.home, "c"),
                            *args], input=stdin, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, HOME=self.home))
        if check:
            assert r.returncode == 0, f"kubectl {' '.join(args)}: {r.stderr}"
        return r

    def controller(self, identity: str = "c1", **kw: Any) -> PodCaptureController:
        kw.setdefault("status_interval_s", 0.3)
        kw.setdefault("min_status_interval_s", 0.5)
        return start_controller(self.api, self.collector.captures, KubeAuthorizer(self.api), lease_namespace="podcap",
                                identity=identity, lease_duration_s=2, lease_renew_s=0.3, stop_wait_s=3.0, **kw)

    def podcapture(self, name: str, namespace: str | None = None) -> Obj | None:
        return self.kube.get("podcaptures.podcap.io", namespace or self.namespace, name)

    def wait_pc(self, name: str, ok: Callable[[Obj], bool], what: str, namespace: str | None = None,
                timeout: float = 20) -> Obj:
        try:
            wait_for(lambda: (o := self.podcapture(name, namespace)) is not None and ok(o), timeout,
                     f"PodCapture {name} {what}")
        except AssertionError as e:  # with the resource as it is at the end, not as it was at the start
            raise AssertionError(f"{e} (now: {json.dumps(self.podcapture(name, namespace))[:2000]})") from None
        obj = self.podcapture(name, namespace)
        assert obj is not None
        return obj

    def apply(self, name: str, spec: Obj, *, namespace: str | None = None, creator: str = "alice") -> None:
        doc = {"apiVersion": "podcap.io/v1alpha1", "kind": "PodCapture",
               "metadata": {"name": name, "namespace": namespace or self.namespace,
                            "annotations": {"podcap.io/created-by": creator}},
               "spec": spec}
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))

    def captures_of(self, obj: Obj) -> list[str]:
        marker = capture_marker(obj)
        return [c.id for c in self.collector.captures.all() if marker in c.request.note.split("\n")]


def phase(p: str) -> Callable[[Obj], bool]:
    return lambda o: (o.get("status") or {}).get("phase") == p


E = TypeVar("E", bound=KubeEnv)


@contextmanager
def kube_env(cls: type[E], tmp: str, namespace: str, setup: Callable[[KubeApiStandin], None],
             **extra: Any) -> Iterator[E]:
    """A ``cls`` (KubeEnv or a subclass, given ``extra`` fields) over a fresh stand-in in which ``setup`` put the
    pods, with the CRD established; the collector and its pod cache are stopped at the end."""
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    collector: Collector | None = None
    cluster: ClusterInventory | None = None
    with KubeApiStandin(bookmark_interval=0.5) as kube:
        try:
            setup(kube)
            kube.ensure_namespace("podcap")
            kubeconfig = write_kubeconfig(os.path.join(tmp, "kubeconfig"), kube.url, namespace=namespace)
            api = load_api(kubeconfig)
            cluster = ClusterInventory(api).start()
            assert cluster.wait_synced(10)
            collector = start_collector("127.0.0.1:0", os.path.join(tmp, "data"), cluster=cluster)
            e = cls(kube=kube, api=api, collector=collector, namespace=namespace, kubeconfig=kubeconfig, home=home,
                    tmp=tmp, **extra)
            e.kubectl("apply", "-f", CRD)
            e.kubectl("wait", "--for=condition=established", "crd/podcaptures.podcap.io", "--timeout=10s")
            yield e
        finally:
            if collector is not None:
                collector.stop(0)
            elif cluster is not None:
                cluster.stop()
