"""Security: mutual TLS between agents and collector, per-namespace authorization (static tokens and Kubernetes
TokenReview/SubjectAccessReview against the stand-in API server), the audit trail, and oversized messages.
Real gRPC over TLS on loopback; no root needed."""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator

import grpc
import pytest

from podcap.collector.api.auth import KubeAuthorizer, StaticTokenAuthorizer
from podcap.collector.api.ingest import RECEIVE_LIMIT_BYTES
from podcap.collector.cli.admin.certs import issue, write_pair
from podcap.collector.cli.client import CollectorClient, CollectorError
from podcap.collector.kube.client import load_api
from podcap.collector.server import Collector, start_collector
from podcap.tls import AGENT_IDENTITY, TlsFiles, open_channel
from podcap.v1 import common_pb2, control_pb2, ingest_pb2, ingest_pb2_grpc
from tests.integration.pki import write_pki
from tests.kubeapi.standin import KubeApiStandin, write_kubeconfig


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = str(tmp_path_factory.mktemp("pki"))
    files, ca, other = write_pki(d, server_hosts=["127.0.0.1"])
    files["agent"], files["agent-key"] = write_pair(d, "agent", issue(ca, AGENT_IDENTITY, client=True))
    files["user"], files["user-key"] = write_pair(d, "user", issue(ca, "alice", client=True))
    old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    files["expired"], files["expired-key"] = write_pair(d, "expired", issue(ca, AGENT_IDENTITY, client=True,
                                                                           not_before=old, days=1))
    files["rogue"], files["rogue-key"] = write_pair(d, "rogue", issue(other, AGENT_IDENTITY, client=True))
    return files


def _register(address: str, tls: TlsFiles) -> grpc.StatusCode | None:
    """Try to open an agent session; None when the collector accepted the registration."""
    channel = open_channel(address, tls)
    try:
        stub = ingest_pb2_grpc.IngestStub(channel)
        msgs = iter([ingest_pb2.AgentMessage(register=ingest_pb2.Register(node="node-1", instance_id="x"))])
        replies = stub.Attach(msgs, timeout=5)
        first = next(replies)
        return None if first.WhichOneof("kind") == "registered" else grpc.StatusCode.UNKNOWN
    except grpc.RpcError as e:
        return e.code() if isinstance(e, grpc.Call) else grpc.StatusCode.UNKNOWN
    finally:
        channel.close()


@pytest.fixture
def tls_collector(tmp_path: str, pki: dict[str, str]) -> Iterator[Collector]:
    tls = TlsFiles(ca=pki["ca"], cert=pki["server"], key=pki["server-key"])
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), tls=tls)
    try:
        yield c
    finally:
        c.stop(0)


@pytest.mark.parametrize(
    ("client", "accepted"),
    [
        ("agent", True),  # the agent certificate
        ("none", False),  # TLS but no client certificate (what the CLI has): cannot act as an agent
        ("user", False),  # a valid certificate of the CA, but not an agent identity
        ("expired", False),  # an agent certificate past its validity
        ("rogue", False),  # an agent certificate from another CA
    ],
)
def test_only_agents_with_a_valid_certificate_can_register(tls_collector: Collector, pki: dict[str, str],
                                                           client: str, accepted: bool) -> None:
    address = f"127.0.0.1:{tls_collector.agent_port}"
    tls = TlsFiles(ca=pki["ca"]) if client == "none" else TlsFiles(ca=pki["ca"], cert=pki[client],
                                                                  key=pki[client + "-key"])
    code = _register(address, tls)
    assert (code is None) is accepted, code
    if not accepted:
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)


def test_client_with_the_wrong_ca_cannot_connect(tls_collector: Collector, pki: dict[str, str]) -> None:
    with CollectorClient(f"127.0.0.1:{tls_collector.port}", tls=TlsFiles(ca=pki["other-ca"]), timeout=5) as c, \
            pytest.raises(CollectorError, match="is not signed by the CA in"):  # says what is wrong (issue 26)
        c.list_captures()


def test_users_port_does_not_serve_agents(tls_collector: Collector, pki: dict[str, str]) -> None:
    """Even with an agent certificate, the users' port has no Ingest service."""
    code = _register(f"127.0.0.1:{tls_collector.port}", TlsFiles(ca=pki["ca"], cert=pki["agent"],
                                                                  key=pki["agent-key"]))
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_plaintext_client_cannot_talk_to_a_tls_collector(tls_collector: Collector) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{tls_collector.agent_port}")
    try:
        with pytest.raises(grpc.RpcError) as e:
            stub = ingest_pb2_grpc.IngestStub(channel)
            next(stub.Attach(iter([ingest_pb2.AgentMessage(register=ingest_pb2.Register(node="n"))]), timeout=5))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        channel.close()


def _start(client: CollectorClient, namespace: str) -> control_pb2.CaptureStatus:
    return client.start(control_pb2.StartCaptureRequest(target=control_pb2.Target(namespace=namespace)))


def test_static_tokens_scope_capture_rights_by_namespace_and_everything_is_audited(tmp_path: str) -> None:
    tokens = os.path.join(tmp_path, "tokens.csv")
    with open(tokens, "w") as f:
        f.write("# token,user,verbs,namespaces\n")
        f.write("t-alice,alice,create;get;delete,shop\n")
        f.write("t-admin,admin,*,*\n")
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"),
                        authorizer=StaticTokenAuthorizer(tokens))
    address = f"127.0.0.1:{c.port}"
    try:
        with CollectorClient(address, token="t-alice") as alice:
            # Allowed in "shop": passes authorization (then fails: no agent has pods there), denied in "bank".
            with pytest.raises(CollectorError, match="namespace 'shop' has no pods"):
                _start(alice, "shop")
            with pytest.raises(CollectorError, match="permission denied.*create pods/capture in namespace 'bank'"):
                _start(alice, "bank")
            with pytest.raises(CollectorError, match="permission denied.*list pods/capture cluster-wide"):
                alice.audit()
        with CollectorClient(address, token="wrong") as nobody, pytest.raises(CollectorError,
                                                                             match="not authenticated"):
            nobody.list_captures()
        with CollectorClient(address) as anonymous, pytest.raises(CollectorError, match="not authenticated"):
            anonymous.list_captures()
        with CollectorClient(address, token="t-admin") as admin:
            records = admin.audit()
        seen = [(r.user, r.action, r.result) for r in reversed(records)]
        assert seen == [
            ("alice", "start", "failed"),
            ("alice", "start", "denied"),
            ("alice", "audit", "denied"),
            ("unauthenticated", "list", "denied"),
            ("unauthenticated", "list", "denied"),
        ]
        assert "bank" in records[-2].target and "create pods/capture" in records[-2].detail
    finally:
        c.stop(0)


def test_kubernetes_rbac_decides_through_tokenreview_and_subjectaccessreview(tmp_path: str) -> None:
    with KubeApiStandin(tokens={"sa-collector": "system:serviceaccount:podcap:collector",
                                "t-bob": "bob"}) as api_server:
        api_server.deny("create", "prod", user="bob")
        kubeconfig = write_kubeconfig(os.path.join(tmp_path, "kubeconfig"), api_server.url, token="sa-collector")
        api = load_api(kubeconfig)
        c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"), authorizer=KubeAuthorizer(api))
        try:
            with CollectorClient(f"127.0.0.1:{c.port}", token="t-bob") as bob:
                with pytest.raises(CollectorError, match="namespace 'dev' has no pods"):
                    _start(bob, "dev")  # RBAC allows it
                with pytest.raises(CollectorError, match="bob' may not create pods/capture in namespace 'prod'"):
                    _start(bob, "prod")
            with CollectorClient(f"127.0.0.1:{c.port}", token="stolen") as eve, \
                    pytest.raises(CollectorError, match="not authenticated.*does not accept this token"):
                eve.list_captures()
        finally:
            c.stop(0)
            api.close()


def test_a_message_past_the_transport_limit_is_refused(tmp_path: str) -> None:
    """Past the transport's receive limit gRPC itself ends the call (up to it, tests/integration/
    test_agent_sessions.py: an in-band rejection); nothing is stored."""
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"))
    channel = grpc.insecure_channel(f"127.0.0.1:{c.port}", options=[("grpc.max_send_message_length", 64 << 20)])
    try:
        stub = ingest_pb2_grpc.IngestStub(channel)
        huge = ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(capture_id="x", pod_uid="y", seq=1,
                                                                  records=b"\0" * (RECEIVE_LIMIT_BYTES + 1)))
        msgs = iter([ingest_pb2.AgentMessage(register=ingest_pb2.Register(node="node-1", instance_id="i")), huge])
        with pytest.raises(grpc.RpcError) as e:
            for _ in stub.Attach(msgs, timeout=10):
                pass
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert os.listdir(os.path.join(tmp_path, "data", "captures")) == []
    finally:
        channel.close()
        c.stop(0)


def test_events_and_chunks_for_unknown_captures_touch_nothing(tmp_path: str) -> None:
    c = start_collector("127.0.0.1:0", os.path.join(tmp_path, "data"))
    channel = grpc.insecure_channel(f"127.0.0.1:{c.port}")
    try:
        stub = ingest_pb2_grpc.IngestStub(channel)
        msgs = [ingest_pb2.AgentMessage(register=ingest_pb2.Register(node="node-1", instance_id="i")),
                ingest_pb2.AgentMessage(pod_event=ingest_pb2.PodCaptureEvent(
                    capture_id="../../etc", pod_uid="../x", state=common_pb2.POD_CAPTURE_STATE_CAPTURING)),
                ingest_pb2.AgentMessage(chunk=ingest_pb2.PcapChunk(capture_id="nope", pod_uid="../../x", seq=1,
                                                                   records=b"\1" * 100))]
        replies = list(stub.Attach(iter(msgs), timeout=5))
        acks = [r.ack for r in replies if r.WhichOneof("kind") == "ack"]
        assert len(acks) == 1 and acks[0].rejected and "unknown capture" in acks[0].reason
        assert os.listdir(os.path.join(tmp_path, "data", "captures")) == []
    finally:
        channel.close()
        c.stop(0)
