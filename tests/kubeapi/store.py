"""The stand-in's object store and its errors: one resourceVersion history shared by every kind, each kind's
objects and events since the compaction point, the API server's Status errors, field selectors, and the objects
the test helpers make (pods, namespaces).
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.kubeapi.kinds import Kind
from tests.kubeapi.schema import Cause

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
