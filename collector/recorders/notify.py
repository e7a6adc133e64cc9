"""Where users look for a save: a Kubernetes Event on each saved pod (reason ``PacketsSaved``).

``kubectl describe pod`` and every event dashboard show it next to the restart or probe failure that caused it,
with the capture id to download. Posting is best effort: an API server that refuses (RBAC: ``create events``) or
is away costs a log line, never the save. Without Kubernetes there is nothing to post to (``NoEvents``).
"""

from __future__ import annotations

import datetime
import logging
import socket
from typing import Protocol

from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.errors import KubeError
from podcap.pods import PodRef

log = logging.getLogger(__name__)

REASON = "PacketsSaved"
COMPONENT = "podcap-collector"


class EventPoster(Protocol):
    def post(self, pod: PodRef, message: str, *, warning: bool = False) -> None: ...


class NoEvents:
    """No Kubernetes API: nothing to post."""

    def post(self, pod: PodRef, message: str, *, warning: bool = False) -> None:
        pass


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_body(pod: PodRef, message: str, *, warning: bool = False) -> dict[str, object]:
    """A core/v1 Event about ``pod`` (what ``kubectl describe pod`` lists)."""
    now = _now()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{pod.name}.podcap-", "namespace": pod.namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": pod.name, "namespace": pod.namespace,
                           "uid": str(pod.uid)},
        "reason": REASON, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
        "firstTimestamp": now, "lastTimestamp": now, "eventTime": None, "count": 1,
    }


class KubeEvents:
    """Posts through the collector's Kubernetes client."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def post(self, pod: PodRef, message: str, *, warning: bool = False) -> None:
        try:
            self.api.create_event(pod.namespace, event_body(pod, message, warning=warning))
        except KubeError as e:
            log.warning("cannot post the %s Event on pod %s: %s", REASON, pod.display, e)
