"""IPv6 fixed header (RFC 8200 section 3): the fields a tunnel reads and writes.

usertunnel carries IPv6 inside GRE; the tunnel needs the traffic class (for
TOS and ECN inheritance), the hop limit (for TTL inheritance) and the payload
length (to validate the packet before it reaches the TUN device).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .drops import Drop

VERSION = 6
HEADER_LEN = 40

_FIXED = struct.Struct("!IHBB16s16s")


@dataclass(frozen=True, slots=True)
class IPv6Header:
    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    def pack(self) -> bytes:
        first = (VERSION << 28) | (self.traffic_class << 20) | self.flow_label
        return _FIXED.pack(first, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst)


def parse_ipv6(data: bytes | bytearray | memoryview) -> IPv6Header | Drop:
    """Parse the fixed IPv6 header at the start of `data`; check version and payload length."""
    if len(data) < HEADER_LEN:
        return Drop.INNER_MALFORMED
    first, plen, nxt, hlim, src, dst = _FIXED.unpack_from(data)
    if first >> 28 != VERSION or HEADER_LEN + plen > len(data):
        return Drop.INNER_MALFORMED
    return IPv6Header((first >> 20) & 0xFF, first & 0xFFFFF, plen, nxt, hlim, src, dst)


def traffic_class(data: bytes | bytearray | memoryview) -> int:
    """The traffic class of the IPv6 packet at the start of `data` (at least 2 bytes)."""
    return ((data[0] & 0x0F) << 4) | (data[1] >> 4)
