"""A stand-in kube-apiserver for tests: a generic object store with the API server's resourceVersion semantics,
serving built-in kinds and any CustomResourceDefinition created through it.

No kube-apiserver can be installed on these machines, so tests of ``podcap.collector.kube`` and of anything that
talks to the Kubernetes API run against this server. It is only useful if it is *faithful*: a client that works
here must work against a real API server, so it reproduces what clients depend on, not just the happy path:

- discovery (``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``, subresources included)
  for every kind it serves, so that ``kubectl`` and the official ``kubernetes`` client accept it;
- kinds (``kinds.py``): pods, namespaces (labels, annotations; deleting one deletes what it holds), core/v1 and
  events.k8s.io/v1 events, services, endpointslices, leases, deployments, statefulsets, daemonsets, replicasets,
  jobs, customresourcedefinitions, and every kind a CRD defines, served as soon as the CRD is created (its
  ``Established`` condition is set at once) and gone when it is deleted;
- list, get and watch, across namespaces and per namespace, JSON or ``as=Table`` (what ``kubectl get`` asks for:
  pods print as the real server prints them, custom resources with the CRD's ``additionalPrinterColumns``,
  ``date`` columns as ages), ``limit``/``continue`` pagination;
- writes as the API server makes them: create (POST; ``generateName``; 409 ``AlreadyExists``; 404 when the
  namespace does not exist; ``dryRun``), update (PUT; 409 ``Conflict`` on a stale ``resourceVersion``; custom
  resources require one), patch (JSON merge patch, JSON patch, and strategic merge patch for built-in kinds, see
  ``patch.py``; a ``resourceVersion`` in the patch is a precondition), delete (an object with finalizers gets
  ``deletionTimestamp`` and stays until its last finalizer is removed; ``preconditions``). An update that changes
  nothing writes nothing (no new resourceVersion, no watch event), as the real server does;
- the ``scale`` subresource of deployments, statefulsets and replicasets (``kubectl scale``: an autoscaling/v1
  Scale over ``spec.replicas``), and the defaults clients read back (replicas 1; a Service's type, cluster IP,
  port protocol and targetPort);
- the ``status`` subresource: an update of ``/status`` changes only ``status``; an update of the object itself
  leaves ``status`` alone, for built-in kinds with status and CRDs that declare the subresource. ``generation``
  starts at 1 and grows with every change of the object outside ``metadata`` and ``status``;
- custom resources go through their CRD's schema (``schema.py``): unknown fields pruned (a 400 with
  ``fieldValidation=Strict``, which kubectl sends), ``default:`` values filled in, types, required fields, enums,
  bounds and patterns checked: a violation is the real server's 422 ``Invalid`` Status, with its causes;
- one monotonic resourceVersion for every write of every kind (like etcd's revision). A list returns
  ``metadata.resourceVersion``; a watch from RV replays every event after it; a watch without RV (or RV "0") starts
  with synthetic ADDED events for the current state. History is kept back to the *compaction* point: a watch from
  an older RV gets a ``410`` ``Expired`` Status as an in-band ``ERROR`` event (what the watch cache does), or as an
  HTTP 410 when ``watch_gone_as_http`` is set (what an etcd-served watch does); an exact list at a compacted RV and
  a continue token from before compaction get HTTP 410 as well;
- watch with selectors filters transitions the way the watch cache does: an object that stops matching is sent as
  DELETED, one that starts matching as ADDED;
- ``sendInitialEvents=true`` (a streaming list, what kubectl's informers ask for): the current state as ADDED
  events, then a BOOKMARK annotated ``k8s.io/initial-events-end``;
- ``allowWatchBookmarks`` -> BOOKMARK events every ``bookmark_interval`` seconds and just before a watch times
  out; ``timeoutSeconds`` ends the watch cleanly;
- label selectors (the full syntax, with ``podcap.collector.kube.selectors``) and the field selectors the real
  server supports that podcap needs: ``metadata.name`` and ``metadata.namespace`` for every kind; for pods
  ``spec.nodeName``, ``status.phase``, ``spec.hostNetwork``, ``status.podIP``; for events ``involvedObject.*``,
  ``reason``, ``type``, ``source``; ``=``, ``==``, ``!=``); any other field is a 400 like the real server's. The
  field selector grammar is this module's own, not podcap's: the stand-in is the oracle that podcap's local field
  selectors are compared with (``test_field_selectors_applied_to_the_cache``);
- bearer tokens (401 for an unknown one) and a per-(verb, namespace, resource) deny list, answered with the real
  server's 403 ``Forbidden`` Status (message, reason, details, code); 404 ``NotFound`` for missing objects and
  paths;
- TokenReview and SubjectAccessReview (create) driven by the same tokens and deny list; a review of a resource
  other than pods is allowed only when ``grant`` says so.

Not served: protobuf request bodies (a 415: ``kubectl create namespace`` and the other ``create <kind>`` generators
send protobuf, ``kubectl apply -f`` sends JSON), server-side apply (``application/apply-patch+yaml`` is a 415),
conversion between CRD versions (every served version holds the same object, as ``strategy: None`` does), CEL
validation rules, admission webhooks, controllers (a Deployment makes no pods: tests make them), garbage collection
by ownerReferences.

Tests drive it through ``add_pod``/``modify_pod``/``delete_pod`` and the generic ``create``/``modify``/``delete``/
``get``/``objects`` (any kind, by plural name; writes from these helpers bypass the API's rules, as a controller
or kubelet writing status would not: a test sets a Deployment's status with them), ``apply_crd``, ``compact()``,
``disconnect_watches()`` (a watch timeout or an API-server restart as clients see it) and
``stop_serving()``/``start_serving()`` (the API server unreachable, then back on the same port with its state).
Every request is recorded in ``requests`` so tests can assert API-server load (how many lists, how many watches).
"""

from __future__ import annotations

import base64
import copy
import json
import re
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
from tests.kubeapi.kinds import BUILTIN, Kind, builtin_defaults, cell, crd_kind
from tests.kubeapi.patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from tests.kubeapi.schema import Cause, prune_and_default, validate

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds

FIELDS: dict[str, Callable[[Obj], str]] = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"].get("namespace", ""),
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.hostNetwork": lambda p: "true" if p["spec"].get("hostNetwork") else "false",
    "status.phase": lambda p: p["status"].get("phase", ""),
    "status.podIP": lambda p: p["status"].get("podIP", ""),
}
COMMON_FIELDS: dict[str, Callable[[Obj], str]] = {k: FIELDS[k] for k in ("metadata.name", "metadata.namespace")}
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


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


def not_found(kind: Kind, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{kind.resource_text} "{name}" not found',
                    {"name": name, "group": kind.group, "kind": kind.plural} if kind.group
                    else {"name": name, "kind": kind.plural})


def invalid(kind: Kind, name: str, causes: list[Cause]) -> ApiError:
    texts = [c.text() for c in causes]
    shown = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    return ApiError(422, "Invalid", f'{kind.qualified} "{name}" is invalid: {shown}',
                    {"name": name, "group": kind.group, "kind": kind.kind,
                     "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes]})


def conflict(kind: Kind, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource_text} "{name}": the object '
                                     "has been modified; please apply your changes to the latest version and try "
                                     "again", {"name": name, "group": kind.group, "kind": kind.plural})


def parse_field_selector(text: str, fields: dict[str, Callable[[Obj], str]] | None = None) -> Callable[[Obj], bool]:
    """The API server's field selector grammar: ``field=value``/``==``/``!=`` terms joined by ``,``; ``\\`` escapes.
    ``fields``: the fields the kind supports (default: pods')."""
    known = FIELDS if fields is None else fields
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
        if name not in known:
            raise ApiError(400, "BadRequest", f'field label not supported: {name}')
        value = value.replace("\\,", ",").replace("\\=", "=").replace("\\!", "!").replace("\\\\", "\\")
        reqs.append((name, value, eq))

    def match(p: Obj) -> bool:
        return all((known[n](p) == v) == eq for n, v, eq in reqs)

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
class Revision:
    """What every kind's store shares: the lock, the one resourceVersion counter, the compaction point."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    rv: int = 100
    compacted: int = 100
    # Bumped to end every open watch (clients see a watch end, as at an API-server restart or timeout).
    epoch: int = 0
    closed: bool = False


def _key(obj: Obj) -> Key:
    return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])


class Store:
    """One kind's objects: current state, history since the compaction point. The resourceVersion is shared."""

    def __init__(self, kind: Kind, rev: Revision) -> None:
        self.kind = kind
        self.rev = rev
        self.base: dict[Key, Obj] = {}  # state at `compacted`
        self.log: list[Event] = []  # events after `compacted`
        self.current: dict[Key, Obj] = {}

    @property
    def cond(self) -> threading.Condition:
        return self.rev.cond

    @property
    def rv(self) -> int:
        return self.rev.rv

    @property
    def compacted(self) -> int:
        return self.rev.compacted

    @property
    def epoch(self) -> int:
        return self.rev.epoch

    @property
    def closed(self) -> bool:
        return self.rev.closed

    def write(self, type_: str, obj: Obj, prev: Obj | None) -> Obj:
        with self.cond:
            self.rev.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rev.rv)
            key = _key(obj)
            if type_ == "DELETED":
                self.current.pop(key, None)
            else:
                self.current[key] = obj
            self.log.append(Event(self.rev.rv, type_, obj, prev))
            self.cond.notify_all()
            return copy.deepcopy(obj)

    def state_at(self, rv: int) -> dict[Key, Obj]:
        """Objects as they were at ``rv`` (>= compacted). Caller holds the lock."""
        state = dict(self.base)
        for ev in self.log:
            if ev.rv > rv:
                break
            key = _key(ev.obj)
            if ev.type == "DELETED":
                state.pop(key, None)
            else:
                state[key] = ev.obj
        return state

    def forget_history(self) -> None:
        """Caller holds the lock and moves the shared compaction point."""
        self.base = dict(self.current)
        self.log.clear()


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


def make_namespace(name: str, *, labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> Obj:
    md: Obj = {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": _now(),
               "labels": {**(labels or {}), "kubernetes.io/metadata.name": name}}
    if annotations:
        md["annotations"] = dict(annotations)
    return {"kind": "Namespace", "apiVersion": "v1", "metadata": md, "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}}


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
    at: float = field(default_factory=time.monotonic)  # when it arrived

    @property
    def verb(self) -> str:
        if self.method != "GET":
            return {"PUT": "update"}.get(self.method, self.method.lower())
        if self.query.get("watch") in ("true", "1"):
            return "watch"
        parts = self.path.strip("/").split("/")
        # .../<plural>/<name> (and .../<name>/status) is a get; .../<plural> a list.
        if len(parts) >= 2 and parts[-2] == "pods":
            return "get"
        core = parts[:2] == ["api", "v1"]
        rest = parts[2:] if core else parts[3:]
        if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            rest = rest[2:]
        return "get" if len(rest) >= 2 else "list"


@dataclass(frozen=True)
class Target:
    """A request's resource: kind (and the version asked for), namespace, name, subresource."""

    kind: Kind
    version: str
    namespace: str | None
    name: str | None
    sub: str


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
        self.rev = Revision()
        self.kinds: dict[tuple[str, str], Kind] = {}
        self.stores: dict[tuple[str, str], Store] = {}
        for k in BUILTIN:
            self._register(k)
        self.store = self.stores[("", "pods")]
        ns_store = self.stores[("", "namespaces")]
        for i, n in enumerate(SYSTEM_NAMESPACES):
            ns = make_namespace(n)
            ns["metadata"]["resourceVersion"] = str(i + 1)
            ns_store.current[("", n)] = ns_store.base[("", n)] = ns
        self.bookmark_interval = bookmark_interval
        # token -> user name. None: no authentication (every request is user "admin").
        self.tokens = tokens
        self.watch_gone_as_http = watch_gone_as_http
        self.default_watch_timeout = default_watch_timeout
        # (user or "*", verb, namespace or None for cluster scope or "*", resource) that are forbidden.
        self.denied: set[tuple[str, str, str | None, str]] = set()
        # (user or "*", verb, namespace or None or "*", resource, subresource) that SubjectAccessReviews of resources
        # other than pods allow (nothing else is allowed for them).
        self.granted: set[tuple[str, str, str | None, str, str]] = set()
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
        with self.rev.cond:
            self.rev.epoch += 1
            self.rev.cond.notify_all()
        srv.server_close()  # joins the handler threads
        self._serve_thread.join()

    def close(self) -> None:
        with self.rev.cond:
            self.rev.closed = True
            self.rev.cond.notify_all()
        self.stop_serving()

    def __enter__(self) -> KubeApiStandin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- kinds ----

    def _register(self, kind: Kind) -> None:
        with self.rev.cond:
            self.kinds[kind.key] = kind
            if kind.key not in self.stores:
                self.stores[kind.key] = Store(kind, self.rev)
            else:
                self.stores[kind.key].kind = kind

    def kind(self, resource: str) -> Kind:
        """A kind by ``plural``, ``plural.group``, kind name or short name (as kubectl resolves them)."""
        name, _, group = resource.partition(".")
        for k in self.kinds.values():
            if (group and k.group != group) or (not group and k.group == "events.k8s.io"):
                continue
            if name.lower() in (k.plural, k.singular, k.kind.lower(), *k.short_names):
                return k
        raise KeyError(f"no kind {resource!r}")

    def apply_crd(self, crd: Obj) -> Obj:
        """Create (or replace) a CustomResourceDefinition through the API's rules, as ``kubectl apply`` would."""
        kind = self.kinds[("apiextensions.k8s.io", "customresourcedefinitions")]
        with self.rev.cond:
            cur = self.stores[kind.key].current.get(("", crd["metadata"]["name"]))
            if cur is None:
                return self.api_create(kind, "v1", None, crd, dry_run=False)
            body = copy.deepcopy(crd)
            body["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            return self.api_update(kind, None, crd["metadata"]["name"], body, "", dry_run=False)

    # ---- test controls: any kind (writes bypass the API's rules: status, generation, validation) ----

    def create(self, resource: str, obj: Obj) -> Obj:
        """Store a new object of ``resource`` (e.g. "deployments", "endpointslices.discovery.k8s.io") as is, with
        uid, creationTimestamp and generation filled in; its namespace is created if missing."""
        kind = self.kind(resource)
        obj = copy.deepcopy(obj)
        md = obj.setdefault("metadata", {})
        obj.setdefault("apiVersion", kind.api_version())
        obj.setdefault("kind", kind.kind)
        md.setdefault("uid", str(uuid.uuid4()))
        md.setdefault("creationTimestamp", _now())
        md.setdefault("generation", 1)
        if kind.namespaced:
            md.setdefault("namespace", "default")
            self.ensure_namespace(md["namespace"])
        store = self.stores[kind.key]
        with self.rev.cond:
            if _key(obj) in store.current:
                raise ValueError(f"{resource} {'/'.join(_key(obj))} exists")
            return store.write("ADDED", obj, None)

    def modify(self, resource: str, namespace: str | None, name: str, change: Callable[[Obj], None] | Obj) -> Obj:
        """Change an object as is: ``change`` edits a copy in place, or is a merge patch (a dict)."""
        kind = self.kind(resource)
        store = self.stores[kind.key]
        with self.rev.cond:
            prev = store.current[(namespace or "", name)]
            obj = copy.deepcopy(prev)
            if callable(change):
                change(obj)
            else:
                obj = merge_patch(obj, change)
            return store.write("MODIFIED", obj, prev)

    def delete(self, resource: str, namespace: str | None, name: str) -> Obj:
        """Remove an object at once (finalizers ignored)."""
        store = self.stores[self.kind(resource).key]
        with self.rev.cond:
            prev = store.current[(namespace or "", name)]
            return store.write("DELETED", prev, prev)

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        store = self.stores[self.kind(resource).key]
        with self.rev.cond:
            obj = store.current.get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        store = self.stores[self.kind(resource).key]
        with self.rev.cond:
            return [copy.deepcopy(o) for k, o in sorted(store.current.items()) if namespace in (None, k[0])]

    def ensure_namespace(self, name: str, *, labels: dict[str, str] | None = None,
                         annotations: dict[str, str] | None = None) -> Obj:
        """The namespace ``name``, created if missing (labels and annotations then as given)."""
        store = self.stores[("", "namespaces")]
        with self.rev.cond:
            cur = store.current.get(("", name))
            if cur is not None:
                return copy.deepcopy(cur)
            return store.write("ADDED", make_namespace(name, labels=labels, annotations=annotations), None)

    def add_event(self, namespace: str, involved: Obj, *, reason: str, message: str, type_: str = "Normal",
                  component: str = "podcap") -> Obj:
        """A core/v1 Event about ``involved`` (an object: its kind, name, uid are used)."""
        md = involved["metadata"]
        return self.create("events", {
            "metadata": {"name": f"{md['name']}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
            "involvedObject": {"kind": involved.get("kind", ""), "apiVersion": involved.get("apiVersion", ""),
                               "name": md["name"], "namespace": md.get("namespace", ""), "uid": md.get("uid", "")},
            "reason": reason, "message": message, "type": type_, "source": {"component": component},
            "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1})

    # ---- test controls: pods ----

    def add_pod(self, namespace: str, name: str, **kw: Any) -> Obj:
        pod = make_pod(namespace, name, **kw)
        self.ensure_namespace(namespace)
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
        with self.rev.cond:
            for s in self.stores.values():
                s.forget_history()
            self.rev.compacted = self.rev.rv
            self.rev.cond.notify_all()
            return self.rev.compacted

    def disconnect_watches(self) -> None:
        """End every open watch stream cleanly (as a watch timeout or an API-server restart does)."""
        with self.rev.cond:
            self.rev.epoch += 1
            self.rev.cond.notify_all()

    def deny(self, verb: str, namespace: str | None = None, *, user: str = "*", resource: str = "pods") -> None:
        """Forbid ``verb`` on ``resource`` (plural; namespace None = cluster-scope requests, "*" = everywhere)."""
        self.denied.add((user, verb, namespace, resource))

    def grant(self, verb: str, namespace: str | None = None, *, user: str = "*", resource: str,
              subresource: str = "") -> None:
        """Let SubjectAccessReviews of ``resource/subresource`` (other than pods) answer allowed."""
        self.granted.add((user, verb, namespace, resource, subresource))

    def allow_all(self) -> None:
        self.denied.clear()

    @property
    def resource_version(self) -> int:
        with self.rev.cond:
            return self.rev.rv

    def count(self, verb: str, resource: str = "pods") -> int:
        with self._req_lock:
            return sum(1 for r in self.requests if r.verb == verb and f"/{resource}" in r.path)

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

    def allowed(self, user: str, verb: str, namespace: str | None, resource: str = "pods") -> bool:
        for u, v, ns, res in self.denied:
            if u in ("*", user) and v == verb and (ns == "*" or ns == namespace) and res == resource:
                return False
        return True

    def review(self, user: str, verb: str, namespace: str | None, resource: str, subresource: str) -> bool:
        """A SubjectAccessReview's answer."""
        if not self.allowed(user, verb, namespace, resource):
            return False
        if resource == "pods" and subresource != "capture-payload":
            return True  # pods/capture-payload is a right of its own: granted only by ``grant`` (as RBAC would)
        return any(u in ("*", user) and v == verb and (ns == "*" or ns == namespace) and r == resource
                   and s == subresource for u, v, ns, r, s in self.granted)

    def authorize(self, user: str, verb: str, namespace: str | None, name: str | None,
                  kind: Kind | None = None) -> None:
        resource = kind.plural if kind else "pods"
        if self.allowed(user, verb, namespace, resource):
            return
        scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        shown = kind.resource_text if kind else "pods"
        what = f'{shown} "{name}"' if name else shown
        details: Obj = {"kind": resource}
        if kind and kind.group:
            details["group"] = kind.group
        if name:
            details["name"] = name
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
                                         f'in API group "{kind.group if kind else ""}" {scope}', details)

    # ---- writes through the API (the registry's strategies) ----

    def _admit(self, kind: Kind, version: str, obj: Obj, name: str, strict: bool) -> Obj:
        """A custom resource through its schema: pruned, defaulted, validated (422)."""
        if not kind.custom:
            return obj
        schema = kind.schemas.get(version) or {}
        unknown: list[str] = []
        obj = prune_and_default(obj, schema, unknown=unknown)
        if unknown and strict:
            raise ApiError(400, "BadRequest", "strict decoding error: " + ", ".join(
                f'unknown field "{u.lstrip(".")}"' for u in unknown))
        causes = validate(obj, schema)
        if causes:
            raise invalid(kind, name, causes)
        return obj

    def _check_name(self, kind: Kind, name: str) -> None:
        if not _NAME.match(name) or len(name) > 253:
            raise invalid(kind, name, [Cause("FieldValueInvalid", "metadata.name",
                                             f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                                             "of lower case alphanumeric characters, '-' or '.', and must start and "
                                             "end with an alphanumeric character (e.g. 'example.com', regex used for "
                                             "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*"
                                             "[a-z0-9])?)*')")])

    def _check_kind(self, kind: Kind, version: str, body: Obj) -> None:
        want = kind.api_version(version)
        if body.get("apiVersion") not in (None, want):
            raise ApiError(400, "BadRequest", f"the API version in the data ({body.get('apiVersion')}) does not "
                                              f"match the expected API version ({want})")
        if body.get("kind") not in (None, kind.kind):
            raise ApiError(400, "BadRequest", f"the kind in the data ({body.get('kind')}) does not match the "
                                              f"expected kind ({kind.kind})")

    def api_create(self, kind: Kind, version: str, namespace: str | None, body: Obj, *, dry_run: bool,
                   strict: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        self._check_kind(kind, version, body)
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = kind.api_version(version), kind.kind
        md = obj.setdefault("metadata", {})
        if not md.get("name") and md.get("generateName"):
            md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
        name = str(md.get("name") or "")
        if not name:
            raise invalid(kind, "", [Cause("FieldValueRequired", "metadata.name", "Required value: name or "
                                                                                  "generateName is required")])
        if kind.namespaced:
            if md.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                                                  "namespace sent on the request")
            md["namespace"] = namespace
        else:
            md.pop("namespace", None)
        self._check_name(kind, name)
        for k in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            md.pop(k, None)
        md["uid"], md["creationTimestamp"], md["generation"] = str(uuid.uuid4()), _now(), 1
        if kind.status_subresource and kind.key not in (("", "namespaces"), ("", "pods")):
            obj.pop("status", None)
        if kind.key == ("", "namespaces"):
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            obj["spec"], obj["status"] = {"finalizers": ["kubernetes"]}, {"phase": "Active"}
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._check_crd(obj)
        if not kind.custom:
            builtin_defaults(kind, obj)
        obj = self._admit(kind, version, obj, name, strict)
        store = self.stores[kind.key]
        with self.rev.cond:
            if kind.namespaced:
                ns = self.stores[("", "namespaces")].current.get(("", namespace or ""))
                if ns is None:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                                   {"name": namespace, "kind": "namespaces"})
                if ns["metadata"].get("deletionTimestamp"):
                    raise ApiError(403, "Forbidden", f"{kind.plural} \"{name}\" is forbidden: unable to create new "
                                                     f"content in namespace {namespace} because it is being "
                                                     "terminated", {"name": name, "kind": kind.plural})
            if _key(obj) in store.current:
                raise ApiError(409, "AlreadyExists", f'{kind.resource_text} "{name}" already exists',
                               {"name": name, "group": kind.group, "kind": kind.plural})
            if dry_run:
                return obj
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                obj["status"] = self._crd_status(obj)
                out = store.write("ADDED", obj, None)
                self._register(crd_kind(out))
                return out
            return store.write("ADDED", obj, None)

    def _check_crd(self, crd: Obj) -> None:
        kind = self.kinds[("apiextensions.k8s.io", "customresourcedefinitions")]
        spec, name = crd.get("spec") or {}, crd["metadata"]["name"]
        causes: list[Cause] = []
        names = spec.get("names") or {}
        if name != f"{names.get('plural')}.{spec.get('group')}":
            causes.append(Cause("FieldValueInvalid", "metadata.name", f'Invalid value: "{name}": must be '
                                                                      "spec.names.plural+\".\"+spec.group"))
        if not spec.get("versions"):
            causes.append(Cause("FieldValueRequired", "spec.versions", "Required value: must have exactly one "
                                                                       "version marked as storage version"))
        for i, v in enumerate(spec.get("versions") or []):
            if not (v.get("schema") or {}).get("openAPIV3Schema"):
                causes.append(Cause("FieldValueRequired", f"spec.versions[{i}].schema.openAPIV3Schema",
                                    "Required value: schemas are required"))
        if causes:
            raise invalid(kind, name, causes)

    @staticmethod
    def _crd_status(crd: Obj) -> Obj:
        now = _now()
        names = dict(crd["spec"]["names"])
        names.setdefault("singular", names["kind"].lower())
        names.setdefault("listKind", names["kind"] + "List")
        return {"acceptedNames": names, "storedVersions": [v["name"] for v in crd["spec"]["versions"]
                                                           if v.get("storage")],
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "lastTransitionTime": now,
                     "message": "no conflicts found"},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                     "lastTransitionTime": now, "message": "the initial names have been accepted"}]}

    def api_update(self, kind: Kind, namespace: str | None, name: str, body: Obj, sub: str, *, dry_run: bool,
                   strict: bool = False, version: str | None = None, unconditional: bool = False) -> Obj:
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        version = version or kind.versions[0]
        self._check_kind(kind, version, body)
        store = self.stores[kind.key]
        with self.rev.cond:
            old = store.current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            bmd = body.get("metadata") or {}
            if bmd.get("name") not in (None, name):
                raise ApiError(400, "BadRequest", f"the name of the object ({bmd.get('name')}) does not match the "
                                                  f"name on the URL ({name})")
            rv = str(bmd.get("resourceVersion") or "")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise conflict(kind, name)
            if not rv and kind.custom and not unconditional:
                raise invalid(kind, name, [Cause("FieldValueInvalid", "metadata.resourceVersion",
                                                 "Invalid value: 0x0: must be specified for an update")])
            new = self._prepare_update(kind, version, old, body, sub, name, strict)
            if _same(old, new):
                return copy.deepcopy(old)
            if dry_run:
                return new
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
                out = store.write("DELETED", new, old)
                self._reap()
                return out
            out = store.write("MODIFIED", new, old)
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._register(crd_kind(out))
            return out

    def _prepare_update(self, kind: Kind, version: str, old: Obj, body: Obj, sub: str, name: str,
                        strict: bool) -> Obj:
        if sub == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = copy.deepcopy(body["status"])
            else:
                new.pop("status", None)
        else:
            new = copy.deepcopy(body)
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            md = new.setdefault("metadata", {})
            for k in ("uid", "creationTimestamp", "namespace", "name", "generation", "deletionTimestamp",
                      "deletionGracePeriodSeconds"):
                if k in old["metadata"]:
                    md[k] = old["metadata"][k]
                else:
                    md.pop(k, None)
            if kind.status_subresource:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            if old["metadata"].get("deletionTimestamp"):
                added = set(md.get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                if added:
                    raise invalid(kind, name, [Cause("FieldValueForbidden", "metadata.finalizers",
                                                     "Forbidden: no new finalizers can be added if the object is "
                                                     "being deleted, found new finalizers " + json.dumps(
                                                         sorted(added)))])
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self._check_crd(new)
                new["status"] = old.get("status") or self._crd_status(new)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        new = self._admit(kind, version, new, name, strict)
        ignored = ("metadata", "status") if kind.status_subresource else ("metadata",)
        if {k: v for k, v in new.items() if k not in ignored} != {k: v for k, v in old.items() if k not in ignored}:
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        return new

    def api_patch(self, kind: Kind, version: str, namespace: str | None, name: str, content_type: str, body: bytes,
                  sub: str, *, dry_run: bool, strict: bool) -> Obj:
        ct = content_type.split(";")[0].strip()
        if ct == "application/strategic-merge-patch+json" and kind.custom:
            raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - '
                                                        "accepted media types include: application/json-patch+json, "
                                                        "application/merge-patch+json, application/apply-patch+yaml")
        if ct not in ("application/merge-patch+json", "application/json-patch+json",
                      "application/strategic-merge-patch+json"):
            raise ApiError(415, "UnsupportedMediaType", f"the stand-in does not accept {ct!r} patches (server-side "
                                                        "apply is not served)")
        try:
            patch = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"error decoding patch: {e}") from e
        with self.rev.cond:
            old = self.stores[kind.key].current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            try:
                if ct == "application/json-patch+json":
                    new = json_patch(old, patch)
                elif ct == "application/merge-patch+json":
                    new = merge_patch(old, patch)
                else:
                    new = strategic_merge_patch(old, patch)
            except PatchError as e:
                raise ApiError(422, "Invalid", str(e)) from e
            if not isinstance(new, dict):
                raise ApiError(400, "BadRequest", "the patch does not make an object")
            # A resourceVersion the patch sets is a precondition (checked by update); none: unconditional.
            new.setdefault("metadata", {})
            return self.api_update(kind, namespace, name, new, sub, dry_run=dry_run, strict=strict,
                                   version=version, unconditional=True)

    def api_delete(self, kind: Kind, namespace: str | None, name: str, options: Obj, *, dry_run: bool) -> Obj:
        store = self.stores[kind.key]
        with self.rev.cond:
            old = store.current.get((namespace or "", name))
            if old is None:
                raise not_found(kind, name)
            pre = options.get("preconditions") or {}
            if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind.resource_text} "{name}": '
                                                f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                                f"object meta: {old['metadata'].get('uid')}",
                               {"name": name, "group": kind.group, "kind": kind.plural})
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise conflict(kind, name)
            if dry_run:
                return copy.deepcopy(old)
            out = self._delete_now(kind, old)
            self._reap()
            return out

    def _delete_now(self, kind: Kind, old: Obj) -> Obj:
        """Delete, or mark for deletion while finalizers (or contents, for namespaces and CRDs) remain."""
        store = self.stores[kind.key]
        name = old["metadata"]["name"]
        if kind.key == ("", "namespaces"):
            for s in list(self.stores.values()):
                if s.kind.namespaced:
                    for k, o in list(s.current.items()):
                        if k[0] == name and not o["metadata"].get("deletionTimestamp"):
                            self._delete_now(s.kind, o)
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            defined = crd_kind(old)
            for o in list(self.stores.get(defined.key, Store(defined, self.rev)).current.values()):
                if not o["metadata"].get("deletionTimestamp"):
                    self._delete_now(defined, o)
        finalizers = list(old["metadata"].get("finalizers") or [])
        if kind.key == ("", "namespaces") and self._holds(name):
            finalizers.append("kubernetes")
        if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions") and self.stores.get(
                crd_kind(old).key) and self.stores[crd_kind(old).key].current:
            finalizers.append("customresourcecleanup.apiextensions.k8s.io")
        if not finalizers:
            out = store.write("DELETED", old, old)
            if kind.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
                self.kinds.pop(crd_kind(old).key, None)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": {"name": name, "group": kind.group, "kind": kind.plural,
                                "uid": out["metadata"].get("uid")}}
        if old["metadata"].get("deletionTimestamp"):
            return copy.deepcopy(old)
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = _now()
        new["metadata"]["deletionGracePeriodSeconds"] = 0
        if "generation" in new["metadata"]:
            new["metadata"]["generation"] = int(new["metadata"]["generation"]) + 1
        if kind.key == ("", "namespaces"):
            new.setdefault("status", {})["phase"] = "Terminating"
        return store.write("MODIFIED", new, old)

    def _holds(self, namespace: str) -> bool:
        return any(k[0] == namespace for s in self.stores.values() if s.kind.namespaced for k in s.current)

    def _reap(self) -> None:
        """Finish deleting namespaces and CRDs being deleted whose contents are gone (their controllers' work)."""
        for key in (("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")):
            store = self.stores[key]
            for o in list(store.current.values()):
                md = o["metadata"]
                if not md.get("deletionTimestamp") or md.get("finalizers"):
                    continue
                if key == ("", "namespaces") and self._holds(md["name"]):
                    continue
                if key[1] == "customresourcedefinitions":
                    defined = crd_kind(o)
                    if self.stores.get(defined.key) and self.stores[defined.key].current:
                        continue
                    self.kinds.pop(defined.key, None)
                store.write("DELETED", o, o)


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from the resourceVersion (an update that changes nothing writes nothing)."""
    a, b = copy.deepcopy(a), copy.deepcopy(b)
    a["metadata"].pop("resourceVersion", None)
    b["metadata"].pop("resourceVersion", None)
    return a == b


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


_NOT_FOUND = "the server could not find the requested resource"


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

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        u = urllib.parse.urlparse(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(u.query, keep_blank_values=True).items()}
        path = u.path.rstrip("/") or "/"
        body = b""
        if method != "GET":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            user = self.api.authenticate(self.headers.get("Authorization"))
            self.api.record(RequestRecord(method, path, q, user))
            if method == "POST" and path in ("/apis/authentication.k8s.io/v1/tokenreviews",
                                             "/apis/authorization.k8s.io/v1/subjectaccessreviews"):
                return self.send_json(201, self._review(path, body))
            if method != "GET" and "protobuf" in (self.headers.get("Content-Type") or ""):
                # The real server takes protobuf for built-in kinds (what kubectl's `create <kind>` generators
                # send); the stand-in does not: use `kubectl apply -f` (JSON) with it.
                raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                                                            "accepted media types include: application/json")
            if method == "GET":
                disc = self._discovery(path) or self._openapi(path)
                if disc is not None:
                    return self.send_json(200, disc)
            t = self._route(path)
            self._dispatch(method, t, q, body, user)
        except ApiError as e:
            self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, path: str) -> Target:
        parts = path.split("/")[1:]
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", _NOT_FOUND, {})
        with self.api.rev.cond:
            kinds = {k.plural: k for k in self.api.kinds.values() if k.group == group and version in k.versions}
        namespace: str | None = None
        if rest[:1] == ["namespaces"] and len(rest) >= 3 and rest[2] in kinds and kinds[rest[2]].namespaced:
            namespace, rest = rest[1], rest[2:]
        if not rest or rest[0] not in kinds or len(rest) > 3:
            raise ApiError(404, "NotFound", _NOT_FOUND, {})
        kind = kinds[rest[0]]
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else ""
        if sub and not ((sub == "status" and kind.status_subresource) or (sub == "scale" and kind.scale_subresource)):
            raise ApiError(404, "NotFound", _NOT_FOUND, {})
        if kind.namespaced and name is not None and namespace is None:
            raise ApiError(404, "NotFound", _NOT_FOUND, {})
        if not kind.namespaced and namespace is not None:
            raise ApiError(404, "NotFound", _NOT_FOUND, {})
        return Target(kind, version, namespace, name, sub)

    def _dispatch(self, method: str, t: Target, q: dict[str, str], body: bytes, user: str) -> None:
        dry_run = q.get("dryRun") == "All"
        strict = q.get("fieldValidation") == "Strict"
        if t.sub == "scale":
            return self._scale(method, t, body, user, dry_run=dry_run)
        if method == "GET":
            watch = q.get("watch") in ("true", "1")
            verb = "watch" if watch else ("get" if t.name else "list")
            self.api.authorize(user, verb, t.namespace, t.name, t.kind)
            if watch:
                return self._watch(t, q, self._matcher(t, q))
            if t.name is not None:
                return self._get(t, q)
            return self._list(t, q, self._matcher(t, q))
        if method == "POST":
            if t.name is not None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested "
                                                        "resource")
            self.api.authorize(user, "create", t.namespace, None, t.kind)
            obj = self._json(body)
            return self.send_json(201, self._versioned(t, self.api.api_create(
                t.kind, t.version, t.namespace, obj, dry_run=dry_run, strict=strict)))
        if t.name is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if method == "PUT":
            self.api.authorize(user, "update", t.namespace, t.name, t.kind)
            return self.send_json(200, self._versioned(t, self.api.api_update(
                t.kind, t.namespace, t.name, self._json(body), t.sub, dry_run=dry_run, strict=strict,
                version=t.version)))
        if method == "PATCH":
            self.api.authorize(user, "patch", t.namespace, t.name, t.kind)
            return self.send_json(200, self._versioned(t, self.api.api_patch(
                t.kind, t.version, t.namespace, t.name, self.headers.get("Content-Type") or "", body, t.sub,
                dry_run=dry_run, strict=strict)))
        if method == "DELETE":
            self.api.authorize(user, "delete", t.namespace, t.name, t.kind)
            options = self._json(body) if body.strip() else {}
            return self.send_json(200, self._versioned(t, self.api.api_delete(
                t.kind, t.namespace, t.name, options, dry_run=dry_run)))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _scale(self, method: str, t: Target, body: bytes, user: str, *, dry_run: bool) -> None:
        """The ``scale`` subresource: an autoscaling/v1 Scale over the object's ``spec.replicas``."""
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch"}.get(method)
        if verb is None:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        self.api.authorize(user, verb, t.namespace, t.name, t.kind)
        store = self.api.stores[t.kind.key]
        with self.api.rev.cond:
            obj = store.current.get((t.namespace or "", t.name or ""))
            if obj is None:
                raise not_found(t.kind, t.name or "")
            scale = _scale_of(obj)
            if method == "GET":
                return self.send_json(200, scale)
            if method == "PUT":
                new = self._json(body)
            else:
                ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                try:
                    patch = json.loads(body or b"null")
                    new = json_patch(scale, patch) if ct == "application/json-patch+json" else merge_patch(scale, patch)
                except (ValueError, PatchError) as e:
                    raise ApiError(422, "Invalid", str(e)) from e
            rv = str((new.get("metadata") or {}).get("resourceVersion") or "")
            if rv and rv != obj["metadata"]["resourceVersion"]:
                raise conflict(t.kind, t.name or "")
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                raise invalid(t.kind, t.name or "", [Cause("FieldValueInvalid", "spec.replicas",
                                                           f"Invalid value: {json.dumps(replicas)}: must be greater "
                                                           "than or equal to 0")])
            updated = copy.deepcopy(obj)
            updated["spec"]["replicas"] = replicas
            if _same(obj, updated) or dry_run:
                return self.send_json(200, _scale_of(updated))
            updated["metadata"]["generation"] = int(obj["metadata"].get("generation") or 1) + 1
            out = store.write("MODIFIED", updated, obj)
        self.send_json(200, _scale_of(out))

    @staticmethod
    def _json(body: bytes) -> Obj:
        try:
            obj = json.loads(body or b"{}")
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"invalid JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
        return obj

    @staticmethod
    def _versioned(t: Target, obj: Obj) -> Obj:
        """The object at the version the request asked for (the same object: no conversion is served)."""
        if obj.get("kind") == t.kind.kind and t.kind.custom:
            obj = dict(obj, apiVersion=t.kind.api_version(t.version))
        return obj

    # ---- discovery ----

    def _resources(self, group: str, version: str) -> list[Obj]:
        out: list[Obj] = []
        with self.api.rev.cond:
            kinds = [k for k in self.api.kinds.values() if k.group == group and version in k.versions]
        for k in sorted(kinds, key=lambda k: k.plural):
            r: Obj = {"name": k.plural, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
                      "verbs": k.verbs}
            if k.short_names:
                r["shortNames"] = k.short_names
            if k.categories:
                r["categories"] = k.categories
            out.append(r)
            if k.status_subresource:
                out.append({"name": f"{k.plural}/status", "singularName": "", "namespaced": k.namespaced,
                            "kind": k.kind, "verbs": ["get", "patch", "update"]})
            if k.scale_subresource:
                out.append({"name": f"{k.plural}/scale", "singularName": "", "namespaced": k.namespaced,
                            "group": "autoscaling", "version": "v1", "kind": "Scale",
                            "verbs": ["get", "patch", "update"]})
        return out

    def _discovery(self, path: str) -> Obj | None:
        if path == "/version":
            return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-podcap-standin", "gitCommit": "0" * 40,
                    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
                    "compiler": "gc", "platform": "linux/amd64"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.api.port}"}]}
        if path == "/api/v1":
            return {"kind": "APIResourceList", "groupVersion": "v1", "resources": self._resources("", "v1")}
        with self.api.rev.cond:
            served: dict[str, list[str]] = {}
            for k in self.api.kinds.values():
                if k.group:
                    for v in k.versions:
                        if v not in served.setdefault(k.group, []):
                            served[k.group].append(v)
        for g, v, _ in DISCOVERY_GROUPS:
            served.setdefault(g, [v])
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                 "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
                for g, vs in sorted(served.items())]}
        for g, vs in served.items():
            if path == f"/apis/{g}":
                return {"kind": "APIGroup", "apiVersion": "v1", "name": g,
                        "versions": [{"groupVersion": f"{g}/{v}", "version": v} for v in vs],
                        "preferredVersion": {"groupVersion": f"{g}/{vs[0]}", "version": vs[0]}}
            for v in vs:
                if path == f"/apis/{g}/{v}":
                    resources = self._resources(g, v)
                    for dg, dv, extra in DISCOVERY_GROUPS:
                        if (dg, dv) == (g, v):
                            resources = extra
                    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{g}/{v}",
                            "resources": resources}
        return None

    def _openapi(self, path: str) -> Obj | None:
        """OpenAPI v3, as much as kubectl reads: which group-versions exist, and for each kind a PATCH operation
        that takes ``fieldValidation`` (so that kubectl asks the server to validate, ``--validate=strict``) and the
        kind's schema (custom resources: the CRD's)."""
        with self.api.rev.cond:
            kinds = list(self.api.kinds.values())
        gvs = sorted({(k.group, v) for k in kinds for v in k.versions})

        def rel(g: str, v: str) -> str:
            return f"api/{v}" if not g else f"apis/{g}/{v}"

        if path == "/openapi/v3":
            return {"paths": {rel(g, v): {"serverRelativeURL": f"/openapi/v3/{rel(g, v)}?hash={self.api.rev.rv}"}
                              for g, v in gvs}}
        for g, v in gvs:
            if path != f"/openapi/v3/{rel(g, v)}":
                continue
            paths: Obj = {}
            schemas: Obj = {}
            for k in kinds:
                if k.group != g or v not in k.versions:
                    continue
                gvk = {"group": g, "version": v, "kind": k.kind}
                ref = f"{'.'.join(reversed(g.split('.'))) if g else 'io.k8s.api.core'}.{v}.{k.kind}"
                schemas[ref] = dict(k.schemas.get(v) or {"type": "object"},
                                    **{"x-kubernetes-group-version-kind": [gvk]})
                scope = "namespaces/{namespace}/" if k.namespaced else ""
                params = [{"name": n, "in": "query", "schema": {"type": "string"}}
                          for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
                op = {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "patch", "parameters": params,
                      "responses": {"200": {"description": "OK", "content": {"application/json": {
                          "schema": {"$ref": f"#/components/schemas/{ref}"}}}}}}
                paths[f"/{rel(g, v)}/{scope}{k.plural}/{{name}}"] = {"patch": op}
            return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"}, "paths": paths,
                    "components": {"schemas": schemas}}
        return None

    # ---- reviews ----

    def _review(self, path: str, body: bytes) -> Obj:
        review = self._json(body)
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
        attrs = spec.get("resourceAttributes") or {}
        ok = self.api.review(spec.get("user", ""), attrs.get("verb", ""), attrs.get("namespace") or None,
                             attrs.get("resource", ""), attrs.get("subresource", ""))
        st: Obj = {"allowed": ok}
        if not ok:
            st["reason"] = "denied by the stand-in's deny list"
        return {"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                "spec": spec, "status": st}

    # ---- reads ----

    def _matcher(self, t: Target, q: dict[str, str]) -> Callable[[Obj], bool]:
        try:
            labels = parse_selector(q.get("labelSelector", ""))
        except SelectorError as e:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {e}") from e
        known = FIELDS if t.kind.key == ("", "pods") else {**COMMON_FIELDS, **t.kind.fields}
        fields = parse_field_selector(q.get("fieldSelector", ""), known)
        namespace, name = t.namespace, t.name

        def match(p: Obj) -> bool:
            md = p["metadata"]
            return ((namespace is None or md.get("namespace") == namespace) and (name is None or md["name"] == name)
                    and labels.matches(md.get("labels") or {}) and fields(p))

        return match

    def _wants_table(self) -> bool:
        return "as=Table" in (self.headers.get("Accept") or "")

    def _get(self, t: Target, q: dict[str, str]) -> None:
        with self.api.rev.cond:
            obj = self.api.stores[t.kind.key].current.get((t.namespace or "", t.name or ""))
            rv = self.api.rev.rv
        if obj is None:
            raise not_found(t.kind, t.name or "")
        obj = self._versioned(t, obj)
        if self._wants_table():
            return self.send_json(200, _table(t.kind, [obj], str(rv), q), content_type=_TABLE_CT)
        self.send_json(200, obj)

    def _list(self, t: Target, q: dict[str, str], match: Callable[[Obj], bool]) -> None:
        store = self.api.stores[t.kind.key]
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
        items = [self._versioned(t, state[k]) for k in keys]
        meta: Obj = {"resourceVersion": str(list_rv)}
        if more:
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": list_rv, "start": "/".join(keys[-1])}).encode()).decode()
            meta["remainingItemCount"] = sum(1 for k, p in state.items() if match(p) and "/".join(k) > start) \
                - len(keys)
        if self._wants_table():
            tab = _table(t.kind, items, str(list_rv), q)
            tab["metadata"].update({k: v for k, v in meta.items() if k != "resourceVersion"})
            return self.send_json(200, tab, content_type=_TABLE_CT)
        self.send_json(200, {"kind": t.kind.list_kind, "apiVersion": t.kind.api_version(t.version), "metadata": meta,
                             "items": items})

    def _watch(self, t: Target, q: dict[str, str], match: Callable[[Obj], bool]) -> None:
        store = self.api.stores[t.kind.key]
        bookmarks = q.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(q.get("timeoutSeconds") or self.api.default_watch_timeout)
        deadline = time.monotonic() + timeout
        rv_param = q.get("resourceVersion", "")
        initial: list[Obj] = []
        with store.cond:
            epoch = store.epoch
            if rv_param in ("", "0"):
                cursor = store.rv
                initial = [{"type": "ADDED", "object": self._versioned(t, p)}
                           for _, p in sorted(store.current.items()) if match(p)]
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
            if q.get("sendInitialEvents") == "true":
                # A streaming list (WatchList, what client-go's informers ask for): the initial events end with
                # a bookmark annotated k8s.io/initial-events-end.
                end = _bookmark(t, cursor)
                end["object"]["metadata"]["annotations"] = {"k8s.io/initial-events-end": "true"}
                self._chunk(end)
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
                        out["object"] = self._versioned(t, out["object"])
                        self._chunk(out)
                cursor = current
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        self._chunk(_bookmark(t, cursor))
                    break
                if bookmarks and now - last_bookmark >= self.bookmark_interval:
                    self._chunk(_bookmark(t, cursor))
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


def _scale_of(obj: Obj) -> Obj:
    md = obj["metadata"]
    sel = (obj.get("spec") or {}).get("selector") or {}
    labels = sel.get("matchLabels") or {} if isinstance(sel, dict) else {}
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in md},
            "spec": {"replicas": int((obj.get("spec") or {}).get("replicas") or 0)},
            "status": {"replicas": int((obj.get("status") or {}).get("replicas") or 0),
                       "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items()))}}


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


def _bookmark(t: Target, rv: int) -> Obj:
    # What the real server sends: an object of the watched kind with only its resourceVersion set.
    obj: Obj = {"kind": t.kind.kind, "apiVersion": t.kind.api_version(t.version),
                "metadata": {"resourceVersion": str(rv), "creationTimestamp": None}}
    if t.kind.key == ("", "pods"):
        obj.update({"spec": {"containers": None}, "status": {}})
    return {"type": "BOOKMARK", "object": obj}


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


def _row_object(o: Obj, q: dict[str, str]) -> Obj:
    if q.get("includeObject") == "Object":
        return o
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}


def _table(kind: Kind, objs: list[Obj], rv: str, q: dict[str, str]) -> Obj:
    """What ``kubectl get`` asks for (``Accept: ...;as=Table``): server-side printed columns."""
    if kind.key == ("", "pods"):
        return _pod_table(objs, rv, q)
    cols = kind.table_columns()
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
            "columnDefinitions": [{"name": c.name, "type": "string" if c.type == "date" else c.type,
                                   "format": c.format, "description": c.description or c.name,
                                   "priority": c.priority} for c in cols],
            "rows": [{"cells": [cell(c, o) for c in cols], "object": _row_object(o, q)} for o in objs]}


def _pod_table(pods: list[Obj], rv: str, q: dict[str, str]) -> Obj:
    rows = []
    for p in pods:
        st = p["status"]
        cs = st.get("containerStatuses") or []
        ready = f"{sum(1 for c in cs if c.get('ready'))}/{len(p['spec']['containers'])}"
        restarts = str(sum(int(c.get("restartCount", 0)) for c in cs))
        rows.append({"cells": [p["metadata"]["name"], ready, st.get("phase", ""), restarts,
                               _age(p["metadata"].get("creationTimestamp", "")), st.get("podIP") or "<none>",
                               p["spec"].get("nodeName") or "<none>", "<none>", "<none>"],
                     "object": _row_object(p, q)})
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
