"""Which S3 client library podcap uses, by measurement: boto3 against the other clients PyPI ships.

Not part of ``make bench`` (the other libraries are not podcap's dependencies). Run it with an interpreter that has
them, from the repository's root::

    python3 -m venv /tmp/cv && /tmp/cv/bin/pip install boto3 'boto3[crt]' obstore minio zstandard
    /tmp/cv/bin/python -m tests.bench.s3_clients [--mib 256] [--rounds 3]

Against the tests' Ceph RADOS Gateway (``tests.s3.testbed``, started and removed here), each client in turn,
alternating over the rounds: the upload of one file of ``--mib`` MiB of incompressible bytes (multipart: 8 MiB
parts, 6 in flight where the library lets us say so), and 64 ranged GETs of 1 MiB at random offsets one after the
other (what a window read does: a block at a time). Printed: MB/s of the upload and ms per ranged GET (medians),
and the library's import time in a fresh interpreter (``podcap get --from`` pays it on every run). The results and
the choice they led to are in README.md (Object storage) and tests/bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.s3.testbed import Testbed

PART = 8 << 20
PARALLEL = 6
GETS = 64


def _boto3(tb: Testbed, crt: bool) -> tuple[Callable[[str, str], None], Callable[[str, int, int], bytes]]:
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    s3: Any = boto3.client("s3", endpoint_url=tb.endpoint, config=Config(s3={"addressing_style": "path"},
                                                                          max_pool_connections=16))
    cfg = TransferConfig(multipart_chunksize=PART, max_concurrency=PARALLEL,
                         preferred_transfer_client="crt" if crt else "classic")

    def put(path: str, key: str) -> None:
        s3.upload_file(path, tb.bucket, key, Config=cfg)

    def get(key: str, start: int, length: int) -> bytes:
        body: bytes = s3.get_object(Bucket=tb.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}")["Body"] \
            .read()
        return body

    return put, get


def _obstore(tb: Testbed) -> tuple[Callable[[str, str], None], Callable[[str, int, int], bytes]]:
    import obstore
    from obstore.store import S3Store

    env = tb.env()
    store = S3Store(tb.bucket, endpoint=tb.endpoint, access_key_id=env["AWS_ACCESS_KEY_ID"],
                    secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
                    virtual_hosted_style_request=False, client_options={"allow_http": True})

    def put(path: str, key: str) -> None:
        with open(path, "rb") as f:
            obstore.put(store, key, f, chunk_size=PART, max_concurrency=PARALLEL)

    def get(key: str, start: int, length: int) -> bytes:
        return bytes(obstore.get_range(store, key, start=start, length=length))

    return put, get


def _minio(tb: Testbed) -> tuple[Callable[[str, str], None], Callable[[str, int, int], bytes]]:
    from minio import Minio

    env = tb.env()
    client = Minio(tb.endpoint.removeprefix("http://"), access_key=env["AWS_ACCESS_KEY_ID"],
                   secret_key=env["AWS_SECRET_ACCESS_KEY"], secure=False, region="us-east-1")

    def put(path: str, key: str) -> None:
        client.fput_object(tb.bucket, key, path, part_size=PART, num_parallel_uploads=PARALLEL)

    def get(key: str, start: int, length: int) -> bytes:
        r = client.get_object(tb.bucket, key, offset=start, length=length)
        try:
            return r.read()
        finally:
            r.close()
            r.release_conn()

    return put, get


CLIENTS: dict[str, tuple[str, Callable[[Testbed], tuple[Callable[[str, str], None],
                                                          Callable[[str, int, int], bytes]]]]] = {
    "boto3": ("boto3", lambda tb: _boto3(tb, crt=False)),
    "boto3-crt": ("awscrt", lambda tb: _boto3(tb, crt=True)),
    "obstore": ("obstore", _obstore),
    "minio": ("minio", _minio),
}


def _import_s(module: str) -> float:
    best = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True,
                           text=True, check=True)
        last = [ln for ln in r.stderr.splitlines() if ln.rstrip().endswith(f"| {module}")]
        best.append(int(last[-1].split("|")[1]) / 1e6 if last else float("nan"))
    return min(best)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    available = {}
    for name, (module, make) in CLIENTS.items():
        try:
            __import__(module)
            available[name] = make
        except ImportError:
            print(f"{name}: not installed ({module})", file=sys.stderr)
    tb = Testbed(f"/tmp/pcs3c-{uuid.uuid4().hex[:6]}")
    with tempfile.TemporaryDirectory(prefix="pcs3c-") as tmp:
        path = os.path.join(tmp, "object")
        with open(path, "wb") as f:
            for _ in range(a.mib):
                f.write(os.urandom(1 << 20))
        size = a.mib << 20
        try:
            tb.start()
            os.environ.update(tb.env())
            clients = {name: make(tb) for name, make in available.items()}
            up: dict[str, list[float]] = {n: [] for n in clients}
            got: dict[str, list[float]] = {n: [] for n in clients}
            rng = random.Random(1)
            failed: dict[str, str] = {}
            for r in range(a.rounds):
                for name, (put, get) in clients.items():
                    if name in failed:
                        continue
                    key = f"{name}/{r}"
                    t0 = time.perf_counter()
                    try:
                        put(path, key)
                    except Exception as e:  # a client that cannot talk to this store is reported, not measured
                        failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
                        print(f"{name}: {failed[name]}", file=sys.stderr)
                        continue
                    up[name].append(size / 1e6 / (time.perf_counter() - t0))
                    offsets = [rng.randrange(0, size - (1 << 20)) for _ in range(GETS)]
                    t0 = time.perf_counter()
                    for off in offsets:
                        if len(get(key, off, 1 << 20)) != 1 << 20:
                            raise RuntimeError(f"{name}: a short ranged GET")
                    got[name].append((time.perf_counter() - t0) / GETS * 1e3)
                    print(f"round {r + 1} {name}: upload {up[name][-1]:.0f} MB/s, ranged GET {got[name][-1]:.1f} ms",
                          file=sys.stderr)
        finally:
            tb.stop()
    print(f"{'client':<10} {'upload MB/s':>12} {'1 MiB GET ms':>13} {'import s':>9}")
    for name, why in failed.items():
        print(f"{name:<10} failed: {why}")
    for name in [n for n in clients if n not in failed]:
        module = CLIENTS[name][0] if name != "boto3-crt" else "boto3"
        print(f"{name:<10} {statistics.median(up[name]):>12.0f} {statistics.median(got[name]):>13.1f} "
              f"{_import_s(module):>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
