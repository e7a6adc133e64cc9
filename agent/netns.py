"""Entering a network namespace from one thread.

``setns(2)`` changes the namespace of the calling *thread* only (Python 3.11 has no ``os.setns``, so libc's is
called through ctypes). ``entered(path)`` switches the current thread into a namespace and always switches it
back, so pool threads can be reused. Sockets and pcap handles created inside stay bound to that namespace after
the thread returns — which is how the agent opens a handle on a pod's ``eth0`` without moving any process.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager

from podcap.errors import ResourceError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]


class NetnsError(ResourceError, OSError):
    """A network namespace could not be entered or left."""


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"setns into {what}: {os.strerror(err)}")


def netns_inode(path: str) -> int:
    """The namespace's inode: equal inodes mean the same namespace."""
    return os.stat(path).st_ino


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with the current thread inside the network namespace at ``path``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise NetnsError(e.errno, f"cannot open network namespace {path}: {e.strerror}") from e
        try:
            _setns(target, path)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home, "the agent's own network namespace")
    finally:
        os.close(home)
