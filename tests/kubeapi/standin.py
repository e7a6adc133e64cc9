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

The modules: ``store.py`` (the resourceVersion history, each kind's objects, the Status errors, field selectors),
``kinds.py`` (what is served: discovery, field selectors, printer columns, kinds from CRDs), ``registry.py`` (the
API's writes and their rules), ``schema.py`` (a CRD's schema: pruning, defaults, validation), ``patch.py`` (merge,
JSON and strategic merge patches), ``handler.py`` (HTTP: routing, reads and watches, discovery, tables); this module
is the server and its test controls.

Tests drive it through ``add_pod``/``modify_pod``/``delete_pod`` and the generic ``create``/``modify``/``delete``/
``get``/``objects`` (any kind, by plural name; writes from these helpers bypass the API's rules, as a controller
or kubelet writing status would not: a test sets a Deployment's status with them), ``apply_crd``, ``compact()``,
``disconnect_watches()`` (a watch timeout or an API-server restart as clients see it) and
``stop_serving()``/``start_serving()`` (the API server unreachable, then back on the same port with its state).
Every request is recorded in ``requests`` so tests can assert API-server load (how many lists, how many watches).
"""

from __future__ import annotations

import copy
import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from tests.kubeapi.handler import RequestRecord, _Handler, _Server
from tests.kubeapi.kinds import BUILTIN, Kind
from tests.kubeapi.patch import merge_patch
from tests.kubeapi.registry import Registry
from tests.kubeapi.store import (  # noqa: F401 - re-exported: tests import them from here
    FIELDS,
    SYSTEM_NAMESPACES,
    ApiError,
    Key,
    Obj,
    Revision,
    Store,
    _key,
    _now,
    make_namespace,
    make_pod,
    parse_field_selector,
)


class KubeApiStandin(Registry):
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

    def register(self, kind: Kind) -> None:
        """Serve another built-in kind (``kinds.Kind``: group, versions, plural, kind, scope, field selectors,
        columns) with the same history, reads and writes as every other."""
        self._register(kind)

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
