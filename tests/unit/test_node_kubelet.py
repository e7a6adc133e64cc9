"""The pieces of the test kubelet and cluster DNS (tests/node) that decide what a pod gets, checked without a node:
the kubelet's ``$(VAR)`` expansion, quantities, image references, QoS classes, and DNS answers. The integration test
``tests/integration/test_deployed_pods.py`` runs them for real."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.node.cluster_dns import ClusterDns
from tests.node.kubelet import expand, normalized_image, parse_quantity, qos_class


@pytest.mark.parametrize(("text", "expected"), [
    ("--node=$(NODE_NAME)", "--node=node-1"),
    ("$(CRI_ENDPOINT)", "unix:///x.sock"),
    ("$(UNDEFINED)", "$(UNDEFINED)"),       # left as written, like the kubelet
    ("$$(NODE_NAME)", "$(NODE_NAME)"),      # escaped
    ("$NODE_NAME", "$NODE_NAME"),           # only the $(...) form expands
    ("a$(NODE_NAME)b$(NODE_NAME)", "anode-1bnode-1"),
])
def test_expand_like_the_kubelet(text: str, expected: str) -> None:
    assert expand(text, {"NODE_NAME": "node-1", "CRI_ENDPOINT": "unix:///x.sock"}) == expected


@pytest.mark.parametrize(("quantity", "value"), [
    ("100m", 0.1), ("1", 1), (2, 2), ("256Mi", 256 * 2**20), ("1Gi", 2**30), ("1280Mi", 1280 * 2**20), ("1k", 1000),
])
def test_quantities(quantity: str | int, value: float) -> None:
    assert parse_quantity(quantity) == pytest.approx(value)


@pytest.mark.parametrize(("image", "ref"), [
    ("podcap-agent:0.1.0", "docker.io/library/podcap-agent:0.1.0"),
    ("podcap-agent", "docker.io/library/podcap-agent:latest"),
    ("team/podcap:1", "docker.io/team/podcap:1"),
    ("registry.example.com/podcap/agent:0.1.0", "registry.example.com/podcap/agent:0.1.0"),
    ("localhost:5000/agent@sha256:abc", "localhost:5000/agent@sha256:abc"),
])
def test_image_references_are_normalized_as_the_kubelet_asks_the_runtime(image: str, ref: str) -> None:
    assert normalized_image(image) == ref


def test_qos_classes() -> None:
    none: dict[str, object] = {}
    burstable = {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}}
    guaranteed = {"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
    assert qos_class([none]) == "besteffort"
    assert qos_class([burstable]) == "burstable"
    assert qos_class([guaranteed]) == "guaranteed"
    assert qos_class([guaranteed, none]) == "burstable"


def _query(name: str, qtype: int = 1) -> bytes:
    qname = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def test_cluster_dns_answers_service_names_and_nxdomain_for_the_rest() -> None:
    dns = ClusterDns("127.0.0.1", port=0)
    try:
        dns.records["podcap-collector.podcap.svc"] = "10.244.9.3"
        answer = dns.answer(_query("podcap-collector.podcap.svc"))
        assert answer is not None
        ident, flags, _, ancount = struct.unpack_from("!HHHH", answer)
        assert (ident, flags & 0xF, ancount) == (0x1234, 0, 1)
        assert answer[-4:] == socket.inet_aton("10.244.9.3")
        # A search-list candidate of a resolver is not known: NXDOMAIN, so it tries the next one.
        answer = dns.answer(_query("podcap-collector.podcap.svc.podcap-system.svc.cluster.local"))
        assert answer is not None and struct.unpack_from("!HH", answer)[1] & 0xF == 3
        # AAAA of a known name: no error, no answer (IPv4 only).
        answer = dns.answer(_query("podcap-collector.podcap.svc", qtype=28))
        assert answer is not None and struct.unpack_from("!HHHH", answer)[1] & 0xF == 0
        assert struct.unpack_from("!HHHH", answer)[3] == 0
    finally:
        dns.close()
