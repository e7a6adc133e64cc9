"""The Kubernetes API as the collector needs it: the only module that imports ``kubernetes``.

What it owns:

- **Configuration** (``load_api``): a kubeconfig file, else the in-cluster service account. Failures become
  ``KubeConfigError`` with the next step in the message.
- **Errors**: every exception of the client and of urllib3 under it is translated at this boundary into our own
  hierarchy (``raise ... from e``), with messages that say which verb on which resource in which namespace failed
  and what to do: 401/403 -> ``KubeForbiddenError``, 404 -> ``KubeNotFoundError``, 410 -> ``KubeGoneError``,
  connection failures, 429 and 5xx -> ``KubeUnavailableError`` (transient: retry), anything else ``KubeApiError``.
- **Pods as ``PodRef``**: only scheduled pods that can still have a network (``spec.nodeName`` set, phase not
  Succeeded/Failed); names are checked like every name from outside, because they become paths on disk.
- **``PodWatch``**: a thread that keeps a cache of pods current with one list and then one long watch, the
  informer pattern: ``resourceVersion`` continuity, ``allowWatchBookmarks`` so that a quiet watch still advances
  its resourceVersion (a reconnect then resumes instead of re-listing), ``410 Gone`` (HTTP or the in-band ERROR
  event) -> re-list and diff against the cache so listeners see each change once, other errors -> exponential
  backoff with jitter, resuming from the last resourceVersion. No polling: a watch lasts ``watch_timeout_s``
  (server side) and is re-opened from where it stopped.

Raw JSON, not the client's models: pods are read from ``_preload_content=False`` responses. Deserializing every
pod of a large cluster into generated model objects costs far more CPU than the few fields podcap reads, and the
watch stream has to be read by hand anyway so that ``stop()`` can end it at once: closing a socket does not wake a
thread blocked reading it, shutting it down does, so ``PodWatch.stop()`` shuts down the watch connection.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from podcap.collector.targets import PodRef
from podcap.names import InvalidNameError, check_namespace, check_node_name, check_pod_name, check_pod_uid

log = logging.getLogger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
LIST_PAGE = 500
CONNECT_TIMEOUT_S = 5.0
LIST_READ_TIMEOUT_S = 60.0
DEFAULT_WATCH_TIMEOUT_S = 300


# ---- errors ----


class KubeError(RuntimeError):
    """Something went wrong talking to the Kubernetes API."""


class KubeConfigError(KubeError):
    """No usable configuration (kubeconfig or in-cluster service account)."""


class KubeUnavailableError(KubeError):
    """The API server cannot be reached or is overloaded (connection refused/reset, timeout, 429, 5xx)."""


class KubeApiError(KubeError):
    """The API server answered with an error Status."""

    def __init__(self, message: str, *, code: int, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class KubeForbiddenError(KubeApiError):
    """401 (credentials rejected) or 403 (RBAC denies the verb)."""


class KubeNotFoundError(KubeApiError):
    """404."""


class KubeGoneError(KubeApiError):
    """410: the resourceVersion (or continue token) is older than the server's history; re-list."""


def _scope(namespace: str | None) -> str:
    return f'in namespace "{namespace}"' if namespace else "in all namespaces (cluster scope)"


def _translate_status(code: int, reason: str, message: str, *, verb: str, resource: str,
                      namespace: str | None, server: str) -> KubeError:
    what = f"{verb} {resource} {_scope(namespace)}"
    detail = f": {message}" if message else ""
    if code == 401:
        return KubeForbiddenError(
            f"the API server at {server} rejected podcap's credentials (401 Unauthorized) trying to {what}{detail}; "
            "check the kubeconfig's user (token or certificate, not expired) or the pod's service account token",
            code=code, reason=reason)
    if code == 403:
        return KubeForbiddenError(
            f"not allowed to {what} (403 Forbidden){detail}; grant the collector's service account "
            f'"{verb}" on "{resource}" (a ClusterRole with get, list, watch on pods, bound to it)',
            code=code, reason=reason)
    if code == 404:
        return KubeNotFoundError(f"{what}: not found{detail}", code=code, reason=reason)
    if code == 410:
        return KubeGoneError(f"{what}: resource version expired{detail}", code=code, reason=reason)
    if code == 429 or code >= 500:
        return KubeUnavailableError(f"the API server at {server} could not {what} ({code} {reason}){detail}; "
                                    "podcap retries")
    return KubeApiError(f"cannot {what} ({code} {reason}){detail}", code=code, reason=reason)


def _status_fields(body: Any) -> tuple[str, str]:
    """(reason, message) of a Status body, or ("", text) when the body is not a Status."""
    if isinstance(body, bytes | bytearray):
        body = body.decode(errors="replace")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return "", body.strip()[:300]
    if isinstance(body, dict):
        return str(body.get("reason") or ""), str(body.get("message") or "")
    return "", ""


def _translate(e: BaseException, *, verb: str, resource: str, namespace: str | None, server: str) -> KubeError:
    if isinstance(e, KubeError):
        return e
    if isinstance(e, k8s_client.ApiException):
        reason, message = _status_fields(e.body)
        if e.status == 0:  # the client's own failures (TLS) carry status 0
            return KubeUnavailableError(f"cannot {verb} {resource} {_scope(namespace)} at {server}: {e.reason}")
        return _translate_status(int(e.status), reason or str(e.reason or ""), message, verb=verb,
                                 resource=resource, namespace=namespace, server=server)
    if isinstance(e, urllib3.exceptions.HTTPError | OSError):
        cause: BaseException = e
        if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
            cause = e.reason
        return KubeUnavailableError(f"cannot reach the Kubernetes API server at {server} to {verb} {resource} "
                                    f"{_scope(namespace)}: {cause}")
    return KubeError(f"{verb} {resource} {_scope(namespace)}: {type(e).__name__}: {e}")


# ---- configuration ----


def in_cluster() -> bool:
    """True when running in a pod with a service account (what ``load_api(None)`` needs)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def load_api(kubeconfig: str | None, *, context: str | None = None) -> KubeApi:
    """The API described by ``kubeconfig`` (a path), else by the pod's in-cluster service account."""
    cfg = k8s_client.Configuration()
    try:
        if kubeconfig:
            if not os.path.isfile(kubeconfig):
                raise KubeConfigError(f"kubeconfig {kubeconfig!r} does not exist (or is not a file); pass the path "
                                      "of a kubeconfig with --kubeconfig")
            k8s_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                        persist_config=False)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except ConfigException as e:
        if kubeconfig:
            raise KubeConfigError(f"kubeconfig {kubeconfig!r} is not usable: {e}") from e
        raise KubeConfigError(
            f"no Kubernetes configuration: not running in a pod with a service account ({e}); pass --kubeconfig "
            "PATH, or run without Kubernetes (pods then come from the agents' inventories)") from e
    except (OSError, ValueError, TypeError, KeyError) as e:  # unreadable file, malformed YAML/fields
        raise KubeConfigError(f"kubeconfig {kubeconfig!r} is not usable: {type(e).__name__}: {e}") from e
    return KubeApi(k8s_client.ApiClient(cfg), server=str(cfg.host))


# ---- pods ----


@dataclass(frozen=True)
class KubePod:
    """What the cache keeps of a pod: the ``PodRef`` plus the fields it does not carry."""

    ref: PodRef
    phase: str
    resource_version: str

    def view(self) -> tuple[object, ...]:
        """Everything listeners see; a change here is a MODIFIED worth reporting (kubelet status churn is not)."""
        r = self.ref
        return (r.namespace, r.name, r.uid, r.node, tuple(sorted(r.labels.items())), r.ip, r.host_network,
                self.phase)


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
    return KubePod(ref, phase, str(md.get("resourceVersion", "")))


class WatchStream:
    """One open watch response: iterate ``(type, object)``; ``abort()`` from any thread ends it at once."""

    def __init__(self, resp: Any, describe: Callable[[BaseException], KubeError]) -> None:
        self._resp = resp
        self._describe = describe
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        conn = getattr(self._resp, "connection", None)
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        try:
            self._resp.close()
            self._resp.release_conn()
        except Exception:  # noqa: BLE001 - closing a broken stream must not raise
            pass

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        buf = b""
        try:
            for chunk in self._resp.stream(amt=None, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield self._event(line)
            if buf.strip():
                yield self._event(buf)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self.aborted:
                return
            raise self._describe(e) from e
        finally:
            self.close()

    def _event(self, line: bytes) -> tuple[str, dict[str, Any]]:
        try:
            ev = json.loads(line)
            return str(ev["type"]), dict(ev["object"])
        except (ValueError, KeyError, TypeError) as e:
            raise self._describe(ValueError(f"malformed watch event {line[:200]!r}")) from e


class KubeApi:
    """The calls podcap makes. Thread-safe (urllib3's pool is)."""

    def __init__(self, api_client: Any, *, server: str) -> None:
        self._client = api_client
        self._core = k8s_client.CoreV1Api(api_client)
        self.server = server

    def close(self) -> None:
        self._client.close()

    def review_token(self, token: str) -> tuple[str, tuple[str, ...]] | None:
        """TokenReview: the (user, groups) a bearer token belongs to, or None when it is not valid."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        try:
            authn: Any = k8s_client.AuthenticationV1Api(self._client)
            resp = authn.create_token_review(body, _preload_content=False)
            status = json.loads(resp.data).get("status") or {}
        except Exception as e:  # noqa: BLE001 (translated)
            raise _translate(e, verb="create", resource="tokenreviews", namespace=None, server=self.server) from e
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        return str(user.get("username", "")), tuple(str(g) for g in user.get("groups") or ())

    def access_review(self, user: str, groups: tuple[str, ...], *, verb: str, resource: str, subresource: str,
                      namespace: str | None) -> tuple[bool, str]:
        """SubjectAccessReview: may ``user`` do ``verb`` on ``resource/subresource`` in ``namespace`` (None =
        cluster-wide)? Returns (allowed, reason)."""
        attrs = {"verb": verb, "resource": resource, "subresource": subresource}
        if namespace:
            attrs["namespace"] = namespace
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": list(groups), "resourceAttributes": attrs}}
        try:
            authz: Any = k8s_client.AuthorizationV1Api(self._client)
            resp = authz.create_subject_access_review(body, _preload_content=False)
            status = json.loads(resp.data).get("status") or {}
        except Exception as e:  # noqa: BLE001 (translated)
            raise _translate(e, verb="create", resource="subjectaccessreviews", namespace=None,
                             server=self.server) from e
        return bool(status.get("allowed")), str(status.get("reason", ""))

    def _describe(self, verb: str, namespace: str | None) -> Callable[[BaseException], KubeError]:
        return lambda e: _translate(e, verb=verb, resource="pods", namespace=namespace, server=self.server)

    def _call(self, namespace: str | None, **kw: Any) -> Any:
        if namespace:
            return self._core.list_namespaced_pod(namespace, _preload_content=False, **kw)
        return self._core.list_pod_for_all_namespaces(_preload_content=False, **kw)

    def list_pod_objects(self, namespace: str | None, label_selector: str = "",
                         field_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Every matching pod object (pages of ``LIST_PAGE``) and the list's resourceVersion."""
        describe = self._describe("list", namespace)
        items: list[dict[str, Any]] = []
        cont = ""
        rv = ""
        while True:
            kw: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": (CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)}
            if label_selector:
                kw["label_selector"] = label_selector
            if field_selector:
                kw["field_selector"] = field_selector
            if cont:
                kw["_continue"] = cont
            try:
                resp = self._call(namespace, **kw)
                try:
                    body = json.loads(resp.data)
                finally:
                    resp.release_conn()
            except ValueError as e:
                raise describe(ValueError(f"the API server sent a list that is not JSON: {e}")) from e
            except Exception as e:
                raise describe(e) from e
            meta = body.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion", ""))
            items.extend(body.get("items") or [])
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, rv

    def list_pods(self, namespace: str | None, label_selector: str = "",
                  field_selector: str = "") -> tuple[list[PodRef], str]:
        """Scheduled, not finished pods matching the selectors (evaluated by the API server), and the list's
        resourceVersion."""
        objs, rv = self.list_pod_objects(namespace, label_selector, field_selector)
        pods = [p.ref for p in map(pod_from_object, objs) if p is not None]
        return pods, rv

    def read_pod(self, namespace: str, name: str) -> KubePod | None:
        """One pod (None when it is unscheduled or finished). Raises KubeNotFoundError when it does not exist."""
        describe = self._describe("get", namespace)
        try:
            resp: Any = self._core.read_namespaced_pod(name, namespace, _preload_content=False,
                                                  _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S))
            try:
                obj = json.loads(resp.data)
            finally:
                resp.release_conn()
        except ValueError as e:
            raise describe(ValueError(f"the API server sent a pod that is not JSON: {e}")) from e
        except Exception as e:
            raise describe(e) from e
        return pod_from_object(obj)

    def watch_pods(self, namespace: str | None, *, resource_version: str, label_selector: str = "",
                   field_selector: str = "", timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_S,
                   bookmarks: bool = True) -> WatchStream:
        """Open a watch from ``resource_version``. Events arrive as ``(type, object)``; an ERROR event is left to
        the caller (``status_error``)."""
        describe = self._describe("watch", namespace)
        kw: dict[str, Any] = {
            "watch": True, "resource_version": resource_version, "allow_watch_bookmarks": bookmarks,
            "timeout_seconds": timeout_seconds,
            # The read timeout only catches a dead connection: the server ends the watch after timeout_seconds and
            # sends bookmarks while it is quiet.
            "_request_timeout": (CONNECT_TIMEOUT_S, timeout_seconds + 60),
        }
        if label_selector:
            kw["label_selector"] = label_selector
        if field_selector:
            kw["field_selector"] = field_selector
        try:
            resp = self._call(namespace, **kw)
        except Exception as e:
            raise describe(e) from e
        return WatchStream(resp, describe)

    def status_error(self, status: dict[str, Any], *, verb: str, namespace: str | None) -> KubeError:
        """The error an in-band ERROR event (a Status object) stands for."""
        return _translate_status(int(status.get("code") or 500), str(status.get("reason") or ""),
                                 str(status.get("message") or ""), verb=verb, resource="pods",
                                 namespace=namespace, server=self.server)


# ---- the watch ----


PodCallback = Callable[[PodRef], None]


def _noop(_pod: PodRef) -> None:
    pass


class PodWatch:
    """Keeps a cache of pods current (list, then watch from the list's resourceVersion) on its own thread.

    Callbacks run on the watch thread, after the cache is updated and without locks held; they must not block for
    long. ``on_added``: a pod entered the cache (created, scheduled, or started matching); ``on_modified``: what
    ``KubePod.view`` shows changed (labels, IP, node, phase...); ``on_deleted``: it left (deleted, finished,
    stopped matching). After a re-list the cache is diffed with the list, so each change is reported once, never
    lost and never repeated.
    """

    def __init__(self, api: KubeApi, *, namespace: str | None = None, label_selector: str = "",
                 field_selector: str = "", on_added: PodCallback = _noop, on_modified: PodCallback = _noop,
                 on_deleted: PodCallback = _noop, watch_timeout_s: int = DEFAULT_WATCH_TIMEOUT_S,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0, name: str = "pod-watch") -> None:
        self.api = api
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_added, self.on_modified, self.on_deleted = on_added, on_modified, on_deleted
        self.watch_timeout_s = watch_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._lock = threading.Lock()
        self._cache: dict[str, KubePod] = {}
        self._stream: WatchStream | None = None
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.resource_version = ""
        self.last_error: KubeError | None = None
        self.lists = 0  # how many (re-)lists this watch made: API-server load, and a test hook
        self.watches = 0

    # ---- public ----

    def start(self) -> PodWatch:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the watch now: the open stream is shut down, a backoff wait is cut short."""
        self._stopping.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        """True once the first list is in the cache."""
        return self._synced.wait(timeout)

    def pods(self) -> list[PodRef]:
        with self._lock:
            return [p.ref for p in self._cache.values()]

    def entries(self) -> list[KubePod]:
        with self._lock:
            return list(self._cache.values())

    def get(self, uid: str) -> KubePod | None:
        with self._lock:
            return self._cache.get(uid)

    # ---- the loop ----

    def _run(self) -> None:
        delay = self.backoff_initial_s
        gone_in_a_row = 0
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                started, events = time.monotonic(), self._watch_once()
                self.last_error = None
                if events or time.monotonic() - started >= 1.0:
                    delay = self.backoff_initial_s
                    gone_in_a_row = 0
                    continue
                # A watch that ends at once with nothing in it: do not hammer the server.
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)
            except KubeGoneError as e:
                if self._stopping.is_set():
                    break
                log.info("pod watch: %s; re-listing", e)
                self.resource_version = ""
                gone_in_a_row += 1
                if gone_in_a_row > 1:  # 410 right after a fresh list: something is off; back off
                    self._stopping.wait(delay)
                    delay = min(delay * 2, self.backoff_max_s)
            except KubeError as e:
                if self._stopping.is_set():
                    break
                self.last_error = e
                wait = delay * random.uniform(0.8, 1.2)
                log.warning("pod watch: %s (retrying in %.1f s)", e, wait)
                self._stopping.wait(wait)
                delay = min(delay * 2, self.backoff_max_s)
            except Exception as e:  # a bug must not end the cache's updates silently
                if self._stopping.is_set():
                    break
                self.last_error = KubeError(f"pod watch failed: {type(e).__name__}: {e}")
                log.exception("pod watch failed (retrying in %.1f s)", delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.backoff_max_s)

    def _relist(self) -> None:
        objs, rv = self.api.list_pod_objects(self.namespace, self.label_selector, self.field_selector)
        self.lists += 1
        fresh: dict[str, KubePod] = {}
        for obj in objs:
            p = pod_from_object(obj)
            if p is not None:
                fresh[p.ref.uid] = p
        with self._lock:
            old, self._cache = self._cache, fresh
        self.resource_version = rv
        self.last_error = None
        self._synced.set()
        for uid, p in old.items():
            if uid not in fresh:
                self._emit(self.on_deleted, p.ref)
        for uid, p in fresh.items():
            prev = old.get(uid)
            if prev is None:
                self._emit(self.on_added, p.ref)
            elif prev.view() != p.view():
                self._emit(self.on_modified, p.ref)

    def _watch_once(self) -> int:
        """Stream one watch to its end; returns how many events it carried. Raises KubeError."""
        stream = self.api.watch_pods(self.namespace, resource_version=self.resource_version,
                                     label_selector=self.label_selector, field_selector=self.field_selector,
                                     timeout_seconds=self._timeout())
        self.watches += 1
        self.last_error = None
        with self._lock:
            self._stream = stream
        if self._stopping.is_set():
            stream.abort()
        n = 0
        try:
            for type_, obj in stream:
                if self._stopping.is_set():
                    break
                n += 1
                if type_ == "ERROR":
                    raise self.api.status_error(obj, verb="watch", namespace=self.namespace)
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if type_ != "BOOKMARK":
                    self._apply(type_, obj)
                if rv:
                    self.resource_version = rv
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        return n

    def _timeout(self) -> int:
        # Spread reconnects of many collectors over time, like client-go (timeout in [t, 2t)).
        return int(self.watch_timeout_s * random.uniform(1.0, 2.0))

    def _apply(self, type_: str, obj: dict[str, Any]) -> None:
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        p = None if type_ == "DELETED" else pod_from_object(obj)
        with self._lock:
            prev = self._cache.get(uid)
            if p is None:
                self._cache.pop(uid, None)
            else:
                self._cache[uid] = p
        if p is None:
            if prev is not None:
                self._emit(self.on_deleted, prev.ref)
        elif prev is None:
            self._emit(self.on_added, p.ref)
        elif prev.view() != p.view():
            self._emit(self.on_modified, p.ref)

    @staticmethod
    def _emit(cb: PodCallback, pod: PodRef) -> None:
        try:
            cb(pod)
        except Exception:
            log.exception("pod watch callback failed for %s", pod.display)
