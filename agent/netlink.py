"""Interface discovery over rtnetlink (RTM_GETLINK dump), in any network namespace.

Inside ``nsenter --net`` sysfs still shows the host's interfaces, so the peer of a pod's ``eth0`` must be read over
netlink: ``IFLA_LINK`` of the pod-side veth is the ifindex of its peer, in the namespace named by
``IFLA_LINK_NETNSID``. A netlink socket belongs to the namespace it was created in, so ``links(netns=...)`` creates
the socket inside the pod's namespace (see ``netns.entered``) and reads it from the calling thread.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass

from podcap.agent import netns as netns_mod
from podcap.errors import ResourceError

NETLINK_ROUTE = 0
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
IFLA_IFNAME = 3
IFLA_LINK = 5
IFLA_LINKINFO = 18
IFLA_LINK_NETNSID = 37
IFLA_INFO_KIND = 1

_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


class NetlinkError(ResourceError, OSError):
    pass


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    # ifindex of the peer/parent interface (veth peer); 0 when none.
    link_index: int
    # Namespace id (relative to this namespace) where ``link_index`` lives; -1 when it is this namespace.
    link_netnsid: int
    kind: str
    up: bool


def _attrs(buf: bytes, off: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    while off + 4 <= end:
        length, typ = _RTATTR.unpack_from(buf, off)
        if length < 4:
            break
        out[typ & 0x3FFF] = buf[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def _dump(sock: socket.socket, index: int = 0) -> list[Link]:
    """All links (a dump), or only the link with ``index`` (a single request: no walk over every interface)."""
    seq = 1
    flags = NLM_F_REQUEST | (0 if index else NLM_F_DUMP)
    req = _NLMSGHDR.pack(_NLMSGHDR.size + 16, RTM_GETLINK, flags, seq, 0) + _IFINFOMSG.pack(
        socket.AF_UNSPEC, 0, index, 0, 0
    )
    sock.sendto(req, (0, 0))
    links: list[Link] = []
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off + _NLMSGHDR.size <= len(data):
            length, typ, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
            if length < _NLMSGHDR.size:
                return links
            if typ == NLMSG_DONE:
                return links
            if typ == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", data, off + _NLMSGHDR.size)
                if err:
                    raise NetlinkError(-err, os.strerror(-err))
                return links
            elif typ == RTM_NEWLINK:
                body = off + _NLMSGHDR.size
                _family, _type, index, flags, _change = _IFINFOMSG.unpack_from(data, body)
                attrs = _attrs(data, body + _IFINFOMSG.size, off + length)
                name = attrs.get(IFLA_IFNAME, b"\0").split(b"\0", 1)[0].decode()
                link = struct.unpack("=i", attrs[IFLA_LINK][:4])[0] if IFLA_LINK in attrs else 0
                nsid = struct.unpack("=i", attrs[IFLA_LINK_NETNSID][:4])[0] if IFLA_LINK_NETNSID in attrs else -1
                kind = ""
                if IFLA_LINKINFO in attrs:
                    info = _attrs(attrs[IFLA_LINKINFO], 0, len(attrs[IFLA_LINKINFO]))
                    kind = info.get(IFLA_INFO_KIND, b"").split(b"\0", 1)[0].decode()
                links.append(Link(index, name, link, nsid, kind, bool(flags & 1)))
                if not flags_dump(data, off):
                    return links
            off += (length + 3) & ~3


def flags_dump(data: bytes, off: int) -> bool:
    """Whether the message at ``off`` is part of a multi-part (dump) answer."""
    _length, _typ, flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
    return bool(flags & 0x2)  # NLM_F_MULTI


def link_by_index(index: int) -> Link | None:
    """The link with ``index`` in the caller's namespace, or None."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    with sock:
        sock.bind((0, 0))
        try:
            found = _dump(sock, index)
        except NetlinkError:
            return None
    return found[0] if found else None


def links(netns: str | None = None) -> list[Link]:
    """All interfaces of the namespace at ``netns`` (or of the calling thread's namespace)."""
    if netns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    else:
        with netns_mod.entered(netns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    with sock:
        sock.bind((0, 0))
        return _dump(sock)


def host_peer_of(netns: str, ifname: str = "eth0") -> str | None:
    """Name of the interface in the caller's namespace that is the veth peer of ``ifname`` in ``netns``."""
    pod_links = {link.name: link for link in links(netns)}
    pod_if = pod_links.get(ifname)
    if pod_if is None or pod_if.link_index <= 0 or pod_if.link_netnsid < 0:
        return None
    # Confirm in our own namespace that the interface at that index points back at the pod's interface: an
    # ifindex alone could name an unrelated device if the peer lived in a third namespace.
    host_if = link_by_index(pod_if.link_index)
    if host_if is not None and host_if.link_index == pod_if.index:
        return host_if.name
    return None
