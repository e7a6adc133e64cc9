"""A real S3 server for the tests: a one-node Ceph cluster (one monitor, one BlueStore OSD on a sparse file) with
the RADOS Gateway's S3 frontend, all on 127.0.0.1 and all under one directory.

Users keep captures in S3-compatible stores they already run (AWS, Ceph RGW under Rook, MinIO); Ceph's gateway is
the one Debian ships, so podcap's object tier is tested against a real one, not a mock. ``Testbed.start`` builds the
cluster from nothing in about three seconds once the packages are installed (``make deps`` installs them), and
``stop`` stops exactly the daemons it started (by PID, only if they still run this testbed's configuration) and
removes the directory — also after a failed start. Nothing is read from or written to ``/etc/ceph`` or
``/var/lib/ceph``: every command gets ``-c DIR/ceph.conf``.

Settings this machine needs (each also commented in ``_CONF``): no cephx (S3 authentication is the gateway's own key
pair) with a CRC-mode monitor session for the gateway; fast monitor commits (each pool the gateway creates waits for
one); a quick BlueStore mkfs; ``tcp_nodelay`` on the S3 frontend (else every GET waits for a delayed ACK); size-1
pools; a 10 s RADOS operation timeout, so a stopped OSD gives 408 instead of a hang. Fault helpers freeze, kill and
restart the gateway and make it throttle (503 SlowDown), for the tests of retries.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field

PACKAGES = ("ceph-mon", "ceph-osd", "radosgw")
ACCESS_KEY = "podcap-test"
REGION = "us-east-1"

_CONF = """[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind port min = 17800
ms bind port max = 17899
# S3 requests are authenticated by the gateway's own access keys; inside the cluster, no cephx.
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
crash dir = {d}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
# CI disks may be fuller than a production monitor accepts (it stops itself below 5 % free by default).
mon data avail warn = 1
mon data avail crit = 1
# A stopped OSD makes the gateway answer 408 after 10 s instead of hanging.
rados osd op timeout = 10
[mon]
mon data = {d}/mon
mon cluster log file = {d}/log/cluster.log
# Default 1 s between monitor commits: every pool the gateway creates would wait for one.
paxos propose interval = 0.05
paxos min wait = 0.01
[osd]
osd data = {d}/osd.0
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 21474836480
bluestore fsck on mkfs = false
# BlueStore's mkfs and mount close the device many times, each close waiting for one aio poll.
bdev aio poll ms = 20
osd memory target = 1073741824
[client.rgw.s3]
# Without tcp_nodelay every response with a body waits ~40 ms for a delayed ACK.
rgw frontends = beast endpoint=127.0.0.1:{s3_port} tcp_nodelay=1
rgw data = {d}/rgw
# radosgw asks for a secure monitor session by default, which auth none cannot give.
ms mon client mode = crc
rgw gc obj min wait = 60
rgw gc processor period = 60
"""


class TestbedError(RuntimeError):
    pass


def missing_packages() -> list[str]:
    return [p for p in PACKAGES if shutil.which(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Testbed:
    """One running Ceph S3 testbed under ``directory`` (short: admin sockets live inside, and a Unix socket path
    has at most 107 bytes)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name
    directory: str
    bucket: str = "capture"
    secret_key: str = field(default_factory=lambda: uuid.uuid4().hex)
    s3_port: int = 0
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def conf(self) -> str:
        return os.path.join(self.directory, "ceph.conf")

    def env(self) -> dict[str, str]:
        """What a client of this testbed needs, as the usual AWS environment variables."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": REGION, "S3_ENDPOINT": self.endpoint, "S3_BUCKET": self.bucket}

    # ---- lifecycle ----

    def start(self) -> Testbed:
        if missing := missing_packages():
            raise TestbedError(f"missing packages: {' '.join(missing)} (make deps installs them)")
        d = self.directory
        for sub in ("mon", "osd.0", "run", "log", "crash"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        try:
            self._start(d)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, d: str) -> None:
        mon_port, self.s3_port = _free_port(), _free_port()
        fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
        with open(self.conf, "w") as f:
            f.write(_CONF.format(fsid=fsid, mon_port=mon_port, d=d, s3_port=self.s3_port))
        c = ["-c", self.conf]
        monmap = os.path.join(d, "monmap")
        self._run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v2:127.0.0.1:{mon_port}]", monmap])
        self._run(["ceph-mon", *c, "-i", "a", "--mkfs", "--monmap", monmap])
        self._daemon("mon", ["ceph-mon", *c, "-i", "a"])
        self._run(["ceph", *c, "--connect-timeout", "30", "osd", "new", osd_uuid])
        self._run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])
        self._daemon("osd", ["ceph-osd", *c, "-i", "0"])
        self._wait("osd", lambda: " 1 up" in self._run(["ceph", *c, "osd", "stat"], check=False))
        self._run(["radosgw-admin", *c, "user", "create", "--uid=podcap", "--display-name=podcap",
                   f"--access-key={ACCESS_KEY}", f"--secret-key={self.secret_key}"])
        self._daemon("rgw", ["radosgw", *c, "-n", "client.rgw.s3"])
        self._wait("rgw", self._answers)
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        """Stop what ``start`` started (gateway, OSD, monitor: the order in which each shuts down promptly) and
        remove the directory. Safe to call more than once."""
        for name, grace in (("rgw", 1.0), ("osd", 3.0), ("mon", 3.0)):
            pid = self.pids.pop(name, 0)
            if pid and self._ours(pid):
                for sig in (signal.SIGCONT, signal.SIGTERM):  # CONT: a fault test may have left it stopped
                    _kill(pid, sig)
                if not _wait_exit(pid, grace):
                    _kill(pid, signal.SIGKILL)
                    _wait_exit(pid, 2.0)
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- clients and faults ----

    def client(self, **config: object):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        cfg = Config(**{"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}, **config})
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=self.secret_key, region_name=REGION, config=cfg)

    def freeze_gateway(self) -> None:
        os.kill(self.pids["rgw"], signal.SIGSTOP)

    def thaw_gateway(self) -> None:
        os.kill(self.pids["rgw"], signal.SIGCONT)

    def kill_gateway(self) -> None:
        pid = self.pids.pop("rgw")
        _kill(pid, signal.SIGKILL)
        _wait_exit(pid, 5.0)

    def restart_gateway(self) -> None:
        self._daemon("rgw", ["radosgw", "-c", self.conf, "-n", "client.rgw.s3"])
        self._wait("rgw", self._answers)

    def throttle(self, max_concurrent_requests: int) -> None:
        """Make the gateway answer 503 SlowDown beyond this many requests at once (1024 restores)."""
        self._run(["ceph", "-c", self.conf, "daemon", "client.rgw.s3", "config", "set",
                   "rgw_max_concurrent_requests", str(max_concurrent_requests)])

    # ---- helpers ----

    def _run(self, argv: list[str], *, check: bool = True) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise TestbedError(f"{' '.join(argv[:3])}... failed ({r.returncode}): {r.stderr.strip()[-500:]}")
        return r.stdout

    def _daemon(self, name: str, argv: list[str]) -> None:
        with open(os.path.join(self.directory, "log", f"{name}.out"), "ab") as out:
            proc = subprocess.Popen([*argv, "-f"], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        self.pids[name] = proc.pid

    def _wait(self, name: str, ready: object, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():  # type: ignore[operator]
            if not _alive(self.pids[name]):
                raise TestbedError(f"{name} exited: {self._log_tail(name)}")
            if time.monotonic() > deadline:
                raise TestbedError(f"timed out waiting for {name}: {self._log_tail(name)}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.s3_port), timeout=1) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return s.recv(12).startswith(b"HTTP/1.")
        except OSError:
            return False

    def _ours(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.conf.encode() in f.read()
        except OSError:
            return False

    def _log_tail(self, name: str) -> str:
        try:
            with open(os.path.join(self.directory, "log", f"{name}.out"), errors="replace") as f:
                return f.read()[-800:]
        except OSError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_exit(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid if not _alive(pid) else 0
        if done == pid or not _alive(pid):
            return True
        time.sleep(0.05)
    return False
