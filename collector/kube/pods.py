"""Pod objects from the API server as ``PodRef``: what podcap reads of a pod, and which pods it keeps.

Only scheduled pods that can still have a network are kept: ``spec.nodeName`` set and a phase other than
Succeeded/Failed. Names are checked like every name from outside (``podcap.names``), because they become paths on
disk; a pod with an invalid name is skipped with a warning rather than failing a whole list.

Raw JSON, not the client's models: ``client.py`` asks for ``_preload_content=False`` responses, because
deserializing every pod of a large cluster into generated model objects costs far more CPU than the few fields
read here.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from podcap.names import InvalidNameError, check_namespace, check_node_name, check_pod_name, check_pod_uid
from podcap.pods import PodRef

log = logging.getLogger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class PodHealth:
    """What a flight recorder's Kubernetes triggers compare between two versions of a pod (issue 24): per container
    its restart count and the OOM kills it is known for, the Ready condition, and whether the pod is being deleted.
    A change here is rare (a restart, a probe turning), so it is part of ``KubePod.view``."""

    # (container, restartCount), sorted by container.
    restarts: tuple[tuple[str, int], ...] = ()
    # (container, what identifies the termination: its containerID and finishedAt) of every container whose
    # current or last termination has the reason OOMKilled.
    oom_kills: tuple[tuple[str, str], ...] = ()
    # The Ready condition: True, False, or None when the pod has none yet.
    ready: bool | None = None
    # metadata.deletionTimestamp is set.
    deleting: bool = False
    # (container, when its last termination finished, ns since the epoch by the node's clock; 0 unknown): the
    # moment a restart or an OOM kill is saved around (the ring's packets carry the same node's timestamps).
    ended_ns: tuple[tuple[str, int], ...] = ()


def _rfc3339_ns(text: object) -> int:
    try:
        return int(datetime.datetime.fromisoformat(str(text)).timestamp() * 1e9)
    except (TypeError, ValueError):
        return 0


def pod_health(obj: dict[str, Any]) -> PodHealth:
    """The ``PodHealth`` of a pod object (API JSON); missing fields read as their zero values."""
    md = obj.get("metadata") or {}
    status = obj.get("status") or {}
    restarts: list[tuple[str, int]] = []
    ooms: list[tuple[str, str]] = []
    ended: list[tuple[str, int]] = []
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if not isinstance(cs, dict):
            continue
        name = str(cs.get("name", ""))
        restarts.append((name, int(cs.get("restartCount") or 0)))
        last = ((cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {})
        if last.get("finishedAt"):
            ended.append((name, _rfc3339_ns(last["finishedAt"])))
        for which in ("state", "lastState"):
            term = ((cs.get(which) or {}).get("terminated") or {})
            if term.get("reason") == "OOMKilled":
                key = f"{term.get('containerID') or cs.get('containerID') or ''}@{term.get('finishedAt') or ''}"
                ooms.append((name, key))
    ready: bool | None = None
    for cond in status.get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            ready = cond.get("status") == "True"
    return PodHealth(tuple(sorted(restarts)), tuple(sorted(set(ooms))), ready,
                     bool(md.get("deletionTimestamp")), tuple(sorted(ended)))


@dataclass(frozen=True)
class KubePod:
    """What the cache keeps of a pod: the ``PodRef`` plus the fields it does not carry."""

    ref: PodRef
    phase: str
    resource_version: str
    health: PodHealth = PodHealth()

    def view(self) -> tuple[object, ...]:
        """Everything listeners see; a change here is a MODIFIED worth reporting (kubelet status churn is not)."""
        r = self.ref
        return (r.namespace, r.name, r.uid, r.node, tuple(sorted(r.labels.items())), r.ip, r.host_network,
                self.phase, self.health)


def pod_from_object(obj: dict[str, Any]) -> KubePod | None:
    """A pod object (API JSON) as a ``KubePod``; None when it has no network to capture (unscheduled, finished)
    or carries names that are not valid Kubernetes names."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    node = spec.get("nodeName") or ""
    phase = status.get("phase") or ""
    if not node or phase in TERMINAL_PHASES:
        return None
    try:
        ref = PodRef(
            namespace=check_namespace(str(md.get("namespace", ""))),
            name=check_pod_name(str(md.get("name", ""))),
            uid=check_pod_uid(str(md.get("uid", ""))),
            node=check_node_name(str(node)),
            labels={str(k): str(v) for k, v in (md.get("labels") or {}).items()},
            ip=str(status.get("podIP") or ""),
            host_network=bool(spec.get("hostNetwork", False)),
        )
    except InvalidNameError as e:
        log.warning("pod from the API server skipped: %s", e)
        return None
    return KubePod(ref, phase, str(md.get("resourceVersion", "")), pod_health(obj))
