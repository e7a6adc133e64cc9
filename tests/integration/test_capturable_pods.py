"""``Control.ListCapturablePods``: the pods a user may capture now, as the Wireshark extcap's lists show them.

Only pods ``StartCapture`` could cover (Running, not hostNetwork, on a node with a connected agent) in namespaces
where the caller has ``create pods/capture`` — decided by the same authorizer as ``start``: static tokens, and
Kubernetes TokenReview/SubjectAccessReview with the API's pod cache. Real gRPC on loopback, a fake agent session
holding its registration open; no root needed."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from podcap.collector.api.auth import KubeAuthorizer, StaticTokenAuthorizer
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.kube.client import load_api
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.server import Collector, start_collector
from podcap.v1 import common_pb2, ingest_pb2, ingest_pb2_grpc
from tests.kubeapi.helpers import wait_for
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """``start_collector`` sets this process's umask to 077 (captures readable by the collector's user only):
    restore it, or files later tests create in this process (a containerd node's) become unreadable to others."""
    old = os.umask(0o077)
    os.umask(old)
    yield
    os.umask(old)


def _pod(namespace: str, name: str, *, node: str = "node-1", host_network: bool = False) -> common_pb2.Pod:
    return common_pb2.Pod(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}", node=node,
                          host_network=host_network)


class FakeAgent:
    """An agent session that registers ``pods`` for ``node`` and stays connected until ``close``."""

    def __init__(self, address: str, node: str, pods: list[common_pb2.Pod]) -> None:
        self._done = threading.Event()
        self._channel = grpc.insecure_channel(address)
        stub = ingest_pb2_grpc.IngestStub(self._channel)
        self._replies: Any = stub.Attach(self._messages(node, pods))  # a grpc call: an iterator with cancel()
        first = next(iter(self._replies))
        assert first.WhichOneof("kind") == "registered", first

    def _messages(self, node: str, pods: list[common_pb2.Pod]) -> Iterator[ingest_pb2.AgentMessage]:
        yield ingest_pb2.AgentMessage(register=ingest_pb2.Register(node=node, instance_id=node, pods=pods,
                                                                   pod_source="netns"))
        self._done.wait(30)

    def close(self) -> None:
        self._done.set()
        self._replies.cancel()
        self._channel.close()


def _names(client: CollectorClient, namespace: str = "") -> tuple[list[str], list[str], bool]:
    r = client.capturable_pods(namespace)
    return [f"{p.namespace}/{p.name}" for p in r.pods], list(r.namespaces), r.all_namespaces


@pytest.fixture
def token_collector(tmp_path: str) -> Iterator[Collector]:
    tokens = os.path.join(tmp_path, "tokens.csv")
    with open(tokens, "w") as f:
        f.write("t-alice,alice,create;get;delete,shop\n")
        f.write("t-reader,reader,get,*\n")  # may read captures everywhere, start none
        f.write("t-admin,admin,*,*\n")
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), authorizer=StaticTokenAuthorizer(tokens))
    try:
        yield c
    finally:
        c.stop(0)


def test_static_tokens_show_only_the_namespaces_the_user_may_start_captures_in(token_collector: Collector) -> None:
    address = f"127.0.0.1:{token_collector.port}"
    agent = FakeAgent(address, "node-1", [_pod("shop", "web-1"), _pod("shop", "web-0"), _pod("bank", "ledger"),
                                          _pod("shop", "node-exporter", host_network=True)])
    try:
        with CollectorClient(address, token="t-alice") as alice:
            assert _names(alice) == (["shop/web-0", "shop/web-1"], ["shop"], False)
            assert _names(alice, "bank") == ([], [], False)
            with pytest.raises(CollectorError, match="invalid namespace"):
                alice.capturable_pods("Bad_NS")
        with CollectorClient(address, token="t-admin") as admin:
            assert _names(admin) == (["bank/ledger", "shop/web-0", "shop/web-1"], ["bank", "shop"], True)
            assert _names(admin, "bank") == (["bank/ledger"], ["bank"], True)
        with CollectorClient(address, token="t-reader") as reader:
            assert _names(reader) == ([], [], False)
        with CollectorClient(address, token="nope") as nobody, pytest.raises(CollectorError,
                                                                            match="not authenticated"):
            nobody.capturable_pods()
    finally:
        agent.close()


def test_kubernetes_rbac_and_the_pod_cache_decide(tmp_path: str) -> None:
    """With an API server: Running pods from its cache, on nodes with an agent, in namespaces RBAC allows."""
    with KubeApiStandin(tokens={"sa-collector": "system:serviceaccount:podcap:collector", "t-bob": "bob"}) as kube:
        kube.add_pod("dev", "api-0", node="node-1")
        kube.add_pod("dev", "api-1", node="node-2")  # node-2 has no agent
        kube.add_pod("dev", "job-0", node="node-1", phase="Succeeded")
        kube.add_pod("prod", "db-0", node="node-1")
        kube.deny("create", "prod", user="bob")
        kube.deny("create", None, user="bob")  # not cluster-wide either
        api = load_api(write_kubeconfig(os.path.join(tmp_path, "kubeconfig"), kube.url, token="sa-collector"))
        cluster = ClusterInventory(api).start()
        c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), cluster=cluster,
                            authorizer=KubeAuthorizer(api))
        address = f"127.0.0.1:{c.port}"
        agent = None
        try:
            assert cluster.wait_synced(10)
            agent = FakeAgent(address, "node-1", [])
            with CollectorClient(address, token="t-bob") as bob:
                wait_for(lambda: _names(bob)[0] != [], what="bob's pods")
                assert _names(bob) == (["dev/api-0"], ["dev"], False)
            kube.allow_all()
            with CollectorClient(address, token="t-bob") as bob:
                assert _names(bob) == (["dev/api-0", "prod/db-0"], ["dev", "prod"], True)
        finally:
            if agent is not None:
                agent.close()
            c.stop(0)
            cluster.stop()
            api.close()
