"""``LeaseElector``: which of several collectors reconciles PodCaptures, decided with a ``coordination.k8s.io/v1``
Lease, as client-go's leader election does it.

- One round (``round``) reads the Lease; it takes it when it does not exist (create), when this collector holds
  it (renew) or when its holder has not renewed it for ``leaseDurationSeconds`` as *observed here*: the time is
  this process's own monotonic clock from when the record last changed, never the holder's ``renewTime`` (clocks
  of different nodes need not agree). Every write carries the resourceVersion read, so two candidates that race
  get one 409 Conflict and one Lease.
- Leadership is held until ``duration_s`` after the last successful renewal: an API server that cannot be reached
  does not make two leaders, the old one steps down before another can take over.
- ``release()`` (on shutdown) empties ``holderIdentity`` so that another collector takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from podcap.collector.kube.client import KubeApi
from podcap.collector.kube.errors import KubeApiError, KubeError, KubeNotFoundError
from podcap.collector.podcaptures.resource import LEASES

log = logging.getLogger(__name__)

LEASE_NAME = "podcap-podcaptures"


def micro_time(t: float) -> str:
    """A MicroTime as the API server writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class LeaseElector:
    def __init__(self, api: KubeApi, *, namespace: str, identity: str, name: str = LEASE_NAME,
                 duration_s: int = 15, renew_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.api = api
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration_s, self.renew_s = duration_s, renew_s
        self._monotonic = monotonic
        self._leader_until = 0.0
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._on_change = on_change
        self._was_leader = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self._monotonic() < self._leader_until

    def _body(self, existing: dict[str, Any] | None) -> dict[str, Any]:
        now = time.time()
        spec = dict((existing or {}).get("spec") or {})
        if spec.get("holderIdentity") != self.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if existing else 0)
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=self.duration_s, renewTime=micro_time(now))
        md: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if existing:
            md = dict(existing["metadata"])
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": md, "spec": spec}

    def round(self) -> bool:
        """Try to take or renew the Lease once; True when this collector holds it now."""
        start = self._monotonic()
        try:
            try:
                lease: dict[str, Any] | None = self.api.get_object(LEASES, self.namespace, self.name)
            except KubeNotFoundError:
                lease = None
            if lease is None:
                self.api.create_object(LEASES, self.namespace, self._body(None))
                return self._won(start)
            spec = lease.get("spec") or {}
            holder = str(spec.get("holderIdentity") or "")
            seen = (holder, str(spec.get("renewTime") or ""))
            if seen != self._observed:
                self._observed, self._observed_at = seen, start
            duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
            if holder and holder != self.identity and start - self._observed_at < duration:
                return self._lost()
            self.api.replace_object(LEASES, self.namespace, self.name, self._body(lease))
            return self._won(start)
        except KubeApiError as e:
            if e.code == 409:  # another candidate wrote first
                return self._lost()
            log.warning("lease %s/%s: %s", self.namespace, self.name, e)
        except KubeError as e:
            log.warning("lease %s/%s: %s", self.namespace, self.name, e)
        return self._changed()

    def _won(self, start: float) -> bool:
        self._leader_until = start + self.duration_s - min(self.renew_s, self.duration_s / 3)
        return self._changed()

    def _lost(self) -> bool:
        self._leader_until = 0.0
        return self._changed()

    def _changed(self) -> bool:
        leader = self.is_leader
        if leader != self._was_leader:
            self._was_leader = leader
            log.info("lease %s/%s: %s", self.namespace, self.name,
                     f"{self.identity} now reconciles PodCaptures" if leader else f"{self.identity} stands by")
            if self._on_change is not None:
                self._on_change(leader)
        return leader

    def release(self) -> None:
        """Give the Lease up (another collector takes over without waiting for it to expire)."""
        if not self.is_leader:
            return
        self._leader_until = 0.0
        self._changed()
        try:
            lease = self.api.get_object(LEASES, self.namespace, self.name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                self.api.replace_object(LEASES, self.namespace, self.name, lease)
        except KubeError as e:
            log.info("lease %s/%s: not released: %s", self.namespace, self.name, e)

    def start(self) -> LeaseElector:
        self._thread = threading.Thread(target=self._loop, name="podcapture-lease", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.round()
            self._stop.wait(self.renew_s if self.is_leader else self.renew_s / 2)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.release()
