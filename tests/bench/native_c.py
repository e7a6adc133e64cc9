"""C time per MB of the record walker (podcap._native_walk) and the merge into pcapng (podcap._native_merge).

    .venv/bin/python -m tests.bench.native_c [--runs 5] [--walk LIB.so] [--merge LIB.so]

Process time (not wall time: the machine is shared), median of the runs. ``walk-cached``: 30k small records (2 MB,
in cache) walked with a window end, the per-record cost; ``walk``: 200k mixed records (69 MB) with a window end;
``merge``: four 35 MB files merged into pcapng. ``--walk``/``--merge`` load another build of the same functions
(for example one saved before a change) so that two builds are compared by one harness on one machine.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import struct
import tempfile
import time

from podcap import native

NO_LIMIT = (1 << 63) - 1


class _Scan(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("packets", "length", "last_ts_ns", "error_offset", "caplen", "wirelen")]


def _records(n: int, seed: int, t0: int) -> bytes:
    rnd = random.Random(seed)
    parts = []
    ts = t0
    for _ in range(n):
        size = rnd.choice((60, 66, 90, 1514, 200, 54))
        ts += rnd.randint(1, 20000)
        parts.append(struct.pack("<IIII", ts // 10**9, ts % 10**9, size, size) + bytes(size))
    return b"".join(parts)


def _load(path: str | None, part: native.Part) -> ctypes.CDLL:
    lib = ctypes.CDLL(path) if path else native.library(part)
    assert lib is not None, f"podcap._native_{part} is not built"
    return lib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--walk")
    ap.add_argument("--merge")
    args = ap.parse_args()
    scan = _load(args.walk, "walk").podcap_scan_records
    scan.argtypes = [ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int64,
                     ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.POINTER(_Scan)]
    m = _load(args.merge, "merge")
    m.podcap_merge_new.argtypes = [ctypes.c_uint32, ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64]
    m.podcap_merge_new.restype = ctypes.c_void_p
    m.podcap_merge_add.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                                   ctypes.c_uint64]
    m.podcap_merge_run.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    m.podcap_merge_free.argtypes = [ctypes.c_void_p]

    def walk(data: bytes, packets: int, repeat: int) -> float:
        out = _Scan()
        t = time.process_time()
        for _ in range(repeat):
            rc = scan(data, len(data), 262144, 1, NO_LIMIT, NO_LIMIT, 1, NO_LIMIT, ctypes.byref(out))
        assert rc == 0 and out.packets == packets
        return (time.process_time() - t) / repeat / (len(data) / 1e6)

    small = b"".join(struct.pack("<IIII", 1_700_000_000, i, n, n) + bytes(n)
                     for i, n in enumerate([54, 60, 66, 90] * 7500))
    mixed = _records(200_000, 1, 1_700_000_000 * 10**9)
    cached = [walk(small, 30_000, 200) for _ in range(args.runs)]
    walked = [walk(mixed, 200_000, 20) for _ in range(args.runs)]
    merged = []
    header = struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1)
    with tempfile.TemporaryDirectory(prefix="podcap-bench-") as d:
        paths = []
        for i in range(4):
            path = os.path.join(d, f"in{i}.pcap")
            with open(path, "wb") as f:
                f.write(header + _records(100_000, 10 + i, 1_700_000_000 * 10**9))
            paths.append(path)
        mb = sum(os.path.getsize(p) for p in paths) / 1e6
        for _ in range(args.runs):
            fds = [os.open(p, os.O_RDONLY) for p in paths]
            out = os.open(os.path.join(d, "out.pcapng"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                t = time.process_time()
                h = m.podcap_merge_new(len(fds), out, 256 << 10, 256 << 10)
                for fd in fds:
                    assert m.podcap_merge_add(h, fd, 1, 1, 262144, len(header)) == 0
                assert m.podcap_merge_run(h, 0) == 0
                m.podcap_merge_free(h)
                merged.append((time.process_time() - t) / mb)
            finally:
                for fd in [*fds, out]:
                    os.close(fd)
    med = statistics.median
    print(f"walk-cached {med(cached) * 1e6:.1f}  walk {med(walked) * 1e6:.1f}  merge {med(merged) * 1e6:.1f}  us/MB "
          f"(median of {args.runs})")


if __name__ == "__main__":
    main()
