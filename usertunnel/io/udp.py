"""The UDP sockets of a FOU or GUE tunnel (core.fou): ordinary sockets, so no CAP_NET_RAW.

The kernel builds the outer IPv4 and UDP headers; we hand it the UDP payload
(GUE, GRE and the inner packet) with the outer TOS and TTL of each packet as
ancillary data (IP_TOS, IP_TTL: they follow the inner packet, as on any tunnel).
DF follows --pmtudisc for the socket as a whole (IP_MTU_DISCOVER), and the UDP
checksum is left out with SO_NO_CHECK unless the tunnel asks for it.

What each socket is for:
  - the receive socket, bound to the port the peer sends to (`encap-dport`, as
    `ip fou add port N` on a Linux host: both ends usually use the same number);
  - the send sockets: one bound to `encap-sport N`, or, for `encap-sport auto`,
    a few bound to ports the kernel picks, among which each inner flow keeps one.
    They are read too: a peer behind or in front of a NAT answers to the port we
    sent from.
A socket error never stops the reading: nothing here is connected, and IP_RECVERR is off.
"""

from __future__ import annotations

import errno
import socket
import sys

from ..core.errors import ConfigError
from .raw import SOCKET_BUFFER, configure

# Linux values (not all in Python's socket module).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
SO_NO_CHECK = 11
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
IPV6_DSTOPTS = getattr(socket, "IPV6_DSTOPTS", 59)
UDP_NO_CHECK6_TX, UDP_NO_CHECK6_RX = 101, 102  # SOL_UDP (linux/udp.h)
UDP_GRO = 104  # SOL_UDP: receive datagrams of a flow joined, with their size (linux/udp.h)
# Room for IP_PKTINFO (struct in_pktinfo, 12 bytes) or IPV6_PKTINFO (20), IP_TOS or IPV6_TCLASS (an int), and
# UDP_GRO (an int), with their headers.
ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)
AUTO_PORTS = 4  # send sockets for `encap-sport auto`: flows are spread over this many source ports


def open_udp(
    port: int,
    local: bytes | None,
    *,
    csum: bool,
    pmtudisc: bool,
    device: str | None = None,
    buffer: int = SOCKET_BUFFER,
    ipv6: bool = False,
    option: bytes = b"",
) -> socket.socket:
    """A non-blocking UDP socket (IPv4, or IPv6 with `ipv6`) bound to (`local` or any, `port`; 0: one the
    kernel picks), that reports each datagram's destination address and TOS (traffic class); over IPv6,
    `option` is the destination options header every packet carries (the encapsulation limit, which the
    kernel lets only CAP_NET_RAW set). ConfigError in one line if it cannot be had."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = socket.inet_ntop(family, local) if local else ("::" if ipv6 else "0.0.0.0")
    where = f"[{address}]:{port}" if ipv6 else f"{address}:{port}"
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DO)  # IPv6 never fragments en route
            if not csum:  # RFC 6935/6936: a zero checksum over IPv6 only when asked, both ways
                sock.setsockopt(socket.SOL_UDP, UDP_NO_CHECK6_TX, 1)
                sock.setsockopt(socket.SOL_UDP, UDP_NO_CHECK6_RX, 1)
            if option:
                try:
                    sock.setsockopt(socket.IPPROTO_IPV6, IPV6_DSTOPTS, option)
                except PermissionError:
                    raise ConfigError(
                        "the tunnel encapsulation limit option (RFC 2473) on a UDP socket needs CAP_NET_RAW: run as "
                        "root, or give encaplimit none"
                    ) from None
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if pmtudisc else IP_PMTUDISC_DONT)
            if not csum:
                sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)  # RFC 768: checksum 0, "none computed"
        # Datagrams the device's GRO joined come up as one read (the loop cuts them again): fewer system calls.
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
    except BaseException:
        sock.close()
        raise
    configure(sock, device, buffer)  # buffers, device, non-blocking (as the raw sockets); closes it on failure
    try:
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"UDP {where} is in use (another usertunnel up with the same port? tunnels that share a "
                    "port run in one process: usertunnel daemon, or another --encap-dport)"
                ) from None
            if exc.errno == errno.EACCES:
                raise ConfigError(f"cannot bind UDP {where}: a port below 1024 needs root or "
                                  "CAP_NET_BIND_SERVICE") from None  # fmt: skip
            raise ConfigError(f"cannot bind UDP {where}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


# Measured on Linux 6.x: an IPv6 UDP socket with a sticky destination options header (IPV6_DSTOPTS) refuses
# datagrams that would fill the link MTU exactly (EMSGSIZE), 8 bytes short of it, as if the option were counted
# twice. The tunnel's MTU is made that much smaller, so that its largest packet still leaves.
OPTION_SLACK = 8


def reach(underlay_mtu: int, ipv6: bool, option: bool) -> int:
    """The outer packet size a FOU / GUE socket can send on a link of `underlay_mtu` (see OPTION_SLACK)."""
    return underlay_mtu - OPTION_SLACK if ipv6 and option else underlay_mtu


def port_of(sock: socket.socket) -> int:
    """The local port a socket is bound to."""
    return int(sock.getsockname()[1])


def parse_ancillary(ancillary: list[tuple[int, int, bytes]]) -> tuple[bytes, int, int]:
    """The read's destination address (IP_PKTINFO's ipi_addr), its TOS byte (IP_TOS), and with UDP_GRO the
    size of each datagram it joins (0: one datagram)."""
    dst = b"\0\0\0\0"
    tos = segment = 0
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP:
            if kind == IP_PKTINFO and len(data) >= 12:
                dst = data[8:12]
            elif kind == socket.IP_TOS and data:
                tos = data[0]
        elif level == socket.IPPROTO_IPV6:
            if kind == socket.IPV6_PKTINFO and len(data) >= 16:
                dst = data[:16]
            elif kind == socket.IPV6_TCLASS and len(data) >= 4:
                tos = int.from_bytes(data[:4], sys.byteorder)
        elif level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            segment = int.from_bytes(data[:4], sys.byteorder)
    return dst, tos, segment


def outer_ancillary(tos: int, ttl: int, ipv6: bool = False) -> list[tuple[int, int, bytes]]:
    """IP_TOS and IP_TTL (IPV6_TCLASS and IPV6_HOPLIMIT) for one sendmsg: the outer header's values."""
    if ipv6:
        return [
            (socket.IPPROTO_IPV6, socket.IPV6_TCLASS, tos.to_bytes(4, sys.byteorder)),
            (socket.IPPROTO_IPV6, socket.IPV6_HOPLIMIT, ttl.to_bytes(4, sys.byteorder)),
        ]
    return [
        (socket.IPPROTO_IP, socket.IP_TOS, tos.to_bytes(4, sys.byteorder)),
        (socket.IPPROTO_IP, socket.IP_TTL, ttl.to_bytes(4, sys.byteorder)),
    ]
