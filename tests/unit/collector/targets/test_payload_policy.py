"""The payload policy (``effective_snaplen``): a namespace's ``podcap.io/max-snaplen`` caps a user without
``create pods/capture-payload`` there, a user with it gets what they ask for, --all-namespaces takes the smallest
cap unless the right is cluster-wide, a node target has no namespace cap, an invalid annotation refuses (fail
closed); and the rights themselves in a token file (``nodes/capture`` and ``pods/capture-payload`` never implied by
``*``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

from podcap.collector.api.auth import (
    NODES_CAPTURE,
    PODS_CAPTURE,
    PODS_CAPTURE_PAYLOAD,
    DeniedError,
    Principal,
    StaticTokenAuthorizer,
    target_scopes,
)
from podcap.collector.api.payload import PayloadPolicyError, effective_snaplen
from podcap.v1 import control_pb2


class Policies:
    def __init__(self, annotations: dict[str, dict[str, str]]) -> None:
        self.by_ns = annotations
        self.reads = 0

    def annotations(self, namespace: str) -> Mapping[str, str]:
        self.reads += 1
        return self.by_ns.get(namespace, {})

    def all_annotations(self) -> dict[str, Mapping[str, str]]:
        return dict(self.by_ns)


class Rights:
    """An authorizer granting exactly ``granted`` (verb, namespace, resource) and counting checks."""

    def __init__(self, *granted: tuple[str, str | None, str]) -> None:
        self.granted = set(granted)
        self.checks: list[tuple[str, str | None, str]] = []

    def authenticate(self, token: str | None) -> Principal:
        return Principal("alice")

    def check(self, who: Principal, verb: str, namespace: str | None, resource: str = PODS_CAPTURE) -> None:
        self.checks.append((verb, namespace, resource))
        if (verb, namespace, resource) not in self.granted:
            raise DeniedError("no")


ALICE = Principal("alice")
POLICIES = Policies({"shop": {"podcap.io/max-snaplen": "128"}, "bank": {"podcap.io/max-snaplen": "96"},
                     "open": {"other": "x"}})


def test_capped_without_the_right_whole_packets_with_it() -> None:
    t = control_pb2.Target(namespace="shop")
    d = effective_snaplen(POLICIES, Rights(), ALICE, t, 0)
    assert d.snaplen == 128 and d.cap is not None and d.cap.requested == 0
    assert "namespace 'shop' caps stored packets at 128 bytes" in d.cap.reason and "alice" in d.cap.reason
    rights = Rights(("create", "shop", PODS_CAPTURE_PAYLOAD))
    d = effective_snaplen(POLICIES, rights, ALICE, t, 0)
    assert d.snaplen == 0 and d.cap is None
    assert rights.checks == [("create", "shop", PODS_CAPTURE_PAYLOAD)]


def test_a_smaller_request_or_no_policy_needs_no_check() -> None:
    rights = Rights()
    assert effective_snaplen(POLICIES, rights, ALICE, control_pb2.Target(namespace="shop"), 64).snaplen == 64
    assert effective_snaplen(POLICIES, rights, ALICE, control_pb2.Target(namespace="open"), 0).snaplen == 0
    assert effective_snaplen(POLICIES, rights, ALICE, control_pb2.Target(namespace="shop"), 1000).snaplen == 128
    assert rights.checks == [("create", "shop", PODS_CAPTURE_PAYLOAD)]


def test_applied_to_the_request() -> None:
    req = control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace="shop"))
    effective_snaplen(POLICIES, Rights(), ALICE, req.target, 0).apply(req)
    assert req.settings.snaplen == 128 and req.target.payload_cap.snaplen == 128


def test_all_namespaces_take_the_smallest_cap_unless_the_right_is_cluster_wide() -> None:
    t = control_pb2.Target(all_namespaces=True)
    d = effective_snaplen(POLICIES, Rights(("create", "shop", PODS_CAPTURE_PAYLOAD)), ALICE, t, 0)
    assert d.snaplen == 96 and d.cap is not None and "'bank'" in d.cap.reason and "cluster-wide" in d.cap.reason
    assert effective_snaplen(POLICIES, Rights(("create", None, PODS_CAPTURE_PAYLOAD)), ALICE, t, 0).snaplen == 0


def test_a_node_target_has_no_namespace_cap() -> None:
    t = control_pb2.Target(object=control_pb2.TargetObject(kind="node", name="n1"))
    policies = Policies(dict(POLICIES.by_ns))
    assert effective_snaplen(policies, Rights(), ALICE, t, 0).snaplen == 0
    assert policies.reads == 0
    assert target_scopes(t) == (NODES_CAPTURE, [None])
    assert target_scopes(control_pb2.Target(namespace="shop")) == (PODS_CAPTURE, ["shop"])


@pytest.mark.parametrize("value", ["abc", "0", "-5", "999999", "12.5"])
def test_an_invalid_annotation_refuses_users_without_the_right(value: str) -> None:
    policies = Policies({"shop": {"podcap.io/max-snaplen": value}})
    with pytest.raises(PayloadPolicyError, match="namespace 'shop' has annotation podcap.io/max-snaplen="):
        effective_snaplen(policies, Rights(), ALICE, control_pb2.Target(namespace="shop"), 0)
    rights = Rights(("create", "shop", PODS_CAPTURE_PAYLOAD))
    assert effective_snaplen(policies, rights, ALICE, control_pb2.Target(namespace="shop"), 0).snaplen == 0


def test_token_file_rights_beyond_pods_capture(tmp_path: str) -> None:
    path = os.path.join(tmp_path, "tokens.csv")
    with open(path, "w") as f:
        f.write("t-admin,admin,*,*\n")
        f.write("t-ops,ops,create;get;create:nodes/capture;get:nodes/capture,*\n")
        f.write("t-dev,dev,create;create:pods/capture-payload,shop\n")
    auth = StaticTokenAuthorizer(path)
    admin, ops, dev = Principal("admin"), Principal("ops"), Principal("dev")
    with pytest.raises(DeniedError, match="may not create nodes/capture cluster-wide"):
        auth.check(admin, "create", None, NODES_CAPTURE)  # '*' is every verb on pods/capture, nothing more
    with pytest.raises(DeniedError):
        auth.check(admin, "create", "shop", PODS_CAPTURE_PAYLOAD)
    auth.check(ops, "create", None, NODES_CAPTURE)
    auth.check(dev, "create", "shop", PODS_CAPTURE_PAYLOAD)
    with pytest.raises(DeniedError):
        auth.check(dev, "create", "bank", PODS_CAPTURE_PAYLOAD)
    with open(path, "w") as f:
        f.write("t-x,x,create:nodes/frobnicate,*\n")
    with pytest.raises(Exception, match="unknown verbs"):
        StaticTokenAuthorizer(path)
