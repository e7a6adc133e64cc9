"""The resource kinds the stand-in serves: what discovery says about each, its field selectors and its
``kubectl get`` columns (server-side printing, ``as=Table``), and the kinds a CRD defines.

A ``Kind`` is one resource (``group``/``plural``) served at one or more versions. Every kind shares the stand-in's
one resourceVersion history (see ``standin.py``). Built-in kinds are listed in ``BUILTIN``; ``crd_kinds`` turns a
CustomResourceDefinition object into the kind it defines (served versions, scope, names, status subresource,
``additionalPrinterColumns``, the OpenAPI schema used for pruning, defaulting and validation).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
Getter = Callable[[Obj], Any]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # string, integer, number, boolean, date
    get: Getter
    priority: int = 0
    description: str = ""
    format: str = ""


@dataclass
class Kind:
    group: str
    versions: list[str]
    plural: str
    kind: str
    namespaced: bool = True
    short_names: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    status_subresource: bool = False
    scale_subresource: bool = False  # /scale (autoscaling/v1 Scale over spec.replicas)
    # Field selectors beyond metadata.name/metadata.namespace (which every kind supports).
    fields: dict[str, Getter] = field(default_factory=dict)
    columns: list[Column] | None = None  # None: Name and Age
    schemas: dict[str, Obj] = field(default_factory=dict)  # version -> openAPIV3Schema (custom resources)
    custom: bool = False  # served from a CRD
    verbs: list[str] = field(default_factory=lambda: ["create", "delete", "deletecollection", "get", "list",
                                                      "patch", "update", "watch"])
    singular: str = ""
    list_kind: str = ""

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.list_kind = self.list_kind or self.kind + "List"

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def api_version(self, version: str | None = None) -> str:
        v = version or self.versions[0]
        return f"{self.group}/{v}" if self.group else v

    @property
    def qualified(self) -> str:
        """``Kind.group`` as error messages name it (``PodCapture.podcap.io``), ``Kind`` for the core group."""
        return f"{self.kind}.{self.group}" if self.group else self.kind

    @property
    def resource_text(self) -> str:
        """``plural.group`` as Forbidden and NotFound messages name it."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def table_columns(self) -> list[Column]:
        if self.columns is not None:
            return [Column("Name", "string", lambda o: o["metadata"]["name"], format="name"), *self.columns]
        return [Column("Name", "string", lambda o: o["metadata"]["name"], format="name"),
                Column("Age", "date", lambda o: o["metadata"].get("creationTimestamp"))]


# ---- cells ----


def age(ts: Any) -> str:
    """A timestamp as kubectl shows it (the server converts ``date`` columns)."""
    if not isinstance(ts, str) or not ts:
        return "<unknown>"
    try:
        secs = max(0, int(time.time() - time.mktime(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + time.timezone))
    except (ValueError, OverflowError):
        return "<unknown>"
    if secs < 120:
        return f"{secs}s"
    if secs < 600:
        return f"{secs // 60}m{secs % 60}s" if secs % 60 else f"{secs // 60}m"
    if secs < 3 * 3600:
        return f"{secs // 60}m"
    if secs < 48 * 3600:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _path(*keys: str | int) -> Getter:
    def get(o: Obj) -> Any:
        cur: Any = o
        for k in keys:
            if isinstance(k, int):
                cur = cur[k] if isinstance(cur, list) and len(cur) > k else None
            else:
                cur = cur.get(k) if isinstance(cur, dict) else None
            if cur is None:
                return None
        return cur
    return get


_JP_TOKEN = re.compile(r"\.([A-Za-z0-9_\-]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*['\"]([^'\"]*)['\"]\)\]")


def jsonpath(expr: str) -> Getter:
    """The JSONPath subset CRD printer columns use: ``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``."""
    expr = expr.strip()
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    if expr.startswith("$"):
        expr = expr[1:]
    steps: list[tuple[str, str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _JP_TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"unsupported JSONPath {expr!r}")
        if m.group(1) is not None:
            steps.append(("key", m.group(1), ""))
        elif m.group(2) is not None:
            steps.append(("index", m.group(2), ""))
        else:
            steps.append(("filter", m.group(3), m.group(4)))
        pos = m.end()

    def get(o: Obj) -> Any:
        vals: list[Any] = [o]
        for kind, a, b in steps:
            nxt: list[Any] = []
            for v in vals:
                if kind == "key" and isinstance(v, dict) and a in v:
                    nxt.append(v[a])
                elif kind == "index" and isinstance(v, list):
                    nxt.extend(v if a == "*" else v[int(a):int(a) + 1])
                elif kind == "filter" and isinstance(v, list):
                    nxt.extend(x for x in v if isinstance(x, dict) and str(_path(*a.split("."))(x)) == b)
            vals = nxt
        if not vals:
            return None
        return vals[0] if len(vals) == 1 else ",".join(str(x) for x in vals)
    return get


def cell(col: Column, obj: Obj) -> Any:
    try:
        v = col.get(obj)
    except (KeyError, TypeError, IndexError):
        v = None
    if col.type == "date":
        return age(v) if v is not None else "<unknown>"
    if v is None:
        return None
    if col.type == "integer" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return int(v)
    if col.type == "string" and not isinstance(v, str):
        return str(v).lower() if isinstance(v, bool) else str(v)
    return v


# ---- built-in kinds ----


def _ready(o: Obj) -> str:
    return f"{o.get('status', {}).get('readyReplicas', 0)}/{o.get('spec', {}).get('replicas', 1)}"


def _ports(o: Obj) -> str:
    ports = o.get("spec", {}).get("ports") or []
    return ",".join(f"{p.get('port')}/{p.get('protocol', 'TCP')}" for p in ports) or "<none>"


def _slice_ports(o: Obj) -> str:
    ports = o.get("ports") or []
    return ",".join(str(p.get("port")) for p in ports) or "<unset>"


def _slice_endpoints(o: Obj) -> str:
    addrs = [a for e in o.get("endpoints") or [] for a in e.get("addresses") or []]
    return ",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else "") or "<unset>"


def _event_object(o: Obj) -> str:
    io = o.get("involvedObject") or o.get("regarding") or {}
    return f"{str(io.get('kind', '')).lower()}/{io.get('name', '')}"


def _selector(o: Obj) -> str:
    sel = o.get("spec", {}).get("selector") or {}
    labels = sel.get("matchLabels", sel) if isinstance(sel, dict) else {}
    return ",".join(f"{k}={v}" for k, v in labels.items() if isinstance(v, str)) or "<none>"


def _involved(sub: str) -> Getter:
    return lambda o: str((o.get("involvedObject") or {}).get(sub, ""))


AGE = Column("Age", "date", _path("metadata", "creationTimestamp"))
_WORKLOAD_FIELDS: dict[str, Getter] = {}

BUILTIN: list[Kind] = [
    Kind("", ["v1"], "pods", "Pod", short_names=["po"], categories=["all"], status_subresource=True),
    Kind("", ["v1"], "namespaces", "Namespace", namespaced=False, short_names=["ns"], status_subresource=True,
         fields={"status.phase": lambda o: str(o.get("status", {}).get("phase", ""))},
         columns=[Column("Status", "string", _path("status", "phase")), AGE],
         verbs=["create", "delete", "get", "list", "patch", "update", "watch"]),
    Kind("", ["v1"], "events", "Event", short_names=["ev"],
         fields={"involvedObject.kind": _involved("kind"), "involvedObject.namespace": _involved("namespace"),
                 "involvedObject.name": _involved("name"), "involvedObject.uid": _involved("uid"),
                 "involvedObject.apiVersion": _involved("apiVersion"),
                 "involvedObject.resourceVersion": _involved("resourceVersion"),
                 "involvedObject.fieldPath": _involved("fieldPath"),
                 "reason": lambda o: str(o.get("reason", "")), "type": lambda o: str(o.get("type", "")),
                 "source": lambda o: str((o.get("source") or {}).get("component", "")),
                 "reportingComponent": lambda o: str(o.get("reportingComponent", ""))},
         columns=[Column("Last Seen", "date", lambda o: o.get("lastTimestamp") or o.get("eventTime")
                         or o["metadata"].get("creationTimestamp")),
                  Column("Type", "string", _path("type")), Column("Reason", "string", _path("reason")),
                  Column("Object", "string", _event_object), Column("Message", "string", _path("message"))]),
    Kind("events.k8s.io", ["v1"], "events", "Event", short_names=["ev"],
         fields={"regarding.kind": lambda o: str((o.get("regarding") or {}).get("kind", "")),
                 "regarding.name": lambda o: str((o.get("regarding") or {}).get("name", "")),
                 "regarding.namespace": lambda o: str((o.get("regarding") or {}).get("namespace", "")),
                 "regarding.uid": lambda o: str((o.get("regarding") or {}).get("uid", "")),
                 "reason": lambda o: str(o.get("reason", "")), "type": lambda o: str(o.get("type", ""))},
         columns=[Column("Last Seen", "date", lambda o: o.get("eventTime") or o["metadata"].get("creationTimestamp")),
                  Column("Type", "string", _path("type")), Column("Reason", "string", _path("reason")),
                  Column("Object", "string", _event_object), Column("Message", "string", _path("note"))]),
    Kind("", ["v1"], "services", "Service", short_names=["svc"], categories=["all"], status_subresource=True,
         columns=[Column("Type", "string", lambda o: o.get("spec", {}).get("type", "ClusterIP")),
                  Column("Cluster-IP", "string", lambda o: o.get("spec", {}).get("clusterIP") or "<none>"),
                  Column("External-IP", "string", lambda o: "<none>"),
                  Column("Port(s)", "string", _ports), AGE,
                  Column("Selector", "string", _selector, priority=1)]),
    Kind("coordination.k8s.io", ["v1"], "leases", "Lease",
         columns=[Column("Holder", "string", _path("spec", "holderIdentity")), AGE]),
    Kind("discovery.k8s.io", ["v1"], "endpointslices", "EndpointSlice",
         columns=[Column("AddressType", "string", _path("addressType")), Column("Ports", "string", _slice_ports),
                  Column("Endpoints", "string", _slice_endpoints), AGE]),
    Kind("apps", ["v1"], "deployments", "Deployment", short_names=["deploy"], categories=["all"],
         status_subresource=True, scale_subresource=True,
         columns=[Column("Ready", "string", _ready),
                  Column("Up-to-date", "integer", lambda o: o.get("status", {}).get("updatedReplicas", 0)),
                  Column("Available", "integer", lambda o: o.get("status", {}).get("availableReplicas", 0)), AGE]),
    Kind("apps", ["v1"], "statefulsets", "StatefulSet", short_names=["sts"], categories=["all"],
         status_subresource=True, scale_subresource=True, columns=[Column("Ready", "string", _ready), AGE]),
    Kind("apps", ["v1"], "daemonsets", "DaemonSet", short_names=["ds"], categories=["all"],
         status_subresource=True,
         columns=[Column("Desired", "integer", lambda o: o.get("status", {}).get("desiredNumberScheduled", 0)),
                  Column("Current", "integer", lambda o: o.get("status", {}).get("currentNumberScheduled", 0)),
                  Column("Ready", "integer", lambda o: o.get("status", {}).get("numberReady", 0)), AGE]),
    Kind("apps", ["v1"], "replicasets", "ReplicaSet", short_names=["rs"], categories=["all"],
         status_subresource=True, scale_subresource=True,
         columns=[Column("Desired", "integer", lambda o: o.get("spec", {}).get("replicas", 1)),
                  Column("Current", "integer", lambda o: o.get("status", {}).get("replicas", 0)),
                  Column("Ready", "integer", lambda o: o.get("status", {}).get("readyReplicas", 0)), AGE]),
    Kind("batch", ["v1"], "jobs", "Job", categories=["all"], status_subresource=True,
         columns=[Column("Status", "string", lambda o: "Complete" if o.get("status", {}).get("succeeded")
                         else "Running"),
                  Column("Completions", "string", lambda o: f"{o.get('status', {}).get('succeeded', 0)}/"
                                                            f"{o.get('spec', {}).get('completions', 1)}"), AGE]),
    Kind("apiextensions.k8s.io", ["v1"], "customresourcedefinitions", "CustomResourceDefinition",
         namespaced=False, short_names=["crd", "crds"], categories=["api-extensions"], status_subresource=True,
         columns=[Column("Created At", "string", _path("metadata", "creationTimestamp"))]),
]


# ---- built-in defaulting (what the API server's defaulters set that clients read back) ----

_next_cluster_ip = [10]


def builtin_defaults(kind: Kind, obj: Obj) -> None:
    """Defaults the real server fills in on create: workload replicas, a Service's type, cluster IP and ports."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    if kind.scale_subresource or kind.key == ("batch", "jobs"):
        if kind.key != ("batch", "jobs"):
            spec.setdefault("replicas", 1)
        template = spec.get("template") or {}
        for c in (template.get("spec") or {}).get("containers") or []:
            c.setdefault("imagePullPolicy", "IfNotPresent" if ":" in str(c.get("image", "")) and not str(
                c.get("image", "")).endswith(":latest") else "Always")
    if kind.key == ("", "services"):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName" and "clusterIP" not in spec:
            _next_cluster_ip[0] += 1
            n = _next_cluster_ip[0]
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
        if spec.get("clusterIP") and spec.get("clusterIP") != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


# ---- kinds from CRDs ----


def crd_kind(crd: Obj) -> Kind:
    """The kind a CustomResourceDefinition defines (its served versions)."""
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    # Columns and subresources may differ per version; the stand-in uses the storage version's (podcap's CRDs
    # have one version).
    storage = next((v for v in spec["versions"] if v.get("storage")), served[0] if served else spec["versions"][0])
    cols: list[Column] | None = None
    if "additionalPrinterColumns" in storage:
        cols = [Column(c["name"], c.get("type", "string"), jsonpath(c["jsonPath"]), int(c.get("priority", 0)),
                       c.get("description", ""), c.get("format", "")) for c in storage["additionalPrinterColumns"]]
    return Kind(spec["group"], [v["name"] for v in served], names["plural"], names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced", short_names=list(names.get("shortNames")
                                                                                           or []),
                categories=list(names.get("categories") or []),
                status_subresource="status" in (storage.get("subresources") or {}), columns=cols,
                schemas={v["name"]: (v.get("schema") or {}).get("openAPIV3Schema") or {} for v in served},
                custom=True, singular=names.get("singular", ""), list_kind=names.get("listKind", ""))
