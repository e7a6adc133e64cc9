"""The end of a capture's life: deleting a capture (``podcap delete``), and the collector's own policy for ended
captures — deleted some time after they ended (``--keep-ended``), or, ended first goes first, while the data dir is
over its budget (``--max-data-bytes``, ``--max-data-percent``). Without them a long-lived collector fills its disk
with old captures until storing pauses for everyone.

Deleting a capture (``delete``), in this order:

1. a running capture is stopped first, only when asked (``force``): its agents are told to stop and it ends at once
   (no stop grace: what its agents still deliver would be deleted anyway, and is refused as of an unknown capture);
2. with no archiving round running (``Archiver.exclusive``) and no commit of it (its ``commit_lock``), it is marked
   deleted (``Capture.deleted``: a download holding it ends with that reason, the committer records it no more)
   and leaves the capture table, so every request naming it gets NOT_FOUND saying when, by whom and why;
3. its catalog rows go and its deletion record comes in one transaction: after a crash the capture is either all
   there or deleted, never rows describing files that are gone;
4. storage deletes its files (with object storage: its objects, pages and manifest too). What cannot be deleted
   now (the object store down) stays *pending* in the deletion record, retried every ``RETRY_S`` and at the next
   start.

The policy runs every ``POLICY_INTERVAL_S`` in a thread of its own (a deletion may wait for the object store), and
never deletes a running capture. First ended captures past ``keep_ended_s`` go, the one that ended first first.
Then, while the data dir is over its budget, the capture that ended first among the ended ones holding data there
goes, one at a time, measured again after each. The budget counts what the captures hold in the data dir
(``local_bytes``: with object storage only segments not yet in the bucket, since deleting a capture that is all in
the bucket frees nothing there) against ``max_data_bytes``, and the filesystem's use (``df``'s Use%) against
``max_data_percent``. A data dir that is full (storing paused on ENOSPC) is over any budget: then one capture goes
per round, and storing resumes by itself once the next chunk fits. With nothing left to delete, storing stays
paused as without a budget, and the pause says so (``full_hint``).

Every deletion is logged, audited (by the user, or by ``podcap-collector``), counted by cause for the metrics, and
remembered for ``REMEMBER_S`` in the catalog: ``podcap list`` shows recent deletions, ``podcap status`` of a
deleted id says what became of it.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

from podcap.collector.captures.model import Capture
from podcap.collector.captures.table import CaptureNotFoundError, CaptureTable, StorageHealth
from podcap.collector.storage.base import CaptureStorage
from podcap.collector.storage.catalog import CaptureStore
from podcap.collector.targets import target_text
from podcap.errors import PodcapError, PreconditionError
from podcap.units import format_duration, human_bytes
from podcap.v1 import control_pb2

log = logging.getLogger(__name__)

POLICY_INTERVAL_S = 2.0
RETRY_S = 30.0
REMEMBER_S = 7 * 86400
MAX_REMEMBERED = 100
COLLECTOR = "podcap-collector"
CAUSES = ("user", "keep_ended", "disk_budget")  # why captures were deleted, as the metrics count them


class CaptureRunningError(PreconditionError):
    """Deleting a capture that still runs, without ``force``."""


class CaptureDeletedError(CaptureNotFoundError):
    """The capture the user named was deleted; the message says when, by whom and why (``deletion``)."""

    def __init__(self, message: str, deletion: control_pb2.CaptureDeletion) -> None:
        super().__init__(message)
        self.deletion = deletion


@dataclass(frozen=True)
class LifecyclePolicy:
    """The collector's settings for ended captures (0: not used)."""

    keep_ended_s: float = 0.0
    max_data_bytes: int = 0
    max_data_percent: float = 0.0

    @property
    def budget(self) -> bool:
        return bool(self.max_data_bytes or self.max_data_percent)

    def text(self) -> str:
        parts = []
        if self.keep_ended_s:
            parts.append(f"ended captures kept {format_duration(self.keep_ended_s)}")
        if self.max_data_bytes:
            parts.append(f"data dir budget {human_bytes(self.max_data_bytes, si=True)}")
        if self.max_data_percent:
            parts.append(f"data dir filesystem at most {self.max_data_percent:g}% used")
        return ", ".join(parts) or "ended captures kept until deleted"


@dataclass(frozen=True)
class DiskUsage:
    """The data dir's filesystem as ``df`` shows it: bytes used, and used + available to us."""

    used: int
    size: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.size if self.size else 0.0


def filesystem_usage(path: str) -> DiskUsage:
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return DiskUsage(used, used + st.f_bavail * st.f_frsize)


def local_bytes(cap: Capture, *, tiered: bool) -> int:
    """Bytes of the capture's segments in the data dir (headers included): with tiered storage its archive backlog
    (closed segments not yet in the bucket, kept as running totals) and its open segments; O(pods)."""
    with cap.lock:
        if not tiered:
            return sum(ps.stored_bytes for ps in cap.pods.values())
        open_bytes = sum(ps.writer.current.bytes for ps in cap.pods.values()
                         if ps.writer is not None and ps.writer.current is not None)
        return (cap.backlog.bytes if cap.backlog is not None else 0) + open_bytes


def deleted_text(d: control_pb2.CaptureDeletion) -> str:
    """"deleted 2026-12-01 10:00:00 UTC by alice: podcap delete" — what became of a capture, in one line."""
    when = datetime.datetime.fromtimestamp(d.deleted_unix_ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"deleted {when} by {d.by}: {d.reason}"


class Lifecycle:
    """Deletes captures, on request and by policy (see the module docstring). ``stop`` ends a running capture at
    once; ``exclusive`` holds archiving off; ``disk_usage`` measures the data dir's filesystem (tests pass their
    own)."""

    def __init__(self, table: CaptureTable, storage: CaptureStorage, store: CaptureStore, health: StorageHealth, *,
                 stop: Callable[[Capture], None], exclusive: Callable[[], AbstractContextManager[None]],
                 policy: LifecyclePolicy | None = None, data_dir: str = "",
                 disk_usage: Callable[[], DiskUsage] | None = None,
                 interval_s: float = POLICY_INTERVAL_S) -> None:
        self.table = table
        self.storage = storage
        self.store = store
        self.health = health
        self.stop_capture = stop
        self.exclusive = exclusive
        self.policy = policy or LifecyclePolicy()
        self.disk_usage = disk_usage or (lambda: filesystem_usage(data_dir or "."))
        self.interval_s = interval_s  # 0: no thread, rounds only when ``run_once`` is called (tests)
        self.deleted_count = dict.fromkeys(CAUSES, 0)
        self.deleted_bytes = dict.fromkeys(CAUSES, 0)
        self.nothing_left = ""  # while over budget with nothing left to delete: why (said once in the log)
        self._one = threading.Lock()  # one deletion at a time (a user's and the policy's may name the same capture)
        self._last_retry = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lifecycle", daemon=True)

    def start(self) -> None:
        if self.interval_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    # ---- deleting ----

    def delete(self, capture_id: str, *, by: str, reason: str, force: bool = False,
               cause: str = "user") -> control_pb2.CaptureDeletion:
        """Delete the capture (see the module docstring). Raises ``CaptureNotFoundError`` (``CaptureDeletedError``
        for one deleted already), ``CaptureRunningError`` for a running capture without ``force``."""
        cap = self.table.find(capture_id)
        if cap is None:
            raise self.not_found(capture_id)
        if cap.live:
            if not force:
                raise CaptureRunningError(f"capture {cap.id} is running: stop it first (podcap stop {cap.id}), or "
                                          "delete it with --force")
            self.stop_capture(cap)
            reason += " (stopped it first)"
        with self._one:
            if self.table.find(capture_id) is not cap:  # deleted meanwhile (the policy, another user)
                raise self.not_found(capture_id)
            return self._delete(cap, by=by, reason=reason, cause=cause)

    def _delete(self, cap: Capture, *, by: str, reason: str, cause: str) -> control_pb2.CaptureDeletion:
        with self.exclusive(), cap.commit_lock:
            status = cap.status()
            record = control_pb2.CaptureDeletion(
                capture_id=cap.id, deleted_unix_ns=time.time_ns(), by=by, reason=reason, bytes=status.bytes,
                local_bytes=local_bytes(cap, tiered=self.storage.tiered), target=cap.request.target,
                created_unix_ns=cap.created_ns, ended_unix_ns=cap.ended_ns, pending="its files")
            with cap.lock:
                cap.deleted = deleted_text(record)
            self.table.remove(cap.id)
            try:
                self.store.delete_capture(cap.id, record)
            except BaseException:
                with cap.lock:
                    cap.deleted = ""
                self.table.add(cap)
                raise
        # Followers ended with the capture; downloads still holding it stop at their next block (``deleted``).
        record.pending = self._remove(cap.id)
        self.store.update_deletion(record)
        self.deleted_count[cause] = self.deleted_count.get(cause, 0) + 1
        self.deleted_bytes[cause] = self.deleted_bytes.get(cause, 0) + record.bytes
        log.info("capture %s deleted by %s: %s (%s, of which %s in the data dir)%s", cap.id, by, reason,
                 human_bytes(record.bytes, si=True), human_bytes(record.local_bytes, si=True),
                 f"; still to delete: {record.pending} (retried)" if record.pending else "")
        return record

    def _remove(self, capture_id: str) -> str:
        """Delete the capture's storage; "" once all of it is gone, else what is left and why."""
        try:
            self.storage.remove(capture_id)
        except (PodcapError, OSError) as e:
            log.error("capture %s: cannot delete everything it kept: %s (retried every %.0f s)", capture_id, e,
                      RETRY_S)
            return f"{'objects in the bucket' if self.storage.tiered else 'files in the data dir'}: {e}"[:2000]
        return ""

    def deletion(self, capture_id: str) -> control_pb2.CaptureDeletion | None:
        """What the catalog remembers of a deleted capture."""
        return self.store.deletion(capture_id) if capture_id else None

    def not_found(self, capture_id: str) -> CaptureNotFoundError:
        """The error for a capture id the table does not have: saying so, or what became of it."""
        d = self.deletion(capture_id)
        if d is None:
            return CaptureNotFoundError(f"no capture {capture_id!r} (see `podcap list`)")
        return CaptureDeletedError(f"capture {d.capture_id} was {deleted_text(d)}", d)

    def recent(self) -> list[control_pb2.CaptureDeletion]:
        """Deletions remembered (the last ``REMEMBER_S``), newest first, at most ``MAX_REMEMBERED``."""
        return self.store.deletions(since_ns=time.time_ns() - int(REMEMBER_S * 1e9), limit=MAX_REMEMBERED)

    # ---- the policy ----

    def _loop(self) -> None:
        while not self._closing.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:
                log.exception("the policy for ended captures failed (tried again in %.0f s)", self.interval_s)

    def run_once(self, now_ns: int | None = None) -> list[control_pb2.CaptureDeletion]:
        """One round of the policy; returns the deletions it made."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        if time.monotonic() - self._last_retry >= RETRY_S or not self._last_retry:
            self._last_retry = time.monotonic()
            self.retry_pending()
            self.store.forget_deletions(before_ns=now_ns - int(REMEMBER_S * 1e9))
        done: list[control_pb2.CaptureDeletion] = []
        if self.policy.keep_ended_s:
            for cap in self._ended():
                age_s = (now_ns - _ended_ns(cap)) / 1e9
                if age_s >= self.policy.keep_ended_s:
                    done += self._by_policy(cap, "keep_ended", f"ended {format_duration(age_s)} ago (--keep-ended "
                                            f"{format_duration(self.policy.keep_ended_s)})")
        if self.policy.budget:
            done += self._enforce_budget()
        return done

    def _enforce_budget(self) -> list[control_pb2.CaptureDeletion]:
        done: list[control_pb2.CaptureDeletion] = []
        while not self._closing.is_set():
            why, full = self._over_budget()
            if not why:
                self.nothing_left = ""
                return done
            candidates = self._holding_data()
            if not candidates:
                if not self.nothing_left:
                    log.warning("%s, and nothing is left to delete: every capture with data in the data dir is "
                                "running (a full disk pauses storing)", why)
                self.nothing_left = why
                return done
            done += self._by_policy(candidates[0], "disk_budget", why)
            if full:  # storing resumes by itself if that was enough; the next round measures again
                return done
        return done

    def _over_budget(self) -> tuple[str, bool]:
        """Why the data dir is over its budget ("" when it is not), and whether because it is full."""
        if self.health.disk_full:
            return "the data dir is full", True
        p = self.policy
        if p.max_data_bytes:
            held = self.data_bytes()
            if held > p.max_data_bytes:
                return (f"the data dir is over its budget: {human_bytes(held, si=True)} of "
                        f"{human_bytes(p.max_data_bytes, si=True)} (--max-data-bytes)"), False
        if p.max_data_percent:
            usage = self.disk_usage()
            if usage.percent > p.max_data_percent:
                return (f"the data dir's filesystem is {usage.percent:.1f}% used, over "
                        f"{p.max_data_percent:g}% (--max-data-percent)"), False
        return "", False

    def data_bytes(self) -> int:
        """What every capture holds in the data dir (what ``max_data_bytes`` bounds)."""
        return sum(local_bytes(cap, tiered=self.storage.tiered) for cap in self.table.all())

    def _ended(self) -> list[Capture]:
        """Ended captures, the one that ended first first."""
        # A recorder's save is kept until it is deleted (issue 24): it is out of every policy.
        return sorted((c for c in self.table.all() if not c.live and not c.request.HasField("save")),
                      key=lambda c: (_ended_ns(c), c.created_ns))

    def _holding_data(self) -> list[Capture]:
        return [c for c in self._ended() if local_bytes(c, tiered=self.storage.tiered) > 0]

    def _by_policy(self, cap: Capture, cause: str, reason: str) -> list[control_pb2.CaptureDeletion]:
        with self._one:
            if self.table.find(cap.id) is not cap or cap.live:
                return []
            try:
                record = self._delete(cap, by=COLLECTOR, reason=reason, cause=cause)
            except PodcapError as e:
                log.error("capture %s: cannot delete it (%s): %s", cap.id, reason, e)
                return []
        try:
            self.store.add_audit(control_pb2.AuditRecord(
                unix_ns=record.deleted_unix_ns, user=COLLECTOR, action="delete", capture_id=cap.id,
                target=target_text(cap.request.target), filter=cap.request.settings.filter, result="allowed",
                detail=f"{reason}; {human_bytes(record.bytes, si=True)}"))
        except Exception:
            log.exception("cannot write the audit record")
        return [record]

    def retry_pending(self) -> None:
        """Delete what earlier deletions left in storage (the object store was down), now."""
        for record in self.store.deletions(pending=True, limit=MAX_REMEMBERED):
            if self.table.find(record.capture_id) is not None:
                continue  # (cannot be: its rows went with the record)
            record.pending = self._remove(record.capture_id)
            self.store.update_deletion(record)
            if not record.pending:
                log.info("capture %s: the rest of what it kept is deleted now", record.capture_id)

    def full_hint(self) -> str:
        """What a pause for a full data dir adds: whether something will be deleted to make room."""
        if not self.policy.budget:
            return ("; no ended capture is deleted by the collector (podcap-collector --max-data-bytes, "
                    "--max-data-percent, --keep-ended): `podcap delete` frees space")
        if not self._holding_data():
            return "; nothing left to delete: every capture with data in the data dir is running"
        return "; deleting the oldest ended captures to make room (disk budget)"


def _ended_ns(cap: Capture) -> int:
    return cap.ended_ns or cap.created_ns
