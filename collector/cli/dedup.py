"""One copy per packet in views across pods: which sightings of a packet a merged or live view leaves out.

A packet between two captured pods is captured twice, once on each pod's interface: in a per-pod file that is the
truth (each pod did see it), but in one merged file or one live view Wireshark shows it twice and marks the second
copy a retransmission (or a keep-alive, or a duplicate ACK). So ``get --merge``, ``follow`` and the Wireshark
extcap write a packet once: the first sighting in time order, and a later sighting of the same IP packet on
another pod within ``WINDOW_NS`` is left out and counted for that pod (``--all-copies`` keeps every sighting; the
per-pod files of ``get -o`` always do). "The same IP packet" is every captured byte from the IP header on, with the
TTL or hop limit and the IPv4 header checksum read as zero (a router between the pods changes them; the link-layer
header differs too and is not compared), and the same IP length. A packet seen again on the same pod is a real
second packet (a retransmission, a loop) and always kept; what is not IPv4 or IPv6 (ARP) is always kept.

The C library does this in the merge and the live view (``proto/podcap/native/merge.c``, on a 64-bit hash of those
bytes); this is the twin for when it is not built, and the rule's reference: it compares the bytes themselves and takes
the same decisions (tests hold the two to the same output).
"""

from __future__ import annotations

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
# Two sightings of a packet further apart than this are two packets: far more than a packet takes from one pod to
# another, and than the clocks of a cluster's nodes disagree by, far less than a retransmission timeout.
WINDOW_NS = 200_000_000
_IP = (0x0800, 0x86DD)
_VLAN = (0x8100, 0x88A8)


def _ip_offset(linktype: int, data: bytes | memoryview) -> int | None:
    n = len(data)
    if linktype == LINKTYPE_ETHERNET:
        if n < 14:
            return None
        off = 12
        proto = data[off] << 8 | data[off + 1]
        while proto in _VLAN and off + 6 <= n:
            off += 4
            proto = data[off] << 8 | data[off + 1]
        off += 2
    elif linktype == LINKTYPE_LINUX_SLL:
        if n < 16:
            return None
        proto, off = data[14] << 8 | data[15], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if n < 20:
            return None
        proto, off = data[0] << 8 | data[1], 20
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        return 0 if n else None
    else:
        return None
    return off if proto in _IP else None


def packet_key(linktype: int, data: bytes | memoryview, wirelen: int) -> bytes | None:
    """What two sightings of one packet have in common (see the module's docstring); None for what is not IP."""
    at = _ip_offset(linktype, data)
    if at is None:
        return None
    ip = bytearray(data[at:])
    if len(ip) >= 20 and ip[0] >> 4 == 4:
        ip[8] = ip[10] = ip[11] = 0
    elif len(ip) >= 40 and ip[0] >> 4 == 6:
        ip[7] = 0
    else:
        return None
    return (wirelen - at).to_bytes(4, "little") + bytes(ip)


class OneCopy:
    """Decides, packet by packet in (about) time order, which to leave out; counts them per interface."""

    def __init__(self, window_ns: int = WINDOW_NS) -> None:
        self.window = window_ns
        self._latest: dict[bytes, tuple[int, int]] = {}  # key -> (timestamp, interface) of its last kept sighting
        self._since = 0
        self.dropped: dict[int, int] = {}

    def drop(self, linktype: int, data: bytes | memoryview, wirelen: int, ts_ns: int, iface: int) -> bool:
        key = packet_key(linktype, data, wirelen)
        if key is None:
            return False
        if ts_ns - self._since > 2 * self.window:  # forget what no later packet can match (memory stays bounded)
            self._latest = {k: v for k, v in self._latest.items() if ts_ns - v[0] <= self.window}
            self._since = ts_ns
        seen = self._latest.get(key)
        if seen is not None and abs(seen[0] - ts_ns) <= self.window and seen[1] != iface:
            self.dropped[iface] = self.dropped.get(iface, 0) + 1
            return True
        self._latest[key] = (ts_ns, iface)
        return False
