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

from ..core.params import ConfigError
from .raw import SO_RCVBUFFORCE, SO_SNDBUFFORCE, SOCKET_BUFFER, _set_buffer

# Linux values (not all in Python's socket module).
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_RECVTOS = getattr(socket, "IP_RECVTOS", 13)
SO_NO_CHECK = 11
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT, IP_PMTUDISC_DO = 0, 2
UDP_GRO = 104  # SOL_UDP: receive datagrams of a flow joined, with their size (linux/udp.h)
# Room for IP_PKTINFO (struct in_pktinfo, 12 bytes), IP_TOS (one byte) and UDP_GRO (an int), with their headers.
ANCILLARY = socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4) + socket.CMSG_SPACE(4)
AUTO_PORTS = 4  # send sockets for `encap-sport auto`: flows are spread over this many source ports


def open_udp(
    port: int,
    local: bytes | None,
    *,
    csum: bool,
    pmtudisc: bool,
    device: str | None = None,
    buffer: int = SOCKET_BUFFER,
) -> socket.socket:
    """A non-blocking IPv4 UDP socket bound to (`local` or any, `port`; 0: one the kernel picks), that
    reports each datagram's destination address and TOS; ConfigError in one line if it cannot be had."""
    where = f"{socket.inet_ntoa(local) if local else '0.0.0.0'}:{port}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVTOS, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO if pmtudisc else IP_PMTUDISC_DONT)
        if not csum:
            sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)  # RFC 768: checksum 0, "none computed"
        # Datagrams the device's GRO joined come up as one read (the loop cuts them again): fewer system calls.
        sock.setsockopt(socket.SOL_UDP, UDP_GRO, 1)
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer)
        if device is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            except OSError as exc:
                raise ConfigError(f"cannot bind to device {device!r}: {exc.strerror}") from None
        try:
            sock.bind((socket.inet_ntoa(local) if local else "0.0.0.0", port))
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
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
        elif level == socket.SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            segment = int.from_bytes(data[:4], sys.byteorder)
    return dst, tos, segment


def outer_ancillary(tos: int, ttl: int) -> list[tuple[int, int, bytes]]:
    """IP_TOS and IP_TTL for one sendmsg: the outer header's values for this packet."""
    return [
        (socket.IPPROTO_IP, socket.IP_TOS, tos.to_bytes(4, sys.byteorder)),
        (socket.IPPROTO_IP, socket.IP_TTL, ttl.to_bytes(4, sys.byteorder)),
    ]
