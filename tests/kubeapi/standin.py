"""A stand-in kube-apiserver for tests: core/v1 pods with the API server's resourceVersion semantics.

No kube-apiserver can be installed on these machines, so tests of ``podcap.collector.kube`` and of anything that
talks to the Kubernetes API run against this server. It is only useful if it is *faithful*: a client that works
here must work against a real API server, so it reproduces what clients depend on, not just the happy path:

- discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``) so that ``kubectl`` and
  the official ``kubernetes`` client accept it;
- pods: list, get and watch, across namespaces and per namespace, JSON or ``as=Table`` (what ``kubectl get``
  asks for), ``limit``/``continue`` pagination;
- one monotonic resourceVersion for every write (like etcd's revision). A list returns ``metadata.resourceVersion``;
  a watch from RV replays every event after it; a watch without RV (or RV "0") starts with synthetic ADDED events
  for the current state. History is kept back to the *compaction* point: a watch from an older RV gets a ``410``
  ``Expired`` Status as an in-band ``ERROR`` event (what the watch cache does), or as an HTTP 410 when
  ``watch_gone_as_http`` is set (what an etcd-served watch does); an exact list at a compacted RV and a continue
  token from before compaction get HTTP 410 as well;
- watch with selectors filters transitions the way the watch cache does: an object that stops matching is sent as
  DELETED, one that starts matching as ADDED;
- ``allowWatchBookmarks`` -> BOOKMARK events every ``bookmark_interval`` seconds and just before a watch times
  out; ``timeoutSeconds`` ends the watch cleanly;
- label selectors (the full syntax, with ``podcap.collector.kube.selectors``) and the field selectors the real
  server supports for pods that podcap needs (``metadata.name``, ``metadata.namespace``, ``spec.nodeName``,
  ``status.phase``, ``spec.hostNetwork``, ``status.podIP``; ``=``, ``==``, ``!=``); any other field is a 400 like
  the real server's. The field selector grammar is this module's own, not podcap's: the stand-in is the oracle
  that podcap's local field selectors are compared with (``test_field_selectors_applied_to_the_cache``);
- bearer tokens (401 for an unknown one) and a per-(verb, namespace) deny list, answered with the real server's
  403 ``Forbidden`` Status (message, reason, details, code); 404 ``NotFound`` for missing pods and paths;
- TokenReview and SubjectAccessReview (create) driven by the same tokens and deny list.

Tests drive it through ``add_pod``/``modify_pod``/``delete_pod``, ``compact()``, ``disconnect_watches()`` (a watch
timeout or an API-server restart as clients see it) and ``stop_serving()``/``start_serving()`` (the API server
unreachable, then back on the same port with its state). Every request is recorded in ``requests`` so tests can
assert API-server load (how many lists, how many watches).
"""

from __future__ import annotations

import base64
import copy
import json
import select
import socket
import ssl
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from podcap.collector.kube.selectors import SelectorError, parse_selector

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.hostNetwork": lambda p: "true" if p["spec"].get("hostNetwork") else "false",
    "status.phase": lambda p: p["status"].get("phase", ""),
    "status.podIP": lambda p: p["status"].get("podIP", ""),
}


class ApiError(Exception):
    """Answered as a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        st: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                   "message": self.message, "reason": self.reason, "code": self.code}
        if self.details is not None:
            st["details"] = self.details
        return st


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def parse_field_selector(text: str) -> Callable[[Obj], bool]:
    """The API server's field selector grammar: ``field=value``/``==``/``!=`` terms joined by ``,``; ``\\`` escapes."""
    terms: list[str] = []
    cur, i = "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur += text[i:i + 2]
            i += 2
            continue
        if c == ",":
            terms.append(cur)
            cur = ""
        else:
            cur += c
        i += 1
    if cur or terms:
        terms.append(cur)
    reqs: list[tuple[str, str, bool]] = []
    for term in terms:
        if not term.strip():
            continue
        for op, is_eq in (("!=", False), ("==", True), ("=", True)):
            pos = _unescaped_find(term, op)
            if pos >= 0:
                name, value, eq = term[:pos].strip(), term[pos + len(op):], is_eq
                break
        else:
            raise ApiError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{term}'")
        if name not in FIELDS:
            raise ApiError(400, "BadRequest", f'field label not supported: {name}')
        value = value.replace("\\,", ",").replace("\\=", "=").replace("\\!", "!").replace("\\\\", "\\")
        reqs.append((name, value, eq))

    def match(p: Obj) -> bool:
        return all((FIELDS[n](p) == v) == eq for n, v, eq in reqs)

    return match


def _unescaped_find(s: str, sub: str) -> int:
    i = 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        if s.startswith(sub, i):
            return i
        i += 1
    return -1


@dataclass
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj
    prev: Obj | None


@dataclass
class Store:
    """The object store: current state, history since the compaction point, one resourceVersion counter."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    rv: int = 100
    compacted: int = 100
    base: dict[Key, Obj] = field(default_factory=dict)  # state at `compacted`
    log: list[Event] = field(default_factory=list)  # events after `compacted`
    current: dict[Key, Obj] = field(default_factory=dict)
    # Bumped to end every open watch (clients see a watch end, as at an API-server restart or timeout).
    epoch: int = 0
    closed: bool = False

    def write(self, type_: str, obj: Obj, prev: Obj | None) -> Obj:
        with self.cond:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            if type_ == "DELETED":
                self.current.pop(key, None)
            else:
                self.current[key] = obj
            self.log.append(Event(self.rv, type_, obj, prev))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def state_at(self, rv: int) -> dict[Key, Obj]:
        """Objects as they were at ``rv`` (>= compacted). Caller holds the lock."""
        state = dict(self.base)
        for ev in self.log:
            if ev.rv > rv:
                break
            key = (ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"])
            if ev.type == "DELETED":
                state.pop(key, None)
            else:
                state[key] = ev.obj
        return state

    def compact(self) -> int:
        with self.cond:
            self.base = dict(self.current)
            self.log.clear()
            self.compacted = self.rv
            self.cond.notify_all()
            return self.compacted


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_pod(namespace: str, name: str, *, labels: dict[str, str] | None = None, node: str | None = "node-1",
             phase: str = "Running", ip: str | None = None, host_network: bool = False,
             uid: str | None = None) -> Obj:
    """A realistic Pod object (the fields kubectl and the client read, plus the ones podcap uses)."""
    pod: Obj = {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                     "labels": dict(labels or {}), "creationTimestamp": _now()},
        "spec": {"containers": [{"name": "main", "image": "busybox:stable", "imagePullPolicy": "IfNotPresent"}],
                 "restartPolicy": "Always", "schedulerName": "default-scheduler", "serviceAccountName": "default",
                 "hostNetwork": host_network},
        "status": {"phase": phase},
    }
    if node:
        pod["spec"]["nodeName"] = node
    if node and phase != "Pending":
        pod["status"].update({
            "hostIP": "10.0.0.1", "startTime": _now(),
            "podIP": ip or "", "podIPs": [{"ip": ip}] if ip else [],
            "conditions": [{"type": "Ready", "status": "True" if phase == "Running" else "False",
                            "lastTransitionTime": _now()}],
            "containerStatuses": [{"name": "main", "image": "busybox:stable", "imageID": "",
                                   "ready": phase == "Running", "restartCount": 0, "started": phase == "Running",
                                   "containerID": "containerd://" + uuid.uuid4().hex,
                                   "state": {"running": {"startedAt": _now()}} if phase == "Running"
                                   else {"terminated": {"exitCode": 0 if phase == "Succeeded" else 1,
                                                        "reason": "Completed" if phase == "Succeeded" else "Error"}}}],
        })
    if not pod["spec"]["hostNetwork"]:
        del pod["spec"]["hostNetwork"]  # the API server omits false booleans
    return pod


DISCOVERY_GROUPS: list[tuple[str, str, list[Obj]]] = [
    ("authentication.k8s.io", "v1", [{"name": "tokenreviews", "singularName": "tokenreview", "namespaced": False,
                                      "kind": "TokenReview", "verbs": ["create"]}]),
    ("authorization.k8s.io", "v1", [{"name": "subjectaccessreviews", "singularName": "subjectaccessreview",
                                     "namespaced": False, "kind": "SubjectAccessReview", "verbs": ["create"]}]),
]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    user: str

    @property
    def verb(self) -> str:
        if self.method != "GET":
            return self.method.lower()
        if self.query.get("watch") in ("true", "1"):
            return "watch"
        parts = self.path.strip("/").split("/")
        return "get" if len(parts) >= 2 and parts[-2] == "pods" else "list"


class KubeApiStandin:
    """Serve the stand-in on 127.0.0.1 (ephemeral port). Use as a context manager or call ``close()``.

    ``host`` and ``tls`` (a certificate and key file) serve it elsewhere and over HTTPS, as a pod's in-cluster
    configuration requires (``tests/node/kubelet.py`` points pods at it)."""

    def __init__(self, *, bookmark_interval: float = 1.0, tokens: dict[str, str] | None = None,
                 watch_gone_as_http: bool = False, default_watch_timeout: float = 1800.0,
                 host: str = "127.0.0.1", tls: tuple[str, str] | None = None) -> None:
        self.host = host
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self.store = Store()
        self.bookmark_interval = bookmark_interval
        # token -> user name. None: no authentication (every request is user "admin").
        self.tokens = tokens
        self.watch_gone_as_http = watch_gone_as_http
        self.default_watch_timeout = default_watch_timeout
        # (user or "*", verb, namespace or None for cluster scope or "*") that are forbidden.
        self.denied: set[tuple[str, str, str | None]] = set()
        self.requests: list[RequestRecord] = []
        self._req_lock = threading.Lock()
        self._server: _Server | None = None
        self.port = 0
        self.start_serving()

    # ---- lifecycle ----

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def start_serving(self) -> None:
        """(Re)open the listening socket on the same port; state is kept."""
        assert self._server is None
        self._server = _Server((self.host, self.port), _Handler, self)
        if self._tls is not None:
            self._server.socket = self._tls.wrap_socket(self._server.socket, server_side=True,
                                                        do_handshake_on_connect=False)
        self.port = self._server.server_address[1]
        self._serve_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                              name=f"kube-standin-{self.port}", daemon=True)
        self._serve_thread.start()

    def stop_serving(self) -> None:
        """Make the API server unreachable: close the listener and every open connection (clients see resets)."""
        srv, self._server = self._server, None
        if srv is None:
            return
        srv.shutdown()
        srv.kill_connections()
        with self.store.cond:
            self.store.epoch += 1
            self.store.cond.notify_all()
        srv.server_close()  # joins the handler threads
        self._serve_thread.join()

    def close(self) -> None:
        with self.store.cond:
            self.store.closed = True
            self.store.cond.notify_all()
        self.stop_serving()

    def __enter__(self) -> KubeApiStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- test controls ----

    def add_pod(self, namespace: str, name: str, **kw: Any) -> Obj:
        pod = make_pod(namespace, name, **kw)
        with self.store.cond:
            if (namespace, name) in self.store.current:
                raise ValueError(f"pod {namespace}/{name} exists")
            return self.store.write("ADDED", pod, None)

    def modify_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                   node: str | None = None, phase: str | None = None, ip: str | None = None) -> Obj:
        with self.store.cond:
            prev = self.store.current[(namespace, name)]
            pod = copy.deepcopy(prev)
            if labels is not None:
                pod["metadata"]["labels"] = dict(labels)
            if node is not None:
                pod["spec"]["nodeName"] = node
            if phase is not None:
                pod["status"]["phase"] = phase
            if ip is not None:
                pod["status"]["podIP"] = ip
                pod["status"]["podIPs"] = [{"ip": ip}]
            return self.store.write("MODIFIED", pod, prev)

    def delete_pod(self, namespace: str, name: str) -> Obj:
        with self.store.cond:
            prev = self.store.current[(namespace, name)]
            return self.store.write("DELETED", prev, prev)

    def compact(self) -> int:
        """Forget history: watches and exact lists from an older resourceVersion now get 410 Expired."""
        return self.store.compact()

    def disconnect_watches(self) -> None:
        """End every open watch stream cleanly (as a watch timeout or an API-server restart does)."""
        with self.store.cond:
            self.store.epoch += 1
            self.store.cond.notify_all()

    def deny(self, verb: str, namespace: str | None = None, *, user: str = "*") -> None:
        """Forbid ``verb`` on pods (namespace None = cluster-scope requests, "*" = everywhere)."""
        self.denied.add((user, verb, namespace))

    def allow_all(self) -> None:
        self.denied.clear()

    @property
    def resource_version(self) -> int:
        with self.store.cond:
            return self.store.rv

    def count(self, verb: str) -> int:
        with self._req_lock:
            return sum(1 for r in self.requests if r.verb == verb and "/pods" in r.path)

    def open_watches(self) -> int:
        srv = self._server
        return srv.watches if srv is not None else 0

    # ---- request handling (called from handler threads) ----

    def record(self, rec: RequestRecord) -> None:
        with self._req_lock:
            self.requests.append(rec)

    def authenticate(self, header: str | None) -> str:
        if self.tokens is None:
            return "admin"
        # The scheme is case-insensitive (RFC 7235); the client's in-cluster configuration sends "bearer".
        if header and header[:7].lower() == "bearer " and header[7:] in self.tokens:
            return self.tokens[header[7:]]
        raise ApiError(401, "Unauthorized", "Unauthorized")

    def allowed(self, user: str, verb: str, namespace: str | None) -> bool:
        for u, v, ns in self.denied:
            if u in ("*", user) and v == verb and (ns == "*" or ns == namespace):
                return False
        return True

    def authorize(self, user: str, verb: str, namespace: str | None, name: str | None) -> None:
        if self.allowed(user, verb, namespace):
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        what = f'pods "{name}"' if name else "pods"
        details: Obj = {"kind": "pods"}
        if name:
            details["name"] = name
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} resource "pods" in '
                                         f'API group "" {scope}', details)


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins handlers: nothing is left running after close()
    block_on_close = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: KubeApiStandin) -> None:
        self.allow_reuse_address = True
        self.api = api
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.watches = 0
        super().__init__(addr, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        with self.conns_lock:
            self.conns.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def kill_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def api(self) -> KubeApiStandin:
        return self.server.api

    def send_json(self, code: int, obj: Obj, *, content_type: str = "application/json") -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def _serve(self, method: str) -> None:
        u = urllib.parse.urlparse(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(u.query, keep_blank_values=True).items()}
        path = u.path.rstrip("/") or "/"
        body = b""
        if method == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            user = self.api.authenticate(self.headers.get("Authorization"))
            self.api.record(RequestRecord(method, path, q, user))
            if method == "POST":
                return self.send_json(201, self._post(path, body))
            disc = self._discovery(path)
            if disc is not None:
                return self.send_json(200, disc)
            parts = path.split("/")[1:]
            if parts[:2] != ["api", "v1"] or len(parts) < 3:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            rest = parts[2:]
            if rest[0] == "namespaces" and len(rest) <= 2:
                return self._namespaces(user, rest[1] if len(rest) == 2 else None)
            namespace: str | None = None
            if rest[0] == "namespaces" and len(rest) >= 3:
                namespace, rest = rest[1], rest[2:]
            if rest[0] != "pods" or len(rest) > 2:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            name = rest[1] if len(rest) == 2 else None
            if name is not None and namespace is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
            watch = q.get("watch") in ("true", "1")
            verb = "watch" if watch else ("get" if name else "list")
            self.api.authorize(user, verb, namespace, name)
            match = self._matcher(q, namespace, name)
            if watch:
                return self._watch(q, match)
            if name is not None:
                return self._get(namespace or "", name, q)
            return self._list(q, match)
        except ApiError as e:
            self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # ---- discovery ----

    def _discovery(self, path: str) -> Obj | None:
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-podcap-standin", "gitCommit": "0" * 40,
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.api.port}"}]}
        if path == "/api/v1":
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "shortNames": ["po"],
                 "categories": ["all"], "verbs": ["get", "list", "watch"]},
                {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
                 "shortNames": ["ns"], "verbs": ["get", "list"]}]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                 "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v, _ in DISCOVERY_GROUPS]}
        for g, v, resources in DISCOVERY_GROUPS:
            if path == f"/apis/{g}/{v}":
                return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{g}/{v}",
                        "resources": resources}
        return None

    # ---- reviews ----

    def _post(self, path: str, body: bytes) -> Obj:
        try:
            review = json.loads(body or b"{}")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"invalid JSON: {e}") from e
        spec = review.get("spec") or {}
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            token = spec.get("token", "")
            user = (self.api.tokens or {}).get(token)
            status: Obj = {"authenticated": user is not None}
            if user is not None:
                status["user"] = {"username": user, "groups": ["system:authenticated"]}
            else:
                status["error"] = "invalid bearer token"
            return {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
                    "spec": spec, "status": status}
        if path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            attrs = spec.get("resourceAttributes") or {}
            ok = attrs.get("resource") == "pods" and self.api.allowed(
                spec.get("user", ""), attrs.get("verb", ""), attrs.get("namespace") or None)
            st: Obj = {"allowed": ok}
            if not ok:
                st["reason"] = "denied by the stand-in's deny list"
            return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                    "spec": spec, "status": st}
        raise ApiError(404, "NotFound", "the server could not find the requested resource", {})

    # ---- pods ----

    def _matcher(self, q: dict[str, str], namespace: str | None, name: str | None) -> Callable[[Obj], bool]:
        try:
            labels = parse_selector(q.get("labelSelector", ""))
        except SelectorError as e:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {e}") from e
        fields = parse_field_selector(q.get("fieldSelector", ""))

        def match(p: Obj) -> bool:
            md = p["metadata"]
            return ((namespace is None or md["namespace"] == namespace) and (name is None or md["name"] == name)
                    and labels.matches(md.get("labels") or {}) and fields(p))

        return match

    def _namespaces(self, user: str, name: str | None) -> None:
        # Namespaces exist implicitly: the usual three plus every namespace that has (or had) pods.
        with self.api.store.cond:
            names = {"default", "kube-system", "kube-public"} | {ns for ns, _ in self.api.store.current} \
                | {ns for ns, _ in self.api.store.base} | {e.obj["metadata"]["namespace"] for e in self.api.store.log}
            rv = str(self.api.store.rv)

        def ns_obj(n: str) -> Obj:
            return {"kind": "Namespace", "apiVersion": "v1",
                    "metadata": {"name": n, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, n)), "resourceVersion": "1",
                                 "labels": {"kubernetes.io/metadata.name": n}},
                    "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}

        if name is None:
            return self.send_json(200, {"kind": "NamespaceList", "apiVersion": "v1",
                                        "metadata": {"resourceVersion": rv},
                                        "items": [ns_obj(n) for n in sorted(names)]})
        if name not in names:
            raise ApiError(404, "NotFound", f'namespaces "{name}" not found', {"name": name, "kind": "namespaces"})
        self.send_json(200, ns_obj(name))

    def _wants_table(self) -> bool:
        return "as=Table" in (self.headers.get("Accept") or "")

    def _get(self, namespace: str, name: str, q: dict[str, str]) -> None:
        with self.api.store.cond:
            pod = self.api.store.current.get((namespace, name))
            rv = self.api.store.rv
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        if self._wants_table():
            return self.send_json(200, _table([pod], str(rv), q), content_type=_TABLE_CT)
        self.send_json(200, pod)

    def _list(self, q: dict[str, str], match: Callable[[Obj], bool]) -> None:
        store = self.api.store
        limit = int(q.get("limit") or 0)
        cont = q.get("continue", "")
        rv_param, rv_match = q.get("resourceVersion", ""), q.get("resourceVersionMatch", "")
        with store.cond:
            if cont:
                try:
                    token = json.loads(base64.urlsafe_b64decode(cont))
                    list_rv, start = int(token["rv"]), str(token["start"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ApiError(400, "BadRequest", f"continue key is not valid: {e}") from e
                if list_rv < store.compacted:
                    raise expired("The provided continue parameter is too old to display a consistent list "
                                  "result. You can start a new list without the continue parameter.")
                state = store.state_at(list_rv)
            elif rv_match == "Exact" and rv_param:
                list_rv, start = int(rv_param), ""
                if list_rv < store.compacted:
                    raise expired(f"too old resource version: {list_rv} ({store.compacted})")
                if list_rv > store.rv:
                    raise ApiError(504, "Timeout", f"Too large resource version: {list_rv}, current: {store.rv}")
                state = store.state_at(list_rv)
            else:
                # unset = consistent read of the latest state; "0"/NotOlderThan = any state at least that new: the
                # stand-in always has the latest.
                list_rv, start = store.rv, ""
                state = dict(store.current)
        keys = sorted(k for k, p in state.items() if match(p) and "/".join(k) > start)
        more = limit and len(keys) > limit
        if more:
            keys = keys[:limit]
        items = [state[k] for k in keys]
        meta: Obj = {"resourceVersion": str(list_rv)}
        if more:
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": "/".join(keys[-1])}).encode()).decode()
            meta["remainingItemCount"] = sum(1 for k, p in state.items() if match(p) and "/".join(k) > start) \
                - len(keys)
        if self._wants_table():
            t = _table(items, str(list_rv), q)
            t["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
            return self.send_json(200, t, content_type=_TABLE_CT)
        self.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items})

    def _watch(self, q: dict[str, str], match: Callable[[Obj], bool]) -> None:
        store = self.api.store
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or self.api.default_watch_timeout)
        deadline = time.monotonic() + timeout
        rv_param = q.get("resourceVersion", "")
        initial: list[Obj] = []
        with store.cond:
            epoch = store.epoch
            if rv_param in ("", "0"):
                cursor = store.rv
                initial = [{"type": "ADDED", "object": p} for _, p in sorted(store.current.items()) if match(p)]
                gone = None
            else:
                cursor = int(rv_param)
                gone = (f"too old resource version: {cursor} ({store.compacted})"
                        if cursor < store.compacted else None)
        if gone and self.api.watch_gone_as_http:
            raise expired(gone)
        with self.server.conns_lock:
            self.server.watches += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if gone:
                self._chunk({"type": "ERROR", "object": expired(gone).status()})
                return self._end_chunks()
            for first in initial:
                self._chunk(first)
            last_bookmark = time.monotonic()
            while True:
                with store.cond:
                    while True:
                        if store.closed or store.epoch != epoch:
                            break
                        now = time.monotonic()
                        if cursor < store.rv or now >= deadline:
                            break
                        if bookmarks and now - last_bookmark >= self.bookmark_interval:
                            break
                        if self._client_gone():
                            break
                        # Wake at least every 0.1 s to notice a client that went away, as Go's HTTP server
                        # does with its background read (the real server ends the watch at once).
                        wake = min(deadline - now, 0.1)
                        if bookmarks:
                            wake = min(wake, self.bookmark_interval - (now - last_bookmark))
                        store.cond.wait(max(0.0, wake))
                    if store.closed or store.epoch != epoch or self._client_gone():
                        break
                    if cursor < store.compacted:
                        break  # fell behind the history window: end the watch, the client resumes (and gets 410)
                    events = [ev for ev in store.log if ev.rv > cursor]
                    current = store.rv
                for ev in events:
                    out = _filtered(ev, match)
                    if out is not None:
                        self._chunk(out)
                cursor = current
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        self._chunk(_bookmark(cursor))
                    break
                if bookmarks and now - last_bookmark >= self.bookmark_interval:
                    self._chunk(_bookmark(cursor))
                    last_bookmark = now
            self._end_chunks()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True
        finally:
            with self.server.conns_lock:
                self.server.watches -= 1

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            # A watch client sends nothing more on this connection: readable means EOF (or a reset).
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    @property
    def bookmark_interval(self) -> float:
        return self.api.bookmark_interval

    def _chunk(self, ev: Obj) -> None:
        b = (json.dumps(ev) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
        self.wfile.flush()

    def _end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _filtered(ev: Event, match: Callable[[Obj], bool]) -> Obj | None:
    """The watch cache's view of an event through a selector: transitions in and out become ADDED/DELETED."""
    now = match(ev.obj)
    before = ev.prev is not None and match(ev.prev)
    if ev.type == "ADDED":
        return {"type": "ADDED", "object": ev.obj} if now else None
    if ev.type == "DELETED":
        return {"type": "DELETED", "object": ev.obj} if before or now else None
    if before and now:
        return {"type": "MODIFIED", "object": ev.obj}
    if now:
        return {"type": "ADDED", "object": ev.obj}
    if before:
        return {"type": "DELETED", "object": ev.obj}
    return None


def _bookmark(rv: int) -> Obj:
    # What the real server sends: an object of the watched kind with only its resourceVersion set.
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                           "metadata": {"resourceVersion": str(rv), "creationTimestamp": None},
                                           "spec": {"containers": None}, "status": {}}}


_TABLE_CT = "application/json;as=Table;v=v1;g=meta.k8s.io"
_COLUMNS = [
    ("Name", "string", "name", 0), ("Ready", "string", "", 0), ("Status", "string", "", 0),
    ("Restarts", "string", "", 0), ("Age", "string", "", 0), ("IP", "string", "", 1), ("Node", "string", "", 1),
    ("Nominated Node", "string", "", 1), ("Readiness Gates", "string", "", 1),
]


def _age(ts: str) -> str:
    try:
        secs = max(0, int(time.time() - time.mktime(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")) + time.timezone))
    except (ValueError, OverflowError):
        return "<unknown>"
    return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"


def _table(pods: list[Obj], rv: str, q: dict[str, str]) -> Obj:
    """What ``kubectl get`` asks for (``Accept: ...;as=Table``): server-side printed columns."""
    rows = []
    for p in pods:
        st = p["status"]
        cs = st.get("containerStatuses") or []
        ready = f"{sum(1 for c in cs if c.get('ready'))}/{len(p['spec']['containers'])}"
        restarts = str(sum(int(c.get("restartCount", 0)) for c in cs))
        obj = p if q.get("includeObject") == "Object" else {
            "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": p["metadata"]}
        rows.append({"cells": [p["metadata"]["name"], ready, st.get("phase", ""), restarts,
                               _age(p["metadata"].get("creationTimestamp", "")), st.get("podIP") or "<none>",
                               p["spec"].get("nodeName") or "<none>", "<none>", "<none>"],
                     "object": obj})
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": [{"name": n, "type": t, "format": f, "description": n, "priority": pr}
                                  for n, t, f, pr in _COLUMNS],
            "rows": rows}


def write_kubeconfig(path: str, server: str, *, token: str | None = None, namespace: str = "default") -> str:
    """A kubeconfig for the stand-in (JSON, which is YAML: kubectl and the client read it). Returns ``path``."""
    user: Obj = {"token": token} if token else {}
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "standin", "cluster": {"server": server}}],
        "users": [{"name": "standin-user", "user": user}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin-user",
                                                     "namespace": namespace}}],
        "current-context": "standin",
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


def iter_events(resp_lines: Iterator[bytes]) -> Iterator[Obj]:
    """Parse a watch response's lines (a helper for raw-HTTP tests)."""
    for line in resp_lines:
        if line.strip():
            yield json.loads(line)
