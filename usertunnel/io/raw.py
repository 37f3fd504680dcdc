"""Raw sockets: IPv4 ones per outer protocol (47 GRE, 4 IPIP, 41 sit), and IPv6 ones.

IPv6 (ipip6, ip6ip6, ip6gre): one IPPROTO_RAW socket sends (it implies
IPV6_HDRINCL: we write the whole IPv6 header and the encapsulation limit
option, as ip6_tnl_xmit does), and one socket per next header receives. A raw
IPv6 socket delivers no IPv6 header: IPV6_RECVPKTINFO gives the destination
address (for the lookup by local address), IPV6_RECVTCLASS the traffic class
(for RFC 6040), and the source comes as the sender's address.

- IP_HDRINCL: we write the whole outer IPv4 header, so TTL, TOS and DF are
  per packet, as the kernel's ip_tunnel_xmit sets them. The kernel still fills
  in the header checksum (and the identification when we give 0 without DF).
- Never connect(): after a peer's ICMP protocol-unreachable a connected raw
  socket fails recv() with ENOPROTOOPT, and under uvloop the reader is then
  dropped for good. We sendto() the remote and let the lookup filter senders.
- Never IP_RECVERR either: an ICMP error about one of our packets would then
  set the socket's error (POLLERR), and libuv stops watching a socket on
  POLLERR. The path MTU comes from a separate ICMP socket (`open_icmp_listener`).
- The default receive buffer (~212 KB) overflows under TCP load: ask for
  several megabytes (SO_RCVBUFFORCE as root, SO_RCVBUF otherwise).
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ..core.params import ConfigError

SOCKET_BUFFER = 8 * 1024 * 1024
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)

# Linux values missing from Python's socket module on some builds.
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_raw(protocol: int, device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking raw IPv4 socket for `protocol`, with IP_HDRINCL and large buffers."""
    sock = _raw(socket.AF_INET, protocol)
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    except BaseException:
        sock.close()
        raise
    return _configure(sock, device, buffer)


def open_raw6_sender(device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking IPv6 IPPROTO_RAW socket: every packet written carries its own IPv6 header."""
    return _configure(_raw(socket.AF_INET6, socket.IPPROTO_RAW), device, buffer)


def open_raw6_receiver(protocol: int, device: str | None = None, buffer: int = SOCKET_BUFFER) -> socket.socket:
    """A non-blocking raw IPv6 socket receiving next header `protocol`, with the destination address and
    traffic class of each packet as ancillary data."""
    sock = _raw(socket.AF_INET6, protocol)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVTCLASS, 1)
    except BaseException:
        sock.close()
        raise
    return _configure(sock, device, buffer)


def _raw(family: int, protocol: int) -> socket.socket:
    try:
        return socket.socket(family, socket.SOCK_RAW, protocol)
    except PermissionError:
        version = 4 if family == socket.AF_INET else 6
        raise ConfigError(
            f"cannot open a raw IPv{version} socket for protocol {protocol}: permission denied; "
            "run as root or with CAP_NET_RAW"
        ) from None


def _configure(sock: socket.socket, device: str | None, buffer: int) -> socket.socket:
    try:
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer)
        if device is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            except OSError as exc:
                raise ConfigError(f"cannot bind to device {device!r}: {exc.strerror}") from None
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# Classic BPF, run on each ICMP packet from its IPv4 header on: keep type 3 code 4 (destination
# unreachable, fragmentation needed), drop the rest before it reaches us.
_FRAG_NEEDED_FILTER = (
    (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf): X = IPv4 header length
    (0x50, 0, 0, 0),  # ldb [x+0]: ICMP type
    (0x15, 0, 3, 3),  # jeq #3 (destination unreachable), else drop
    (0x50, 0, 0, 1),  # ldb [x+1]: ICMP code
    (0x15, 0, 1, 4),  # jeq #4 (fragmentation needed), else drop
    (0x06, 0, 0, 0xFFFF),  # ret #65535: keep
    (0x06, 0, 0, 0),  # ret #0: drop
)


def open_icmp_listener(device: str | None = None) -> socket.socket:
    """A non-blocking raw ICMP socket that sees only "fragmentation needed" (a copy; the kernel handles
    them too): how a tunnel learns the path MTU to its remote without IP_RECVERR on its own socket."""
    sock = _raw(socket.AF_INET, socket.IPPROTO_ICMP)
    try:
        program = (ctypes.c_uint8 * (8 * len(_FRAG_NEEDED_FILTER)))()
        for i, (code, jt, jf, k) in enumerate(_FRAG_NEEDED_FILTER):
            struct.pack_into("=HBBI", program, 8 * i, code, jt, jf, k)
        fprog = struct.pack("@HP", len(_FRAG_NEEDED_FILTER), ctypes.addressof(program))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except BaseException:
        sock.close()
        raise
    return _configure(sock, device, 256 * 1024)
