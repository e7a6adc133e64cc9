"""Pods found through ``/proc/*/cgroup``: the fallback pod source for nodes whose CRI socket the agent cannot use.

Every container of a pod lives in a cgroup whose path carries the pod uid, in one of two layouts the kubelet
writes: cgroupfs (``/kubepods/<qos>/pod<uid>/<container>``, Guaranteed pods directly under ``/kubepods/``) and
systemd (``.../kubepods-<qos>-pod<uid_with_underscores>.slice/...``). ``pod_uid_from_cgroup`` parses both, from
cgroup v1 and v2 lines, and is pure so it is unit-tested with a table.

A pod's processes share one network namespace; the sandbox ("pause") process is the oldest of them, so the pod is
represented by its oldest process in a network namespace other than the agent's own (the agent runs with
hostNetwork; a pod process in that namespace means a hostNetwork pod: then its oldest process, and no veth). The
namespace is opened as ``<proc_root>/<pid>/ns/net`` and the host veth read over netlink.

What this source cannot know: pod names, namespaces and labels live only in the Kubernetes API and the runtime.
So ``locate(uid)`` is the meaningful operation (the collector resolves names to uids through the API), and
``list_pods`` reports each pod under the namespace ``podcap-proc`` with its uid as its name, no labels and no IP —
visibly not a real name, yet valid wherever a pod name is (a lowercase uid is a DNS-1123 subdomain).
``sandbox_key`` is ``<netns inode>-<pid>``: both change when the sandbox is recreated.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

from podcap.agent.pods.source import PodNetwork, PodNotFoundError, PodSourceError, host_veth_of
from podcap.names import InvalidNameError, NodeName, PodUid, check_pod_uid
from podcap.pods import PodRef

PROC_NAMESPACE: Final = "podcap-proc"

# cgroupfs: ".../kubepods[/besteffort|/burstable]/pod<uid>[/...]". Uids are UUIDs, or 32 hex digits for static
# pods (a hash of the manifest).
_CGROUPFS = re.compile(r"(?:^|/)kubepods(?:/[a-z]+)?/pod([0-9a-fA-F][0-9a-fA-F-]*)(?:/|$)")
# systemd: "...kubepods-besteffort-pod<uid with '_' for '-'>.slice"; kind/k3s nest it as "kubelet-kubepods-...".
# The slice name may be followed by "/" (systemd driver: ".../cri-containerd-<id>.scope") or by ":" (containerd's
# "slice:prefix:id" cgroupsPath taken literally by a cgroupfs runc).
_SYSTEMD = re.compile(r"(?:^|[/-])kubepods(?:-[a-z]+)?-pod([0-9a-fA-F][0-9a-fA-F_]*)\.slice(?:[/:]|$)")


def pod_uid_from_cgroup(text: str) -> PodUid | None:
    """The pod uid in a ``/proc/<pid>/cgroup`` file (``hierarchy:controllers:path`` lines), or None."""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        path = parts[2]
        m = _CGROUPFS.search(path)
        uid = m.group(1) if m else None
        if uid is None:
            m = _SYSTEMD.search(path)
            uid = m.group(1).replace("_", "-") if m else None
        if uid is not None:
            try:
                return check_pod_uid(uid.lower())
            except InvalidNameError:
                continue
    return None


@dataclass(frozen=True)
class _Proc:
    pid: int
    start: int  # clock ticks after boot (field 22 of /proc/<pid>/stat)
    netns: int  # inode of its network namespace


class ProcPodSource:
    """``PodSource`` over a procfs (``proc_root``, e.g. ``/host/proc`` when the agent runs in a container)."""

    name = "proc"

    def __init__(self, node: NodeName, proc_root: str = "/proc") -> None:
        self.node = node
        self.proc_root = proc_root.rstrip("/") or "/"

    def _host_netns(self) -> int:
        # The agent runs in the host's network namespace (hostNetwork: it must, to see the host veths), so its own
        # namespace is "the host's". Not <proc_root>/1: pid 1 may be unreadable even to root (another user
        # namespace owns it), and the agent's namespace is the one its captures would run in anyway.
        try:
            return os.stat("/proc/thread-self/ns/net").st_ino
        except OSError as e:
            raise PodSourceError(f"cannot read the agent's own network namespace: {e.strerror}") from e

    def _read_proc(self, pid: int) -> _Proc | None:
        base = f"{self.proc_root}/{pid}"
        try:
            with open(f"{base}/stat", "rb") as f:
                stat = f.read()
            netns = os.stat(f"{base}/ns/net").st_ino
        except OSError:
            return None  # exited, or a kernel thread without a readable namespace
        # The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            start = int(fields[19])
        except (IndexError, ValueError):
            return None
        return _Proc(pid, start, netns)

    def _scan(self) -> dict[PodUid, list[int]]:
        try:
            entries = os.listdir(self.proc_root)
        except OSError as e:
            raise PodSourceError(f"cannot list {self.proc_root}: {e.strerror}") from e
        pods: dict[PodUid, list[int]] = {}
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(f"{self.proc_root}/{entry}/cgroup", encoding="utf-8", errors="replace") as f:
                    uid = pod_uid_from_cgroup(f.read())
            except OSError:
                continue
            if uid is not None:
                pods.setdefault(uid, []).append(int(entry))
        return pods

    def _sandbox(self, pids: list[int], host_netns: int) -> _Proc | None:
        procs = [p for p in (self._read_proc(pid) for pid in pids) if p is not None]
        if not procs:
            return None
        isolated = [p for p in procs if p.netns != host_netns]
        return min(isolated or procs, key=lambda p: (p.start, p.pid))

    def _network(self, proc: _Proc, host_netns: int) -> PodNetwork:
        path = f"{self.proc_root}/{proc.pid}/ns/net"
        veth = None if proc.netns == host_netns else host_veth_of(path)
        return PodNetwork(netns_path=path, host_veth=veth, sandbox_key=f"{proc.netns}-{proc.pid}")

    def list_pods(self) -> list[PodRef]:
        host_netns = self._host_netns()
        pods = []
        for uid, pids in sorted(self._scan().items()):
            proc = self._sandbox(pids, host_netns)
            if proc is None:
                continue
            pods.append(
                PodRef(
                    namespace=PROC_NAMESPACE,
                    name=uid,
                    uid=uid,
                    node=self.node,
                    host_network=proc.netns == host_netns,
                    sandbox_key=f"{proc.netns}-{proc.pid}",
                )
            )
        return pods

    def locate(self, uid: PodUid) -> PodNetwork:
        host_netns = self._host_netns()
        pids = self._scan().get(PodUid(uid.lower()), [])
        proc = self._sandbox(pids, host_netns)
        if proc is None:
            raise PodNotFoundError(f"no process of pod uid {uid} under {self.proc_root}")
        return self._network(proc, host_netns)
