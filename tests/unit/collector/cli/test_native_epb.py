"""The pcapng block the C merge writes (the Enhanced Packet Block, ``podcap_epb_write`` in
proto/podcap/native/podcap_native.h) is byte for byte the one pcapng encoder's ``epb`` (``podcap.formats.pcapng``)."""

from __future__ import annotations

import itertools
import random

from podcap.collector.cli.get import pcapmerge
from podcap.formats.pcapng import comment_bytes
from podcap.formats.pcapng import epb as python_epb


def test_c_epb_is_byte_for_byte_the_python_pcapng_encoders_epb() -> None:
    assert pcapmerge.available(), "podcap._native_merge is not built: is a C compiler installed?"
    rnd = random.Random(23)
    # Every padding (caplen mod 4), empty and snaplen-sized packets, timestamps across the 32-bit word boundary.
    sizes = [*range(0, 9), 60, 1513, 1514, 65535, 262144]
    interfaces = [0, 1, 7, 0xFFFFFFFF]
    stamps = [0, 1, 0xFFFFFFFF, 1 << 32, 1_733_600_000_123_456_789, (1 << 64) - 1]
    for size, iface, ts in itertools.product(sizes, interfaces, stamps):
        data = rnd.randbytes(size)
        for wirelen in (size, size + 1, 0xFFFFFFFF):
            c = pcapmerge.epb(iface, ts, data, wirelen)
            assert c == python_epb(iface, ts, data, wirelen), (size, iface, ts, wirelen)


def test_c_epb_with_comments_is_byte_for_byte_the_python_encoders() -> None:
    """The packet comments the C merge writes (a recorder's triggers): one opt_comment per comment, each padded, in
    order, then opt_endofopt; none at all without comments."""
    assert pcapmerge.available(), "podcap._native_merge is not built: is a C compiler installed?"
    rnd = random.Random(24)
    texts = ["", "a", "ab", "abc", "abcd", "podcap recorder rec-1: trigger restart at 2026-12-08T00:00:00Z",
             "é ünïcode ✓", "x" * 65535, "y" * 70000, "ü" * 40000]
    for size in (0, 1, 3, 60, 1514):
        data = rnd.randbytes(size)
        for n in range(4):
            comments = [rnd.choice(texts) for _ in range(n)]
            c = pcapmerge.epb(3, 1_733_600_000_123_456_789, data, size + 4,
                              comments=[comment_bytes(t) for t in comments])
            assert c == python_epb(3, 1_733_600_000_123_456_789, data, size + 4, comments=comments), (size, n)
    assert python_epb(0, 1, b"abc", 3, comments=()) == python_epb(0, 1, b"abc", 3)
