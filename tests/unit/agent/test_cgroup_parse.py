"""pod_uid_from_cgroup: pod uids out of /proc/<pid>/cgroup lines, cgroupfs and systemd layouts, cgroup v1 and v2."""

from __future__ import annotations

import pytest

from podcap.agent.pods.proc_source import pod_uid_from_cgroup

UID = "1d5e7a3c-0000-4000-8000-00000000aaaa"
UNDER = UID.replace("-", "_")
STATIC = "8f4c5b2e1a9d3c7b6e5f4a3b2c1d0e9f"  # static pods: a 32-hex hash, no dashes
CID = "e44a375edc4a7d0778f9e4bb5f3093a59221bf1712f4ba93c455d6413516a354"


@pytest.mark.parametrize(
    ("text", "uid"),
    [
        # cgroupfs driver, v1 and v2 lines
        (f"4:memory:/kubepods/besteffort/pod{UID}/{CID}\n", UID),
        (f"0::/kubepods/burstable/pod{UID}/{CID}\n", UID),
        (f"0::/kubepods/pod{UID}/{CID}\n", UID),  # Guaranteed: no QoS level
        (f"0::/kubepods/besteffort/pod{UID}\n", UID),  # the pod cgroup itself
        (f"12:pids:/kubepods/besteffort/pod{STATIC}/{CID}\n", STATIC),
        # systemd driver
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UNDER}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        (f"0::/kubepods.slice/kubepods-pod{UNDER}.slice/crio-{CID}.scope\n", UID),
        (f"1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UNDER}.slice\n", UID),
        # kind / k3s-in-docker nest the kubelet's root: "kubelet-kubepods-..."
        (
            f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UNDER}.slice/cri-containerd-{CID}.scope\n",
            UID,
        ),
        # containerd's "slice:prefix:id" cgroupsPath taken literally by a cgroupfs runc
        (f"0::/kubepods-burstable-pod{UNDER}.slice:cri-containerd:{CID}\n", UID),
        # prefixes from a cgroup namespace or a nested hierarchy, and upper case normalised
        (f"4:memory:/process_api/7391ad/kubepods/besteffort/pod{UID}/{CID}\n", UID),
        (f"0::/../../kubepods/besteffort/pod{UID.upper()}/{CID}\n", UID),
        # mixed v1 hierarchies where only some controllers carry the pod
        (f"9:name=systemd:/\n4:memory:/kubepods/besteffort/pod{UID}/{CID}\n0::/\n", UID),
    ],
)
def test_pod_uid_found(text: str, uid: str) -> None:
    assert pod_uid_from_cgroup(text) == uid


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0::/\n",
        "0::/init.scope\n",
        "0::/system.slice/containerd.service\n",
        "4:memory:/kubepods/besteffort\n",  # a QoS cgroup, no pod
        "0::/kubepods.slice/kubepods-besteffort.slice\n",
        f"0::/docker/{CID}\n",
        f"0::/kubepods/besteffort/podnot-a-uid!/{CID}\n",
        f"0::/mykubepods/besteffort/pod{UID}/x\n",  # "kubepods" must be a whole path element
        "garbage without colons\n",
    ],
)
def test_no_pod_uid(text: str) -> None:
    assert pod_uid_from_cgroup(text) is None
