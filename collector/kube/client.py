"""The Kubernetes API client as the collector uses it: configuration, and the few calls podcap makes.

What it owns:

- **Configuration** (``load_api``): a kubeconfig file, else the in-cluster service account. Failures become
  ``KubeConfigError`` with the next step in the message.
- **``KubeApi``**: list, get and watch pods (``_preload_content=False``: raw JSON, see ``pods.py``), the TokenReview
  and SubjectAccessReview that ``auth.py`` decides with, and for the PodCapture controller
  (``podcap.collector.podcaptures``) the generic object calls on any ``group/version/plural`` (list, watch, get,
  create, update, patch, update of ``/status``; raw JSON objects, ``Resource`` names the kind) and core/v1 Events.
  Every call goes through ``_request``, ``watch_pods`` or ``watch_objects``, which translate whatever the client
  raises through ``errors.translate`` (``raise ... from e``), naming the verb, the resource and the namespace.
- **``WatchStream``**: one open watch response, read by hand so that ``abort()`` can end it at once from another
  thread: closing a socket does not wake a thread blocked reading it, shutting it down does.

This is the only module that talks to the ``kubernetes`` package (``errors.py`` imports its ``ApiException`` to
translate it). The informer loop over these calls is ``watch.py``; the shared pod cache is ``inventory.py``.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.config.config_exception import ConfigException

from podcap.collector.kube.errors import KubeConfigError, KubeError, KubeNotFoundError, status_error, translate

LIST_PAGE = 500
CONNECT_TIMEOUT_S = 5.0
LIST_READ_TIMEOUT_S = 60.0
DEFAULT_WATCH_TIMEOUT_S = 300

Describe = Callable[[BaseException], KubeError]


@dataclass(frozen=True)
class Resource:
    """A kind of object by its API coordinates (``group`` "" for core/v1)."""

    group: str
    version: str
    plural: str

    @property
    def text(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


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


# ---- watch responses ----


class WatchStream:
    """One open watch response: iterate ``(type, object)``; ``abort()`` from any thread ends it at once."""

    def __init__(self, resp: Any, describe: Describe) -> None:
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


# ---- the calls ----


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
        authn: Any = k8s_client.AuthenticationV1Api(self._client)
        review = self._request(self._describe("create", "tokenreviews", None), "a TokenReview",
                               lambda: authn.create_token_review(body, _preload_content=False))
        status = review.get("status") or {}
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
        authz: Any = k8s_client.AuthorizationV1Api(self._client)
        review = self._request(self._describe("create", "subjectaccessreviews", None), "a SubjectAccessReview",
                               lambda: authz.create_subject_access_review(body, _preload_content=False))
        status = review.get("status") or {}
        return bool(status.get("allowed")), str(status.get("reason", ""))

    def list_pod_objects(self, namespace: str | None, label_selector: str = "",
                         field_selector: str = "") -> tuple[list[dict[str, Any]], str]:
        """Every matching pod object (pages of ``LIST_PAGE``) and the list's resourceVersion."""
        return self._paged_list(self._describe("list", "pods", namespace),
                                partial(self._pods, namespace, label_selector, field_selector))

    def watch_pods(self, namespace: str | None, *, resource_version: str, label_selector: str = "",
                   field_selector: str = "", timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_S,
                   bookmarks: bool = True) -> WatchStream:
        """Open a watch from ``resource_version``. Events arrive as ``(type, object)``; an ERROR event is left to
        the caller (``status_error``)."""
        return self._open_watch(self._describe("watch", "pods", namespace),
                                partial(self._pods, namespace, label_selector, field_selector),
                                resource_version=resource_version, timeout_seconds=timeout_seconds,
                                bookmarks=bookmarks)

    def status_error(self, status: dict[str, Any], *, verb: str, namespace: str | None) -> KubeError:
        """The error an in-band ERROR event (a Status object) of a pod watch stands for."""
        return status_error(status, verb=verb, resource="pods", namespace=namespace, server=self.server)

    # ---- capture targets and payload policy: workloads, Services, EndpointSlices, namespaces (h7targets) ----

    def read_object(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        """A workload (``deployment``, ``statefulset``, ``daemonset``, ``job``) or ``service`` as raw JSON. Raises
        KubeNotFoundError when it does not exist."""
        resource, call = self._kind_call(kind, "read")
        return self._request(self._describe("get", resource, namespace), f"a {kind}",
                             lambda: call(name, namespace, _preload_content=False,
                                          _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))

    def list_object_names(self, kind: str, namespace: str) -> list[str]:
        """The names of the objects of ``kind`` (as ``read_object``) in ``namespace``, for error messages."""
        resource, call = self._kind_call(kind, "list")
        body = self._request(self._describe("list", resource, namespace), f"a {kind} list",
                             lambda: call(namespace, _preload_content=False, limit=LIST_PAGE,
                                          _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))
        return sorted(str((o.get("metadata") or {}).get("name", "")) for o in body.get("items") or [])

    def _kind_call(self, kind: str, verb: str) -> tuple[str, Callable[..., Any]]:
        """The resource name of ``kind`` (as ``read_object``) and its client's ``{verb}_namespaced_...`` call."""
        apps: Any = k8s_client.AppsV1Api(self._client)
        batch: Any = k8s_client.BatchV1Api(self._client)
        api, resource, suffix = {
            "deployment": (apps, "deployments", "deployment"),
            "statefulset": (apps, "statefulsets", "stateful_set"),
            "daemonset": (apps, "daemonsets", "daemon_set"),
            "job": (batch, "jobs", "job"),
            "service": (self._core, "services", "service"),
        }[kind]
        return resource, getattr(api, f"{verb}_namespaced_{suffix}")

    def list_endpoint_slices(self, namespace: str, label_selector: str) -> tuple[list[dict[str, Any]], str]:
        """The EndpointSlices (discovery.k8s.io/v1) matching ``label_selector`` and the list's resourceVersion."""
        disc: Any = k8s_client.DiscoveryV1Api(self._client)
        body = self._request(self._describe("list", "endpointslices", namespace), "an EndpointSlice list",
                             lambda: disc.list_namespaced_endpoint_slice(
                                 namespace, label_selector=label_selector, _preload_content=False,
                                 _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))
        return list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", ""))

    def watch_endpoint_slices(self, namespace: str, *, resource_version: str, label_selector: str,
                              timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_S) -> WatchStream:
        """A watch of EndpointSlices from ``resource_version`` (events as ``watch_pods``'s)."""
        disc: Any = k8s_client.DiscoveryV1Api(self._client)
        return self._open_watch(self._describe("watch", "endpointslices", namespace),
                                partial(disc.list_namespaced_endpoint_slice, namespace, label_selector=label_selector,
                                        _preload_content=False),
                                resource_version=resource_version, timeout_seconds=timeout_seconds)

    def read_namespace(self, name: str) -> dict[str, Any] | None:
        """A namespace as raw JSON; None when it does not exist."""
        try:
            return self._request(self._describe("get", "namespaces", None), "a namespace",
                                 lambda: self._core.read_namespace(
                                     name, _preload_content=False,
                                     _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))
        except KubeNotFoundError:
            return None

    def list_namespaces(self) -> list[dict[str, Any]]:
        """Every namespace as raw JSON."""
        body = self._request(self._describe("list", "namespaces", None), "a namespace list",
                             lambda: self._core.list_namespace(
                                 _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)))
        return list(body.get("items") or [])

    def endpoint_slice_error(self, status: dict[str, Any], *, namespace: str | None) -> KubeError:
        """The error an in-band ERROR event of an EndpointSlice watch stands for."""
        return status_error(status, verb="watch", resource="endpointslices", namespace=namespace,
                            server=self.server)

    # ---- any kind of object (the PodCapture controller) ----

    def _custom(self) -> Any:
        return k8s_client.CustomObjectsApi(self._client)

    def list_objects(self, res: Resource, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        """Every object of ``res`` (pages of ``LIST_PAGE``) and the list's resourceVersion."""
        return self._paged_list(self._describe("list", res.text, namespace),
                                partial(self._list_call, res, namespace, _preload_content=False))

    def _list_call(self, res: Resource, namespace: str | None, **kw: Any) -> Any:
        if namespace:
            return self._custom().list_namespaced_custom_object(res.group, res.version, namespace, res.plural, **kw)
        return self._custom().list_cluster_custom_object(res.group, res.version, res.plural, **kw)

    def watch_objects(self, res: Resource, *, resource_version: str, namespace: str | None = None,
                      timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_S) -> WatchStream:
        """Watch ``res`` from ``resource_version`` (with bookmarks); an ERROR event is left to the caller."""
        return self._open_watch(self._describe("watch", res.text, namespace),
                                partial(self._list_call, res, namespace, _preload_content=False),
                                resource_version=resource_version, timeout_seconds=timeout_seconds)

    def object_status_error(self, status: dict[str, Any], res: Resource, namespace: str | None) -> KubeError:
        """The error an in-band ERROR event of a watch of ``res`` stands for."""
        return status_error(status, verb="watch", resource=res.text, namespace=namespace, server=self.server)

    def get_object(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any]:
        """One object. Raises KubeNotFoundError when it does not exist."""
        ns = namespace or ""
        return self._request(self._describe("get", res.text, namespace), "an object", lambda: (
            self._custom().get_namespaced_custom_object(res.group, res.version, ns, res.plural, name,
                                                        _preload_content=False,
                                                        _request_timeout=(CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S))
            if ns else self._custom().get_cluster_custom_object(res.group, res.version, res.plural, name,
                                                                _preload_content=False)))

    def create_object(self, res: Resource, namespace: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """Create; a KubeApiError with code 409 when it exists."""
        ns = namespace or ""
        return self._request(self._describe("create", res.text, namespace), "an object", lambda: (
            self._custom().create_namespaced_custom_object(res.group, res.version, ns, res.plural, body,
                                                           _preload_content=False)
            if ns else self._custom().create_cluster_custom_object(res.group, res.version, res.plural, body,
                                                                   _preload_content=False)))

    def replace_object(self, res: Resource, namespace: str | None, name: str, body: dict[str, Any], *,
                       status: bool = False) -> dict[str, Any]:
        """Update (PUT) the object, or its ``/status``; a KubeApiError with code 409 when ``body``'s
        resourceVersion is stale."""
        ns = namespace or ""
        custom = self._custom()
        verb = "update status of" if status else "update"

        def call() -> Any:
            if status:
                return custom.replace_namespaced_custom_object_status(res.group, res.version, ns, res.plural, name,
                                                                      body, _preload_content=False)
            if ns:
                return custom.replace_namespaced_custom_object(res.group, res.version, ns, res.plural, name, body,
                                                               _preload_content=False)
            return custom.replace_cluster_custom_object(res.group, res.version, res.plural, name, body,
                                                        _preload_content=False)

        return self._request(self._describe(verb, res.text, namespace), "an object", call)

    def patch_object(self, res: Resource, namespace: str | None, name: str,
                     patch: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        """A JSON patch (``patch`` a list: RFC 6902, e.g. with a ``test`` of the resourceVersion) or a JSON merge
        patch (a dict; a ``metadata.resourceVersion`` in it is a precondition: 409 when stale)."""
        ns = namespace or ""
        return self._request(self._describe("patch", res.text, namespace), "an object", lambda: (
            self._custom().patch_namespaced_custom_object(
                res.group, res.version, ns, res.plural, name, patch, _preload_content=False,
                _content_type="application/json-patch+json" if isinstance(patch, list)
                else "application/merge-patch+json")))

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """A core/v1 Event (what ``kubectl describe`` lists under the object)."""
        core: Any = self._core  # typed for a V1Event; a dict is sent as is
        return self._request(self._describe("create", "events", namespace), "an event",
                             lambda: core.create_namespaced_event(namespace, body, _preload_content=False))

    # ---- core/v1 Events (flight recorder triggers and saves, issue 24) ----

    def list_event_objects(self, *, field_selector: str) -> tuple[list[dict[str, Any]], str]:
        """Every Event (all namespaces) matching ``field_selector``, and the list's resourceVersion."""
        return self._paged_list(self._describe("list", "events", None),
                                partial(self._core.list_event_for_all_namespaces, _preload_content=False,
                                        field_selector=field_selector))

    def watch_events(self, *, resource_version: str, field_selector: str,
                     timeout_seconds: int = DEFAULT_WATCH_TIMEOUT_S) -> WatchStream:
        """Open a watch of Events (all namespaces) from ``resource_version``."""
        return self._open_watch(self._describe("watch", "events", None),
                                partial(self._core.list_event_for_all_namespaces, _preload_content=False,
                                        field_selector=field_selector),
                                resource_version=resource_version, timeout_seconds=timeout_seconds)

    def event_status_error(self, status: dict[str, Any]) -> KubeError:
        """The error an in-band ERROR event of an Event watch stands for."""
        return status_error(status, verb="watch", resource="events", namespace=None, server=self.server)

    # ---- one request ----

    def _describe(self, verb: str, resource: str, namespace: str | None) -> Describe:
        return lambda e: translate(e, verb=verb, resource=resource, namespace=namespace, server=self.server)

    def _pods(self, namespace: str | None, label_selector: str, field_selector: str, **kw: Any) -> Any:
        """List (or watch) pods in one namespace or all, unevaluated (``_preload_content=False``)."""
        if label_selector:
            kw["label_selector"] = label_selector
        if field_selector:
            kw["field_selector"] = field_selector
        if namespace:
            return self._core.list_namespaced_pod(namespace, _preload_content=False, **kw)
        return self._core.list_pod_for_all_namespaces(_preload_content=False, **kw)

    def _paged_list(self, describe: Describe, call: Callable[..., Any]) -> tuple[list[dict[str, Any]], str]:
        """Every item ``call`` (a list call, unevaluated) returns, in pages of ``LIST_PAGE``, and the first page's
        resourceVersion (the list's)."""
        items: list[dict[str, Any]] = []
        cont, rv = "", ""
        while True:
            kw: dict[str, Any] = {"limit": LIST_PAGE, "_request_timeout": (CONNECT_TIMEOUT_S, LIST_READ_TIMEOUT_S)}
            if cont:
                kw["_continue"] = cont
            page = self._request(describe, "a list", partial(call, **kw))
            meta = page.get("metadata") or {}
            rv = rv or str(meta.get("resourceVersion", ""))
            items.extend(page.get("items") or [])
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, rv

    @staticmethod
    def _open_watch(describe: Describe, call: Callable[..., Any], *, resource_version: str, timeout_seconds: int,
                    bookmarks: bool = True) -> WatchStream:
        """Open a watch with ``call`` (the kind's list call) from ``resource_version``; an ERROR event is left to
        the caller."""
        try:
            resp = call(watch=True, resource_version=resource_version, allow_watch_bookmarks=bookmarks,
                        timeout_seconds=timeout_seconds,
                        # The read timeout only catches a dead connection: the server ends the watch after
                        # timeout_seconds and sends bookmarks while it is quiet.
                        _request_timeout=(CONNECT_TIMEOUT_S, timeout_seconds + 60))
        except Exception as e:
            raise describe(e) from e
        return WatchStream(resp, describe)

    @staticmethod
    def _request(describe: Describe, what: str, call: Callable[[], Any]) -> dict[str, Any]:
        """Make one call and decode its JSON object; whatever fails is translated (``describe``)."""
        try:
            resp = call()
            try:
                body = json.loads(resp.data)
            finally:
                resp.release_conn()
        except ValueError as e:
            raise describe(ValueError(f"the API server sent {what} that is not JSON: {e}")) from e
        except Exception as e:
            raise describe(e) from e
        if not isinstance(body, dict):
            raise describe(ValueError(f"the API server sent {what} that is not a JSON object"))
        return body
