"""``podcap-collector``: wiring and process lifecycle of the collector.

One gRPC server on one port serves both services: ``Ingest`` for agents and ``Control`` for the CLI (with TLS,
agents get a second, mutual-TLS port). SIGTERM or SIGINT stops it cleanly: the server stops accepting, sessions
end, captures' counters are persisted (running captures resume when the collector starts again on the same data
dir).

Every listener is exclusive. gRPC Python sets SO_REUSEPORT by default, so a second collector started on the same
port would bind too and take half of the new connections (agents and users split between two collectors with
different captures); ``grpc.so_reuseport`` is off on each server, each address is tried first with a plain socket
(``check_listen``) so the refusal names its reason, and the collector refuses to start with one line
(``cannot listen on HOST:PORT: address already in use``). The metrics listener is checked the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import NoReturn

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import HealthServicer

from podcap import daemon
from podcap.collector.agents import AgentRegistry
from podcap.collector.api.auth import Authorizer, KubeAuthorizer, OpenAuthorizer, StaticTokenAuthorizer
from podcap.collector.api.control import ControlServicer
from podcap.collector.api.ingest import MAX_MESSAGE_BYTES, RECEIVE_LIMIT_BYTES, IngestServicer
from podcap.collector.api.wire import add_ingest_servicer
from podcap.collector.captures.lifecycle import LifecyclePolicy
from podcap.collector.captures.manager import CaptureManager
from podcap.collector.kube.client import in_cluster, load_api
from podcap.collector.kube.errors import KubeError
from podcap.collector.kube.inventory import ClusterInventory
from podcap.collector.recorders.manager import RecorderManager
from podcap.collector.recorders.notify import KubeEvents
from podcap.collector.storage.base import CaptureStorage
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.storage.local import LocalStorage
from podcap.errors import PodcapError, PreconditionError
from podcap.tls import TlsFiles
from podcap.unit_options import duration_param, size_param
from podcap.v1 import control_pb2_grpc

log = logging.getLogger("podcap.collector")



class ListenError(PreconditionError):
    """An address the collector is to listen on cannot be bound (in use, not local, not permitted)."""


@dataclass
class Collector:
    """A running collector: its gRPC server and the objects behind it."""

    server: grpc.Server
    port: int
    registry: AgentRegistry
    captures: CaptureManager
    store: CaptureStore
    cluster: ClusterInventory | None = None
    # With TLS, agents connect to a second, mutual-TLS port; without, they use ``port``.
    agent_server: grpc.Server | None = None
    agent_port: int = 0
    recorders: RecorderManager | None = None

    def stop(self, grace: float = 5.0) -> None:
        self.registry.close_all()
        if self.agent_server is not None:
            self.agent_server.stop(grace).wait()
        self.server.stop(grace).wait()
        if self.recorders is not None:
            self.recorders.close()
        self.captures.close()
        self.store.close()
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster.api.close()


def start_cluster(kubeconfig: str | None, *, sync_timeout: float = 30.0) -> ClusterInventory:
    """Watch the cluster's pods (kubeconfig, else the in-cluster service account) and wait for the first list.
    Raises KubeError (KubeConfigError, KubeForbiddenError with the RBAC to grant, KubeUnavailableError)."""
    api = load_api(kubeconfig)
    inventory = ClusterInventory(api).start()
    try:
        if not inventory.wait_synced(sync_timeout):
            raise KubeError(f"no pod list from the API server at {api.server} within {sync_timeout:.0f} s")
    except KubeError:
        inventory.stop()
        api.close()
        raise
    return inventory


def _grpc_server(max_workers: int) -> grpc.Server:
    # Every agent session holds a worker thread for its lifetime: size the pool for nodes + CLI calls. Messages
    # over the declared limit (but within the transport's) are refused in-band by the ingest servicer.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", RECEIVE_LIMIT_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0)],
        maximum_concurrent_rpcs=max_workers,
    )
    health = HealthServicer()
    health.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    return server


def check_listen(address: str) -> None:
    """Raise ListenError if ``address`` (HOST:PORT; port 0 is never checked) cannot be bound now, with the
    system's reason. A plain socket with SO_REUSEADDR, as gRPC and http.server bind theirs: it fails exactly when
    another process listens there."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        if not port.isdigit():
            raise ListenError(f"cannot listen on {address}: expected HOST:PORT")
        if int(port) == 0:
            return
        infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(f"cannot listen on {address}: {e.strerror}") from e
    family, kind, proto, _, sockaddr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sockaddr)
            s.listen(1)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise ListenError(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}") from e


def _bind(server: grpc.Server, address: str, creds: grpc.ServerCredentials | None) -> int:
    """The port bound on ``address``. Raises ListenError."""
    check_listen(address)
    try:
        return server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError as e:  # taken between the check and now, or refused by gRPC for its own reasons
        check_listen(address)
        raise ListenError(f"cannot listen on {address}: {os.strerror(errno.EADDRINUSE).lower()}") from e


def open_storage(data_dir: str, storage: str = "", *, s3_endpoint: str = "", s3_region: str = "") -> CaptureStorage:
    """The data dir alone (``storage`` empty or ``local``), or the data dir as the write-ahead tier of an
    S3-compatible bucket (``s3://BUCKET[/PREFIX]``), checked now: a missing bucket or refused credentials are a
    one-line error at start-up."""
    if storage in ("", "local"):
        return LocalStorage(data_dir)
    from podcap.collector.bucket.objects import BucketUrl, ObjectStore
    from podcap.collector.storage.tiered import TieredStorage

    objects = ObjectStore(BucketUrl.parse(storage), endpoint=s3_endpoint or None, region=s3_region or None)
    objects.check()
    stale = objects.abort_stale_uploads(objects.url.key())
    if stale:
        log.info("aborted %d multipart uploads left by an earlier run", stale)
    return TieredStorage(data_dir, objects)


def start_collector(listen: str, data_dir: str, *, max_workers: int = 64,
                    cluster: ClusterInventory | None = None, tls: TlsFiles | None = None,
                    authorizer: Authorizer | None = None, agent_listen: str = "",
                    storage: CaptureStorage | None = None, local_cap_bytes: int = 0,
                    policy: LifecyclePolicy | None = None) -> Collector:
    """Open the data dir and serve on ``listen`` (HOST:PORT; port 0 picks a free port). Without ``tls`` one
    plaintext port serves users and agents (the caller asked for it explicitly); with ``tls`` agents get their own
    mutual-TLS port ``agent_listen`` (default: the next port). Without ``authorizer`` everyone may do
    everything. ``storage``: where captures go (default: the data dir, see ``open_storage``); with tiered storage
    ``local_cap_bytes`` caps what may wait locally for the bucket (storing pauses beyond it). ``policy``: when ended
    captures are deleted (``podcap.collector.captures.lifecycle``; default: never)."""
    for address in (listen, agent_listen if tls is not None else ""):
        if address:
            check_listen(address)  # before anything is opened; ``_bind`` checks again
    os.makedirs(os.path.join(data_dir, "captures"), mode=0o700, exist_ok=True)
    store = CaptureStore(os.path.join(data_dir, "podcap.db"))
    registry = AgentRegistry()
    captures = CaptureManager(storage or LocalStorage(data_dir), registry, store, cluster=cluster,
                              local_cap_bytes=local_cap_bytes, policy=policy, data_dir=data_dir)
    recorders = RecorderManager(captures, registry, store, cluster=cluster,
                                events=KubeEvents(cluster.api) if cluster is not None else None,
                                watch_unhealthy=cluster is not None)
    server = _grpc_server(max_workers)
    ingest = IngestServicer(registry, captures, require_agent_cert=tls is not None,
                            max_message_bytes=MAX_MESSAGE_BYTES, recorders=recorders)
    control_pb2_grpc.add_ControlServicer_to_server(
        ControlServicer(captures, authorizer or OpenAuthorizer(), recorders=recorders), server)
    agent_server = None
    try:
        if tls is None:
            add_ingest_servicer(ingest, server)
            port = _bind(server, listen, None)
        else:
            port = _bind(server, listen, tls.server_credentials(require_client_cert=False))
        agent_port = port
        if tls is not None:
            agent_server = _grpc_server(max_workers)
            add_ingest_servicer(ingest, agent_server)
            host = listen.rsplit(":", 1)[0]
            agent_port = _bind(agent_server, agent_listen or f"{host}:{port + 1}",
                               tls.server_credentials(require_client_cert=True))
    except ListenError:
        recorders.close()
        captures.close()
        store.close()
        raise
    server.start()
    if agent_server is not None:
        agent_server.start()
    return Collector(server, port, registry, captures, store, cluster, agent_server, agent_port, recorders)


def _fail(message: str, cluster: ClusterInventory | None) -> NoReturn:
    """Start-up failed: one line on stderr, exit status 1. What was started is stopped first. A watch thread still
    stuck in a connect (an API server that does not answer) must not take part in the interpreter's shutdown —
    Debian's Python 3.11 aborted finalizing one inside OpenSSL (exit 139 instead of 1) — so then the process ends
    at once, after the line."""
    if cluster is not None:
        cluster.stop()
        cluster.api.close()
    print(f"podcap-collector: {message}", file=sys.stderr, flush=True)
    logging.shutdown()
    if any(t.is_alive() for t in threading.enumerate() if t is not threading.main_thread()):
        os._exit(1)
    sys.exit(1)


@click.command(name="podcap-collector", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen", default="0.0.0.0:7420", show_default=True, help="HOST:PORT for agents and the CLI")
@click.option("--data-dir", default="/var/lib/podcap", show_default=True,
              help="where pcap files and the database live")
@click.option("--storage", default="local", show_default=True, help="where captures are kept: the data dir "
              "(local), or s3://BUCKET[/PREFIX] with the data dir as the write-ahead tier (credentials from the "
              "usual AWS environment, profile or web identity)")
@click.option("--s3-endpoint", default="", envvar="S3_ENDPOINT", help="S3 endpoint URL for a store other than AWS "
              "(Ceph RGW, MinIO: path-style addressing)")
@click.option("--s3-region", default="", envvar="AWS_REGION", help="the bucket's region")
@click.option("--local-cap-bytes", type=int, default=0, show_default=True, help="with s3:// storage: bytes "
              "not yet in the bucket that the data dir may hold; beyond it storing pauses (agents "
              "spool) until uploads catch up (0: until the disk is full)")
@click.option("--keep-ended", callback=duration_param, metavar="DURATION", help="delete ended captures this "
              "long after they ended (90m, 7d; default: keep them until `podcap delete`)")
@click.option("--max-data-bytes", callback=size_param, metavar="SIZE", help="budget for the captures in the data dir "
              "(500GiB): past it the ended captures that ended first are deleted, never a running one")
@click.option("--max-data-percent", type=click.FloatRange(0, 100, min_open=True), default=None, metavar="PCT",
              help="the same budget as a share of the data dir's filesystem (df's Use%, e.g. 85)")
@click.option("--max-workers", type=int, default=256, show_default=True,
              help="gRPC worker threads (one per connected agent)")
@click.option("--kubeconfig", default=None, help="resolve pods through the Kubernetes API described by this "
              "kubeconfig (default: the in-cluster service account when running in a pod)")
@click.option("--no-kubernetes", is_flag=True,
              help="never use the Kubernetes API: pods come from the agents' inventories only")
@daemon.tls_options(ca="CA that signed the agents' client certificates (PEM)",
                    cert="server certificate (PEM); with --tls-key and --tls-ca (see `podcap certs`)",
                    key="server private key (PEM)",
                    insecure="serve plaintext with no authentication (local testing only; logs a warning)")
@click.option("--agent-listen", default="",
              help="HOST:PORT for agents when TLS is on (mutual TLS; default: the --listen port + 1)")
@click.option("--token-file", default="",
              help="authenticate CLI users with static tokens: CSV token,user,verbs,namespaces")
@click.option("--kube-auth", is_flag=True,
              help="authenticate CLI users with TokenReview and authorize with SubjectAccessReview (default when "
              "the Kubernetes API is used and no --token-file is given)")
@click.option("--reconcile-podcaptures", is_flag=True,
              help="reconcile PodCapture resources (deploy/base/crd-podcapture.yaml) into captures; with several "
              "collectors, the one holding the Lease podcap-podcaptures does (needs the Kubernetes API)")
@click.option("--lease-namespace", default="", envvar="POD_NAMESPACE",
              help="namespace of the PodCapture Lease (default: the collector's own, POD_NAMESPACE, else podcap)")
@daemon.common_options(metrics_example=":9420")
def main(listen: str, data_dir: str, storage: str, s3_endpoint: str, s3_region: str, local_cap_bytes: int,
         keep_ended: float, max_data_bytes: int, max_data_percent: float | None, max_workers: int,
         kubeconfig: str | None, no_kubernetes: bool, tls_ca: str, tls_cert: str, tls_key: str, insecure: bool,
         agent_listen: str, token_file: str, kube_auth: bool, reconcile_podcaptures: bool, lease_namespace: str,
         metrics_listen: str, log_level: str) -> None:
    """podcap collector: stores pod captures."""
    daemon.start(log_level)
    policy = LifecyclePolicy(keep_ended_s=keep_ended, max_data_bytes=max_data_bytes,
                             max_data_percent=max_data_percent or 0.0)
    done = threading.Event()

    def on_signal(signum: int) -> None:
        log.info("signal %d: shutting down", signum)
        done.set()

    daemon.on_stop_signals(on_signal)
    tls = daemon.tls_files("podcap-collector", ca=tls_ca, cert=tls_cert, key=tls_key, insecure=insecure,
                           plaintext_warning="serving PLAINTEXT gRPC; agents are not authenticated and captured "
                           "packets cross the network unencrypted")
    cluster: ClusterInventory | None = None
    try:
        if not no_kubernetes and (kubeconfig or in_cluster()):
            cluster = start_cluster(kubeconfig)
            log.info("watching pods through the Kubernetes API at %s (%d pods)", cluster.api.server,
                     len(cluster.pods()))
        authorizer: Authorizer
        if token_file:
            authorizer = StaticTokenAuthorizer(token_file)
        elif cluster is not None and (kube_auth or not insecure):
            authorizer = KubeAuthorizer(cluster.api)
        elif kube_auth:
            _fail("--kube-auth needs the Kubernetes API (--kubeconfig or in-cluster)", cluster)
        elif insecure:
            authorizer = OpenAuthorizer()
        else:
            _fail("no way to authenticate users: pass --token-file, or run with the Kubernetes API (--kubeconfig "
                  "or in-cluster) for TokenReview/SubjectAccessReview", cluster)
        if agent_listen and tls is None:
            # Without TLS there is one port for agents and the CLI; a silently ignored --agent-listen left agents
            # dialing a port nobody listens on (found trying the README's two commands with --insecure).
            _fail(f"--agent-listen {agent_listen} needs TLS: with --insecure agents connect to --listen {listen}",
                  cluster)
        if reconcile_podcaptures and cluster is None:
            _fail("--reconcile-podcaptures needs the Kubernetes API (--kubeconfig or in-cluster)", cluster)
        if metrics_listen:
            check_listen(metrics_listen)
        backend = open_storage(data_dir, storage, s3_endpoint=s3_endpoint, s3_region=s3_region)
        # Captured packets are readable by the collector's user only. Set here, for the daemon's process, not in
        # start_collector: a process-wide umask set by a library call leaked into everything an embedding process
        # started afterwards (tests' containerd unpacked images 0700, and non-root containers could not run).
        os.umask(0o077)
        collector = start_collector(listen, data_dir, max_workers=max_workers, cluster=cluster, tls=tls,
                                    authorizer=authorizer, agent_listen=agent_listen, storage=backend,
                                    local_cap_bytes=local_cap_bytes, policy=policy)
    except (PodcapError, OSError) as e:
        _fail(str(e), cluster)
    if metrics_listen:
        from podcap.collector.metrics import serve_metrics

        try:
            log.info("metrics on port %d", serve_metrics(metrics_listen, collector.captures, collector.registry,
                                                         collector.recorders))
        except OSError as e:  # taken since the check
            collector.stop(0)
            reason = os.strerror(e.errno) if e.errno else str(e)
            _fail(f"cannot listen on {metrics_listen}: {reason[:1].lower()}{reason[1:]}", cluster)
    log.info("podcap-collector listening on %s (port %d%s), data dir %s%s", listen, collector.port,
             f", agents on port {collector.agent_port} with mutual TLS" if tls else "", data_dir,
             f", archived to {storage}" if storage not in ("", "local") else "")
    log.info("ended captures: %s", policy.text())
    podcaptures = None
    if reconcile_podcaptures and cluster is not None:
        from podcap.collector.podcaptures.controller import start_controller

        podcaptures = start_controller(cluster.api, collector.captures, authorizer, recorders=collector.recorders,
                                       lease_namespace=lease_namespace or "podcap",
                                       identity=f"{socket.gethostname()}-{os.getpid()}",
                                       bucket_url=storage if storage.startswith("s3://") else "")
        log.info("reconciling PodCaptures (Lease %s/podcap-podcaptures)", lease_namespace or "podcap")
    done.wait()
    if podcaptures is not None:
        podcaptures.stop()
    collector.stop()
    log.info("stopped")


if __name__ == "__main__":
    main()
