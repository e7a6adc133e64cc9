"""A kubelet for one pod template: turns a rendered pod spec into the CRI calls a kubelet makes, on the test node.

The deploy tests run the agent DaemonSet's and the collector StatefulSet's pods from ``kubectl kustomize deploy/base``
(``tests/node/manifests.py``); nothing here knows what those manifests say. What it does, as the kubelet does it:

- sandbox: host network/PID/IPC from the spec, the pod's labels plus ``io.kubernetes.pod.*``, the QoS class's cgroup
  parent, the pod-level run-as user/group, fsGroup and supplemental groups, seccomp, privileged if any container is;
  DNS by ``dnsPolicy`` (cluster DNS with the cluster's search domains, or the node's resolv.conf for ``Default``);
- containers: the image (the kubelet's normalized reference), ``command``/``args`` with ``$(VAR)`` expanded,
  ``env`` (values, downward-API ``fieldRef``s, the ``KUBERNETES_SERVICE_*`` variables of the API service),
  capabilities, privileged, ``allowPrivilegeEscalation`` (no_new_privs), read-only root filesystem, run-as user/group
  (``runAsNonRoot`` is enforced), seccomp and AppArmor profiles, the default masked and read-only /proc paths of an
  unprivileged container, CPU and memory limits;
- volumes as bind mounts: ``hostPath`` (with its ``type`` checked or created), ``emptyDir``, ``secret`` (items and
  modes, group fsGroup), a ``volumeClaimTemplates`` claim as a directory that outlives the pod (fsGroup applied as
  ``fsGroupChangePolicy`` says), and the service account token (unless ``automountServiceAccountToken`` is false on
  the pod or its ServiceAccount); ``readOnly`` and ``mountPropagation`` as given;
- probes (``grpc``, ``tcpSocket``, ``httpGet``) run once on demand; deletion stops containers with the pod's grace
  period, then the sandbox.

The cluster around the pod (node name, DNS server, the API service, Secrets, and where this test node keeps the
host paths it relocates, such as its private containerd socket directory) comes from a ``Cluster``. A field the
translation does not know makes it fail loudly (``UnsupportedSpecError``), so a manifest change is never silently
half-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.node import cri_runtime
from tests.node.harness import TestNode

Obj = dict[str, Any]

# k8s.io/kubernetes/pkg/securitycontext: what an unprivileged container with procMount Default gets.
DEFAULT_MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                        "/sys/devices/virtual/powercap")
DEFAULT_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_KNOWN_CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "ports", "startupProbe",
                         "livenessProbe", "readinessProbe", "resources", "securityContext", "volumeMounts",
                         "workingDir", "terminationMessagePath", "terminationMessagePolicy"}
_KNOWN_POD_KEYS = {"serviceAccountName", "automountServiceAccountToken", "hostPID", "hostNetwork", "hostIPC",
                   "dnsPolicy", "tolerations", "terminationGracePeriodSeconds", "securityContext", "containers",
                   "volumes", "nodeSelector", "affinity", "priorityClassName", "restartPolicy"}


class UnsupportedSpecError(RuntimeError):
    pass


class PodStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class ApiService:
    host: str
    port: int
    ca_pem: bytes


@dataclass
class Cluster:
    """What the kubelet takes from its cluster rather than from the pod."""

    node_name: str
    dns_server: str | None = None
    cluster_domain: str = "cluster.local"
    api: ApiService | None = None
    secrets: dict[tuple[str, str], dict[str, bytes]] = field(default_factory=dict)  # (namespace, name) -> data
    tokens: dict[tuple[str, str], str] = field(default_factory=dict)  # (namespace, service account) -> token
    service_accounts: dict[tuple[str, str], Obj] = field(default_factory=dict)
    host_paths: dict[str, str] = field(default_factory=dict)  # node path -> where this test node keeps it


@dataclass
class RunningPod:
    name: str
    namespace: str
    uid: str
    spec: Obj
    sandbox_id: str
    ip: str
    pod_dir: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id
    log_dir: str = ""


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity (``100m``, ``1``, ``256Mi``, ``1Gi``, ``1e3``) as a number."""
    text = str(value)
    suffixes = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                "Ti": 2**40}
    m = re.fullmatch(r"([0-9.eE+-]+?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", text)
    if not m:
        raise UnsupportedSpecError(f"quantity {text!r}")
    return float(m.group(1)) * suffixes.get(m.group(2) or "", 1)


def expand(text: str, env: Mapping[str, str]) -> str:
    """The kubelet's ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is a literal ``$``, the rest stays."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i) and (end := text.find(")", i)) > 0:
            name = text[i + 2 : end]
            out.append(env[name] if name in env else text[i : end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def normalized_image(image: str) -> str:
    first = image.split("/", 1)[0]
    if "/" not in image:
        ref = f"docker.io/library/{image}"
    elif "." in first or ":" in first or first == "localhost":
        ref = image
    else:
        ref = f"docker.io/{image}"
    return ref if ":" in ref.rsplit("/", 1)[-1] or "@" in ref else ref + ":latest"


def _profile(profile: Obj | None, *, apparmor: bool) -> str:
    if not profile:
        return ""
    kind = profile.get("type")
    if kind == "RuntimeDefault":
        return "runtime/default"
    if kind == "Unconfined":
        return "unconfined"
    if kind == "Localhost":
        return f"localhost/{profile['localhostProfile']}"
    raise UnsupportedSpecError(f"{'appArmorProfile' if apparmor else 'seccompProfile'} type {kind!r}")


def qos_class(containers: list[Obj]) -> str:
    requests = [c.get("resources", {}).get("requests", {}) for c in containers]
    limits = [c.get("resources", {}).get("limits", {}) for c in containers]
    if not any(requests) and not any(limits):
        return "besteffort"
    guaranteed = all(
        lim.get(r) is not None and parse_quantity(req.get(r, lim[r])) == parse_quantity(lim[r])
        for req, lim in zip(requests, limits, strict=True) for r in ("cpu", "memory"))
    return "guaranteed" if guaranteed else "burstable"


class Kubelet:
    """Runs pods from pod templates on ``node`` within ``cluster``."""

    def __init__(self, node: TestNode, cluster: Cluster) -> None:
        self.node = node
        self.cluster = cluster
        self.root = os.path.join(node.workdir, "kubelet")
        self.pods: dict[str, RunningPod] = {}  # uid -> pod

    # -- running a pod ---------------------------------------------------------------------------------------

    def run(self, template: Obj, *, name: str, namespace: str, claims: Mapping[str, str] | None = None,
            timeout: float = 60) -> RunningPod:
        """Run the pod ``template`` (``metadata`` + ``spec``) as pod ``namespace/name``. ``claims`` maps volume
        names to PersistentVolumeClaim names (a StatefulSet's ``<template>-<pod>``)."""
        spec: Obj = template["spec"]
        unknown = set(spec) - _KNOWN_POD_KEYS
        if unknown:
            raise UnsupportedSpecError(f"pod spec fields this kubelet does not run: {sorted(unknown)}")
        uid = str(uuid.uuid4())
        labels = dict(template.get("metadata", {}).get("labels", {}))
        pod_dir = os.path.join(self.root, "pods", uid)
        os.makedirs(pod_dir)
        host_network = bool(spec.get("hostNetwork"))
        ns_opts = {"network": "NODE" if host_network else "POD", "pid": "NODE" if spec.get("hostPID") else "CONTAINER",
                   "ipc": "NODE" if spec.get("hostIPC") else "POD"}
        pod_sc: Obj = spec.get("securityContext", {})
        qos = qos_class(spec["containers"])
        parent = "/kubepods" + ("" if qos == "guaranteed" else f"/{qos}") + f"/pod{uid}"
        self.node.track_cgroup_parent(parent)
        log_dir = os.path.join(self.node.workdir, "logs", "pods", f"{namespace}_{name}_{uid}")
        os.makedirs(log_dir, exist_ok=True)
        sandbox_sc: Obj = {"namespace_options": ns_opts}
        if "runAsUser" in pod_sc:
            sandbox_sc["run_as_user"] = {"value": pod_sc["runAsUser"]}
        if "runAsGroup" in pod_sc:
            sandbox_sc["run_as_group"] = {"value": pod_sc["runAsGroup"]}
        groups = self._supplemental_groups(pod_sc)
        if groups:
            sandbox_sc["supplemental_groups"] = groups
        if any(c.get("securityContext", {}).get("privileged") for c in spec["containers"]):
            sandbox_sc["privileged"] = True
        seccomp = _profile(pod_sc.get("seccompProfile"), apparmor=False)
        if seccomp:
            sandbox_sc["seccomp_profile_path"] = seccomp
        config: Obj = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "attempt": 0},
            "hostname": "" if host_network else name,
            "log_directory": log_dir,
            "labels": {**labels, "io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": namespace,
                       "io.kubernetes.pod.uid": uid},
            "annotations": {"kubernetes.io/config.source": "api", "kubernetes.io/config.seen": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "linux": {"cgroup_parent": parent, "security_context": sandbox_sc},
        }
        dns = self._dns_config(spec, namespace)
        if dns is not None:
            config["dns_config"] = dns
        client = self.node.cri_client()
        sandbox_id = client.invoke("RunPodSandbox", {"config": config}, timeout=timeout).pod_sandbox_id
        status = client.sandbox_status(sandbox_id, verbose=True)
        self.node.track_sandbox(status.info)
        pod = RunningPod(name, namespace, uid, spec, sandbox_id, status.ip, pod_dir, log_dir=log_dir)
        self.pods[uid] = pod
        mounts_by_volume = self._volumes(pod, claims or {})
        for container in spec["containers"]:
            unknown = set(container) - _KNOWN_CONTAINER_KEYS
            if unknown:
                raise UnsupportedSpecError(f"container fields this kubelet does not run: {sorted(unknown)}")
            ctr_config = self._container_config(pod, container, mounts_by_volume, ns_opts)
            cid = client.invoke("CreateContainer", {"pod_sandbox_id": sandbox_id, "config": ctr_config,
                                                    "sandbox_config": config}, timeout=timeout).container_id
            pod.containers[container["name"]] = cid
            client.invoke("StartContainer", {"container_id": cid}, timeout=timeout)
        return pod

    def _supplemental_groups(self, pod_sc: Obj) -> list[int]:
        groups = [pod_sc["fsGroup"]] if "fsGroup" in pod_sc else []
        return groups + [g for g in pod_sc.get("supplementalGroups", []) if g not in groups]

    def _dns_config(self, spec: Obj, namespace: str) -> Obj | None:
        policy = spec.get("dnsPolicy", "ClusterFirst")
        host_network = bool(spec.get("hostNetwork"))
        cluster_dns = policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not host_network)
        if policy == "None":
            raise UnsupportedSpecError("dnsPolicy None (dnsConfig)")
        if not cluster_dns or self.cluster.dns_server is None:
            return None  # the node's own resolv.conf, as for dnsPolicy Default
        domain = self.cluster.cluster_domain
        return {"servers": [self.cluster.dns_server],
                "searches": [f"{namespace}.svc.{domain}", f"svc.{domain}", domain],
                "options": ["ndots:5"]}

    # -- volumes ---------------------------------------------------------------------------------------------

    def _volumes(self, pod: RunningPod, claims: Mapping[str, str]) -> dict[str, str]:
        """Materialize every volume of the pod: volume name -> host directory or file to bind."""
        spec = pod.spec
        pod_sc: Obj = spec.get("securityContext", {})
        fs_group: int | None = pod_sc.get("fsGroup")
        out: dict[str, str] = {}
        for volume in spec.get("volumes", []):
            name = volume["name"]
            kinds = set(volume) - {"name"}
            if kinds == {"hostPath"}:
                out[name] = self._host_path(volume["hostPath"])
            elif kinds == {"emptyDir"}:
                path = os.path.join(pod.pod_dir, "volumes", "kubernetes.io~empty-dir", name)
                os.makedirs(path)
                os.chmod(path, 0o777)
                if fs_group is not None:
                    os.chown(path, -1, fs_group)
                    os.chmod(path, 0o2777)
                out[name] = path
            elif kinds == {"secret"}:
                out[name] = self._secret(pod, name, volume["secret"], fs_group)
            elif kinds == {"persistentVolumeClaim"}:
                out[name] = self._claim(volume["persistentVolumeClaim"]["claimName"], pod_sc)
            else:
                raise UnsupportedSpecError(f"volume {name}: {sorted(kinds)}")
        for volume_name, claim in claims.items():
            out[volume_name] = self._claim(claim, pod_sc)
        if self._automount(pod) and self.cluster.api is not None:
            out["kube-api-access"] = self._service_account(pod, fs_group)
        return out

    def _host_path(self, source: Obj) -> str:
        path: str = source["path"]
        for node_path, here in self.cluster.host_paths.items():
            if path == node_path or path.startswith(node_path.rstrip("/") + "/"):
                path = here + path[len(node_path):]
        kind = source.get("type", "")
        if kind == "DirectoryOrCreate":
            os.makedirs(path, mode=0o755, exist_ok=True)
        elif kind == "Directory" and not os.path.isdir(path):
            raise PodStartError(f"hostPath {source['path']} is not a directory")
        elif kind == "FileOrCreate" and not os.path.exists(path):
            open(path, "a").close()  # noqa: SIM115
        elif kind in ("File", "Socket", "CharDevice", "BlockDevice") and not os.path.exists(path):
            raise PodStartError(f"hostPath {source['path']} ({kind}) does not exist")
        elif kind not in ("", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice",
                          "BlockDevice"):
            raise UnsupportedSpecError(f"hostPath type {kind}")
        return path

    def _secret(self, pod: RunningPod, name: str, source: Obj, fs_group: int | None) -> str:
        secret_name = source["secretName"]
        data = self.cluster.secrets.get((pod.namespace, secret_name))
        if data is None:
            raise PodStartError(f'secret "{secret_name}" not found in {pod.namespace} (the pod would stay in '
                                "ContainerCreating)")
        path = os.path.join(pod.pod_dir, "volumes", "kubernetes.io~secret", name)
        os.makedirs(path)
        default_mode = source.get("defaultMode", 0o644)
        items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
        for item in items:
            if item["key"] not in data:
                raise PodStartError(f'secret "{secret_name}": no key {item["key"]!r}')
            target = os.path.join(path, item["path"])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data[item["key"]])
            os.chmod(target, item.get("mode", default_mode))
            if fs_group is not None:
                os.chown(target, 0, fs_group)
        os.chmod(path, 0o755 if fs_group is None else 0o2755)
        if fs_group is not None:
            os.chown(path, 0, fs_group)
        return path

    def _claim(self, claim: str, pod_sc: Obj) -> str:
        """A claim is a directory of the node's own that outlives its pods (a bound local volume)."""
        path = os.path.join(self.root, "volumes", claim)
        fresh = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        fs_group = pod_sc.get("fsGroup")
        if fs_group is not None:
            on_mismatch = pod_sc.get("fsGroupChangePolicy") == "OnRootMismatch"
            if fresh or not on_mismatch or os.stat(path).st_gid != fs_group:
                for root, dirs, files in os.walk(path):
                    for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                        st = os.lstat(entry)
                        os.lchown(entry, -1, fs_group)
                        if os.path.isdir(entry) and not os.path.islink(entry):
                            os.chmod(entry, (st.st_mode & 0o7777) | 0o2070)
                        elif not os.path.islink(entry):
                            os.chmod(entry, (st.st_mode & 0o7777) | 0o060)
        return path

    def _automount(self, pod: RunningPod) -> bool:
        if "automountServiceAccountToken" in pod.spec:
            return bool(pod.spec["automountServiceAccountToken"])
        account = pod.spec.get("serviceAccountName", "default")
        sa = self.cluster.service_accounts.get((pod.namespace, account), {})
        return bool(sa.get("automountServiceAccountToken", True))

    def _service_account(self, pod: RunningPod, fs_group: int | None) -> str:
        assert self.cluster.api is not None
        account = pod.spec.get("serviceAccountName", "default")
        token = self.cluster.tokens.get((pod.namespace, account))
        if token is None:
            raise PodStartError(f"no token for service account {pod.namespace}/{account}")
        path = os.path.join(pod.pod_dir, "volumes", "kubernetes.io~projected", "kube-api-access")
        os.makedirs(path)
        for file_name, content in (("token", token.encode()), ("ca.crt", self.cluster.api.ca_pem),
                                   ("namespace", pod.namespace.encode())):
            target = os.path.join(path, file_name)
            with open(target, "wb") as f:
                f.write(content)
            os.chmod(target, 0o644)
            if fs_group is not None:
                os.chown(target, 0, fs_group)
        return path

    # -- containers ------------------------------------------------------------------------------------------

    def _env(self, pod: RunningPod, container: Obj) -> list[tuple[str, str]]:
        env: dict[str, str] = {}
        if self.cluster.api is not None:
            api = self.cluster.api
            env.update({"KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port),
                        "KUBERNETES_SERVICE_PORT_HTTPS": str(api.port),
                        "KUBERNETES_PORT": f"tcp://{api.host}:{api.port}"})
        fields = {"spec.nodeName": self.cluster.node_name, "metadata.name": pod.name,
                  "metadata.namespace": pod.namespace, "metadata.uid": pod.uid, "status.podIP": pod.ip,
                  "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default")}
        for var in container.get("env", []):
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
            elif "fieldRef" in var.get("valueFrom", {}):
                path = var["valueFrom"]["fieldRef"]["fieldPath"]
                if path not in fields:
                    raise UnsupportedSpecError(f"env {var['name']}: fieldRef {path}")
                env[var["name"]] = fields[path]
            else:
                raise UnsupportedSpecError(f"env {var['name']}: {var.get('valueFrom')}")
        return list(env.items())

    def _container_config(self, pod: RunningPod, container: Obj, volumes: Mapping[str, str],
                          ns_opts: Obj) -> Obj:
        spec = pod.spec
        pod_sc: Obj = spec.get("securityContext", {})
        sc: Obj = container.get("securityContext", {})
        env = self._env(pod, container)
        env_map = dict(env)
        privileged = bool(sc.get("privileged"))
        security: Obj = {"namespace_options": ns_opts, "privileged": privileged,
                         "readonly_rootfs": bool(sc.get("readOnlyRootFilesystem"))}
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        run_as_group = sc.get("runAsGroup", pod_sc.get("runAsGroup"))
        if run_as_user is not None:
            security["run_as_user"] = {"value": run_as_user}
        if run_as_group is not None:
            security["run_as_group"] = {"value": run_as_group}
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) and run_as_user in (0, None):
            # The kubelet refuses a root uid; with no uid it checks the image's (not needed by these manifests).
            raise PodStartError(f"container {container['name']}: runAsNonRoot with uid {run_as_user}")
        groups = self._supplemental_groups(pod_sc)
        if groups:
            security["supplemental_groups"] = groups
        caps = sc.get("capabilities", {})
        if caps:
            security["capabilities"] = {"add_capabilities": list(caps.get("add", [])),
                                        "drop_capabilities": list(caps.get("drop", []))}
        if "allowPrivilegeEscalation" in sc:
            security["no_new_privs"] = not sc["allowPrivilegeEscalation"]
        seccomp = _profile(sc.get("seccompProfile") or pod_sc.get("seccompProfile"), apparmor=False)
        if seccomp:
            security["seccomp_profile_path"] = seccomp
        apparmor = _profile(sc.get("appArmorProfile") or pod_sc.get("appArmorProfile"), apparmor=True)
        if apparmor:
            security["apparmor_profile"] = apparmor
        if not privileged:
            security["masked_paths"] = list(DEFAULT_MASKED_PATHS)
            security["readonly_paths"] = list(DEFAULT_READONLY_PATHS)
        mounts = []
        for vm in container.get("volumeMounts", []):
            if set(vm) - {"name", "mountPath", "readOnly", "mountPropagation"}:
                raise UnsupportedSpecError(f"volumeMount {vm}")
            if vm["name"] not in volumes:
                raise PodStartError(f"volumeMount {vm['name']}: no such volume")
            propagation = {"None": "PROPAGATION_PRIVATE", "HostToContainer": "PROPAGATION_HOST_TO_CONTAINER",
                           "Bidirectional": "PROPAGATION_BIDIRECTIONAL"}[vm.get("mountPropagation", "None")]
            mounts.append({"container_path": vm["mountPath"], "host_path": volumes[vm["name"]],
                           "readonly": bool(vm.get("readOnly")), "propagation": propagation})
        if "kube-api-access" in volumes:
            mounts.append({"container_path": SA_MOUNT, "host_path": volumes["kube-api-access"], "readonly": True})
        resources: Obj = {}
        limits = container.get("resources", {}).get("limits", {})
        requests = container.get("resources", {}).get("requests", {})
        cpu_request = requests.get("cpu", limits.get("cpu"))
        resources["cpu_shares"] = max(2, int(parse_quantity(cpu_request) * 1024)) if cpu_request else 2
        if "cpu" in limits:
            resources["cpu_period"] = 100000
            resources["cpu_quota"] = int(parse_quantity(limits["cpu"]) * 100000)
        if "memory" in limits:
            resources["memory_limit_in_bytes"] = int(parse_quantity(limits["memory"]))
        name = container["name"]
        config: Obj = {
            "metadata": {"name": name, "attempt": 0},
            "image": {"image": normalized_image(container["image"])},
            "command": [expand(a, env_map) for a in container.get("command", [])],
            "args": [expand(a, env_map) for a in container.get("args", [])],
            "envs": [{"key": k, "value": v} for k, v in env],
            "mounts": mounts,
            "log_path": f"{name}/0.log",
            "labels": {"io.kubernetes.container.name": name, "io.kubernetes.pod.name": pod.name,
                       "io.kubernetes.pod.namespace": pod.namespace, "io.kubernetes.pod.uid": pod.uid},
            "linux": {"resources": resources, "security_context": security},
        }
        if container.get("workingDir"):
            config["working_dir"] = container["workingDir"]
        return config

    # -- after start -----------------------------------------------------------------------------------------

    def container_state(self, pod: RunningPod, container: str) -> Obj:
        resp = self.node.cri_client().invoke("ContainerStatus", {"container_id": pod.containers[container]})
        return cri_runtime.as_dict(resp.status)

    def logs(self, pod: RunningPod, container: str) -> str:
        """The container's output (CRI log format: time, stream, tag, line), as ``kubectl logs`` would show it."""
        path = os.path.join(pod.log_dir, container, "0.log")
        try:
            with open(path, errors="replace") as f:
                return "".join(line.split(" ", 3)[-1] for line in f)
        except OSError:
            return "(no log)"

    def probe(self, pod: RunningPod, container_name: str, kind: str) -> bool:
        """Run the container's ``kind`` probe (``readinessProbe``...) once, as the kubelet would: True on success."""
        container = next(c for c in pod.spec["containers"] if c["name"] == container_name)
        probe: Obj = container[kind]
        host = "127.0.0.1" if pod.spec.get("hostNetwork") else pod.ip
        timeout = float(probe.get("timeoutSeconds", 1))

        def port_of(value: int | str) -> int:
            if isinstance(value, int):
                return value
            return int(next(p["containerPort"] for p in container.get("ports", []) if p.get("name") == value))

        try:
            if "grpc" in probe:
                target = f"{host}:{port_of(probe['grpc']['port'])}"
                with grpc.insecure_channel(target) as channel:
                    stub = health_pb2_grpc.HealthStub(channel)
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")),
                                       timeout=timeout)
                return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
            if "tcpSocket" in probe:
                socket.create_connection((host, port_of(probe["tcpSocket"]["port"])), timeout=timeout).close()
                return True
            if "httpGet" in probe:
                get = probe["httpGet"]
                url = f"http://{host}:{port_of(get['port'])}{get.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (a pod's port)
                    return 200 <= int(response.status) < 400
        except (OSError, grpc.RpcError):
            return False
        raise UnsupportedSpecError(f"{kind}: {sorted(probe)}")

    def wait_probe(self, pod: RunningPod, container: str, kind: str, timeout: float) -> float:
        """Probe until success (seconds it took); fails with the container's state and log."""
        started = time.monotonic()
        while not self.probe(pod, container, kind):
            state = self.container_state(pod, container)
            if time.monotonic() - started > timeout or state.get("state") == 2:  # CONTAINER_EXITED
                raise PodStartError(f"{pod.namespace}/{pod.name} {container}: {kind} not passing after "
                                    f"{time.monotonic() - started:.0f} s; state {json.dumps(state)}\n"
                                    f"{self.logs(pod, container)[-3000:]}")
            time.sleep(0.5)
        return time.monotonic() - started

    def delete(self, pod: RunningPod) -> dict[str, int]:
        """Delete the pod as the kubelet does: stop its containers within the grace period (SIGTERM, SIGKILL once
        it is over), then the sandbox. Returns each container's exit code (137: it had to be killed)."""
        client = self.node.cri_client()
        grace = int(pod.spec.get("terminationGracePeriodSeconds", 30))
        exits = {}
        for name, cid in pod.containers.items():
            client.invoke("StopContainer", {"container_id": cid, "timeout": grace}, timeout=grace + 30)
            exits[name] = int(self.container_state(pod, name).get("exit_code", 0))
        client.invoke("StopPodSandbox", {"pod_sandbox_id": pod.sandbox_id}, timeout=60)
        client.invoke("RemovePodSandbox", {"pod_sandbox_id": pod.sandbox_id}, timeout=60)
        self.pods.pop(pod.uid, None)
        shutil.rmtree(pod.pod_dir, ignore_errors=True)
        return exits

    def delete_all(self, *, keep: RunningPod | None = None) -> list[str]:
        """Delete every pod still running but ``keep`` (test teardown); returns the errors instead of stopping at
        the first."""
        errors = []
        for pod in list(self.pods.values()):
            if pod is keep:
                continue
            try:
                self.delete(pod)
            except Exception as e:  # noqa: BLE001 - teardown tries every pod
                errors.append(f"{pod.namespace}/{pod.name}: {e}")
        return errors
