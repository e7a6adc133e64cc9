"""Pods from the container runtime over CRI: the pod source for real nodes.

Inventory comes from ``ListPodSandbox`` (READY sandboxes only) plus one ``PodSandboxStatus`` per pod for its IP and
network mode; the pod's own labels are kept and the kubelet's bookkeeping labels (``io.kubernetes.*``) dropped.
``locate`` asks ``PodSandboxStatus(verbose=true)`` for the sandbox pid, netns path and CNI result.

Why the fallbacks: a containerized agent may not see the runtime's netns path (``/var/run/netns/cni-...`` lives in
the host's mount namespace), so when that path cannot be opened the agent uses ``<proc_root>/<pid>/ns/net`` (the
host's procfs, e.g. a hostPath ``/proc`` mounted at ``/host/proc``). The host veth is taken from the CNI result when
exactly one host-side veth is listed there, and otherwise read over netlink (``source.host_veth_of``), which works for
runtimes that report no CNI result (CRI-O) and plugins that do not name the veth.

A pod can have several sandboxes while the kubelet replaces one (a sandbox restart): the newest READY one wins,
and its id is the ``sandbox_key``, so a restart is seen as a key change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from podcap.agent import netlink
from podcap.agent.pods import cri, cri_declaration
from podcap.agent.pods.source import PodNetwork, PodNotFoundError, PodSourceError, host_veth_of
from podcap.names import InvalidNameError, NodeName, PodUid, check_namespace, check_pod_name, check_pod_uid
from podcap.pods import PodRef

# Labels the kubelet (or the runtime) sets on sandboxes for its own bookkeeping, not the pod's labels.
_INTERNAL_LABEL_PREFIXES = ("io.kubernetes.",)


def pod_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if not k.startswith(_INTERNAL_LABEL_PREFIXES)}


def newest_ready(sandboxes: list[cri.Sandbox]) -> dict[str, cri.Sandbox]:
    """uid -> its newest READY sandbox (ties broken by attempt, then id, so the choice is stable)."""
    best: dict[str, cri.Sandbox] = {}
    for sb in sandboxes:
        if not sb.ready or not sb.uid:
            continue
        cur = best.get(sb.uid)
        if cur is None or (sb.created_at, sb.attempt, sb.id) > (cur.created_at, cur.attempt, cur.id):
            best[sb.uid] = sb
    return best


class CriPodSource:
    """``PodSource`` backed by a CRI runtime socket (``endpoint`` None: auto-detect a well-known socket)."""

    name = "cri"

    def __init__(
        self,
        node: NodeName,
        endpoint: str | None = None,
        *,
        proc_root: str = "/proc",
        host_root: str = "",
        timeout: float = 5.0,
        client: cri.CriClient | None = None,
    ) -> None:
        self.node = node
        self.proc_root = proc_root.rstrip("/") or "/"
        self.host_root = host_root.rstrip("/")
        if client is None:
            if endpoint is None:
                roots = ("", self.host_root) if self.host_root else cri.DEFAULT_HOST_ROOTS
                endpoint = cri.detect_endpoint(host_roots=roots)
            client = cri.CriClient(endpoint, timeout=timeout)
        self.client = client

    def close(self) -> None:
        self.client.close()

    def _ready(self) -> dict[str, cri.Sandbox]:
        return newest_ready(self.client.list_sandboxes(ready_only=True))

    def list_pods(self) -> list[PodRef]:
        pods = []
        for uid, sb in sorted(self._ready().items()):
            try:
                check_namespace(sb.namespace)
                check_pod_name(sb.name)
                pod_uid = check_pod_uid(uid)
            except InvalidNameError:
                continue  # not a Kubernetes pod (some other CRI user's sandbox)
            try:
                status = self.client.sandbox_status(sb.id)
            except PodNotFoundError:
                continue  # removed between the list and the status call
            pods.append(
                PodRef(
                    namespace=sb.namespace,
                    name=sb.name,
                    uid=pod_uid,
                    node=self.node,
                    labels=pod_labels(sb.labels),
                    ip=status.ip,
                    host_network=status.network_mode == cri_declaration.NAMESPACE_MODE_NODE,
                    sandbox_key=sb.id,
                )
            )
        return pods

    def locate(self, uid: PodUid) -> PodNetwork:
        sb = self._ready().get(uid)
        if sb is None:
            raise PodNotFoundError(f"no ready pod sandbox with uid {uid} on this node (runtime {self.client.endpoint})")
        status = self.client.sandbox_status(sb.id, verbose=True)
        pid = cri.sandbox_pid(status.info)
        host_network = status.network_mode == cri_declaration.NAMESPACE_MODE_NODE
        path = self._netns_path(cri.sandbox_netns_path(status.info), pid, host_network)
        if path is None:
            raise PodSourceError(
                f"pod {sb.namespace}/{sb.name}: the runtime reports no usable network namespace (netns path "
                f"{cri.sandbox_netns_path(status.info)!r}, pid {pid}); mount the host's /proc into the agent and "
                f"set its proc root (now {self.proc_root})"
            )
        veth = None if host_network else self._host_veth(status.info, path)
        return PodNetwork(netns_path=path, host_veth=veth, sandbox_key=sb.id)

    def _netns_path(self, reported: str, pid: int, host_network: bool) -> str | None:
        candidates = []
        if reported and not host_network:
            candidates.append(reported)
            if self.host_root:
                candidates.append(self.host_root + reported)
        if pid > 0:
            candidates.append(f"{self.proc_root}/{pid}/ns/net")
        for path in candidates:
            try:
                os.stat(path)
            except OSError:
                continue
            return path
        return None

    def _host_veth(self, info: Mapping[str, object], netns_path: str) -> str | None:
        named = cri.cni_host_interfaces(info)
        if named:
            try:
                veths = {link.name for link in netlink.links() if link.kind == "veth"}
            except (OSError, netlink.NetlinkError):
                veths = set()
            found = [name for name in named if name in veths]
            if len(found) == 1:
                return found[0]
        return host_veth_of(netns_path)
