"""ICMP errors a tunnel sends back to an inner sender: "fragmentation needed" (IPv4) and "packet too big" (IPv6).

Rules for this file: bytes in, bytes out. The tunnel calls these when an inner
packet that may not be fragmented (IPv4 with DF, any IPv6 packet) is too large
for the path to the remote, as Linux's ip_tunnel_xmit does through
tnl_update_pmtu and icmp_ndo_send: the inner sender learns the tunnel's path
MTU and sends smaller packets (RFC 1191, RFC 8201), instead of its packets
vanishing in a black hole (RFC 4459, RFC 2003 section 4).

The error's source is the inner packet's destination: written into the TUN
device, it reaches the host as if from the far side of the tunnel (an address
of the host itself would be dropped there as a martian source).
"""

from __future__ import annotations

import struct

from .checksum import internet_checksum
from .ipv4 import FLAG_DF, IPv4Header

ICMP_DEST_UNREACH = 3
ICMP_FRAG_NEEDED = 4
ICMPV6_PACKET_TOO_BIG = 2
IPV4_QUOTE_LIMIT = 576  # RFC 1812 section 4.3.2.3: the whole error fits in 576 bytes
IPV6_MIN_MTU = 1280  # RFC 4443 section 2.4 (c): the whole error fits in the minimum MTU


def frag_needed(inner: bytes | bytearray | memoryview, mtu: int) -> bytes:
    """ICMP destination unreachable, fragmentation needed (RFC 792, RFC 1191), for IPv4 packet `inner`."""
    quote = bytes(inner[: IPV4_QUOTE_LIMIT - 28])
    body = struct.pack("!BBHHH", ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, 0, 0, mtu & 0xFFFF) + quote
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    src, dst = bytes(inner[16:20]), bytes(inner[12:16])
    header = IPv4Header(0xC0, 20 + len(body), 0, FLAG_DF, 64, 1, 0, src, dst)
    return header.with_checksum().pack() + body


def packet_too_big(inner: bytes | bytearray | memoryview, mtu: int) -> bytes:
    """ICMPv6 packet too big (RFC 4443 section 3.2) for IPv6 packet `inner`."""
    quote = bytes(inner[: IPV6_MIN_MTU - 48])
    src, dst = bytes(inner[24:40]), bytes(inner[8:24])
    body = struct.pack("!BBHI", ICMPV6_PACKET_TOO_BIG, 0, 0, mtu) + quote
    pseudo = src + dst + struct.pack("!IxxxB", len(body), 58)
    body = body[:2] + struct.pack("!H", internet_checksum(pseudo + body)) + body[4:]
    header = struct.pack("!IHBB", 0x60000000, len(body), 58, 64) + src + dst
    return header + body
