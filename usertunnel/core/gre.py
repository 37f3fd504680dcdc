"""GRE header (RFC 2784, with the key and sequence number of RFC 2890): parse and build.

Layout (RFC 2784 section 2.1, RFC 2890 section 2):

    |C|R|K|S|s|Recur|  Flags  | Ver |         Protocol Type         |
    |      Checksum (optional)      |       Reserved1 (optional)    |
    |                        Key (optional)                         |
    |                  Sequence Number (optional)                   |

Receive rules follow Linux's `gre_parse_header`: a packet with version != 0 or
the routing bit set is dropped; the other RFC 1701 bits (strict source route,
recursion control, reserved flags) are ignored, as RFC 2784 section 2.3 lets a
receiver that knows RFC 1701 do. A checksum that is present is always verified.
This file knows nothing of tunnels: which key or sequence number is acceptable
is decided in `encap`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from .checksum import checksum_is_valid, internet_checksum
from .drops import Drop

FLAG_CSUM = 0x8000  # C: checksum and reserved1 present (RFC 2784 section 2.1)
FLAG_ROUTING = 0x4000  # R: RFC 1701 routing present; RFC 2784 receivers drop it
FLAG_KEY = 0x2000  # K: key present (RFC 2890 section 2.1)
FLAG_SEQ = 0x1000  # S: sequence number present (RFC 2890 section 2.2)
VERSION_MASK = 0x0007

PROTO_IPV4 = 0x0800
PROTO_IPV6 = 0x86DD
PROTO_TEB = 0x6558  # transparent Ethernet bridging (gretap)
PROTO_KEEPALIVE = 0x0000  # Cisco keepalive reply

BASE_LEN = 4

_BASE = struct.Struct("!HH")
_WORD = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class GREHeader:
    """A GRE header. Optional fields are present when not None.

    `checksum` is the value on the wire. Use `with_checksum(payload)` to
    compute it over the header and the payload (RFC 2784 section 2.5).
    `reserved0` holds the bits between S and Ver that a sender sets to zero.
    """

    protocol: int
    checksum: int | None = None
    key: int | None = None
    sequence: int | None = None
    version: int = 0
    reserved0: int = 0  # RFC bits 4-12 (s, Recur, Flags), i.e. (word >> 3) & 0x1FF; kept for round trips
    reserved1: int = 0

    @property
    def flags(self) -> int:
        """The first 16 bits: C, K, S bits, reserved bits and version."""
        word = (self.reserved0 << 3) | self.version
        if self.checksum is not None:
            word |= FLAG_CSUM
        if self.key is not None:
            word |= FLAG_KEY
        if self.sequence is not None:
            word |= FLAG_SEQ
        return word

    @property
    def length(self) -> int:
        return header_length(self.flags)

    def pack(self) -> bytes:
        out = _BASE.pack(self.flags, self.protocol)
        if self.checksum is not None:
            out += _BASE.pack(self.checksum, self.reserved1)
        if self.key is not None:
            out += _WORD.pack(self.key)
        if self.sequence is not None:
            out += _WORD.pack(self.sequence)
        return out

    def with_checksum(self, payload: bytes | bytearray | memoryview) -> GREHeader:
        """The header with C set and the checksum computed over header and `payload`."""
        zeroed = replace(self, checksum=0)
        return replace(self, checksum=internet_checksum(zeroed.pack() + bytes(payload)))


def flags_for(csum: bool, key: bool, seq: bool) -> int:
    """The C, K and S bits of a header that carries a checksum, a key and a sequence number as asked."""
    return (FLAG_CSUM if csum else 0) | (FLAG_KEY if key else 0) | (FLAG_SEQ if seq else 0)


def header_length(flags: int) -> int:
    """Length of a GRE header whose first 16 bits are `flags` (routing not supported)."""
    n = BASE_LEN
    if flags & FLAG_CSUM:
        n += 4
    if flags & FLAG_KEY:
        n += 4
    if flags & FLAG_SEQ:
        n += 4
    return n


# The header length for each value of the top four flag bits (C, R, K, S; R is refused before it matters).
_LENGTH = tuple(header_length(high << 12) for high in range(16))
_KEY_OR_SEQ = FLAG_KEY | FLAG_SEQ
_VERSION_OR_ROUTING = VERSION_MASK | FLAG_ROUTING

Fields = tuple[int, int, int, int | None, int | None]  # flags, protocol, header length, key, sequence


def parse_fields(data: bytes | bytearray | memoryview) -> Fields | Drop:
    """The one GRE parser (gre_parse_header's rules): (flags, protocol, header length, key, sequence) of the
    header at the start of `data`, or why it cannot be read (truncated, version != 0, routing bit). The
    checksum is not verified here: the receive path (core.encap) verifies it once it knows the tunnel's
    rules, the tools (`parse_gre`) when asked."""
    if len(data) < BASE_LEN:
        return Drop.GRE_TRUNCATED
    flags, protocol = _BASE.unpack_from(data)
    if flags & _VERSION_OR_ROUTING:
        return Drop.GRE_VERSION if flags & VERSION_MASK else Drop.GRE_ROUTING
    hlen = _LENGTH[flags >> 12]
    if len(data) < hlen:
        return Drop.GRE_TRUNCATED
    key = sequence = None
    if flags & _KEY_OR_SEQ:
        off = 8 if flags & FLAG_CSUM else 4
        if flags & FLAG_KEY:
            (key,) = _WORD.unpack_from(data, off)
            off += 4
        if flags & FLAG_SEQ:
            (sequence,) = _WORD.unpack_from(data, off)
    return flags, protocol, hlen, key, sequence


def parse_gre(data: bytes | bytearray | memoryview, verify_checksum: bool = True) -> GREHeader | Drop:
    """Parse the GRE header at the start of `data`: the header and its payload, cut at the outer IP
    total length (the checksum covers exactly that; link-layer padding would make it look wrong).

    Returns a `Drop` for a truncated header, version != 0, the routing bit, or
    a checksum that is present and wrong (unless `verify_checksum` is False:
    a dissector still wants the fields of a packet with a bad checksum).
    """
    fields = parse_fields(data)
    if isinstance(fields, Drop):
        return fields
    flags, protocol, _hlen, key, sequence = fields
    checksum = None
    reserved1 = 0
    if flags & FLAG_CSUM:
        if verify_checksum and not checksum_is_valid(data):
            return Drop.CSUM_BAD
        checksum, reserved1 = _BASE.unpack_from(data, BASE_LEN)
    return GREHeader(protocol, checksum, key, sequence, 0, (flags >> 3) & 0x1FF, reserved1)
