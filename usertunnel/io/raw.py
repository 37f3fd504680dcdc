"""Raw IPv4 sockets, one per outer IP protocol (47 for GRE, 4 for IPIP).

- IP_HDRINCL: we write the whole outer IPv4 header, so TTL, TOS and DF are
  per packet, as the kernel's ip_tunnel_xmit sets them. The kernel still fills
  in the header checksum (and the identification when we give 0 without DF).
- Never connect(): after a peer's ICMP protocol-unreachable a connected raw
  socket fails recv() with ENOPROTOOPT, and under uvloop the reader is then
  dropped for good. We sendto() the remote and let the lookup filter senders.
- The default receive buffer (~212 KB) overflows under TCP load: ask for
  several megabytes (SO_RCVBUFFORCE as root, SO_RCVBUF otherwise).
"""

from __future__ import annotations

import socket

from ..core.params import ConfigError

SOCKET_BUFFER = 8 * 1024 * 1024

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
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, protocol)
    except PermissionError:
        raise ConfigError(
            f"cannot open a raw socket for IP protocol {protocol}: permission denied; run as root or with CAP_NET_RAW"
        ) from None
    try:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
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
