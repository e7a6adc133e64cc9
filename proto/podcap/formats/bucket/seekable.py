"""``SeekableReader``: the file-object plumbing the bucket's readers share (position, seek, tell, readinto).

A reader of a stored segment is handed to code that reads files (downloads, window selection, the pcap walkers):
it must seek and read like one. Subclasses say how bytes at the current position are fetched (``read``);
``length`` is what the file holds.
"""

from __future__ import annotations

import io
import os
from typing import Any


class SeekableReader(io.RawIOBase):
    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _wanted(self, size: int | None) -> int:
        """How many bytes a ``read(size)`` returns from here."""
        if size is None or size < 0:
            size = self.length - self._pos
        return max(0, min(size, self.length - self._pos))

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)
