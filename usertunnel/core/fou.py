"""FOU and GUE: a tunnel's packets carried in UDP, as Linux's `encap fou|gue` (net/ipv4/fou_core.c).

Rules of this file: bytes in, bytes out; no socket. It knows the UDP header a
tunnel puts between the outer IP header and what it carries, the GUE header,
and how a source port is picked for a flow. Which socket sends and receives
is the I/O shell's business (io/udp.py).

Theory of operation. GRE, IPIP and SIT have no ports, so a NAT can keep only one
inner host's tunnel per public address, and a hub must know every spoke's public
address in advance. Putting the same packet in UDP fixes both:

  FOU (Foo-over-UDP; for GRE, RFC 8086 "GRE-in-UDP", port 4754): outer IP, UDP, then
  the bytes that would have followed the outer IP header (a GRE header and the inner
  packet; or the inner packet itself for ipip and sit). The receiver knows from the
  UDP port which protocol that is (`ip fou add port N ipproto 47|4|41`).

  GUE (draft-ietf-intarea-gue, variant 0): outer IP, UDP, a 4-byte GUE header that
  names the protocol (its proto/ctype field: 47, 4, 41), then the same bytes. One
  port serves every protocol (`ip fou add port N gue`). Variant 1 (the first two
  bits 01) carries an IPv4 or IPv6 packet directly, with no GUE header.

The UDP source port is fixed (`encap-sport N`) or chosen per inner flow
(`encap-sport auto`), so that equal-cost paths and receive-side scaling spread the
flows, as the kernel's udp_flow_src_port does. The UDP checksum follows iproute2's
defaults: off over IPv4 unless `encap-csum`, on over IPv6 (RFC 6935/6936 allow a zero
checksum there only when asked).
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

from .drops import Drop

UDP_HEADER_LEN = 8
GUE_HEADER_LEN = 4
GRE_IN_UDP_PORT = 4754  # RFC 8086 section 3 (IANA)
# The kernel's default ip_local_port_range: udp_flow_src_port maps a flow's hash into it.
EPHEMERAL_LOW, EPHEMERAL_HIGH = 32768, 60999

PROTO_GRE, PROTO_IPIP, PROTO_IPV6 = 47, 4, 41


class EncapKind(enum.Enum):
    """What goes between the UDP header and the tunnel's own header (iproute2's `encap` word)."""

    FOU = "fou"
    GUE = "gue"


@dataclass(frozen=True, slots=True)
class Encap:
    """A tunnel's UDP encapsulation: `encap fou|gue encap-sport auto|N encap-dport N [no]encap-csum`."""

    kind: EncapKind
    dport: int
    sport: int | None = None  # None: auto, from the inner flow
    csum: bool = False  # the UDP checksum (over IPv6: on unless asked)

    def words(self) -> str:
        """As iproute2 prints and reads them: `encap fou encap-sport auto encap-dport 5555 noencap-csum`."""
        sport = "auto" if self.sport is None else str(self.sport)
        csum = "encap-csum" if self.csum else "noencap-csum"
        return f"encap {self.kind.value} encap-sport {sport} encap-dport {self.dport} {csum}"

    def as_dict(self) -> dict[str, object]:
        """The `encap` object of `show -j`: type, sport (null: auto), dport, csum."""
        return {"type": self.kind.value, "sport": self.sport, "dport": self.dport, "csum": self.csum}

    @property
    def header_length(self) -> int:
        """Bytes the encapsulation adds after the outer IP header: UDP, and the GUE header with gue."""
        return UDP_HEADER_LEN + (GUE_HEADER_LEN if self.kind is EncapKind.GUE else 0)


def gue_header(protocol: int) -> bytes:
    """GUE variant 0 with no options and no flags, as the kernel's gue_build_header: version 0, C 0,
    hlen 0, proto/ctype = the IP protocol carried, flags 0."""
    return bytes((0, protocol, 0, 0))


def parse_gue(payload: bytes | bytearray | memoryview) -> tuple[int, int] | Drop:
    """The protocol carried after a GUE header and where it starts, or why the packet is dropped.

    Variant 0 with no flags and no options only (what Linux sends); a control message (C bit) or
    flags and options we do not implement are dropped, as the kernel drops what it cannot validate.
    Variant 1: the payload is an IPv4 or IPv6 packet itself (protocol 4 or 41, at offset 0).
    """
    if len(payload) < 1:
        return Drop.GUE_MALFORMED
    first = payload[0]
    variant = first >> 6
    if variant == 1:
        version = first >> 4
        if version == 4:
            return PROTO_IPIP, 0
        if version == 6:
            return PROTO_IPV6, 0
        return Drop.GUE_MALFORMED
    if variant != 0:
        return Drop.GUE_VERSION
    if len(payload) < GUE_HEADER_LEN:
        return Drop.GUE_MALFORMED
    hlen = (first & 0x1F) << 2
    if first & 0x20 or hlen or payload[2] or payload[3]:  # C bit; options; flags
        return Drop.GUE_MALFORMED
    return payload[1], GUE_HEADER_LEN


def flow_hash(inner: bytes | bytearray | memoryview) -> int:
    """A 32-bit hash of the inner packet's flow: addresses, protocol and, for TCP and UDP, ports.

    The kernel hashes the same fields with a per-boot random key (skb_get_hash), so its ports cannot
    be predicted; ours are stable across runs, which tests and captures can rely on.
    """
    n = len(inner)
    if n >= 20 and inner[0] >> 4 == 4:
        ihl = (inner[0] & 0x0F) << 2
        proto = inner[9]
        fields = bytes(inner[12:20]) + bytes((proto,))
        if proto in (6, 17) and not (inner[6] & 0x3F or inner[7]) and n >= ihl + 4:
            fields += bytes(inner[ihl : ihl + 4])
    elif n >= 40 and inner[0] >> 4 == 6:
        proto = inner[6]
        fields = bytes(inner[8:40]) + bytes((proto,))
        if proto in (6, 17) and n >= 44:
            fields += bytes(inner[40:44])
    else:
        fields = bytes(inner[:16])
    return zlib.crc32(fields)


def flow_source_port(inner: bytes | bytearray | memoryview) -> int:
    """`encap-sport auto`: a source port in the ephemeral range from the inner flow, with the final
    mixing of the kernel's udp_flow_src_port (fold the hash, scale it into [low, high))."""
    h = flow_hash(inner)
    h = (h ^ (h << 16)) & 0xFFFFFFFF
    return ((h * (EPHEMERAL_HIGH - EPHEMERAL_LOW)) >> 32) + EPHEMERAL_LOW
