"""The stand-in's HTTP side: routing of the API's paths to kinds, discovery and OpenAPI, reviews, list/get/watch
with the watch cache's semantics, the scale subresource, and server-side printing (``as=Table``).
"""

from __future__ import annotations

import base64
import copy
import json
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from podcap.collector.kube.selectors import SelectorError, parse_selector
from tests.kubeapi.kinds import Kind, cell
from tests.kubeapi.patch import PatchError, json_patch, merge_patch
from tests.kubeapi.registry import _same
from tests.kubeapi.schema import Cause
from tests.kubeapi.store import (
    COMMON_FIELDS,
    FIELDS,
    ApiError,
    Event,
    Obj,
    conflict,
    expired,
    invalid,
    not_found,
    parse_field_selector,
)

if TYPE_CHECKING:
    from tests.kubeapi.standin import KubeApiStandin

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
