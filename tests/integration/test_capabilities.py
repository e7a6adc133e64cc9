"""The agent's minimum capability set, shown with the real ``podcap-agent`` process.

Each test starts a collector, a DemoNode (named network namespaces ``/run/netns/<namespace>.<pod>`` with veths on
a bridge) and a ``podcap-agent --pod-source netns`` launched through util-linux ``setpriv`` with a reduced
capability set, then captures through the ``podcap`` CLI and checks the downloaded pcap.

How the agent is confined (``agent_caps``): it runs as uid 0, like the DaemonSet (``deploy/base/agent-daemonset.yaml``
runs it as root with ``drop: [ALL]`` and four added capabilities; it reads its root-owned 0400 TLS key without
``DAC_OVERRIDE``). ``setpriv --bounding-set=-all,+<caps> --inh-caps=-all --ambient-caps=-all --no-new-privs``
mirrors what the container runtime does: at ``execve`` a uid-0 process gets exactly the bounding set as its
permitted and effective sets, so the agent holds those capabilities and no other (asserted from
``/proc/<pid>/status``: CapEff = CapPrm = CapBnd = the set, CapInh = CapAmb = 0, NoNewPrivs = 1).
A non-zero uid (``--reuid=65534 ... --ambient-caps=+<caps>``) is tried too, but it is skipped where it cannot work
without another capability: here the venv's interpreter lives under ``/root`` (mode 0700), which uid 65534 can
only reach with ``DAC_READ_SEARCH``/``DAC_OVERRIDE`` (``setpriv`` still holds them when it calls ``execve``, so the
binary starts, but Python then cannot read its own prefix and silently falls back to another stdlib: not a
faithful run). Where the interpreter and the venv are world-readable, the non-root run executes.

Findings (Linux 6.x, libpcap 1.10, Debian bookworm), for the netns pod source:

- ``CAP_NET_RAW`` is required for every capture: libpcap opens an ``AF_PACKET`` socket. Without it each pod's
  stream is FAILED with "You don't have permission to perform this capture on that device (socket: Operation not
  permitted)" and the capture is FAILED ("every pod failed: ..."); the agent keeps running and stops cleanly.
- ``CAP_SYS_ADMIN`` is required for every capture of this source, not only for ``--interface eth0``/``all``:
  ``setns(CLONE_NEWNET)`` into the pod's namespace needs it (in the caller's and in the target's user namespace),
  and the host-side veth is found by reading the pod's ``eth0`` over netlink from *inside* the pod's namespace
  (``pods.host_veth_of``). Without it the veth lookup returns nothing, the agent falls back to capturing inside
  the pod and fails there: FAILED with "setns into /run/netns/...: Operation not permitted" for ``veth`` and
  ``eth0`` alike.
- ``CAP_NET_ADMIN`` is not needed by anything the agent does today: the handles are non-promiscuous, the kernel
  ring is a ``PACKET_RX_RING`` (TPACKET_V3; no ``SO_RCVBUFFORCE``), no hardware time stamping is requested. Capture
  on the veth and inside the pod (default and a 64 MiB ``--buffer-size``) works without it.
- ``CAP_SYS_PTRACE`` is not needed by the netns source: ``/run/netns/*`` are nsfs bind mounts (mode 0444) that
  any uid may open, and the agent's own ``/proc/thread-self/ns/net`` is always openable. It is needed by the
  ``cri`` and ``proc`` sources, which open ``/proc/<pid>/ns/net`` of pod processes: that open is a
  ``PTRACE_MODE_READ_FSCREDS`` access check, which without ``CAP_SYS_PTRACE`` fails with EACCES when the target
  runs as another uid, *or* when the target (same uid 0) holds a capability the agent lacks (commoncap requires
  the caller's permitted set to be a superset of the target's). Every real pod sandbox is one of those (the
  pause process runs as 65535, or as root with the runtime's default capabilities, e.g. ``CHOWN``,
  ``DAC_OVERRIDE``, ``KILL``, ``SETUID``...). ``test_sys_ptrace_is_what_opens_other_processes_netns`` shows this
  with the agent's own namespace code (``podcap.agent.netns.entered``) under the same confinement.

So: netns source minimum = {NET_RAW, SYS_ADMIN}; cri/proc sources = {NET_RAW, SYS_ADMIN, SYS_PTRACE}.
The DaemonSet therefore grants exactly {NET_RAW, SYS_ADMIN, SYS_PTRACE}; ``NET_ADMIN`` is not granted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from podcap.collector.demo.node import DemoNode
from tests.conftest import Proc, podcap, start_proc, tool
from tests.integration.helpers import PORT, SENDER, capture_id, udp_payloads, wait_state, warm_up

pytestmark = pytest.mark.root

SETPRIV = "/usr/bin/setpriv"
NOBODY = 65534
# capability(7) numbers
CAP_BITS = {"net_admin": 12, "net_raw": 13, "sys_ptrace": 19, "sys_admin": 21}
DEPLOYED = ("net_raw", "sys_admin", "sys_ptrace")  # deploy/base/agent-daemonset.yaml
COUNT = 200


def mask(caps: tuple[str, ...]) -> int:
    return sum(1 << CAP_BITS[c] for c in caps)


def setpriv_argv(caps: tuple[str, ...], uid: int) -> list[str]:
    """``setpriv`` arguments that leave exactly ``caps`` (and no_new_privs) to the program it executes."""
    wanted = ",".join(["-all", *(f"+{c}" for c in caps)])
    argv = [SETPRIV, f"--bounding-set={wanted}", "--no-new-privs"]
    if uid == 0:
        # uid 0: execve makes permitted = effective = bounding set (as a container runtime arranges it).
        return [*argv, "--inh-caps=-all", "--ambient-caps=-all", "--"]
    # Any other uid: only ambient capabilities survive execve of an ordinary binary (they must be inheritable).
    return [*argv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", f"--inh-caps={wanted}",
            f"--ambient-caps={wanted}", "--"]


def status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def check_confined(pid: int, caps: tuple[str, ...], uid: int) -> None:
    st = status_fields(pid)
    m = mask(caps)
    got = {k: int(st[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}
    want = {"CapPrm": m, "CapEff": m, "CapBnd": m,
            "CapInh": 0 if uid == 0 else m, "CapAmb": 0 if uid == 0 else m}
    assert got == want, f"agent is not confined as intended: {st}"
    assert st["NoNewPrivs"].strip() == "1"
    assert st["Uid"].split() == [str(uid)] * 4


def nonroot_feasible() -> str:
    """Empty if uid 65534 can run this venv's interpreter faithfully (its stdlib is its own), else why not."""
    probe = "import sys; print(sys.base_prefix)"
    r = subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", "--", sys.executable, "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"uid {NOBODY} cannot run {sys.executable}: {r.stderr.strip()}"
    if r.stdout.strip() != sys.base_prefix or not os.access(sys.base_prefix, os.R_OK | os.X_OK):
        return f"uid {NOBODY} cannot read the interpreter's prefix {sys.base_prefix}"
    check = f"import os, sys; sys.exit(not os.access({sys.base_prefix!r} + '/lib', os.R_OK | os.X_OK))"
    r = subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", "--", "/usr/bin/python3", "-c", check], capture_output=True)
    return "" if r.returncode == 0 else f"uid {NOBODY} cannot read {sys.base_prefix}/lib"


@pytest.fixture
def node_pods() -> list[str]:
    return ["sender", "rx-0"]


@dataclass
class Agent:
    proc: Proc
    address: str
    node: DemoNode


AgentFactory = Callable[..., Agent]


@pytest.fixture
def agent_caps(collector: tuple[str, str, Proc], node: DemoNode, tmp_path: str) -> Iterator[AgentFactory]:
    """``agent_caps(caps, uid=0)``: a podcap-agent holding exactly ``caps``, registered with the collector."""
    started: list[Proc] = []
    address = collector[0]

    def start(caps: tuple[str, ...], uid: int = 0) -> Agent:
        argv = [*setpriv_argv(caps, uid), tool("podcap-agent"), "--insecure", "--collector", address,
                "--node", "node-" + node.tag, "--pod-source", "netns"]
        p = start_proc(argv, os.path.join(tmp_path, f"agent-{len(started)}.log"))
        started.append(p)
        deadline = time.monotonic() + 20
        while True:  # the agent execs python: wait until the interpreter runs (CapEff settles after execve)
            time.sleep(0.2)
            assert p.proc.poll() is None, "agent exited:\n" + p.log()
            if comm(p.proc.pid) != "setpriv":
                break
            assert time.monotonic() < deadline, "agent never started:\n" + p.log()
        check_confined(p.proc.pid, caps, uid)
        while True:  # wait until the collector knows the node's pods
            r = podcap(address, "start", "-n", node.namespace, "--duration", "1", "--max-packets", "1", check=False)
            if r.returncode == 0:
                podcap(address, "stop", capture_id(r))
                break
            assert p.proc.poll() is None, "agent exited:\n" + p.log()
            assert time.monotonic() < deadline, "agent never registered its pods:\n" + p.log()
            time.sleep(0.2)
        return Agent(p, address, node)

    try:
        yield start
    finally:
        for p in started:
            p.stop()


def start_capture(agent: Agent, *extra: str) -> tuple[str, dict[str, object]]:
    """Start a capture of rx-0; return its id and the pod's status once it is capturing or terminal."""
    cid = capture_id(podcap(agent.address, "start", "-n", agent.node.namespace, "rx-0",
                            "--filter", f"udp port {PORT}", *extra))
    deadline = time.monotonic() + 20
    while True:
        st = json.loads(podcap(agent.address, "status", cid, "-o", "json").stdout)
        pod = st["pods"][0]
        if pod["state"] in ("capturing", "failed", "done") or time.monotonic() > deadline:
            return cid, pod
        time.sleep(0.1)


def assert_captures(agent: Agent, tmp_path: str, *extra: str) -> str:
    """A capture of rx-0 records exactly the datagrams sent to it; returns the interface it ran on."""
    node = agent.node
    cid, pod = start_capture(agent, *extra)
    assert pod["state"] == "capturing", (pod, agent.proc.log())
    rx = node.pod("rx-0")
    done = node.exec(node.pod("sender"), [sys.executable, SENDER, str(PORT), str(COUNT), rx.ip])
    assert done.returncode == 0, done.stderr
    st = json.loads(podcap(agent.address, "stop", cid, "-o", "json").stdout)
    assert st["state"] == "done", st
    out = os.path.join(tmp_path, "out-" + cid)
    podcap(agent.address, "get", cid, "-o", out)
    got = udp_payloads(os.path.join(out, node.namespace, "rx-0.pcap"))
    assert [g[1] for g in got] == list(range(COUNT)), f"{extra}: missing, duplicated or reordered packets"
    sender_ip = bytes(map(int, node.pod("sender").ip.split(".")))
    assert all(g[3] == sender_ip and g[4] == bytes(map(int, rx.ip.split("."))) for g in got)
    return str(pod["interface"])


def failing_capture(agent: Agent, needle: str, *extra: str) -> str:
    """Start a capture of rx-0 that the agent cannot open: it logs why (naming the cause) and keeps running."""
    cid = capture_id(podcap(agent.address, "start", "-n", agent.node.namespace, "rx-0", *extra))
    line = f"capture {cid}: cannot capture pod {agent.node.namespace}/rx-0: "
    deadline = time.monotonic() + 20
    while not any(line in ln and needle in ln for ln in agent.proc.log().splitlines()):
        assert agent.proc.proc.poll() is None, "agent died:\n" + agent.proc.log()
        assert time.monotonic() < deadline, f"agent did not report {needle!r} for {extra}:\n" + agent.proc.log()
        time.sleep(0.1)
    assert agent.proc.proc.poll() is None, "agent died:\n" + agent.proc.log()
    return cid


def assert_reported_failed(agent: Agent, cids: list[str], needle: str) -> None:
    """The user sees each pod FAILED with the agent's message, and each capture FAILED ("every pod failed")."""
    for cid in cids:
        st = wait_state(agent.address, cid, {"failed", "done"}, timeout=5)
        pod = st["pods"][0]  # type: ignore[index]
        assert pod["state"] == "failed" and needle in pod["message"], st
        assert st["state"] == "failed" and needle in str(st["end_reason"]), st


def check_deployed_set(agent_caps: AgentFactory, node: DemoNode, tmp_path: str, uid: int) -> None:
    agent = agent_caps(DEPLOYED, uid=uid)
    warm_up(node)
    assert assert_captures(agent, tmp_path) == node.pod("rx-0").host_veth
    assert assert_captures(agent, tmp_path, "--interface", "eth0") == f"eth0 in {node.pod('rx-0').netns_path}"
    assert agent.proc.stop() == 0, "agent did not stop cleanly:\n" + agent.proc.log()


def test_deployed_capability_set_captures_on_veth_and_in_pod(agent_caps: AgentFactory, node: DemoNode,
                                                              tmp_path: str) -> None:
    """Exactly NET_RAW, SYS_ADMIN, SYS_PTRACE (uid 0, as deployed): veth and eth0 capture work."""
    check_deployed_set(agent_caps, node, tmp_path, uid=0)


def test_deployed_capability_set_as_nobody(agent_caps: AgentFactory, node: DemoNode, tmp_path: str) -> None:
    """The same four capabilities as ambient capabilities of uid 65534 (where the venv is readable by it)."""
    why = nonroot_feasible()
    if why:
        pytest.skip(why)
    check_deployed_set(agent_caps, node, tmp_path, uid=NOBODY)


def test_netns_source_minimum_is_net_raw_and_sys_admin(agent_caps: AgentFactory, node: DemoNode,
                                                       tmp_path: str) -> None:
    """Without NET_ADMIN and SYS_PTRACE the netns source still captures, in the veth and in the pod."""
    agent = agent_caps(("net_raw", "sys_admin"))
    warm_up(node)
    assert assert_captures(agent, tmp_path) == node.pod("rx-0").host_veth
    assert assert_captures(agent, tmp_path, "--interface", "eth0").startswith("eth0 in ")
    assert assert_captures(agent, tmp_path, "--buffer-size", "64MiB") == node.pod("rx-0").host_veth
    assert agent.proc.stop() == 0, agent.proc.log()


def test_without_net_raw_capture_fails_clearly(agent_caps: AgentFactory, node: DemoNode) -> None:
    """No AF_PACKET socket without NET_RAW: veth and in-pod capture fail with the cause; the agent keeps going."""
    agent = agent_caps(("net_admin", "sys_admin", "sys_ptrace"))
    rx = node.pod("rx-0")
    cids = [failing_capture(agent, f"cannot capture on {rx.host_veth!r}: socket: Operation not permitted"),
            failing_capture(agent, "cannot capture on 'eth0': socket: Operation not permitted", "--interface", "eth0")]
    assert_reported_failed(agent, cids, "socket: Operation not permitted")
    assert agent.proc.stop() == 0, "agent did not stop cleanly:\n" + agent.proc.log()


def test_without_sys_admin_capture_fails_clearly(agent_caps: AgentFactory, node: DemoNode) -> None:
    """setns needs SYS_ADMIN: in-pod capture fails, and so does the veth (found from inside the pod's netns)."""
    agent = agent_caps(("net_admin", "net_raw", "sys_ptrace"))
    needle = f"setns into {node.pod('rx-0').netns_path}: Operation not permitted"
    cids = [failing_capture(agent, needle, "--interface", "eth0"), failing_capture(agent, needle)]
    assert_reported_failed(agent, cids, needle)
    assert agent.proc.stop() == 0, "agent did not stop cleanly:\n" + agent.proc.log()


PROBE = textwrap.dedent("""
    import sys
    from podcap.agent import netns
    for pid in sys.argv[1:]:
        try:
            with netns.entered(f"/proc/{pid}/ns/net"):
                pass
            print("ok")
        except OSError as e:
            print(e.errno)
""")


@pytest.mark.parametrize("caps", [("net_raw", "sys_admin"), ("net_raw", "sys_admin", "sys_ptrace")],
                         ids=["without-ptrace", "with-ptrace"])
def test_sys_ptrace_is_what_opens_other_processes_netns(node: DemoNode, caps: tuple[str, ...]) -> None:
    """What the cri/proc sources do (open and enter /proc/<pid>/ns/net of a pod's process), under the agent's
    confinement: without SYS_PTRACE only processes of the same uid whose capabilities are a subset of the agent's
    can be entered; a pod sandbox (another uid, or root with the runtime's default capabilities) cannot."""
    pod = node.pod("rx-0")
    sleep = ["sleep", "300"]
    targets = {
        "uid 65535, no capabilities": [SETPRIV, "--reuid=65535", "--regid=65535", "--clear-groups",
                                       "--inh-caps=-all", "--bounding-set=-all", "--", *sleep],
        "uid 0, runtime default capabilities": [
            SETPRIV, "--inh-caps=-all", "--bounding-set=-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,"
            "+setuid,+setpcap,+net_bind_service,+sys_chroot,+mknod,+audit_write,+setfcap", "--", *sleep],
        "uid 0, a subset of the agent's capabilities": [SETPRIV, "--inh-caps=-all", "--bounding-set=-all,+net_raw",
                                                       "--", *sleep],
    }
    procs = {what: node.spawn(pod, argv) for what, argv in targets.items()}
    deadline = time.monotonic() + 10
    pids = {}
    for what, p in procs.items():  # the pid that ends up running sleep (ip netns exec and setpriv exec in place)
        while comm(p.pid) != "sleep":
            assert time.monotonic() < deadline and p.poll() is None, what
            time.sleep(0.05)
        pids[what] = p.pid
    r = subprocess.run([*setpriv_argv(caps, 0), sys.executable, "-c", PROBE, *map(str, pids.values())],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    got = dict(zip(pids, r.stdout.split(), strict=True))
    if "sys_ptrace" in caps:
        assert set(got.values()) == {"ok"}, got
    else:
        assert got == {"uid 65535, no capabilities": "13", "uid 0, runtime default capabilities": "13",
                       "uid 0, a subset of the agent's capabilities": "ok"}, got
