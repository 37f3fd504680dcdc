"""IPv4 header (RFC 791): parse and build.

This file knows the IPv4 header and nothing else: no tunnel, no socket.
Addresses are kept as 4 packed bytes, the form the wire and the lookup use;
`ipaddress.IPv4Address(h.src)` turns one into text.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from .checksum import checksum_is_valid, internet_checksum, ones_complement_sum
from .drops import Drop

VERSION = 4
MIN_HEADER_LEN = 20
FLAG_DF = 0x4000  # RFC 791: "Don't Fragment" in the flags/fragment-offset word
FLAG_MF = 0x2000  # RFC 791: "More Fragments"
OFFSET_MASK = 0x1FFF

_FIXED = struct.Struct("!BBHHHBBH4s4s")


@dataclass(frozen=True, slots=True)
class IPv4Header:
    """An IPv4 header. `checksum` is the value on the wire; `pack()` writes it as given."""

    tos: int
    total_length: int
    identification: int
    frag_off: int  # flags (3 bits) and fragment offset (13 bits), as one 16-bit word
    ttl: int
    protocol: int
    checksum: int
    src: bytes
    dst: bytes
    options: bytes = b""

    @property
    def ihl(self) -> int:
        """Header length in 32-bit words."""
        return (MIN_HEADER_LEN + len(self.options)) // 4

    @property
    def header_length(self) -> int:
        return MIN_HEADER_LEN + len(self.options)

    @property
    def dont_fragment(self) -> bool:
        return bool(self.frag_off & FLAG_DF)

    @property
    def is_fragment(self) -> bool:
        return bool(self.frag_off & (FLAG_MF | OFFSET_MASK))

    def pack(self) -> bytes:
        return (
            _FIXED.pack(
                (VERSION << 4) | self.ihl,
                self.tos,
                self.total_length,
                self.identification,
                self.frag_off,
                self.ttl,
                self.protocol,
                self.checksum,
                self.src,
                self.dst,
            )
            + self.options
        )

    def with_checksum(self) -> IPv4Header:
        """The same header with its checksum computed (RFC 791 section 3.1)."""
        return replace(self, checksum=internet_checksum(replace(self, checksum=0).pack()))


def parse_ipv4(data: bytes | bytearray | memoryview) -> IPv4Header | Drop:
    """Parse the IPv4 header at the start of `data`; check the version, the IHL, and that the
    total length covers at least the header.

    A total length beyond `data` is not refused: callers hand in a header alone
    (to describe what they built) as well as whole packets; code that needs the
    whole packet compares `total_length` with what it has. The header checksum is
    not checked here either (see `header_checksum_ok`): a raw socket receives
    packets whose header the kernel has already verified.
    """
    if len(data) < MIN_HEADER_LEN:
        return Drop.OUTER_MALFORMED
    vihl, tos, total, ident, frag, ttl, proto, csum, src, dst = _FIXED.unpack_from(data)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != VERSION or ihl < MIN_HEADER_LEN or len(data) < ihl or total < ihl:
        return Drop.OUTER_MALFORMED
    return IPv4Header(tos, total, ident, frag, ttl, proto, csum, src, dst, bytes(data[MIN_HEADER_LEN:ihl]))


def header_checksum_ok(data: bytes | bytearray | memoryview) -> bool:
    """True when the IPv4 header at the start of `data` has a valid checksum."""
    ihl = (data[0] & 0x0F) * 4
    return checksum_is_valid(data[:ihl])


def fragment(packet: bytes | bytearray | memoryview, mtu: int) -> list[bytes]:
    """`packet` (an IPv4 packet without DF and without options) cut into fragments of at most `mtu`
    bytes (RFC 791 section 3.2): what the kernel's ip_fragment does for a tunnel with `nopmtudisc`
    whose outer packet is larger than the link it leaves by. Each fragment keeps the identification;
    all but the last carry MF and a multiple of 8 bytes."""
    ihl = (packet[0] & 0x0F) << 2
    header = bytearray(packet[:ihl])
    flags_offset = (header[6] << 8) | header[7]
    base = flags_offset & OFFSET_MASK
    more = flags_offset & FLAG_MF
    payload = memoryview(packet)[ihl:]
    step = ((mtu - ihl) // 8) * 8
    if step <= 0:
        raise ValueError(f"mtu {mtu} leaves no room for a fragment after a {ihl}-byte header")
    out = []
    for start in range(0, len(payload), step):
        chunk = payload[start : start + step]
        last = start + step >= len(payload)
        word = (flags_offset & FLAG_DF) | (base + start // 8) | (more if last else FLAG_MF)
        header[2:4] = (ihl + len(chunk)).to_bytes(2, "big")
        header[6:8] = word.to_bytes(2, "big")
        header[10:12] = b"\x00\x00"
        header[10:12] = (~ones_complement_sum(header) & 0xFFFF).to_bytes(2, "big")
        out.append(bytes(header) + bytes(chunk))
    return out
