"""IPv6 (RFC 8200): the fixed header, the tunnel's extension headers, the outer header's fields.

Rules for this file: bytes in, values out. It knows the IPv6 header, the
destination options that IPv6 tunnels use (RFC 2473's Tunnel Encapsulation
Limit) and the choices Linux makes for an outer IPv6 header's traffic class,
flow label and hop limit; it knows nothing of sockets, tunnels or counters.
Addresses are 16 packed bytes, as on the wire. Nothing here raises on
malformed input: parsers return a `Drop` (or `None` for "absent").

Theory of operation, following Linux's ip6_tunnel.c / ip6_gre.c:

* Transmit (ipxip6_tnl_xmit, prepare_ip6gre_xmit_ipv6 -> ip6_tnl_xmit):
  an IPv6 inner packet is searched for a Tunnel Encapsulation Limit option
  (`encap_limit_offset`, the kernel's ip6_tnl_parse_tlv_enc_lim). A limit of 0
  refuses the packet (ICMPv6 Parameter Problem pointing at the limit byte); a
  limit N makes the outer header carry N - 1, even on a tunnel configured with
  `encaplimit none`; otherwise the tunnel's own limit is used, if it has one
  (`next_encap_limit`). The option travels in an 8-byte destination options
  header (`encap_limit_option`, the kernel's init_tel_txopt) between the outer
  IPv6 header and the payload.
* Outer fields (`outer_traffic_class`, `outer_flow_label`, `outer_hop_limit`):
  fixed or inherited from the inner header, as ip6_tnl_link_config,
  ipxip6_tnl_xmit and ip6_make_flowlabel decide.
* Receive: the kernel's IPv6 input processes the extension headers before the
  tunnel handler sees the payload; `upper_layer` does the same for what a
  tunnel meets in practice (hop-by-hop and destination options).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import NamedTuple

from .drops import Drop

VERSION = 6
HEADER_LEN = 40
FLOW_LABEL_MASK = 0xFFFFF

# Next header values (IANA "Assigned Internet Protocol Numbers"; the kernel's NEXTHDR_*).
NEXTHDR_HOP = 0
NEXTHDR_IPIP = 4  # IPv4 inside (ipip6 / ip4ip6)
NEXTHDR_TCP = 6
NEXTHDR_UDP = 17
NEXTHDR_IPV6 = 41  # IPv6 inside (ip6ip6, sit)
NEXTHDR_ROUTING = 43
NEXTHDR_FRAGMENT = 44
NEXTHDR_GRE = 47
NEXTHDR_AUTH = 51
NEXTHDR_NONE = 59
NEXTHDR_DEST = 60
NEXTHDR_SCTP = 132
NEXTHDR_UDPLITE = 136
# The extension headers that may lie between an inner IPv6 header and a tunnel encapsulation limit option of
# its own (RFC 2473 section 4.1.1): a tunnel reads them before choosing its outer limit.
EXTENSION_HEADERS = frozenset({NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_DEST})

# Options (RFC 8200 section 4.2; RFC 2473 section 4.1.1).
TLV_PAD1 = 0
TLV_PADN = 1
TLV_ROUTER_ALERT = 5  # RFC 2711, hop-by-hop only
TLV_TNL_ENCAP_LIMIT = 4  # RFC 2473 section 4.1.1: type 4, length 1, value = limit

DEFAULT_ENCAP_LIMIT = 4  # RFC 2473 section 6.6; iproute2's IPV6_DEFAULT_TNL_ENCAP_LIMIT
DEFAULT_HOP_LIMIT = 64  # iproute2's DEFAULT_TNL_HOP_LIMIT for ip6tnl / ip6gre
ENCAP_LIMIT_OPTION_LEN = 8  # what init_tel_txopt builds: one 8-byte destination options header

# The kernel's ipv6_ext_hdr(): the headers ip6_tnl_parse_tlv_enc_lim walks through.
# ESP (50) and the mobility header (135) are not among them: the walk stops there.
_EXTENSION_HEADERS = frozenset(
    {NEXTHDR_HOP, NEXTHDR_ROUTING, NEXTHDR_FRAGMENT, NEXTHDR_AUTH, NEXTHDR_NONE, NEXTHDR_DEST}
)
_PORTS = frozenset({NEXTHDR_TCP, NEXTHDR_UDP, NEXTHDR_SCTP, NEXTHDR_UDPLITE})

_FIXED = struct.Struct("!IHBB16s16s")

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class IPv6Header:
    """The 40-byte fixed header (RFC 8200 section 3). `src` and `dst` are 16 packed bytes."""

    traffic_class: int
    flow_label: int
    payload_length: int
    next_header: int
    hop_limit: int
    src: bytes
    dst: bytes

    @property
    def version(self) -> int:
        return VERSION

    def pack(self) -> bytes:
        first = (VERSION << 28) | (self.traffic_class << 20) | self.flow_label
        return _FIXED.pack(first, self.payload_length, self.next_header, self.hop_limit, self.src, self.dst)


def parse_ipv6(data: Buffer, malformed: Drop = Drop.INNER_MALFORMED) -> IPv6Header | Drop:
    """Parse the fixed IPv6 header at the start of `data`; check version and payload length.

    A packet shorter than 40 bytes, of another version, or whose payload length
    runs past `data` returns `malformed` (INNER_MALFORMED by default; a caller
    parsing an outer header passes OUTER_MALFORMED).
    """
    if len(data) < HEADER_LEN:
        return malformed
    first, plen, nxt, hlim, src, dst = _FIXED.unpack_from(data)
    if first >> 28 != VERSION or HEADER_LEN + plen > len(data):
        return malformed
    return IPv6Header((first >> 20) & 0xFF, first & FLOW_LABEL_MASK, plen, nxt, hlim, src, dst)


def traffic_class(data: Buffer) -> int:
    """The traffic class of the IPv6 packet at the start of `data` (at least 2 bytes)."""
    return ((data[0] & 0x0F) << 4) | (data[1] >> 4)


def flow_label(data: Buffer) -> int:
    """The flow label of the IPv6 packet at the start of `data` (at least 4 bytes)."""
    return ((data[1] & 0x0F) << 16) | (data[2] << 8) | data[3]


# --- RFC 2473 Tunnel Encapsulation Limit -------------------------------------------------


def encap_limit_option(limit: int, next_header: int) -> bytes:
    """The destination options header Linux puts after an outer IPv6 header (init_tel_txopt).

    8 bytes: next header, header extension length 0 (RFC 8200 section 4.6: 8 octets),
    the Tunnel Encapsulation Limit option (type 4, length 1, the limit; RFC 2473
    section 4.1.1), then a PadN option of length 1 filling the header to 8 bytes.
    """
    return bytes((next_header, 0, TLV_TNL_ENCAP_LIMIT, 1, limit, TLV_PADN, 1, 0))


def encap_limit_offset(packet: Buffer) -> int | None:
    """Offset, from the start of the IPv6 `packet`, of its Tunnel Encapsulation Limit option.

    Walks the extension headers as ip6_tnl_parse_tlv_enc_lim does: through
    hop-by-hop, routing, an unfragmented fragment header, AH and destination
    options headers, stopping at anything else, at a fragment with a non-zero
    offset/M word, or at truncation; inside every destination options header it
    scans the options for type 4 with length 1. None when there is none.
    """
    if len(packet) < HEADER_LEN:
        return None
    end = len(packet)
    nexthdr = packet[6]
    off = HEADER_LEN
    while nexthdr in _EXTENSION_HEADERS and nexthdr != NEXTHDR_NONE:
        if off + 2 > end:
            return None
        if nexthdr == NEXTHDR_FRAGMENT:
            if off + 4 > end or packet[off + 2] or packet[off + 3]:
                return None  # a real fragment: the option may be in another piece
            optlen = 8
        elif nexthdr == NEXTHDR_AUTH:
            optlen = (packet[off + 1] + 2) << 2  # RFC 4302 section 2.2: length in 4-octet units, minus 2
        else:
            optlen = (packet[off + 1] + 1) << 3  # RFC 8200 section 4.3: 8-octet units, not counting the first
        following = packet[off]
        if nexthdr == NEXTHDR_DEST:
            if off + optlen > end:
                return None
            i = 2
            while i + 3 <= optlen:
                kind = packet[off + i]
                if kind == TLV_TNL_ENCAP_LIMIT and packet[off + i + 1] == 1:
                    return off + i
                i += packet[off + i + 1] + 2 if kind != TLV_PAD1 else 1
        nexthdr = following
        off += optlen
    return None


def encap_limit(packet: Buffer) -> int | None:
    """The Tunnel Encapsulation Limit carried by the IPv6 `packet`, or None if it has none."""
    offset = encap_limit_offset(packet)
    return None if offset is None else packet[offset + 2]


class EncapLimitExhausted(NamedTuple):
    """The inner packet's encapsulation limit is 0: do not send it (RFC 2473 section 4.1.1).

    Linux answers with ICMPv6 Parameter Problem, code 0 (erroneous header field),
    whose pointer is `pointer`: the offset of the limit byte in the inner packet.
    """

    pointer: int


def next_encap_limit(inner: Buffer, configured: int | None) -> int | None | EncapLimitExhausted:
    """The limit the outer header carries (None: no option), as ipxip6_tnl_xmit decides.

    `configured` is the tunnel's `encaplimit` (None for `encaplimit none`). Only an
    IPv6 inner packet is searched; a limit found there wins over the configured one.
    """
    if len(inner) and inner[0] >> 4 == VERSION:
        offset = encap_limit_offset(inner)
        if offset is not None:
            found = inner[offset + 2]
            if found == 0:
                return EncapLimitExhausted(offset + 2)
            return found - 1
    return configured


class UpperLayer(NamedTuple):
    """What follows an IPv6 header's hop-by-hop and destination options: its protocol and offset."""

    protocol: int
    offset: int


def upper_layer(packet: Buffer, malformed: Drop = Drop.OUTER_MALFORMED) -> UpperLayer | Drop:
    """Skip the hop-by-hop and destination options headers after the IPv6 header of `packet`.

    This is what the kernel's IPv6 input has done by the time a tunnel handler
    (ip6ip6_rcv, ip4ip6_rcv, gre_rcv) sees the payload: the 8-byte destination
    options header carrying an encapsulation limit is stepped over. Every option
    is checked: Pad1, PadN, the encapsulation limit and (hop-by-hop) Router Alert
    are known; an unknown option whose two high-order type bits are not 00 asks
    for the packet to be discarded (RFC 8200 section 4.2). Hop-by-hop is only
    allowed first (RFC 8200 section 4.1). Other headers (routing, fragment, ...)
    are returned as the protocol: a tunnel does not carry them, and drops.
    """
    end = len(packet)
    if end < HEADER_LEN:
        return malformed
    nexthdr = packet[6]
    off = HEADER_LEN
    while nexthdr in (NEXTHDR_HOP, NEXTHDR_DEST):
        if nexthdr == NEXTHDR_HOP and off != HEADER_LEN:
            return malformed
        if off + 2 > end:
            return malformed
        hdrlen = (packet[off + 1] + 1) << 3
        if off + hdrlen > end or not _options_acceptable(packet, off + 2, off + hdrlen, nexthdr):
            return malformed
        nexthdr = packet[off]
        off += hdrlen
    return UpperLayer(nexthdr, off)


def _options_acceptable(packet: Buffer, i: int, end: int, header: int) -> bool:
    # The kernel's ip6_parse_tlv: padding is at most 7 bytes in a row and PadN carries
    # zeros (RFC 4942 section 2.1.9.5); an unknown option acts on its two high bits.
    known = (TLV_TNL_ENCAP_LIMIT, TLV_ROUTER_ALERT) if header == NEXTHDR_HOP else (TLV_TNL_ENCAP_LIMIT,)
    padding = 0
    while i < end:
        kind = packet[i]
        if kind == TLV_PAD1:
            padding += 1
            if padding > 7:
                return False
            i += 1
            continue
        if i + 2 > end:
            return False
        length = packet[i + 1]
        if i + 2 + length > end:
            return False  # an option running past its header
        if kind == TLV_PADN:
            padding += 2 + length
            if padding > 7 or any(packet[i + 2 : i + 2 + length]):
                return False
        else:
            padding = 0
            if kind not in known and kind >> 6 != 0:
                return False
        i += 2 + length
    return True


# --- The outer header's fields -------------------------------------------------------------


def outer_traffic_class(tclass: int | None, inner: Buffer) -> int:
    """The outer traffic class before ECN: fixed `tclass`, or None (`tclass inherit`) to copy the inner DS field.

    ipxip6_tnl_xmit: the inner IPv4 TOS byte or IPv6 traffic class when
    inheriting, the configured value otherwise; `ecn.encapsulate` then sets the
    ECN bits from the inner packet (INET_ECN_encapsulate). `inner` starts with a
    checked IPv4 or IPv6 header.
    """
    if tclass is not None:
        return tclass
    return traffic_class(inner) if inner[0] >> 4 == VERSION else inner[1]


def outer_hop_limit(hoplimit: int | None, inner: Buffer) -> int:
    """Fixed `hoplimit`, or None (`hoplimit inherit`, 0 in the kernel) for the inner TTL / hop limit (ip6_tnl_xmit)."""
    if hoplimit is not None:
        return hoplimit
    return inner[7] if inner[0] >> 4 == VERSION else inner[8]


def outer_flow_label(flowlabel: int | None, inner: Buffer, auto: bool = True) -> int:
    """The outer flow label: fixed `flowlabel`, or None (`flowlabel inherit`) to copy the inner one.

    Linux (ip6_tnl_link_config, ipxip6_tnl_xmit, prepare_ip6gre_xmit_ipv4/ipv6):
    with `flowlabel inherit` the configured label is left out and only an IPv6
    inner packet contributes its label; an IPv4 inner packet contributes
    nothing. Whatever is still 0 then becomes an automatic label
    (ip6_make_flowlabel, with net.ipv6.auto_flowlabels=1, the default since
    Linux 4.3): a hash of the flow (RFC 6437 section 3). So an IPv4 inner
    packet under `flowlabel inherit` gets an automatic label, as does a fixed
    label of 0. `auto=False` is auto_flowlabels=0: the 0 stays.

    The kernel hashes with a per-boot random key, so its labels cannot be
    reproduced; ours is `flow_hash`, stable for a flow, which is what RFC 6437
    asks of a label.
    """
    if flowlabel is not None:
        label = flowlabel & FLOW_LABEL_MASK
    elif inner[0] >> 4 == VERSION:
        label = flow_label(inner)
    else:
        label = 0
    if label or not auto:
        return label
    return flow_hash(inner)


def flow_hash(inner: Buffer) -> int:
    """A 20-bit label for the inner packet's flow: addresses, protocol and ports (RFC 6437 section 3).

    Ports are read only where they follow the IP header directly (no IPv6
    extension header, not a non-first IPv4 fragment). Never 0, which means "no label".
    """
    if inner[0] >> 4 == VERSION:
        proto = inner[6]
        key = bytes(inner[8:40]) + bytes((proto,))
        start = HEADER_LEN
        has_ports = proto in _PORTS
    else:
        proto = inner[9]
        key = bytes(inner[12:20]) + bytes((proto,))
        start = (inner[0] & 0x0F) * 4
        has_ports = proto in _PORTS and not ((inner[6] & 0x1F) | inner[7])
    if has_ports and len(inner) >= start + 4:
        key += bytes(inner[start : start + 4])
    h = zlib.crc32(key)
    return ((h ^ (h >> 20)) & FLOW_LABEL_MASK) or 1
