"""Appending to one segment file, with direct I/O where the file system allows it.

Buffered writes copy every byte into the page cache and the collector's ``fdatasync`` then does the writeback in
its own thread: measured at 90 MB/s of small packets, that is ~40% of the collector's CPU, for pages nobody reads
back soon (``podcap get`` reads cold segments). With ``O_DIRECT`` the device reads the bytes straight from a staging
buffer: the appender writes whole 4 KiB blocks and keeps the last partial block (``tail``) in memory. ``publish``
writes the tail through the page cache so the file holds every appended byte (readers call it first); ``sync`` does
that and ``fdatasync`` (the device flush and the file size). The next direct write rewrites that block whole; the
kernel keeps page cache and direct I/O coherent. Where ``O_DIRECT`` is refused (some file systems), every append
is buffered, in 64 KiB pieces (see ``WRITE_PIECE``).

A failed append cuts the file back to its previous size and leaves the appender as it was, so a segment only ever
holds whole chunks.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading

BLOCK = 4096  # direct I/O alignment of offsets, lengths and memory (covers 512-byte and 4 KiB devices)
O_DIRECT = getattr(os, "O_DIRECT", 0)
# Buffered appends go in pieces of this size. One multi-MiB write() makes the kernel allocate large page-cache
# folios, which on VMs with free page reporting (virtio-balloon) come from host-reclaimed memory: measured on our
# CI machines, one 4 MiB write per chunk costs ~2.2 s of kernel CPU per 900 MB against ~0.3 s for 64 KiB pieces.
WRITE_PIECE = 64 << 10

class _StagingPool:
    """Page-aligned buffers for direct writes, one per append in flight (not per thread: a collector serving
    hundreds of agents appends only a few chunks at a time)."""

    KEEP = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free: list[mmap.mmap] = []

    def take(self, size: int) -> mmap.mmap:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return self._free.pop(i)
        return mmap.mmap(-1, (size + (1 << 20) - 1) // (1 << 20) * (1 << 20))

    def give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=len)
            extra = self._free[: -self.KEEP] if len(self._free) > self.KEEP else []
            del self._free[: len(extra)]
        for b in extra:  # the smallest go
            b.close()


_staging = _StagingPool()


class Appender:
    """Appends to ``path``, which already holds ``size`` bytes whose last ``size % BLOCK`` are ``tail``."""

    def __init__(self, path: str, size: int, tail: bytes, *, direct: bool = True) -> None:
        self.path = path
        self.size = size
        self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        self._dfd = -1
        if direct and O_DIRECT:
            try:
                self._dfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | O_DIRECT)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    os.close(self._fd)
                    raise
        assert len(tail) == size % BLOCK
        self._tail = bytes(tail) if self.direct else b""
        self._published = size  # bytes the file holds

    @property
    def direct(self) -> bool:
        return self._dfd >= 0

    def append(self, data: bytes | memoryview) -> None:
        """Append ``data``; on OSError the file and the appender are as they were before the call."""
        size, tail, published = self.size, self._tail, self._published
        try:
            if self.direct:
                try:
                    self._append_direct(data)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # The file system took O_DIRECT at open but refuses the writes: buffered from now on.
                    self._restore(size, tail, published)
                    self._buffered_from_now()
                    tail, published = self._tail, self._published  # what a failure below must roll back to
                    self._append_buffered(data)
            else:
                self._append_buffered(data)
        except OSError:
            self._restore(size, tail, published)
            raise
        self.size = size + len(data)

    def _restore(self, size: int, tail: bytes, published: int) -> None:
        # [0, published) is as before: direct writes start at the tail's block and begin with the tail.
        self.size, self._tail, self._published = size, tail, published
        try:
            os.ftruncate(self._fd, published)
        except OSError:
            pass

    def _buffered_from_now(self) -> None:
        self.publish()
        os.close(self._dfd)
        self._dfd = -1
        self._tail = b""

    def _append_buffered(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done : done + WRITE_PIECE], self.size + done)
        self._published = self.size + len(view)

    def _append_direct(self, data: bytes | memoryview) -> None:
        start = self.size - len(self._tail)  # block aligned
        total = len(self._tail) + len(data)
        whole = total // BLOCK * BLOCK
        buf = _staging.take(total)
        view = memoryview(buf)
        try:
            view[: len(self._tail)] = self._tail
            view[len(self._tail) : total] = data
            done = 0
            while done < whole:
                n = os.pwrite(self._dfd, view[done:whole], start + done)
                if n <= 0 or n % BLOCK:
                    raise OSError(errno.EIO, f"short direct write ({n} bytes)")
                done += n
            self._tail = bytes(view[whole:total])
        finally:
            view.release()
            _staging.give(buf)
        self._published = max(self._published, start + whole)

    def publish(self) -> None:
        """Make the file hold every appended byte (the tail goes through the page cache)."""
        if self._published < self.size:
            start = self.size - len(self._tail)
            done = 0
            while done < len(self._tail):
                n = os.pwrite(self._fd, memoryview(self._tail)[done:], start + done)
                if n <= 0:
                    raise OSError(errno.EIO, f"short write ({n} bytes)")
                done += n
            self._published = self.size

    def sync(self) -> None:
        """Make every appended byte durable."""
        self.publish()
        os.fdatasync(self._fd)

    def sync_later(self) -> int:
        """Publish every appended byte and return a new descriptor of the file: ``fdatasync`` on it (then close it)
        makes those bytes durable, from any thread, while appends go on — the caller need not hold its lock
        across the device flush."""
        self.publish()
        return os.dup(self._fd)

    def close(self) -> None:
        """Sync, then close. If the sync fails nothing is closed: the tail is still only here, so the caller keeps
        the appender and tries again (the bytes were never acknowledged)."""
        self.sync()
        os.close(self._fd)
        if self._dfd >= 0:
            os.close(self._dfd)
        self._fd = self._dfd = -1
