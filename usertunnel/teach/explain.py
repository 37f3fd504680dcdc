"""`usertunnel explain`: one packet, byte by byte, every field with its meaning and its RFC section.

Rules of this file:
- The model (`explain`, `render_text`, `to_json`, `parse_hex`) is pure: bytes in, values out. Only the two
  CLI hooks at the bottom (`add_parser`, `run`) read files or stdin and print.
- Packet bytes never make `explain` raise. A malformed packet is a result, not an error: every field that
  could be read, then a `Stop` saying at which offset and why parsing ended.
- Field values are read straight from the bytes, so that a header cut short still shows every field it
  holds. Verdicts come from the core, so that explain says what usertunnel itself believes: GRE header
  lengths and checksums (`core.gre`), IPv4 header checksums (`core.ipv4`), the Internet checksum
  (`core.checksum`), what a decapsulator does with ECN (`core.ecn`), drop reasons (`core.drops`).

Theory of operation: a `_Dissector` walks the packet from the link layer inwards. Each header is a
`Layer` of `Field`s; each field knows its byte offset in the whole packet, its bit range where it is not
whole bytes (bits counted from the most significant bit of the byte at `offset`, as RFC diagrams count
them: GRE's version is bits 13-15 of the GRE header), its value, a sentence, and its RFC section.
A `_Ctx` tells each layer where its bytes end and why (the packet's end, or an enclosing length field),
so a truncation is blamed on the right thing. Reading past that end raises `_Halt`, which `explain`
turns into the `Stop`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import struct
import sys
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..core import ecn, esp, fou, gre, ipv4, ipv6
from ..core.checksum import checksum_is_valid, internet_checksum
from ..core.drops import Drop

# --- link types (tcpdump.org/linktypes.html) --------------------------------------------------------------

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPES = {
    LINKTYPE_ETHERNET: "Ethernet",
    LINKTYPE_RAW: "raw IP",
    LINKTYPE_IPV4: "raw IPv4",
    LINKTYPE_IPV6: "raw IPv6",
    LINKTYPE_LINUX_SLL: "Linux cooked (SLL)",
    LINKTYPE_LINUX_SLL2: "Linux cooked v2 (SLL2)",
}

# --- names ------------------------------------------------------------------------------------------------

IP_PROTOCOLS = {
    0: "IPv6 hop-by-hop options",
    1: "ICMP",
    2: "IGMP",
    4: "IPv4 (IP in IP)",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6 routing header",
    44: "IPv6 fragment header",
    47: "GRE",
    50: "ESP (IPsec)",
    51: "AH (IPsec)",
    58: "ICMPv6",
    59: "no next header",
    60: "IPv6 destination options",
    89: "OSPF",
    103: "PIM",
    112: "VRRP",
    132: "SCTP",
    137: "MPLS in IP",
}
ETHERTYPES = {
    0x0000: "none (a Cisco GRE keepalive)",
    0x0800: "IPv4",
    0x0806: "ARP",
    0x2001: "NHRP (RFC 2332)",
    0x22EB: "ERSPAN type III",
    0x6558: "Ethernet (transparent bridging, gretap)",
    0x8100: "802.1Q VLAN tag",
    0x86DD: "IPv6",
    0x8847: "MPLS unicast",
    0x8848: "MPLS multicast",
    0x880B: "PPP (enhanced GRE, PPTP)",
    0x88A8: "802.1ad VLAN tag",
    0x883E: "WCCP redirect",
    0x88BE: "ERSPAN type I or II",
}
ECN_NAMES = {
    ecn.NOT_ECT: "Not-ECT: the transport does not use ECN",
    ecn.ECT_1: "ECT(1): ECN-capable transport",
    ecn.ECT_0: "ECT(0): ECN-capable transport",
    ecn.CE: "CE: congestion experienced",
}
ECN_SHORT = {ecn.NOT_ECT: "Not-ECT", ecn.ECT_1: "ECT(1)", ecn.ECT_0: "ECT(0)", ecn.CE: "CE"}
ICMP_TYPES = {
    0: "echo reply",
    3: "destination unreachable",
    4: "source quench (deprecated)",
    5: "redirect",
    8: "echo request",
    9: "router advertisement",
    10: "router solicitation",
    11: "time exceeded",
    12: "parameter problem",
    13: "timestamp",
    14: "timestamp reply",
}
ICMP_CODES = {
    3: {
        0: "network unreachable",
        1: "host unreachable",
        2: "protocol unreachable",
        3: "port unreachable",
        4: "fragmentation needed and DF set (path MTU discovery, RFC 1191)",
        5: "source route failed",
        6: "destination network unknown",
        7: "destination host unknown",
        9: "network administratively prohibited",
        10: "host administratively prohibited",
        13: "communication administratively prohibited (RFC 1812)",
    },
    5: {0: "for the network", 1: "for the host", 2: "for the network and TOS", 3: "for the host and TOS"},
    11: {0: "TTL exceeded in transit", 1: "fragment reassembly time exceeded"},
    12: {0: "the pointer shows the error", 1: "a required option is missing", 2: "bad length"},
}
ICMP_ERRORS = {3, 4, 5, 11, 12}  # these quote the packet that caused them (RFC 792)
ICMPV6_TYPES = {
    1: ("destination unreachable", "RFC 4443 3.1"),
    2: ("packet too big", "RFC 4443 3.2"),
    3: ("time exceeded", "RFC 4443 3.3"),
    4: ("parameter problem", "RFC 4443 3.4"),
    128: ("echo request", "RFC 4443 4.1"),
    129: ("echo reply", "RFC 4443 4.2"),
    133: ("router solicitation", "RFC 4861 4.1"),
    134: ("router advertisement", "RFC 4861 4.2"),
    135: ("neighbor solicitation", "RFC 4861 4.3"),
    136: ("neighbor advertisement", "RFC 4861 4.4"),
    137: ("redirect", "RFC 4861 4.5"),
    143: ("multicast listener report v2", "RFC 3810 5.2"),
}
ICMPV6_CODES = {
    1: {
        0: "no route to destination",
        1: "administratively prohibited",
        2: "beyond scope of source address",
        3: "address unreachable",
        4: "port unreachable",
        5: "source address failed ingress/egress policy",
        6: "reject route to destination",
    },
    3: {0: "hop limit exceeded in transit", 1: "fragment reassembly time exceeded"},
    4: {0: "erroneous header field", 1: "unrecognized next header", 2: "unrecognized IPv6 option"},
}
TCP_FLAGS = ("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN")  # bits 0..7 of byte 13 (RFC 9293 3.1)
TCP_OPTIONS = {
    0: "end of options",
    1: "no-operation",
    2: "MSS",
    3: "window scale",
    4: "SACK permitted",
    5: "SACK",
    8: "timestamps",
    30: "MPTCP",
    34: "TCP Fast Open",
}
PORTS = {
    22: "SSH",
    53: "DNS",
    67: "DHCP server",
    68: "DHCP client",
    80: "HTTP",
    123: "NTP",
    179: "BGP",
    443: "HTTPS",
    500: "IKE",
    4500: "IPsec NAT traversal",
    4754: "GRE in UDP (RFC 8086)",
    6080: "GUE (no IANA port: the one usertunnel's examples use)",
    4789: "VXLAN (RFC 7348)",
    5201: "iperf3",
    5353: "mDNS",
    6081: "Geneve (RFC 8926)",
}
GRE_IGNORED = "; RFC 2784 2.3 lets an RFC 1701 receiver ignore it, as Linux and usertunnel do"
GRE_BITS = (  # bits 0-4 of the GRE header: name, meaning when set, meaning when clear, RFC section
    ("C", "checksum present: checksum and reserved1 follow", "no checksum", "RFC 2784 2.2"),
    ("R", "routing present (RFC 1701 source routing)", "no routing (RFC 1701's bit, now reserved)", "RFC 2784 2.3"),
    ("K", "key present", "no key", "RFC 2890 2"),
    ("S", "sequence number present", "no sequence number", "RFC 2890 2"),
    ("s", "strict source route (RFC 1701)" + GRE_IGNORED, "strict source route (RFC 1701): clear", "RFC 2784 2.3"),
)
# What a UDP port carries (`ip fou add port N ipproto 47|4|41` or `... gue`; --udp-port PORT=WHAT): the
# UDP header is then a tunnel's, and its payload is dissected as that tunnel's header.
GUE_RFC = "draft-ietf-intarea-gue-09"
UDP_CARRIERS = {  # what: (the UDP header's title, what its port means)
    "fou:47": ("FOU: GRE in UDP, RFC 8086", "FOU carrying GRE (ip fou add port N ipproto 47; RFC 8086)"),
    "fou:4": ("FOU: IPIP in UDP", "FOU carrying IPv4 (ip fou add port N ipproto 4)"),
    "fou:41": ("FOU: SIT in UDP", "FOU carrying IPv6 (ip fou add port N ipproto 41)"),
    "gue": ("GUE", "GUE, Generic UDP Encapsulation (ip fou add port N gue; draft-ietf-intarea-gue)"),
    "none": ("", "plain UDP: its payload is not dissected"),
}
GUE_PORT = 6080  # GUE has no IANA port (ip-fou(8)'s example takes 9999); usertunnel's README and labs use 6080
DEFAULT_UDP_PORTS = {fou.GRE_IN_UDP_PORT: "fou:47", GUE_PORT: "gue"}  # RFC 8086 3.2: 4754 is GRE-in-UDP
GUE_VARIANTS = {
    0: "variant 0: a GUE header (this 4-byte word and Hlen words of extensions) comes first",
    1: "variant 1: no GUE header; the payload is an IPv4 (first bits 0100) or IPv6 (0110) packet itself",
}
IPV4_OPTIONS = {
    0: "end of options",
    1: "no-operation",
    7: "record route",
    68: "timestamp",
    130: "security",
    131: "loose source route",
    137: "strict source route",
    148: "router alert (RFC 2113)",
}
IPV6_OPTIONS = {
    0x00: ("Pad1", "RFC 8200 4.2"),
    0x01: ("PadN", "RFC 8200 4.2"),
    0x04: ("tunnel encapsulation limit", "RFC 2473 4.1.1"),
    0x05: ("router alert", "RFC 2711"),
    0xC2: ("jumbo payload", "RFC 2675"),
}
IPV6_EXTENSIONS = {
    0: ("IPv6 hop-by-hop options header", "RFC 8200 4.3"),
    43: ("IPv6 routing header", "RFC 8200 4.4"),
    44: ("IPv6 fragment header", "RFC 8200 4.5"),
    60: ("IPv6 destination options header", "RFC 8200 4.6"),
}
ARPHRD = {1: "Ethernet", 768: "IPIP tunnel", 772: "loopback", 776: "SIT tunnel", 778: "GRE tunnel", 65534: "none (TUN)"}
SLL_PACKET_TYPES = {
    0: "to us",
    1: "broadcast",
    2: "multicast",
    3: "to another host",
    4: "sent by us",
}
_SPECIAL_NETWORKS: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = [
    (ipaddress.ip_network("192.0.2.0/24"), "documentation address (TEST-NET-1, RFC 5737)"),
    (ipaddress.ip_network("198.51.100.0/24"), "documentation address (TEST-NET-2, RFC 5737)"),
    (ipaddress.ip_network("203.0.113.0/24"), "documentation address (TEST-NET-3, RFC 5737)"),
    (ipaddress.ip_network("100.64.0.0/10"), "shared address space, carrier-grade NAT (RFC 6598)"),
    (ipaddress.ip_network("2001:db8::/32"), "documentation address (RFC 3849)"),
    (ipaddress.ip_network("2002::/16"), "6to4 address (RFC 3056)"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped address"),
    (ipaddress.ip_network("fc00::/7"), "unique local address (RFC 4193)"),
]


# --- the model --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """One field of one header, where it is and what it says.

    `bits` is (first, last), counted from the most significant bit of the byte at `offset`; None for a field
    of whole bytes. `length` is how many bytes hold the field. `value` is an int, or text for addresses and
    verdicts; `shown` is how a person reads it. `problem` names what is wrong with it, if anything.
    """

    offset: int
    length: int
    name: str
    value: int | str
    shown: str
    meaning: str
    rfc: str
    bits: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def bit_range(self) -> str | None:
        if self.bits is None:
            return None
        first, last = self.bits
        return str(first) if first == last else f"{first}-{last}"


@dataclass(slots=True)
class Layer:
    """One header: `kind` is stable for programs ("IPv4", "GRE", "TCP"...), `title` is for people."""

    kind: str
    title: str
    offset: int
    rfc: str
    fields: list[Field] = field(default_factory=list)

    def get(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


@dataclass(frozen=True, slots=True)
class Stop:
    """Where parsing ended before the packet did, and why. `malformed` is False for a normal end
    (an ICMP error's quote ends; a later fragment, whose headers are in the first one)."""

    offset: int
    reason: str
    detail: str
    rfc: str
    malformed: bool = True
    layer: str = ""  # the title of the layer being parsed


@dataclass(frozen=True, slots=True)
class Explanation:
    packet: bytes
    linktype: int
    wire_length: int  # the length on the wire; more than len(packet) when a capture cut it short
    layers: tuple[Layer, ...]
    stop: Stop | None
    # What ESP carried, opened with --esp-keys: its own explanation (offsets count from the first byte of the
    # decrypted payload), and a sentence saying what it is. None without keys, or when it did not open.
    inside: Explanation | None = None
    inside_title: str = ""

    @property
    def problems(self) -> list[Field]:
        return [f for layer in self.layers for f in layer.fields if f.problem]

    @property
    def well_formed(self) -> bool:
        """True when nothing in the packet is wrong (a normal stop, such as a quote's end, is fine), nor in
        what its ESP carried, when that was opened."""
        inside = self.inside is None or self.inside.well_formed
        return (self.stop is None or not self.stop.malformed) and not self.problems and inside


@dataclass(frozen=True, slots=True)
class _Opened:
    """What an ESP packet carried, opened with --esp-keys: its next header and payload, the context of the
    ESP layer (its IP addresses and TOS, for the payload's checksums and ECN), and the SA's table name."""

    next_header: int
    payload: bytes
    ctx: _Ctx
    sa: str


class _Halt(Exception):
    """Raised inside the dissector to end parsing; `explain` turns it into `Explanation.stop`."""

    def __init__(self, stop: Stop) -> None:
        super().__init__(stop.detail)
        self.stop = stop


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a layer knows from the layers around it."""

    end: int  # exclusive end of the bytes this layer may use
    end_why: str  # what sets `end`, for a truncation message
    complete: bool  # the bytes up to `end` are all of this layer's message (checksums can be verified)
    depth: int = 0  # IP headers crossed so far
    role: str = ""  # "", "outer", "inner", "quoted": how to title the next IP header
    via: str = ""  # the tunnel that carries the next IP header, for its title
    expect_version: int | None = None  # the IP version the enclosing header announced
    outer_tos: int | None = None  # the tunnel's outer TOS / traffic class (RFC 6040)
    pseudo: tuple[bytes, bytes] | None = None  # source and destination of the enclosing IP header
    quoted: bool = False  # inside an ICMP error's quote: running out of bytes is expected


def _hex(value: int, digits: int) -> str:
    return f"{value} (0x{value:0{digits}x})"


def _address_meaning(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for network, what in _SPECIAL_NETWORKS:
        if address.version == network.version and address in network:
            return what
    for test, what in (
        (address.is_unspecified, "unspecified address"),
        (address.is_loopback, "loopback address"),
        (address.is_multicast, "multicast address"),
        (address.is_link_local, "link-local address"),
        (address.is_private, "private address (RFC 1918 / RFC 6890)"),
    ):
        if test:
            return what
    return "global unicast address"


def _dscp_name(dscp: int) -> str:
    if dscp == 0:
        return "default forwarding (CS0, best effort)"
    if dscp == 46:
        return "EF, expedited forwarding (RFC 3246)"
    if dscp == 44:
        return "VOICE-ADMIT (RFC 5865)"
    if dscp == 1:
        return "LE, lower effort (RFC 8622)"
    if dscp % 8 == 0:
        return f"CS{dscp // 8}, class selector"
    if 1 <= dscp >> 3 <= 4 and dscp & 7 in (2, 4, 6):
        return f"AF{dscp >> 3}{(dscp & 7) // 2}, assured forwarding (RFC 2597)"
    return "no standard meaning"


def _preview(data: bytes) -> str:
    head = data[:16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in head)
    more = "..." if len(data) > 16 else ""
    return f"{head.hex()}{more} |{text}{more}|"


def _pseudo_header(pseudo: tuple[bytes, bytes], protocol: int, length: int) -> bytes:
    """The pseudo-header a transport checksum covers (RFC 9293 3.1 / RFC 768 for IPv4, RFC 8200 8.1 for IPv6)."""
    src, dst = pseudo
    if len(src) == 4:
        return src + dst + bytes([0, protocol]) + length.to_bytes(2, "big")
    return src + dst + length.to_bytes(4, "big") + bytes([0, 0, 0, protocol])


class _Writer:
    """Reads the bytes of one layer within its context and records its fields."""

    __slots__ = ("d", "layer", "ctx")

    def __init__(self, d: _Dissector, layer: Layer, ctx: _Ctx) -> None:
        self.d, self.layer, self.ctx = d, layer, ctx

    def raw(self, offset: int, length: int, what: str) -> bytes:
        """The bytes of one field, or a halt naming the field, its offsets and what ends the bytes."""
        ctx, layer = self.ctx, self.layer
        if offset + length <= ctx.end:
            return self.d.data[offset : offset + length]
        span = f"offset {offset}" if length == 1 else f"offsets {offset}-{offset + length - 1}"
        if ctx.quoted:
            detail = (
                f"the ICMP error quotes only part of the original packet, ending before the {layer.title} {what} at "
                f"{span} (ICMP quotes the IP header and at least 8 bytes after it; ICMPv6 as much as fits)"
            )
            raise _Halt(Stop(offset, "end of quote", detail, layer.rfc, False, layer.title))
        plural = "s" if length > 1 else ""
        detail = f"{layer.title}: cut short at the {what} ({length} byte{plural} at {span}): {ctx.end_why}"
        raise _Halt(Stop(offset, "truncated", detail, layer.rfc, True, layer.title))

    def uint(self, offset: int, length: int, what: str) -> int:
        return int.from_bytes(self.raw(offset, length, what), "big")

    def add(
        self,
        offset: int,
        length: int,
        name: str,
        value: int | str,
        meaning: str,
        rfc: str = "",
        *,
        bits: tuple[int, int] | None = None,
        shown: str | None = None,
        problem: str | None = None,
    ) -> None:
        text = str(value) if shown is None else shown
        self.layer.fields.append(
            Field(offset, length, name, value, text, meaning, rfc or self.layer.rfc, bits, problem)
        )

    def bits(
        self,
        base: int,
        first: int,
        last: int,
        name: str,
        meaning: str | Callable[[int], str],
        rfc: str = "",
        *,
        shown: Callable[[int], str] | None = None,
        problem: Callable[[int], str | None] | str | None = None,
    ) -> int:
        """Read and record the field at bits `first`..`last` counted from the most significant bit of the byte
        at `base`, as an RFC diagram numbers a header's bits; return its value. The field is recorded at the
        bytes that hold it, with its bits counted from the first of them."""
        start, end = first // 8, last // 8
        length = end - start + 1
        word = self.uint(base + start, length, name)
        low, high = first - 8 * start, last - 8 * start
        value = (word >> (8 * length - 1 - high)) & ((1 << (high - low + 1)) - 1)
        text = meaning(value) if callable(meaning) else meaning
        whole = low == 0 and high == 8 * length - 1
        self.add(
            base + start,
            length,
            name,
            value,
            text,
            rfc,
            bits=None if whole else (low, high),
            shown=shown(value) if shown else None,
            problem=problem(value) if callable(problem) else problem,
        )
        return value

    def field(self, offset: int, length: int, name: str, meaning: str, rfc: str = "", hexed: bool = False) -> int:
        """Read an unsigned field of whole bytes and record it (`hexed`: shown in hex too); return its value."""
        value = self.uint(offset, length, name)
        self.add(offset, length, name, value, meaning, rfc, shown=_hex(value, 2 * length) if hexed else None)
        return value

    def halt(self, offset: int, reason: str, why: str, rfc: str = "", malformed: bool = True) -> _Halt:
        title = self.layer.title
        return _Halt(Stop(offset, reason, f"{title}: {why}", rfc or self.layer.rfc, malformed, title))

    def checksum(self, at: int, covered: bytes | None, prefix: bytes = b"", rfc: str = "") -> None:
        """The 16-bit checksum at `at`, verified with the core over `prefix` + `covered` (which starts at the
        layer's offset and holds the field), or said unverifiable when `covered` is None."""
        csum = self.uint(at, 2, "checksum")
        shown = f"0x{csum:04x}"
        if covered is None:
            self.add(at, 2, "checksum", csum, "not verified: the message is cut short", rfc, shown=shown)
        elif checksum_is_valid(prefix + covered):
            what = "the pseudo-header, header and data" if prefix else "the whole message"
            self.add(at, 2, "checksum", csum, f"valid, over {what}", rfc, shown=shown)
        else:
            rel = at - self.layer.offset
            good = internet_checksum(prefix + covered[:rel] + b"\0\0" + covered[rel + 2 :])
            why = f"WRONG: should be 0x{good:04x}"
            self.add(at, 2, "checksum", csum, why, rfc, shown=shown, problem="bad checksum")


class _Dissector:
    """Walks one packet from the link layer inwards and collects its layers. One instance per packet."""

    MAX_DEPTH = 8  # IP headers inside IP headers; no real packet nests deeper

    def __init__(
        self, data: bytes, udp_ports: Mapping[int, str] | None = None, esp_keys: esp.EspKeys | None = None
    ) -> None:
        self.data = data
        self.udp_ports = DEFAULT_UDP_PORTS if udp_ports is None else udp_ports
        self.esp_keys = esp_keys
        self.layers: list[Layer] = []
        self.shortfall: Stop | None = None  # the outermost length field that promises more than is present
        self.opened: _Opened | None = None  # what an ESP layer carried, when --esp-keys opened it

    def layer(self, kind: str, title: str, offset: int, rfc: str, ctx: _Ctx) -> _Writer:
        layer = Layer(kind, title, offset, rfc)
        self.layers.append(layer)
        return _Writer(self, layer, ctx)

    def sub_ctx(self, ctx: _Ctx, offset: int, promised_end: int, what: str) -> _Ctx:
        """The context for the bytes that a length field at `offset` says end at `promised_end`."""
        ctx = replace(ctx, via="", expect_version=None)
        if promised_end <= ctx.end:
            return replace(ctx, end=promised_end, end_why=f"the {what} (offset {offset}) ends it at {promised_end}")
        if self.shortfall is None and not ctx.quoted:
            missing = promised_end - ctx.end
            why = f"the {what} (offset {offset}) promises bytes up to {promised_end}, but {ctx.end_why}"
            plural = "s are" if missing > 1 else " is"
            self.shortfall = Stop(ctx.end, "truncated", f"{why}: {missing} byte{plural} missing", "")
        return replace(ctx, complete=False)

    # --- link layers --------------------------------------------------------------------------------------

    def link(self, linktype: int, ctx: _Ctx) -> None:
        if linktype == LINKTYPE_ETHERNET:
            self.ethernet(0, ctx)
        elif linktype == LINKTYPE_LINUX_SLL:
            self.sll(ctx)
        elif linktype == LINKTYPE_LINUX_SLL2:
            self.sll2(ctx)
        else:
            self.ip(0, ctx)

    def ethertype(self, w: _Writer, offset: int) -> int:
        value = w.uint(offset, 2, "EtherType")
        name = ETHERTYPES.get(value, "not one explain knows" if value >= 0x0600 else "an 802.3 length, not a type")
        w.add(offset, 2, "EtherType", value, f"the payload is {name}", shown=f"0x{value:04x}")
        return value

    def ethernet(self, offset: int, ctx: _Ctx) -> None:
        w = self.layer("Ethernet", "Ethernet header", offset, "IEEE 802.3 3.1.1", ctx)
        for name, at in (("destination MAC", offset), ("source MAC", offset + 6)):
            mac = w.raw(at, 6, name)
            cast = "broadcast" if mac == b"\xff" * 6 else "multicast" if mac[0] & 1 else "unicast"
            w.add(at, 6, name, mac.hex(":"), f"{cast} MAC address")
        at = offset + 12
        kind = self.ethertype(w, at)
        while kind in (0x8100, 0x88A8):
            tag = self.layer("VLAN", "802.1Q VLAN tag", at + 2, "IEEE 802.1Q 9.6", ctx)
            tci = tag.uint(at + 2, 2, "tag control information")
            tag.add(at + 2, 1, "PCP", tci >> 13, "priority code point (class of service)", bits=(0, 2))
            tag.add(at + 2, 1, "DEI", (tci >> 12) & 1, "drop eligible indicator", bits=(3, 3))
            tag.add(at + 2, 2, "VID", tci & 0xFFF, "VLAN identifier", bits=(4, 15))
            at += 4
            kind = self.ethertype(tag, at)
        self.ethertype_payload(kind, at + 2, ctx)

    def ethertype_payload(self, kind: int, offset: int, ctx: _Ctx) -> None:
        if kind in (gre.PROTO_IPV4, gre.PROTO_IPV6):
            self.ip(offset, replace(ctx, expect_version=4 if kind == gre.PROTO_IPV4 else 6))
        elif kind == gre.PROTO_TEB:
            self.ethernet(offset, ctx)
        else:
            self.payload(offset, ctx, f"EtherType 0x{kind:04x} ({ETHERTYPES.get(kind, 'unknown')})")

    def sll(self, ctx: _Ctx) -> None:
        w = self.layer("SLL", "Linux cooked header (SLL)", 0, "tcpdump LINKTYPE_LINUX_SLL", ctx)
        ptype = w.uint(0, 2, "packet type")
        w.add(0, 2, "packet type", ptype, SLL_PACKET_TYPES.get(ptype, "unknown"))
        hatype = w.uint(2, 2, "ARPHRD type")
        w.add(2, 2, "ARPHRD type", hatype, f"device type: {ARPHRD.get(hatype, 'other')}")
        alen = w.field(4, 2, "address length", "bytes of the link-layer address that are used")
        w.add(6, 8, "link-layer address", w.raw(6, 8, "link-layer address")[: min(alen, 8)].hex(":"), "the sender's")
        self.ethertype_payload(self.ethertype(w, 14), 16, ctx)

    def sll2(self, ctx: _Ctx) -> None:
        w = self.layer("SLL2", "Linux cooked header v2 (SLL2)", 0, "tcpdump LINKTYPE_LINUX_SLL2", ctx)
        kind = self.ethertype(w, 0)
        w.field(2, 2, "reserved", "zero")
        w.field(4, 4, "interface index", "the interface the packet was captured on")
        hatype = w.uint(8, 2, "ARPHRD type")
        w.add(8, 2, "ARPHRD type", hatype, f"device type: {ARPHRD.get(hatype, 'other')}")
        ptype = w.uint(10, 1, "packet type")
        w.add(10, 1, "packet type", ptype, SLL_PACKET_TYPES.get(ptype, "unknown"))
        alen = w.field(11, 1, "address length", "bytes of the link-layer address that are used")
        w.add(12, 8, "link-layer address", w.raw(12, 8, "link-layer address")[: min(alen, 8)].hex(":"), "the sender's")
        self.ethertype_payload(kind, 20, ctx)

    # --- IP -----------------------------------------------------------------------------------------------

    def ip(self, offset: int, ctx: _Ctx) -> None:
        if ctx.depth >= self.MAX_DEPTH:
            self.payload(offset, ctx, f"IP nested more than {self.MAX_DEPTH} deep")
            return
        if offset >= ctx.end:
            version = ctx.expect_version
            kind = f"IPv{version}" if version else "IP"
            w = self.layer(kind, self.ip_title(ctx, kind), offset, "RFC 8200 3" if version == 6 else "RFC 791 3.1", ctx)
            w.raw(offset, 1, "version")
        version = self.data[offset] >> 4
        if version == 6 or (version != 4 and ctx.expect_version == 6):
            self.ipv6(offset, ctx)
        else:
            self.ipv4(offset, ctx)

    def ip_title(self, ctx: _Ctx, what: str, tunnels: bool = False) -> str:
        if ctx.role == "quoted":
            return f"quoted {what} header (the packet the ICMP error is about)"
        role = ctx.role or ("outer" if tunnels else "")
        via = f" ({ctx.via})" if ctx.via else ""
        return f"{role + ' ' if role else ''}{what} header{via}"

    def check_version(self, w: _Writer, offset: int, want: int) -> None:
        version = w.uint(offset, 1, "version") >> 4
        expected = w.ctx.expect_version
        if version == want and expected in (None, want):
            w.add(offset, 1, "version", version, f"IPv{want}", bits=(0, 3))
            return
        if version not in (4, 6):
            why = f"version {version} is neither IPv4 nor IPv6: this is not the start of an IP header"
        else:
            why = f"version {version}, but the header that carries it announced IPv{expected}"
        w.add(offset, 1, "version", version, why, bits=(0, 3), problem="wrong version")
        raise w.halt(offset, "wrong version", why)

    def ipv4(self, offset: int, ctx: _Ctx) -> None:
        w = self.layer("IPv4", self.ip_title(ctx, "IPv4"), offset, "RFC 791 3.1", ctx)
        self.check_version(w, offset, 4)
        ihl = w.uint(offset, 1, "IHL") & 0x0F
        hlen = ihl * 4
        if ihl < 5:
            why = f"IHL {ihl} means a {hlen}-byte header, shorter than the 20-byte minimum"
            w.add(offset, 1, "IHL", ihl, why, bits=(4, 7), problem="IHL < 5")
            raise w.halt(offset, "IHL < 5", f"{why}: nothing after it can be located")
        options = f" ({hlen - 20} bytes of options)" if hlen > 20 else ""
        w.add(offset, 1, "IHL", ihl, f"header length: {ihl} x 4 = {hlen} bytes{options}", bits=(4, 7))
        tos = w.uint(offset + 1, 1, "DSCP and ECN")
        w.add(offset + 1, 1, "DSCP", tos >> 2, _dscp_name(tos >> 2), "RFC 2474 3", bits=(0, 5))
        self.ecn_fields(w, offset + 1, (6, 7), tos)

        total = w.uint(offset + 2, 2, "total length")
        present = ctx.end - offset
        meaning, problem = "bytes in this IPv4 packet, header included", None
        if total < hlen:
            meaning, problem = f"{meaning}: fewer than its own {hlen}-byte header", "total length < header length"
        elif total > present and ctx.quoted:
            meaning += f" (the quote holds {present} of them)"
        elif total > present:
            meaning, problem = f"{meaning}, but only {present} are present", "total length beyond the data"
        elif total < present:
            meaning += f" ({present - total} bytes after it are not part of it)"
        w.add(offset + 2, 2, "total length", total, meaning, shown=_hex(total, 4), problem=problem)
        meaning = "tells fragments of different datagrams apart (with DF set it may be anything, RFC 6864 4.1)"
        w.field(offset + 4, 2, "identification", meaning, hexed=True)

        word = w.uint(offset + 6, 2, "flags and fragment offset")
        flags = word >> 13
        names = [n for n, bit in (("reserved", 4), ("DF", 2), ("MF", 1)) if flags & bit]
        words = {"reserved": "reserved bit set (must be zero)", "DF": "DF: don't fragment", "MF": "MF: more follow"}
        meaning = ", ".join(words[n] for n in names) or "none set: routers may fragment it"
        bad = "reserved flag bit set" if flags & 4 else None
        shown = f"{flags} ({' '.join(names) or '-'})"
        w.add(offset + 6, 1, "flags", flags, meaning, bits=(0, 2), shown=shown, problem=bad)
        frag = word & ipv4.OFFSET_MASK
        where = "a later fragment" if frag else "the first fragment, or not fragmented"
        meaning = f"{frag} x 8 = {frag * 8} bytes into the datagram: {where}"
        w.add(offset + 6, 2, "fragment offset", frag, meaning, bits=(3, 15))
        w.field(offset + 8, 1, "TTL", "hops left: each router subtracts 1 and drops the packet at 0")
        proto = w.uint(offset + 9, 1, "protocol")
        w.add(offset + 9, 1, "protocol", proto, _protocol_meaning(proto, v6=False))
        if ctx.role == "" and proto in (4, 41, 47):
            w.layer.title = self.ip_title(ctx, "IPv4", tunnels=True)

        csum = w.uint(offset + 10, 2, "header checksum")
        if offset + hlen > ctx.end:
            meaning = "not verified: the header is cut short"
            w.add(offset + 10, 2, "header checksum", csum, meaning, shown=f"0x{csum:04x}")
        elif ipv4.header_checksum_ok(self.data[offset : offset + hlen]):
            w.add(offset + 10, 2, "header checksum", csum, "valid, over the header only", shown=f"0x{csum:04x}")
        else:
            header = self.data[offset : offset + hlen]
            good = internet_checksum(header[:10] + b"\0\0" + header[12:])
            why = f"WRONG: should be 0x{good:04x}, computed over the header"
            w.add(offset + 10, 2, "header checksum", csum, why, shown=f"0x{csum:04x}", problem="bad header checksum")
        src = w.raw(offset + 12, 4, "source address")
        dst = w.raw(offset + 16, 4, "destination address")
        for name, at, raw in (("source address", offset + 12, src), ("destination address", offset + 16, dst)):
            address = ipaddress.IPv4Address(raw)
            w.add(at, 4, name, str(address), _address_meaning(address))
        if hlen > 20:
            opts = w.raw(offset + 20, hlen - 20, "options")
            w.add(offset + 20, hlen - 20, "options", opts.hex(), _ipv4_options(opts), shown=f"{len(opts)} bytes")
        if isinstance(ipv4.parse_ipv4(self.data[offset : ctx.end]), Drop):  # the core's verdict on the header
            # Version and IHL passed above and the whole header is here: only the total length can be wrong.
            counted = Drop.INNER_MALFORMED if ctx.depth else Drop.OUTER_MALFORMED
            why = f"total length {total} is less than the {hlen}-byte header, so the packet has no end that makes "
            raise w.halt(offset + 2, "total length < header", f"{why}sense (usertunnel counts {counted.value})")

        body = offset + hlen
        sub = self.sub_ctx(ctx, offset + 2, offset + total, "IPv4 total length")
        if frag != 0:
            self.payload(body, sub, f"a fragment {frag * 8} bytes into its datagram")
            why = f"a fragment at byte {frag * 8} of its datagram; the headers are in the first fragment (reassemble)"
            raise w.halt(body, "later fragment", why, malformed=False)
        self.ip_payload(proto, body, sub, ctx, tos, (src, dst))
        self.trailer(offset + total, ctx)

    def ecn_fields(self, w: _Writer, offset: int, bits: tuple[int, int], tclass: int) -> None:
        """The ECN field, and inside a tunnel what RFC 6040 makes of it with the outer one (core.ecn)."""
        value = tclass & ecn.ECN_MASK
        length = 1 + bits[1] // 8
        shown = f"{value} ({ECN_SHORT[value]})"
        w.add(offset, length, "ECN", value, ECN_NAMES[value], "RFC 3168 5", bits=bits, shown=shown)
        if w.ctx.outer_tos is None:
            return
        outer = w.ctx.outer_tos & ecn.ECN_MASK
        action = ecn.decapsulate(w.ctx.outer_tos, tclass)
        meaning = {
            ecn.Decap.KEEP: f"outer ECN {ECN_SHORT[outer]}: the decapsulator leaves the inner ECN as it is",
            ecn.Decap.SET_CE: "outer CE: the decapsulator marks this inner packet CE",
            ecn.Decap.DROP: "outer CE over a Not-ECT inner packet: the decapsulator drops it "
            f"(usertunnel counts {Drop.ECN_CE_NOT_ECT.value})",
        }[action]
        sent = ecn.encapsulate(0, tclass) & ecn.ECN_MASK
        if outer not in (sent, ecn.CE):
            meaning += f"; an RFC 6040 encapsulator would have sent outer ECN {ECN_SHORT[sent]} (RFC 6040 4.1)"
        problem = "dropped at decapsulation" if action is ecn.Decap.DROP else None
        name = "ECN after decapsulation"
        w.add(offset, length, name, action.value, meaning, "RFC 6040 4.2", bits=bits, problem=problem)

    def ip_payload(self, proto: int, offset: int, sub: _Ctx, ctx: _Ctx, tos: int, addrs: tuple[bytes, bytes]) -> None:
        """What follows an IP header (or its last IPv6 extension header), by protocol number."""
        v6 = len(addrs[0]) == 16
        if proto in (4, 41, 47):
            tunneled = replace(sub, depth=ctx.depth + 1, role="inner", outer_tos=None if ctx.quoted else tos)
            if proto == 47:
                self.gre(offset, replace(tunneled, pseudo=None))
                return
            version = 4 if proto == 4 else 6
            if v6:
                via = f"IPv{version} in IPv6, RFC 2473 3.1"
            else:
                via = "IPIP, RFC 2003" if proto == 4 else "SIT, IPv6 in IPv4, RFC 4213"
            self.ip(offset, replace(tunneled, via=via, expect_version=version))
        elif proto in (1, 6, 17, 58):
            # UDP may carry a tunnel (FOU, GUE): its inner IP header is then judged with this TOS (RFC 6040).
            tos_for = tos if proto == 17 and not ctx.quoted else None
            transport = replace(sub, pseudo=addrs, role="inner" if ctx.depth > 0 else "", outer_tos=tos_for)
            {1: self.icmp, 6: self.tcp, 17: self.udp, 58: self.icmpv6}[proto](offset, transport)
        elif proto == 50:
            self.esp(offset, replace(sub, pseudo=addrs, outer_tos=tos))
        elif proto == 59:
            if offset < sub.end:
                self.payload(offset, sub, "bytes after 'no next header' (RFC 8200 4.7), to be ignored")
        else:
            self.payload(offset, sub, f"IP protocol {proto} ({IP_PROTOCOLS.get(proto, 'unknown')})")

    def ipv6(self, offset: int, ctx: _Ctx) -> None:
        w = self.layer("IPv6", self.ip_title(ctx, "IPv6"), offset, "RFC 8200 3", ctx)
        self.check_version(w, offset, 6)
        tclass = (w.uint(offset, 2, "traffic class") >> 4) & 0xFF
        w.add(offset, 2, "DSCP", tclass >> 2, _dscp_name(tclass >> 2), "RFC 2474 3", bits=(4, 9))
        self.ecn_fields(w, offset, (10, 11), tclass)
        flow = w.uint(offset, 4, "flow label") & 0xFFFFF
        meaning = "none" if flow == 0 else "identifies a flow, for load balancing (RFC 6437)"
        w.add(offset, 4, "flow label", flow, meaning, bits=(12, 31), shown=_hex(flow, 5))
        plen = w.uint(offset + 4, 2, "payload length")
        present = ctx.end - offset - 40
        meaning, problem = "bytes after this 40-byte header, extension headers included", None
        if plen > present >= 0 and ctx.quoted:
            meaning += f" (the quote holds {present} of them)"
        elif present >= 0 and isinstance(ipv6.parse_ipv6(self.data[offset : ctx.end]), Drop):
            # The core's verdict: with the version checked and the header here, the payload length is too long.
            meaning = f"{meaning}, but only {present} are present (usertunnel's parse_ipv6 rejects it)"
            problem = "payload length beyond the data"
        elif plen < present:
            meaning += f" ({present - plen} bytes after them are not part of the packet)"
        w.add(offset + 4, 2, "payload length", plen, meaning, shown=_hex(plen, 4), problem=problem)
        nxt = w.uint(offset + 6, 1, "next header")
        w.add(offset + 6, 1, "next header", nxt, _protocol_meaning(nxt, v6=True))
        w.field(offset + 7, 1, "hop limit", "hops left: each router subtracts 1 and drops the packet at 0")
        src = w.raw(offset + 8, 16, "source address")
        dst = w.raw(offset + 24, 16, "destination address")
        for name, at, raw in (("source address", offset + 8, src), ("destination address", offset + 24, dst)):
            address = ipaddress.IPv6Address(raw)
            w.add(at, 16, name, str(address), _address_meaning(address))
        sub = self.sub_ctx(ctx, offset + 4, offset + 40 + plen, "IPv6 payload length")
        at = offset + 40
        while nxt in IPV6_EXTENSIONS:
            nxt, at = self.ipv6_extension(nxt, at, sub)
        if ctx.role == "" and nxt in (4, 41, 47):
            w.layer.title = self.ip_title(ctx, "IPv6", tunnels=True)
        self.ip_payload(nxt, at, sub, ctx, tclass, (src, dst))
        self.trailer(offset + 40 + plen, ctx)

    def ipv6_extension(self, kind: int, offset: int, ctx: _Ctx) -> tuple[int, int]:
        """One extension header (RFC 8200 4): its layer, then (next header, offset after it)."""
        title, rfc = IPV6_EXTENSIONS[kind]
        w = self.layer("IPv6 extension", title, offset, rfc, ctx)
        nxt = w.uint(offset, 1, "next header")
        w.add(offset, 1, "next header", nxt, _protocol_meaning(nxt, v6=True))
        if kind == 44:
            w.field(offset + 1, 1, "reserved", "zero")
            word = w.uint(offset + 2, 2, "fragment offset")
            frag = word >> 3
            meaning = f"{frag} x 8 = {frag * 8} bytes into the packet"
            w.add(offset + 2, 2, "fragment offset", frag, meaning, bits=(0, 12))
            w.add(offset + 2, 2, "M", word & 1, "more fragments follow" if word & 1 else "last fragment", bits=(15, 15))
            w.field(offset + 4, 4, "identification", "tells fragments of different packets apart")
            if frag != 0:
                self.payload(offset + 8, ctx, f"a fragment {frag * 8} bytes into its packet")
                why = f"a fragment at byte {frag * 8}; the headers are in the first fragment (reassemble)"
                raise w.halt(offset + 8, "later fragment", why, malformed=False)
            return nxt, offset + 8
        size = 8 + 8 * w.field(offset + 1, 1, "header extension length", "(this + 1) x 8 bytes in this header")
        end = offset + size
        if kind == 43:
            rtype = w.uint(offset + 2, 1, "routing type")
            kinds = {0: "type 0 (deprecated, RFC 5095)", 2: "type 2 (Mobile IPv6)", 4: "segment routing (RFC 8754)"}
            w.add(offset + 2, 1, "routing type", rtype, kinds.get(rtype, "another routing type"))
            w.field(offset + 3, 1, "segments left", "route segments still to visit")
            data = w.raw(offset + 4, size - 4, "type-specific data")
            w.add(
                offset + 4, size - 4, "type-specific data", data.hex(), "addresses to visit", shown=f"{size - 4} bytes"
            )
            return nxt, end
        at = offset + 2
        while at < end:
            otype = w.uint(at, 1, "option type")
            name, orfc = IPV6_OPTIONS.get(otype, (f"option type {otype}", rfc))
            if otype == 0:
                w.add(at, 1, "Pad1", 0, "one byte of padding", orfc)
                at += 1
                continue
            olen = w.uint(at + 1, 1, "option length")
            if at + 2 + olen > end:
                why = f"the option at offset {at} is {olen + 2} bytes long and runs past the header's end at {end}"
                raise w.halt(at, "option overruns header", why)
            value = w.uint(at + 2, olen, name) if olen else 0
            unknown = ("skip it", "discard", "discard, send ICMP", "discard, send ICMP unless multicast")[otype >> 6]
            meaning = {
                0x01: f"{olen + 2} bytes of padding",
                0x04: f"this packet may be encapsulated {value} more times",
                0x05: "routers should look at this packet",
                0xC2: f"jumbogram of {value} bytes",
            }.get(otype, f"not known to explain; a node that does not know it must: {unknown}")
            w.add(at, 2 + olen, name, value, meaning, orfc)
            at += 2 + olen
        return nxt, end

    # --- GRE ----------------------------------------------------------------------------------------------

    def gre(self, offset: int, ctx: _Ctx) -> None:
        w = self.layer("GRE", "GRE header (RFC 2784, RFC 2890)", offset, "RFC 2784 2.1", ctx)
        first = w.uint(offset, 1, "flags")
        c, r, k, s = (bool(first & (0x80 >> i)) for i in range(4))
        if w.uint(offset, 2, "flags and version") & gre.VERSION_MASK == 1:
            self.gre_enhanced(w, offset, ctx)
            return
        for i, (name, when_set, when_clear, rfc) in enumerate(GRE_BITS):
            bit = (first >> (7 - i)) & 1
            problem = "routing bit set" if name == "R" and bit else None
            w.add(offset, 1, name, bit, when_set if bit else when_clear, rfc, bits=(i, i), problem=problem)
        recur = first & 0x07
        meaning = "recursion control (RFC 1701)" + (GRE_IGNORED if recur else ": zero")
        w.add(offset, 1, "Recur", recur, meaning, "RFC 2784 2.3", bits=(5, 7))
        word = w.uint(offset, 2, "flags and version")
        meaning = "reserved: sent as zero, ignored on receipt"
        w.add(offset, 2, "Flags", (word >> 3) & 0x1F, meaning, "RFC 2784 2.3", bits=(8, 12))
        version = word & gre.VERSION_MASK
        if version != 0:
            why = f"version {version} is no known GRE; RFC 2784 GRE is version 0, PPTP's enhanced GRE version 1 "
            why += f"(usertunnel counts {Drop.GRE_VERSION.value})"
            w.add(offset, 2, "Ver", version, why, "RFC 2784 2.3.1", bits=(13, 15), problem="GRE version != 0")
            raise w.halt(offset, "GRE version != 0", why, "RFC 2784 2.3.1")
        w.add(offset, 2, "Ver", 0, "version 0: GRE as RFC 2784 defines it", "RFC 2784 2.3.1", bits=(13, 15))
        proto = w.uint(offset + 2, 2, "protocol type")
        meaning = f"EtherType of the payload: {ETHERTYPES.get(proto, 'unknown')}"
        if proto == ERSPAN_II_PROTO and not s:
            meaning += ": type I, which has no sequence number and no ERSPAN header; the mirrored frame follows"
        if proto not in (gre.PROTO_IPV4, gre.PROTO_IPV6):
            meaning += f" (usertunnel carries only IPv4 and IPv6: {Drop.GRE_PROTOCOL.value})"
        w.add(offset + 2, 2, "protocol type", proto, meaning, "RFC 2784 2.4", shown=f"0x{proto:04x}")
        if r:
            why = (
                f"the routing bit is set: RFC 1701 source routing, which RFC 2784 2.3 removed; Linux and usertunnel "
                f"drop it ({Drop.GRE_ROUTING.value}); the routing entries that follow are not explained"
            )
            raise w.halt(offset, "routing bit", why, "RFC 2784 2.3")
        hlen = gre.header_length(word)
        at = offset + 4
        if c:
            self.gre_checksum(w, offset, hlen)
            reserved1 = w.uint(at + 2, 2, "reserved1")
            meaning = "sent as zero" if reserved1 == 0 else "should be zero (RFC 1701's offset, for routing)"
            w.add(at + 2, 2, "reserved1", reserved1, meaning, "RFC 2784 2.6", shown=_hex(reserved1, 4))
            at += 4
        if k:
            key = w.uint(at, 4, "key")
            dotted = ipaddress.IPv4Address(key)
            meaning = f"identifies the tunnel (ip tunnel ... key {key} or key {dotted}); the receiver's ikey must match"
            w.add(at, 4, "key", key, meaning, "RFC 2890 2.1", shown=f"{key} = 0x{key:08x} = {dotted}")
            at += 4
        if s:
            meaning = "counts packets from 0; a receiver with iseq drops any not newer than the last it accepted"
            w.field(at, 4, "sequence number", meaning, "RFC 2890 2.2", hexed=True)
            at += 4
        w.layer.title = f"GRE header (RFC 2784, RFC 2890), {hlen} bytes"
        if proto in (gre.PROTO_IPV4, gre.PROTO_IPV6):
            via = f"GRE payload, protocol type 0x{proto:04x}"
            self.ip(at, replace(ctx, via=via, expect_version=4 if proto == gre.PROTO_IPV4 else 6))
        elif proto == gre.PROTO_TEB or (proto == ERSPAN_II_PROTO and not s):
            self.ethernet(at, ctx)
        elif proto in (ERSPAN_II_PROTO, ERSPAN_III_PROTO):
            self.erspan(at, ctx)
        elif proto == NHRP_PROTO:
            self.nhrp(at, ctx)
        elif proto == WCCP_PROTO:
            self.wccp(at, ctx)
        elif at < ctx.end or proto != 0:
            self.payload(at, ctx, f"GRE protocol type 0x{proto:04x} ({ETHERTYPES.get(proto, 'unknown')})")

    def gre_enhanced(self, w: _Writer, offset: int, ctx: _Ctx) -> None:
        """PPTP's enhanced GRE (RFC 2637 4.1): version 1, the key split into payload length and call ID,
        an optional acknowledgment number; the payload is a PPP frame."""
        layer = w.layer
        layer.title, layer.rfc = "enhanced GRE header (PPTP, RFC 2637)", PPTP_RFC
        flags = w.uint(offset, 2, "flags and version")
        bad: dict[str, str] = {}
        for name, bit, meanings, want in PPTP_BITS:
            value = (flags >> (15 - bit)) & 1
            if want is not None and value != want:
                bad[name] = f"{name} bit {'set' if value else 'clear'} in enhanced GRE"
            w.bits(offset, bit, bit, name, meanings[value], PPTP_RFC, problem=bad.get(name))
            if name == "s":
                why = "recursion control not zero" if flags & 0x0700 else None
                w.bits(offset, 5, 7, "Recur", "recursion control: zero", PPTP_RFC, problem=why)
        w.bits(
            offset, 9, 12, "Flags", "reserved: zero", PPTP_RFC, problem="reserved flags set" if flags & 0x78 else None
        )
        meaning = f"version 1: PPTP's enhanced GRE (usertunnel carries version 0, counts this {Drop.GRE_VERSION.value})"
        w.bits(offset, 13, 15, "Ver", meaning, PPTP_RFC)
        if "C" in bad or "R" in bad or "K" in bad:
            why = f"{', '.join(bad[n] for n in ('C', 'R', 'K') if n in bad)}: the fields after it cannot be located"
            raise w.halt(offset, "not enhanced GRE", why, PPTP_RFC)
        proto = w.uint(offset + 2, 2, "protocol type")
        meaning = f"EtherType of the payload: {ETHERTYPES.get(proto, 'unknown')}"
        wrong = None if proto == PPP_PROTO else "protocol type not PPP (0x880b)"
        w.add(offset + 2, 2, "protocol type", proto, meaning, PPTP_RFC, shown=f"0x{proto:04x}", problem=wrong)
        plen = w.field(offset + 4, 2, "payload length", "bytes of PPP payload after this header (0: an ack only)")
        w.field(offset + 6, 2, "call ID", "the peer's call ID: which PPTP session (call) the packet belongs to")
        at = offset + 8
        if flags & 0x1000:
            w.field(at, 4, "sequence number", "counts the payload packets of this call", PPTP_RFC)
            at += 4
        if flags & 0x0080:
            w.field(at, 4, "acknowledgment number", "the highest sequence number received from the peer", PPTP_RFC)
            at += 4
        w.layer.title = f"enhanced GRE header (PPTP, RFC 2637), {at - offset} bytes"
        if plen == 0:
            self.trailer(at, ctx, "after an enhanced GRE header with no payload")
            return
        sub = self.sub_ctx(ctx, offset + 4, at + plen, "enhanced GRE payload length")
        self.ppp(at, sub)
        self.trailer(at + plen, ctx, "after the end the enhanced GRE payload length gives")

    def ppp(self, offset: int, ctx: _Ctx) -> None:
        """A PPP frame as PPTP carries it: address and control (RFC 1662 3.1) unless compressed away, then
        the protocol field (RFC 1661 2), one byte when its first byte is odd (protocol field compression)."""
        w = self.layer("PPP", "PPP header", offset, "RFC 1661 2", ctx)
        at = offset
        if w.uint(at, 1, "address") == 0xFF:
            w.field(at, 1, "address", "0xff: all stations (RFC 1662's only address)", "RFC 1662 3.1", hexed=True)
            w.field(at + 1, 1, "control", "0x03: unnumbered information", "RFC 1662 3.1", hexed=True)
            at += 2
        size = 1 if w.uint(at, 1, "protocol") & 1 else 2
        proto = w.uint(at, size, "protocol")
        name = PPP_PROTOCOLS.get(proto, "a protocol explain does not know")
        compressed = " (compressed to one byte, RFC 1661 6.5)" if size == 1 else ""
        w.add(at, size, "protocol", proto, name + compressed, shown=f"0x{proto:0{2 * size}x}")
        at += size
        if proto in (0x21, 0x57):
            self.ip(at, replace(ctx, via="PPP payload", expect_version=4 if proto == 0x21 else 6))
        elif at < ctx.end:
            self.payload(at, ctx, f"PPP protocol 0x{proto:04x} ({name})")

    def erspan(self, offset: int, ctx: _Ctx) -> None:
        """ERSPAN's header (draft-foschiano-erspan-03): type II (8 bytes) or III (12, and 8 more when O is
        set), told apart by its version field; the mirrored Ethernet frame follows."""
        version = self.data[offset] >> 4 if offset < ctx.end else 0
        kind = {1: "II", 2: "III"}.get(version, "")
        rfc = f"draft-foschiano-erspan-03 type {kind or 'II/III'}"
        w = self.layer("ERSPAN", f"ERSPAN type {kind or '?'} header", offset, rfc, ctx)
        w.bits(offset, 0, 3, "Ver", lambda v: ERSPAN_VERSIONS.get(v, "no known ERSPAN type"))
        if not kind:
            raise w.halt(offset, "unknown ERSPAN version", f"version {version}: type II is 1, type III is 2")
        w.bits(offset, 4, 15, "VLAN", "the VLAN of the mirrored frame's source port")
        w.bits(offset, 16, 18, "COS", "class of service (802.1p priority) of the mirrored frame")
        if kind == "II":
            w.bits(offset, 19, 20, "En", lambda v: ERSPAN_ENCAP[v])
        else:
            w.bits(offset, 19, 20, "BSO", lambda v: ERSPAN_BSO[v])
        w.bits(offset, 21, 21, "T", lambda v: "the frame was truncated to fit" if v else "not truncated")
        w.bits(offset, 22, 31, "Session ID", "the ERSPAN session: which monitor session mirrored it")
        if kind == "II":
            w.bits(offset, 32, 43, "Reserved", "zero")
            w.bits(offset, 44, 63, "Index", "the port index (or ifindex) where the frame was seen")
            self.ethernet(offset + 8, ctx)
            return
        w.field(offset + 4, 4, "timestamp", "when the frame was seen, in the unit Gra gives")
        w.field(offset + 8, 2, "SGT", "security group tag (Cisco TrustSec) of the frame")
        w.bits(offset, 80, 80, "P", lambda v: "the frame is an Ethernet PDU" if v else "not marked as an Ethernet PDU")
        frame = w.bits(offset, 81, 85, "FT", lambda v: ERSPAN_FRAME_TYPES.get(v, "reserved frame type"))
        w.bits(offset, 86, 91, "Hw ID", "identifies the engine that mirrored the frame")
        w.bits(
            offset, 92, 92, "D", lambda v: "egress: seen leaving the port" if v else "ingress: seen entering the port"
        )
        w.bits(offset, 93, 94, "Gra", lambda v: ERSPAN_GRANULARITY[v])
        optional = w.bits(offset, 95, 95, "O", lambda v: "a platform-specific subheader follows" if v else "none")
        at = offset + 12
        if optional:
            w.bits(at, 0, 5, "Platf ID", "which platform's layout the rest of this subheader has")
            info = w.uint(at, 8, "platform-specific info") & ((1 << 58) - 1)
            meaning = "platform-specific (a port index, an upper timestamp...): its layout depends on the Platf ID"
            w.add(at, 8, "platform-specific info", info, meaning, bits=(6, 63), shown=f"0x{info:015x}")
            at += 8
        w.layer.title = f"ERSPAN type III header, {at - offset} bytes"
        if frame == 0:
            self.ethernet(at, ctx)
        elif frame == 2:
            self.ip(at, replace(ctx, via="ERSPAN frame type IP"))
        elif at < ctx.end:
            self.payload(at, ctx, f"an ERSPAN frame of type {frame}")

    def wccp(self, offset: int, ctx: _Ctx) -> None:
        """WCCP's redirect header; WCCP version 1 has none, and an IPv4 header follows straight away (Linux's
        gre_parse_header and Wireshark tell them apart by that first nibble, as here)."""
        if offset < ctx.end and self.data[offset] >> 4 == 4:
            self.ip(offset, replace(ctx, via="WCCP version 1 redirect, no redirect header", expect_version=4))
            return
        w = self.layer("WCCP", "WCCP redirect header", offset, WCCP_RFC, ctx)
        w.bits(offset, 0, 4, "reserved", "zero")
        w.bits(offset, 5, 5, "U", lambda v: "present but not valid: ignore its contents" if v else "valid")
        w.bits(offset, 6, 6, "A", lambda v: "the alternate bucket was used" if v else "the primary bucket was used")
        w.bits(offset, 7, 7, "D", lambda v: "dynamic service" if v else "well-known service")
        w.bits(offset, 8, 15, "service ID", lambda v: "web-cache (HTTP)" if v == 0 else "the service group")
        w.field(offset + 2, 1, "alternate bucket", "the alternate hash bucket of the redirected packet")
        w.field(offset + 3, 1, "primary bucket", "the primary hash bucket of the redirected packet")
        self.ip(offset + 4, replace(ctx, via="WCCP redirect", expect_version=4))

    def nhrp(self, offset: int, ctx: _Ctx) -> None:
        """NHRP (RFC 2332 5): the fixed header, the mandatory part (addresses, then client information
        entries), then the extensions; each its own layer."""
        w = self.layer("NHRP", "NHRP fixed header", offset, "RFC 2332 5.1", ctx)
        afn = w.uint(offset, 2, "address family")
        w.add(offset, 2, "address family", afn, f"NBMA addresses are {ADDRESS_FAMILIES.get(afn, 'of another family')}",
              shown=_hex(afn, 4))  # fmt: skip
        ptype = w.uint(offset + 2, 2, "protocol type")
        meaning = f"protocol addresses are {ETHERTYPES.get(ptype, 'of another protocol')}"
        w.add(offset + 2, 2, "protocol type", ptype, meaning, shown=f"0x{ptype:04x}")
        snap = w.raw(offset + 4, 5, "protocol SNAP")
        w.add(offset + 4, 5, "protocol SNAP", snap.hex(), "zero unless the protocol type is 0x0080 (a SNAP-coded one)")
        w.field(offset + 9, 1, "hop count", "NHSs this packet may still cross")
        size = w.field(offset + 10, 2, "packet size", "bytes of NHRP, this header included")
        end = offset + size
        covered = self.data[offset:end] if ctx.complete and end <= ctx.end and size >= 20 else None
        w.checksum(offset + 12, covered)
        extoff = w.field(offset + 14, 2, "extension offset", "where the extensions start, from this header (0: none)")
        w.field(offset + 16, 1, "version", "1: NHRP as RFC 2332 defines it")
        kind = w.uint(offset + 17, 1, "type")
        w.add(offset + 17, 1, "type", kind, NHRP_TYPES.get(kind, ("a type explain does not know", ""))[0])
        shtl = self.nhrp_type_length(w, offset + 18, "source NBMA")
        sstl = self.nhrp_type_length(w, offset + 19, "source NBMA subaddress")
        sub = self.sub_ctx(ctx, offset + 10, end, "NHRP packet size")
        mandatory_end = offset + extoff if extoff else end
        if kind in NHRP_TYPES and size >= 20:
            self.nhrp_mandatory(offset + 20, kind, shtl, sstl, replace(sub, end=min(sub.end, mandatory_end)))
        elif offset + 20 < mandatory_end:
            self.payload(offset + 20, replace(sub, end=min(sub.end, mandatory_end)), f"NHRP type {kind}")
        if extoff:
            self.nhrp_extensions(offset + extoff, sub)
        self.trailer(end, ctx, "after the end the NHRP packet size gives")

    def nhrp_type_length(self, w: _Writer, at: int, what: str) -> int:
        """An NHRP address type/length byte (RFC 2332 5.1): bit 1 the type, bits 2-7 the length."""
        value = w.uint(at, 1, f"{what} type/length")
        form = "E.164" if value & 0x40 else "NSAP"
        w.add(at, 1, f"{what} type/length", value, f"{form} format, {value & 0x3F} bytes long",
              shown=f"{form}/{value & 0x3F}")  # fmt: skip
        return value & 0x3F

    def nhrp_address(self, w: _Writer, at: int, length: int, name: str, meaning: str) -> None:
        if length == 0:
            return
        raw = w.raw(at, length, name)
        shown = str(ipaddress.ip_address(raw)) if length in (4, 16) else raw.hex()
        w.add(at, length, name, shown, meaning)

    def nhrp_mandatory(self, offset: int, kind: int, shtl: int, sstl: int, ctx: _Ctx) -> None:
        name, rfc = NHRP_TYPES[kind]
        w = self.layer("NHRP", f"NHRP mandatory part ({name})", offset, rfc, ctx)
        spl = w.field(offset, 1, "source protocol length", "bytes of the source protocol address")
        dpl = w.field(offset + 1, 1, "destination protocol length", "bytes of the destination protocol address")
        if kind == 7:
            w.field(offset + 2, 2, "unused", "zero")
            code = w.uint(offset + 4, 2, "error code")
            w.add(offset + 4, 2, "error code", code, NHRP_ERRORS.get(code, "an error explain does not know"))
            w.field(offset + 6, 2, "error offset", "where in the packet in error the problem is")
        else:
            flags = w.uint(offset + 2, 2, "flags")
            names = [n for bit, n in NHRP_FLAGS.get(kind, {}).items() if flags & bit]
            meaning = ", ".join(names) or "none set"
            w.add(offset + 2, 2, "flags", flags, meaning, shown=f"0x{flags:04x}")
            w.field(offset + 4, 4, "request ID", "matches a reply to its request", hexed=True)
        at = offset + 8
        for length, what, meaning in (
            (shtl, "source NBMA address", "the sender's address on the NBMA network (the underlay)"),
            (sstl, "source NBMA subaddress", "the sender's NBMA subaddress"),
            (spl, "source protocol address", "the sender's address in the overlay"),
            (dpl, "destination protocol address", "the address the packet is about (resolution) or for"),
        ):
            self.nhrp_address(w, at, length, what, meaning)
            at += length
        if kind == 7:
            if at < ctx.end:
                self.payload(at, ctx, "the NHRP packet in error")
            return
        while at + 12 <= ctx.end:
            at = self.nhrp_cie(at, ctx)

    def nhrp_cie(self, offset: int, ctx: _Ctx) -> int:
        """One client information entry (RFC 2332 5.2.0.1); returns where the next one starts."""
        w = self.layer("NHRP", "NHRP client information entry", offset, "RFC 2332 5.2.0.1", ctx)
        code = w.uint(offset, 1, "code")
        w.add(offset, 1, "code", code, NHRP_CIE_CODES.get(code, "a code explain does not know"))
        w.field(offset + 1, 1, "prefix length", "bits of the client's protocol address the entry covers")
        w.field(offset + 2, 2, "unused", "zero")
        w.field(offset + 4, 2, "MTU", "the largest packet the client takes (0: the NBMA network's)")
        w.field(offset + 6, 2, "holding time", "seconds the entry may be cached")
        nbma = self.nhrp_type_length(w, offset + 8, "client NBMA")
        sub = self.nhrp_type_length(w, offset + 9, "client NBMA subaddress")
        cpl = w.field(offset + 10, 1, "client protocol length", "bytes of the client protocol address")
        w.field(offset + 11, 1, "preference", "higher is preferred among entries for the same client")
        at = offset + 12
        for length, what, meaning in (
            (nbma, "client NBMA address", "where the client is on the NBMA network"),
            (sub, "client NBMA subaddress", "the client's NBMA subaddress"),
            (cpl, "client protocol address", "the client's address in the overlay"),
        ):
            self.nhrp_address(w, at, length, what, meaning)
            at += length
        return at

    def nhrp_extensions(self, offset: int, ctx: _Ctx) -> None:
        """The extensions (RFC 2332 5.3), each a layer, up to the End of Extensions or the packet's end."""
        at = offset
        while at + 4 <= ctx.end:
            word = self.data[at] << 8 | self.data[at + 1]
            kind = word & 0x3FFF
            name, rfc = NHRP_EXTENSIONS.get(kind, (f"extension type {kind}", "RFC 2332 5.3"))
            w = self.layer("NHRP", f"NHRP {name} extension", at, rfc, ctx)
            w.bits(at, 0, 0, "C", lambda v: "compulsory: a node that does not know it must not process the packet"
                   if v else "optional: may be ignored")  # fmt: skip
            w.bits(at, 1, 1, "u", "unused: zero")
            w.bits(at, 2, 15, "extension type", name, shown=lambda v: f"{v} (0x{v:04x})")
            length = w.field(at + 2, 2, "extension length", "bytes of value after this length")
            if length:
                value = w.raw(at + 4, length, "extension value")
                w.add(at + 4, length, "extension value", value.hex(), _preview(value), shown=f"{length} bytes")
            at += 4 + length
            if kind == 0:
                break

    def gre_checksum(self, w: _Writer, offset: int, hlen: int) -> None:
        """The GRE checksum, verified by the core's parser over the GRE header and payload (RFC 2784 2.5)."""
        ctx, at = w.ctx, offset + 4
        csum = w.uint(at, 2, "checksum")
        shown = f"0x{csum:04x}"
        if not ctx.complete or offset + hlen > ctx.end:
            w.add(at, 2, "checksum", csum, "not verified: the payload is cut short", "RFC 2784 2.5", shown=shown)
            return
        message = self.data[offset : ctx.end]
        if gre.parse_gre(message) is Drop.CSUM_BAD:
            good = internet_checksum(message[:4] + b"\0\0" + message[6:])
            why = f"WRONG: should be 0x{good:04x}, computed over the GRE header and payload ({Drop.CSUM_BAD.value})"
            w.add(at, 2, "checksum", csum, why, "RFC 2784 2.5", shown=shown, problem="bad GRE checksum")
        else:
            meaning = f"valid, over the GRE header and payload ({len(message)} bytes)"
            w.add(at, 2, "checksum", csum, meaning, "RFC 2784 2.5", shown=shown)

    # --- IPsec --------------------------------------------------------------------------------------------

    def esp(self, offset: int, ctx: _Ctx) -> None:
        """ESP (RFC 4303 2): the SPI and sequence number are in the clear; everything after them is encrypted
        and authenticated, so without the key explain can say how long it is and nothing more. That is where
        the packet ends, as it should (a normal stop), not where it breaks."""
        w = self.layer("ESP", "ESP header (IPsec, RFC 4303)", offset, "RFC 4303 2", ctx)
        spi = w.uint(offset, 4, "SPI")
        meaning, problem = ESP_SPI_MEANING, None
        if spi == 0:
            meaning, problem = "0 is reserved for local use and never sent on the wire (RFC 4303 2.1)", "SPI 0"
        elif spi < esp.SPI_MIN:
            meaning = "1..255 are reserved by IANA for future use: no security association has one (RFC 4303 2.1)"
            problem = "reserved SPI"
        w.add(offset, 4, "SPI", spi, meaning, "RFC 4303 2.1", shown=_hex(spi, 8), problem=problem)
        seq = w.uint(offset + 4, 4, "sequence number")
        meaning = ESP_SEQ_MEANING
        if seq == 0:
            meaning += (
                "; 0 is never sent without extended sequence numbers (the first packet is 1): "
                "with them, it is the low half after the count passed 2**32"
            )
        w.add(offset + 4, 4, "sequence number", seq, meaning, "RFC 4303 2.2", shown=_hex(seq, 8))
        at = offset + esp.HEADER_LEN
        size = max(ctx.end - at, 0)
        if size < 2 and not ctx.quoted and ctx.complete:
            why = (
                f"{size} byte{'s' if size != 1 else ''} after the sequence number: ESP carries at least the "
                "encrypted pad length and next header, and with an AEAD an IV and ICV too"
            )
            if size:
                w.add(at, size, "encrypted payload", size, why, "RFC 4303 2.4", shown=f"{size} bytes")
            raise w.halt(at, "ESP without payload", why, "RFC 4303 2")
        if size == 0:
            w.raw(at, 1, "encrypted payload")  # a capture or a quote cut it here: say so
        held = "" if ctx.complete else " present (the rest is cut off)"
        meaning = f"{size} bytes{held}: {ESP_ENCRYPTED}"
        w.add(at, size, "encrypted payload", size, meaning, "RFC 4303 2.3-2.8", shown=f"{size} bytes")
        w.layer.title = f"ESP header (IPsec, RFC 4303), {esp.HEADER_LEN} bytes, then {size} encrypted"
        if self.esp_keys is not None and ctx.complete and not ctx.quoted:
            self.esp_open(w, spi, offset, ctx)
        if self.shortfall is None and not ctx.quoted:
            why = f"the {size} bytes after ESP's sequence number are encrypted; without the key nothing more "
            why += "can be read" if self.opened is None else "can be read (--esp-keys opened them: see below)"
            raise w.halt(ctx.end, "encrypted", why, "RFC 4303 2", malformed=False)

    def esp_open(self, w: _Writer, spi: int, offset: int, ctx: _Ctx) -> None:
        """With --esp-keys: open the ESP packet with the SA of that SPI, as its receiver would, and say so in a
        field over the encrypted bytes; what it carried is kept for `explain` to dissect on its own."""
        assert self.esp_keys is not None
        at, size = offset + esp.HEADER_LEN, ctx.end - offset - esp.HEADER_LEN
        sas = {"[in]": self.esp_keys.inbound, "[out]": self.esp_keys.outbound}
        found = [(name, sa) for name, sa in sas.items() if sa.spi == spi]
        if not found:
            have = ", ".join(f"{name} 0x{sa.spi:08x}" for name, sa in sas.items())
            meaning = f"not opened: no SA of --esp-keys has SPI 0x{spi:08x} (the file has {have})"
            w.add(at, size, "opened with --esp-keys", "no such SPI", meaning, "RFC 4303 3.4.2")
            return
        name, sa = found[0]
        cipher = f"the {name} SA ({sa.aead}, {len(sa.cipher_key) * 8}-bit key, {sa.icv_bits}-bit ICV)"
        result = esp.Opener(sa).open(self.data[offset : ctx.end])  # a fresh window: any number but 0 is new
        if isinstance(result, Drop):
            why, problem = ESP_REFUSED.get(result, (result.value, result.value))
            meaning = f"not opened with {cipher}: {why} (usertunnel counts {result.value})"
            w.add(at, size, "opened with --esp-keys", result.value, meaning, "RFC 4303 3.4", problem=problem)
            return
        next_header, payload = result
        padding = size - esp.IV_LEN - sa.icv_len - len(payload) - 2
        meaning = (
            f"opened with {cipher}: the ICV verifies; {esp.IV_LEN} bytes of IV, {len(payload)} bytes of payload, "
            f"{padding} of padding, pad length, next header {next_header} "
            f"({IP_PROTOCOLS.get(next_header, 'not one explain knows')}), {sa.icv_len} bytes of ICV; "
            "the payload is explained below, inside ESP"
        )
        w.add(at, size, "opened with --esp-keys", next_header, meaning, "RFC 4303 2.4-2.8")
        self.opened = _Opened(next_header, payload, ctx, name)

    # --- transport ----------------------------------------------------------------------------------------

    def transport(self, kind: str, offset: int, rfc: str, ctx: _Ctx) -> _Writer:
        title = f"quoted {kind} header" if ctx.quoted else f"{ctx.role + ' ' if ctx.role else ''}{kind} header"
        return self.layer(kind, title, offset, rfc, ctx)

    def covered(self, w: _Writer, protocol: int | None, length: int | None = None) -> tuple[bytes | None, bytes]:
        """The bytes a checksum covers, and its pseudo-header (empty for ICMP); None when not all present."""
        ctx, offset = w.ctx, w.layer.offset
        end = ctx.end if length is None else offset + length
        if not ctx.complete or ctx.quoted or end > ctx.end:
            return None, b""
        message = self.data[offset:end]
        if protocol is None:
            return message, b""
        if ctx.pseudo is None:
            return None, b""
        return message, _pseudo_header(ctx.pseudo, protocol, len(message))

    def icmp(self, offset: int, ctx: _Ctx) -> None:
        w = self.transport("ICMP", offset, "RFC 792", ctx)
        kind = w.uint(offset, 1, "type")
        w.add(offset, 1, "type", kind, ICMP_TYPES.get(kind, "a type explain does not know"))
        code = w.uint(offset + 1, 1, "code")
        w.add(offset + 1, 1, "code", code, ICMP_CODES.get(kind, {}).get(code, "-" if code == 0 else "no known meaning"))
        covered, _ = self.covered(w, None)
        w.checksum(offset + 2, covered)
        at = offset + 4
        if kind in (0, 8, 13, 14):
            w.field(at, 2, "identifier", "matches a reply to its request", hexed=True)
            w.field(at + 2, 2, "sequence number", "counts the requests")
        elif kind == 3 and code == 4:
            w.field(at, 2, "unused", "zero")
            w.field(at + 2, 2, "next-hop MTU", "the largest packet the next hop takes", "RFC 1191 4")
        elif kind == 5:
            gateway = ipaddress.IPv4Address(w.raw(at, 4, "gateway address"))
            w.add(at, 4, "gateway address", str(gateway), "the router to send to instead")
        elif kind == 12:
            w.field(at, 1, "pointer", "the offset of the faulty byte in the quoted header")
            w.field(at + 1, 3, "unused", "zero")
        else:
            rest = w.uint(at, 4, "rest of header")
            meaning = "unused" if kind in ICMP_ERRORS else "type-specific"
            w.add(at, 4, "rest of header", rest, meaning, shown=f"0x{rest:08x}")
        self.icmp_body(w, at + 4, kind in ICMP_ERRORS, 4)

    def icmp_body(self, w: _Writer, offset: int, error: bool, version: int) -> None:
        """An ICMP error's quote of the packet that caused it (dissected), or the message's data."""
        ctx = w.ctx
        if error and not ctx.quoted and offset < ctx.end:
            quoted = replace(ctx, role="quoted", via="", quoted=True, expect_version=version, depth=ctx.depth + 1)
            self.ip(offset, quoted)
        else:
            self.data_field(w, offset)

    def icmpv6(self, offset: int, ctx: _Ctx) -> None:
        w = self.transport("ICMPv6", offset, "RFC 4443 2.1", ctx)
        kind = w.uint(offset, 1, "type")
        name, rfc = ICMPV6_TYPES.get(kind, ("a type explain does not know", "RFC 4443 2.1"))
        w.add(offset, 1, "type", kind, name + (" (an error message)" if kind < 128 else ""), rfc)
        code = w.uint(offset + 1, 1, "code")
        w.add(offset + 1, 1, "code", code, ICMPV6_CODES.get(kind, {}).get(code, "-" if code == 0 else "unknown"), rfc)
        covered, prefix = self.covered(w, 58)
        w.checksum(offset + 2, covered, prefix, "RFC 4443 2.3")
        at = offset + 4
        if kind in (128, 129):
            ident = w.uint(at, 2, "identifier")
            w.add(at, 2, "identifier", ident, "matches a reply to its request", rfc, shown=_hex(ident, 4))
            w.field(at + 2, 2, "sequence number", "counts the requests", rfc)
        elif kind == 2:
            w.field(at, 4, "MTU", "the largest packet the next hop takes", rfc)
        elif kind == 4:
            w.field(at, 4, "pointer", "the offset of the faulty byte in the quoted packet", rfc)
        else:
            rest = w.uint(at, 4, "rest of header")
            meaning = "unused" if kind < 128 else "message-specific"
            w.add(at, 4, "rest of header", rest, meaning, rfc, shown=f"0x{rest:08x}")
        self.icmp_body(w, at + 4, kind < 128, 6)

    def ports(self, w: _Writer, offset: int, carried: tuple[str, str] | None = None) -> None:
        """Both ports; `carried` (which port says what the payload is, and what) names the tunnel's port."""
        for name, at in (("source port", offset), ("destination port", offset + 2)):
            port = w.uint(at, 2, name)
            meaning = PORTS.get(port, "ephemeral" if port >= 32768 else "-")
            if carried is not None and carried[0] == name:
                meaning = f"the tunnel's port: {UDP_CARRIERS[carried[1]][1]}, {self.carrier_origin(port, carried[1])}"
            elif carried is not None and name == "source port":
                tunnel = "a tunnel's UDP source port: fixed, or a hash of the inner flow (RFC 8086 3.2.1)"
                meaning = tunnel if meaning == "-" else f"{meaning}; {tunnel}"
            w.add(at, 2, name, port, meaning)

    def carrier_origin(self, port: int, what: str) -> str:
        """Why explain reads this port as a tunnel's: a standard port, or --udp-port."""
        if DEFAULT_UDP_PORTS.get(port) == what:
            return "the port RFC 8086 3.2 gives GRE-in-UDP" if what == "fou:47" else "the port usertunnel uses for GUE"
        return f"as --udp-port {port}={what} says"

    def udp_carrier(self, ctx: _Ctx, offset: int) -> tuple[str, str] | None:
        """Which port of the UDP header at `offset` says a tunnel is inside, and which (`udp_ports`): the
        destination port, else the source port (a hub answers from the port it receives on)."""
        if ctx.end < offset + 4:
            return None
        for name, at in (("destination port", offset + 2), ("source port", offset)):
            what = self.udp_ports.get(int.from_bytes(self.data[at : at + 2], "big"))
            if what is not None:
                return None if what == "none" else (name, what)
        return None

    def tcp(self, offset: int, ctx: _Ctx) -> None:
        w = self.transport("TCP", offset, "RFC 9293 3.1", ctx)
        self.ports(w, offset)
        meaning = "stream position of the first data byte (of the SYN, if SYN is set)"
        w.field(offset + 4, 4, "sequence number", meaning, hexed=True)
        meaning = "the next byte expected from the peer (when ACK is set)"
        w.field(offset + 8, 4, "acknowledgment number", meaning, hexed=True)
        byte12 = w.uint(offset + 12, 1, "data offset")
        doff = byte12 >> 4
        if doff < 5:
            why = f"data offset {doff} means a {doff * 4}-byte header, shorter than the 20-byte minimum"
            w.add(offset + 12, 1, "data offset", doff, why, bits=(0, 3), problem="data offset < 5")
            raise w.halt(offset + 12, "data offset < 5", why)
        w.add(offset + 12, 1, "data offset", doff, f"header length: {doff} x 4 = {doff * 4} bytes", bits=(0, 3))
        reserved = byte12 & 0x0F
        meaning = "zero" if reserved == 0 else "reserved bits set (bit 7 is AccECN's AE flag, once ECN nonce's NS)"
        w.add(offset + 12, 1, "reserved", reserved, meaning, bits=(4, 7))
        flags = w.uint(offset + 13, 1, "flags")
        names = " ".join(n for i, n in enumerate(TCP_FLAGS) if flags & (0x80 >> i))
        shown = f"0x{flags:02x} ({names or '-'})"
        w.add(offset + 13, 1, "flags", flags, f"{names or 'none'} set", bits=(0, 7), shown=shown)
        w.field(offset + 14, 2, "window", "bytes the sender can take (before window scaling)")
        covered, prefix = self.covered(w, 6)
        w.checksum(offset + 16, covered, prefix)
        w.field(offset + 18, 2, "urgent pointer", "meaningful only with URG")
        if doff > 5:
            opts = w.raw(offset + 20, doff * 4 - 20, "options")
            w.add(offset + 20, len(opts), "options", opts.hex(), _tcp_options(opts), shown=f"{len(opts)} bytes")
        self.data_field(w, offset + doff * 4)

    def udp(self, offset: int, ctx: _Ctx) -> None:
        w = self.transport("UDP", offset, "RFC 768", ctx)
        carried = self.udp_carrier(ctx, offset)
        self.ports(w, offset, carried)
        length = w.uint(offset + 4, 2, "length")
        present = ctx.end - offset
        meaning, problem = "bytes in the datagram, this 8-byte header included", None
        if length < 8:
            meaning, problem = f"{meaning}: fewer than the header itself", "length < 8"
        elif length > present and not ctx.quoted:
            meaning, problem = f"{meaning}, but only {present} are present", "length beyond the data"
        w.add(offset + 4, 2, "length", length, meaning, problem=problem)
        v6 = ctx.pseudo is not None and len(ctx.pseudo[0]) == 16
        csum = w.uint(offset + 6, 2, "checksum")
        if csum == 0 and v6:
            bad = "zero UDP checksum over IPv6"
            w.add(offset + 6, 2, "checksum", 0, "none, which IPv6 forbids", "RFC 8200 8.1", shown="0x0000", problem=bad)
        elif csum == 0:
            meaning = "none: the sender did not compute one"
            if carried is not None:
                meaning += " (a tunnel's noencap-csum, iproute2's default over IPv4)"
            w.add(offset + 6, 2, "checksum", 0, meaning, shown="0x0000")
        else:
            covered, prefix = self.covered(w, 17, length) if length >= 8 else (None, b"")
            w.checksum(offset + 6, covered, prefix, "RFC 8200 8.1" if v6 else "")
        if length < 8:
            raise w.halt(offset + 4, "UDP length < 8", f"length {length} is less than the 8-byte header")
        sub = ctx if ctx.quoted else self.sub_ctx(ctx, offset + 4, offset + length, "UDP length")
        if carried is None:
            self.data_field(_Writer(self, w.layer, sub), offset + 8)
        else:
            self.udp_tunnel(w, carried[1], offset + 8, sub)
        if not ctx.quoted:
            self.trailer(offset + length, ctx, "after the end the UDP length gives")

    def udp_tunnel(self, w: _Writer, what: str, offset: int, sub: _Ctx) -> None:
        """The payload of a tunnel's UDP header: what a FOU port says (GRE, IPv4, IPv6), or a GUE header.
        The IP header around the UDP header is then the tunnel's outer header, and says so."""
        ctx = w.ctx
        w.layer.title += f" ({UDP_CARRIERS[what][0]})"
        if ctx.depth == 0 and not ctx.quoted:
            outer = next((layer for layer in reversed(self.layers) if layer.kind in ("IPv4", "IPv6")), None)
            if outer is not None and not outer.title.startswith("outer "):
                outer.title = f"outer {outer.title}"
        tunneled = replace(sub, depth=ctx.depth + 1, role="inner", pseudo=None, outer_tos=ctx.outer_tos)
        if what == "fou:47":
            self.gre(offset, tunneled)
        elif what == "gue":
            self.gue(offset, tunneled)
        else:
            version = 4 if what == "fou:4" else 6
            via = f"FOU payload, {'IPIP' if version == 4 else 'SIT'} in UDP"
            self.ip(offset, replace(tunneled, via=via, expect_version=version))

    def gue(self, offset: int, ctx: _Ctx) -> None:
        """A GUE header (draft-ietf-intarea-gue-09 3.1), or variant 1's bare IPv4 or IPv6 packet (4), with what
        usertunnel's receiver does with it (core.fou.parse_gue: Linux's variant 0 without flags or
        extensions, and variant 1)."""
        w = self.layer("GUE", "GUE header (draft-ietf-intarea-gue)", offset, f"{GUE_RFC} 3.1", ctx)
        variant = w.uint(offset, 1, "Ver") >> 6
        verdict = fou.parse_gue(self.data[offset : min(offset + fou.GUE_HEADER_LEN, ctx.end)])
        dropped = f"usertunnel drops it ({verdict.value})" if isinstance(verdict, Drop) else ""
        if variant == 1:
            w.layer.title, w.layer.rfc = (
                "GUE variant 1: no GUE header, an IP packet (draft-ietf-intarea-gue)",
                f"{GUE_RFC} 4",
            )
            version = self.data[offset] >> 4
            bad = None if version in (4, 6) else f"GUE variant 1 with IP version {version}"
            meaning = GUE_VARIANTS[1] + (f"; but the version is {version}: {dropped}" if bad else "")
            w.bits(offset, 0, 1, "Ver", meaning, problem=bad)
            if bad:
                raise w.halt(offset, "GUE variant 1 not IP", f"{meaning} (Linux's gue_udp_recv does the same)")
            via = f"GUE variant 1, IPv{version} directly in UDP"
            self.ip(offset, replace(ctx, via=via, expect_version=version))
            return
        if variant > 1:
            why = f"variant {variant}: the draft defines 0 and 1 ({dropped})"
            w.bits(offset, 0, 1, "Ver", why, f"{GUE_RFC} 2.1", problem="unknown GUE variant")
            raise w.halt(offset, "unknown GUE variant", why, f"{GUE_RFC} 2.1")
        w.bits(offset, 0, 1, "Ver", GUE_VARIANTS[0] + " (Linux calls it the version)", f"{GUE_RFC} 2.1")
        control = w.bits(
            offset, 2, 2, "C",
            lambda c: f"a control message: Proto/ctype is its type ({dropped})" if c else "a data message",
        )  # fmt: skip
        hlen = w.bits(
            offset, 3, 7, "Hlen",
            lambda n: f"{n} x 4 = {4 * n} bytes of extension fields after this 4-byte word"
            + (f" ({dropped}: it takes none)" if n else ""),
        )  # fmt: skip
        ctype = w.uint(offset + 1, 1, "Proto/ctype")
        if control:
            meaning = f"control message type {ctype}" + (" (reserved)" if ctype == 0 else "")
            w.add(offset + 1, 1, "Proto/ctype", ctype, meaning, f"{GUE_RFC} 3.2.2")
        else:
            w.add(offset + 1, 1, "Proto/ctype", ctype, _protocol_meaning(ctype, v6=False), f"{GUE_RFC} 3.2.1")
        flags = w.uint(offset + 2, 2, "Flags")
        meaning = "none: no extension fields" if flags == 0 else (
            "extension fields flagged (draft-ietf-intarea-gue-extensions"
            + ("; the last bit is Linux's P: private flags follow" if flags & 1 else "")
            + f"), not dissected: {dropped}"
        )  # fmt: skip
        w.add(offset + 2, 2, "Flags", flags, meaning, f"{GUE_RFC} 3.3", shown=f"0x{flags:04x}")
        at = offset + fou.GUE_HEADER_LEN
        if hlen:
            data = w.raw(at, 4 * hlen, "extension fields")
            w.add(at, len(data), "extension fields", data.hex(), "as the Flags say, not dissected", f"{GUE_RFC} 3.3",
                  shown=f"{len(data)} bytes")  # fmt: skip
            at += len(data)
        w.layer.title = f"GUE header (draft-ietf-intarea-gue), {at - offset} bytes"
        if control:
            self.payload(at, ctx, f"a GUE control message of type {ctype}")
        elif ctype == 47:
            self.gre(at, ctx)
        elif ctype in (4, 41):
            version = 4 if ctype == 4 else 6
            self.ip(at, replace(ctx, via=f"GUE payload, Proto/ctype {ctype}", expect_version=version))
        elif at < ctx.end:
            self.payload(at, ctx, f"GUE Proto/ctype {ctype} ({IP_PROTOCOLS.get(ctype, 'unknown')})")

    # --- what is not a header -----------------------------------------------------------------------------

    def data_field(self, w: _Writer, offset: int) -> None:
        if offset < w.ctx.end:
            data = self.data[offset : w.ctx.end]
            w.add(offset, len(data), "data", len(data), _preview(data), shown=f"{len(data)} bytes")

    def payload(self, offset: int, ctx: _Ctx, what: str) -> None:
        w = self.layer("payload", "payload", offset, "", ctx)
        data = self.data[offset : ctx.end]
        meaning = f"{what}, not dissected: {_preview(data)}"
        w.add(offset, len(data), "payload", len(data), meaning, shown=f"{len(data)} bytes")

    def trailer(self, offset: int, ctx: _Ctx, what: str = "after the end the length field gives") -> None:
        if offset < ctx.end:
            w = self.layer("trailer", "trailing bytes", offset, "", ctx)
            data = self.data[offset : ctx.end]
            meaning = f"{what}: link-layer padding, or bytes that are not part of the packet: {_preview(data)}"
            w.add(offset, len(data), "trailing bytes", len(data), meaning, shown=f"{len(data)} bytes")


ESP_SPI_MEANING = (
    "Security Parameters Index: with the destination address, which security association (key, algorithm, "
    "replay window) the receiver opens this packet with; the number `ip xfrm state ... spi` gives"
)
ESP_SEQ_MEANING = (
    "counts the packets sent with this security association, from 1 (RFC 4303 3.3.3); the receiver's "
    "anti-replay window refuses a number it has accepted before or one too far behind the highest (RFC 4303 "
    "3.4.3); with extended sequence numbers only the low 32 bits travel"
)
ESP_REFUSED: dict[
    Drop, tuple[str, str | None]
] = {  # why an SA of --esp-keys did not open a packet: the sentence, and the problem it is
    Drop.ESP_ICV: (
        "the ICV does not verify: the packet was changed on the way, or these are not the keys it was sealed "
        "with (RFC 4303 3.4.4)",
        "ESP ICV does not verify",
    ),
    Drop.ESP_TRUNCATED: ("too short for the IV, pad length, next header and ICV of this SA", "ESP too short"),
    Drop.ESP_REPLAY: ("sequence number 0 is never sent without extended sequence numbers", "ESP sequence number 0"),
    Drop.ESP_PADDING: ("the ICV verifies but the padding is not 1, 2, 3... (RFC 4303 2.4)", "ESP bad padding"),
    Drop.ESP_DUMMY: ("a dummy packet (next header 59, RFC 4303 2.6): there is nothing inside", None),
}
ESP_ENCRYPTED = (
    "the IV, the encrypted inner packet, padding, pad length, next header and the ICV: nothing more can be "
    "read without the key"
)
ERSPAN_II_PROTO, ERSPAN_III_PROTO, NHRP_PROTO, WCCP_PROTO, PPP_PROTO = 0x88BE, 0x22EB, 0x2001, 0x883E, 0x880B
PPTP_RFC = "RFC 2637 4.1"
PPTP_BITS = (  # the flag bits of the enhanced GRE header: name, bit, (meaning when clear, when set), required value
    ("C", 0, ("no checksum", "checksum present: enhanced GRE has none"), 0),
    ("R", 1, ("no routing", "routing present: enhanced GRE has none"), 0),
    ("K", 2, ("key absent: enhanced GRE always has it", "key present: payload length and call ID"), 1),
    ("S", 3, ("no sequence number: an acknowledgment only", "sequence number present: it carries a payload"), None),
    ("s", 4, ("strict source route: clear", "strict source route: enhanced GRE has none"), 0),
    ("A", 8, ("no acknowledgment number", "acknowledgment number present"), None),
)
PPP_PROTOCOLS = {
    0x0021: "IPv4",
    0x0057: "IPv6",
    0x00FD: "compressed datagram (CCP: MPPE/MPPC, RFC 1962)",
    0x8021: "IPCP, IPv4 control (RFC 1332)",
    0x8057: "IPV6CP, IPv6 control (RFC 5072)",
    0x80FD: "CCP, compression control (RFC 1962)",
    0xC021: "LCP, link control (RFC 1661)",
    0xC023: "PAP (RFC 1334)",
    0xC223: "CHAP (RFC 1994)",
}
ERSPAN_VERSIONS = {1: "type II", 2: "type III"}
ERSPAN_ENCAP = (
    "the frame came without a VLAN tag",
    "the frame came ISL-encapsulated",
    "the frame came 802.1Q-encapsulated",
    "the VLAN tag is preserved in the frame",
)
ERSPAN_BSO = ("good frame, or integrity unknown", "short frame", "oversized frame", "bad frame (CRC or alignment)")
ERSPAN_FRAME_TYPES = {0: "Ethernet: the mirrored Ethernet frame follows", 2: "IP: an IP packet follows"}
ERSPAN_GRANULARITY = ("timestamp in 100 microseconds", "timestamp in 100 nanoseconds", "IEEE 1588 timestamp",
                      "platform-specific timestamp")  # fmt: skip
WCCP_RFC = "draft-mclaggan-wccp-v2rev1 (redirect header)"
ADDRESS_FAMILIES = {1: "IPv4", 2: "IPv6", 8: "E.164", 3: "NSAP"}
NHRP_TYPES = {
    1: ("resolution request", "RFC 2332 5.2.1"),
    2: ("resolution reply", "RFC 2332 5.2.2"),
    3: ("registration request", "RFC 2332 5.2.3"),
    4: ("registration reply", "RFC 2332 5.2.4"),
    5: ("purge request", "RFC 2332 5.2.5"),
    6: ("purge reply", "RFC 2332 5.2.6"),
    7: ("error indication", "RFC 2332 5.2.7"),
}
_NAT = {0x0002: "N: NAT supported (Cisco)"}
_RESOLUTION = {
    0x8000: "Q: the requester is a router",
    0x4000: "A: authoritative",
    0x2000: "D: stable association",
    0x1000: "U: unique",
    0x0800: "S: stable binding",
    **_NAT,
}
NHRP_FLAGS = {
    1: _RESOLUTION,
    2: _RESOLUTION,
    3: {0x8000: "U: unique", **_NAT},
    4: {0x8000: "U: unique", **_NAT},
    5: {0x8000: "N: no reply expected", **_NAT},
    6: {0x8000: "N: no reply expected", **_NAT},
}
NHRP_CIE_CODES = {
    0: "success",
    4: "administratively prohibited",
    5: "insufficient resources",
    12: "no binding exists",
    13: "binding exists but is not unique",
    14: "unique internetworking layer address already registered",
}
NHRP_ERRORS = {
    1: "unrecognized extension",
    3: "NHRP loop detected",
    6: "protocol address unreachable",
    7: "protocol error",
    8: "NHRP SDU size exceeded",
    9: "invalid extension",
    10: "invalid NHRP resolution reply received",
    11: "authentication failure",
    15: "hop count exceeded",
}
NHRP_EXTENSIONS = {
    0: ("end of extensions", "RFC 2332 5.3.0"),
    3: ("responder address", "RFC 2332 5.3.1"),
    4: ("forward transit NHS record", "RFC 2332 5.3.2"),
    5: ("reverse transit NHS record", "RFC 2332 5.3.3"),
    7: ("authentication", "RFC 2332 5.3.4"),
    8: ("vendor-private", "RFC 2332 5.3.5"),
    9: ("NAT address (Cisco)", "RFC 2332 5.3"),
}


def _protocol_meaning(proto: int, v6: bool) -> str:
    name = IP_PROTOCOLS.get(proto, "not one explain knows")
    if v6:
        extra = {
            4: ": the payload is an IPv4 packet (IPv4 in IPv6, RFC 2473 3.1)",
            41: ": the payload is an IPv6 packet (IPv6 in IPv6, RFC 2473 3.1)",
            47: ": the payload starts with a GRE header (GRE over IPv6, RFC 7676)",
            50: ": the payload is encrypted, after ESP's SPI and sequence number (RFC 4303)",
        }
    else:
        extra = {
            4: ": IPIP, the payload is an IPv4 packet (RFC 2003 3.1)",
            41: ": the payload is an IPv6 packet (SIT, RFC 4213 3.5)",
            47: ": the payload starts with a GRE header (RFC 2784 2)",
            50: ": the payload is encrypted, after ESP's SPI and sequence number (RFC 4303)",
        }
    return f"{name}{extra.get(proto, '')}"


def _ipv4_options(options: bytes) -> str:
    names: list[str] = []
    at = 0
    while at < len(options):
        kind = options[at]
        names.append(IPV4_OPTIONS.get(kind, f"option {kind}"))
        if kind == 0:
            break
        if kind == 1:
            at += 1
            continue
        if at + 1 >= len(options) or options[at + 1] < 2:
            names.append("(malformed option length)")
            break
        at += options[at + 1]
    return ", ".join(names)


def _tcp_options(options: bytes) -> str:
    names: list[str] = []
    at = 0
    while at < len(options):
        kind = options[at]
        if kind == 0:
            break
        if kind == 1:
            at += 1
            continue
        if at + 1 >= len(options) or options[at + 1] < 2 or at + options[at + 1] > len(options):
            names.append(f"option {kind} with a bad length")
            break
        length = options[at + 1]
        body = options[at + 2 : at + length]
        name = TCP_OPTIONS.get(kind, f"option {kind}")
        if kind in (2, 3) and body:
            name += f" {int.from_bytes(body, 'big')}"
        names.append(name)
        at += length
    return ", ".join(names) or "padding only"


def explain(
    packet: bytes | bytearray | memoryview,
    linktype: int = LINKTYPE_RAW,
    wire_length: int | None = None,
    udp_ports: Mapping[int, str] | None = None,
    esp_keys: esp.EspKeys | None = None,
) -> Explanation:
    """Dissect `packet` (starting at the link layer `linktype` gives; raw IP by default) field by field.

    Never raises on the packet's bytes. `wire_length` is the length the packet had on the wire, when a
    capture kept fewer bytes (its snap length); truncation messages then say so. `udp_ports` says what UDP
    ports carry (a port: "fou:47", "fou:4", "fou:41", "gue" or "none", as `--udp-port`), over the
    defaults: 4754 GRE-in-UDP (RFC 8086), 6080 GUE. The packet cannot say it: `ip fou add` does.
    With `esp_keys` (a tunnel's --esp-keys), an ESP packet whose SPI is one of theirs is opened as its receiver
    would, and what it carried is explained too, as `inside` (only the two ends can see that).
    """
    data = bytes(packet)
    wire = max(wire_length or len(data), len(data))
    why = f"the packet has only {len(data)} bytes"
    if wire > len(data):
        why += f" (the capture kept {len(data)} of its {wire} bytes)"
    ports = {**DEFAULT_UDP_PORTS, **(udp_ports or {})}
    dissector = _Dissector(data, ports, esp_keys)
    stop: Stop | None = None
    if not data:
        stop = Stop(0, "empty", "there are no bytes to explain", "")
    else:
        try:
            dissector.link(linktype, _Ctx(end=len(data), end_why=why, complete=wire == len(data)))
        except _Halt as halt:
            stop = halt.stop
    layers = tuple(layer for layer in dissector.layers if layer.fields)  # a header cut before its first field
    if stop is None and dissector.shortfall is not None:
        stop = replace(dissector.shortfall, layer=layers[-1].title if layers else "")
    inside, title = (None, "") if dissector.opened is None else _explain_inside(dissector.opened, ports)
    return Explanation(data, linktype, wire, layers, stop, inside, title)


def _explain_inside(opened: _Opened, udp_ports: Mapping[int, str]) -> tuple[Explanation, str]:
    """What ESP carried, explained as what follows an IP header with protocol = ESP's next header: the GRE
    packet of a tunnel with --esp-keys (47), the inner packet of vti (4), a TCP segment of host traffic..."""
    data, nh = opened.payload, opened.next_header
    why = f"the decrypted payload has only {len(data)} bytes"
    ctx = replace(opened.ctx, end=len(data), end_why=why, complete=True)
    dissector = _Dissector(data, udp_ports)
    stop: Stop | None = None
    try:
        if nh in (4, 41):  # ESP tunnel mode (vti): the inner packet itself (RFC 4303 2.6)
            via = f"ESP tunnel mode, next header {nh}, RFC 4303 2.6"
            tunneled = replace(ctx, depth=ctx.depth + 1, role="inner", via=via, expect_version=4 if nh == 4 else 6)
            dissector.ip(0, tunneled)
        else:
            dissector.ip_payload(nh, 0, ctx, ctx, ctx.outer_tos or 0, ctx.pseudo or (b"", b""))
    except _Halt as halt:
        stop = halt.stop
    layers = tuple(layer for layer in dissector.layers if layer.fields)
    if stop is None and dissector.shortfall is not None:
        stop = replace(dissector.shortfall, layer=layers[-1].title if layers else "")
    name = IP_PROTOCOLS.get(nh, "not one explain knows")
    title = (
        f"inside ESP, before encryption (only the two ends can see this): opened with the {opened.sa} SA of "
        f"--esp-keys; next header {nh} ({name}); offsets count from the first byte of the decrypted payload"
    )
    return Explanation(data, LINKTYPE_RAW, len(data), layers, stop), title


# --- rendering --------------------------------------------------------------------------------------------


def summary(e: Explanation) -> str:
    """One line: the layers, with the fields a person looks for first."""
    parts: list[str] = []
    for layer in e.layers:
        values = {f.name: f.shown for f in layer.fields}
        if layer.kind in ("IPv4", "IPv6") and "destination address" in values:
            parts.append(f"{layer.kind} {values['source address']} > {values['destination address']}")
        elif layer.kind == "GRE" and "call ID" in values:
            words = [f"call {values['call ID']}"]
            words += [f"{w} {values[n]}" for w, n in (("seq", "sequence number"), ("ack", "acknowledgment number"))
                      if n in values]  # fmt: skip
            parts.append(f"enhanced GRE ({', '.join(words)})")
        elif layer.kind == "ERSPAN":
            parts.append(layer.title.split(" header")[0])
        elif layer.kind == "NHRP":
            if "type" in values:
                t = layer.get("type")
                parts.append(f"NHRP {t.meaning if t else ''}")
        elif layer.kind == "GRE":
            opts = [
                name if name != "key" else f"key {values['key'].split(' ')[0]}"
                for name in ("checksum", "key")
                if name in values
            ]
            if "sequence number" in values:
                opts.append(f"seq {values['sequence number'].split(' ')[0]}")
            parts.append("GRE" + (f" ({', '.join(opts)})" if opts else ""))
        elif layer.kind == "ESP":
            words = [f"{w} {values[n].split(' ')[-1].strip('()')}" if n == "SPI" else f"{w} {values[n].split(' ')[0]}"
                     for w, n in (("SPI", "SPI"), ("seq", "sequence number")) if n in values]  # fmt: skip
            parts.append("ESP" + (f" ({', '.join(words)}, encrypted)" if words else ""))
        elif layer.kind in ("TCP", "UDP") and "destination port" in values:
            parts.append(f"{layer.kind} {values['source port']} > {values['destination port']}")
        elif layer.kind == "GUE":
            proto, c = layer.get("Proto/ctype"), layer.get("C")
            if proto is None:
                parts.append("GUE variant 1" if layer.title.startswith("GUE variant 1") else "GUE")
            else:
                parts.append(f"GUE ({'control type' if c and c.value else 'proto'} {proto.value})")
        elif layer.kind in ("ICMP", "ICMPv6") and "type" in values:
            t = layer.get("type")
            parts.append(f"{layer.kind} {t.meaning if t else ''}")
        elif layer.kind not in ("IPv6 extension", "trailer", "VLAN"):
            parts.append(layer.kind)
    head = f"{len(e.packet)} bytes"
    if e.wire_length > len(e.packet):
        head += f" (of {e.wire_length} on the wire)"
    return f"{head}: {', '.join(parts) or 'nothing parsed'}"


_COLUMNS = ("offset", "bits", "bytes", "field", "value", "source", "meaning")


def render_text(e: Explanation, width: int | None = None) -> str:
    """The explanation as a person reads it: a table per layer, then where parsing stopped and what is wrong.

    With `width`, meanings wrap so that lines fit in it (continuation lines start under the meaning column).
    """
    lines = [summary(e)]
    rows = [_row(e.packet, f) for layer in e.layers for f in layer.fields]
    widths = [max(len(r[i]) for r in [_COLUMNS, *rows]) for i in range(len(_COLUMNS) - 1)]
    widths[3] = min(widths[3], 24)  # a longer field name or value pushes its line, not the whole table
    widths[4] = min(widths[4], 30)
    indent = 2 + sum(w + 2 for w in widths)

    def fmt(cells: tuple[str, ...]) -> list[str]:
        head = "  " + "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True)) + "  "
        room = (width or 0) - len(head)
        if room < 30 or len(cells[-1]) <= room:
            return [(head + cells[-1]).rstrip()]
        first, *rest = textwrap.wrap(cells[-1], room) or [""]
        return [head + first, *(" " * indent + more for more in rest)]

    for layer in e.layers:
        last = max(f.offset + f.length for f in layer.fields)
        span = f"offsets {layer.offset}-{last - 1}" if last > layer.offset + 1 else f"offset {layer.offset}"
        lines += ["", f"{layer.title}: {span}" + (f" [{layer.rfc}]" if layer.rfc else ""), *fmt(_COLUMNS)]
        for f in layer.fields:
            lines += fmt(_row(e.packet, f))
    lines.append("")
    if e.stop is not None:
        head = (
            f"parsing stopped at offset {e.stop.offset}"
            if e.stop.malformed
            else f"explained up to offset {e.stop.offset}"
        )
        rfc = f" [{e.stop.rfc}]" if e.stop.rfc else ""
        lines.append(f"{head}: {e.stop.reason}: {e.stop.detail}{rfc}")
    else:
        lines.append(f"end: all {len(e.packet)} bytes explained")
    lines += [f"problem at offset {f.offset} ({f.name}): {f.problem}" for f in e.problems]
    if e.inside is not None:
        lines += ["", f"{e.inside_title}:", render_text(e.inside, width)]
    return "\n".join(lines)


def _row(packet: bytes, f: Field) -> tuple[str, ...]:
    raw = packet[f.offset : f.offset + min(f.length, 4)].hex()
    if f.length > 4:
        raw += ".."
    return (str(f.offset), f.bit_range or "", raw, f.name, f.shown, f.rfc, f.meaning)


def to_json(e: Explanation) -> list[list[dict[str, object]]]:
    """A list of layers, each a list of fields {layer, offset, length, bits, name, value, meaning, rfc, problem}.

    Where parsing stopped is a last field named "parsing stopped" (value: the reason) in the last layer.
    What ESP carried, when --esp-keys opened it, follows as more layers whose title starts with "inside ESP"
    and whose offsets count from the first byte of the decrypted payload.
    """
    out: list[list[dict[str, object]]] = [
        [
            {
                "layer": layer.title,
                "offset": f.offset,
                "length": f.length,
                "bits": f.bit_range,
                "name": f.name,
                "value": f.value,
                "meaning": f.meaning,
                "rfc": f.rfc,
                "problem": f.problem,
            }
            for f in layer.fields
        ]
        for layer in e.layers
    ]
    if e.stop is not None:
        stop = {
            "layer": e.stop.layer,
            "offset": e.stop.offset,
            "length": 0,
            "bits": None,
            "name": "parsing stopped",
            "value": e.stop.reason,
            "meaning": e.stop.detail,
            "rfc": e.stop.rfc,
            "problem": e.stop.reason if e.stop.malformed else None,
        }
        if out:
            out[-1].append(stop)
        else:
            out.append([stop])
    if e.inside is not None:
        head = e.inside_title.split(" (only")[0]
        out += [[{**f, "layer": f"{head}: {f['layer']}"} for f in layer] for layer in to_json(e.inside)]
    return out


# --- input ------------------------------------------------------------------------------------------------


class InputError(ValueError):
    """Input explain cannot use (not a packet explanation: the packet never got that far)."""


_SEPARATORS = frozenset(" \t\r\n:-")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_PREFIX = re.compile(r"(?<![0-9A-Fa-f])0[xX]")  # 0x before a word, not the x of a digit pair


def parse_hex(text: str) -> bytes:
    """Bytes from hex digits; whitespace, colons and dashes between them and 0x before a word are allowed."""
    cleaned = _PREFIX.sub("  ", text)  # same length: positions in errors stay those of the input
    digits = []
    for i, ch in enumerate(cleaned):
        if ch in _HEX_DIGITS:
            digits.append(ch)
        elif ch not in _SEPARATORS:
            what = f"byte 0x{ord(ch) - 0xDC00:02x}" if "\udc80" <= ch <= "\udcff" else repr(ch)  # undecodable input
            raise InputError(
                f"not hex: {what} at character {i + 1}; give the packet as hex digits (spaces, colons and dashes "
                "between bytes allowed), or a capture file with --pcap FILE"
            )
    if not digits:
        raise InputError("no hex digits: give the packet as hex, e.g. 45000044... (spaces and colons allowed)")
    if len(digits) % 2:
        raise InputError(f"odd number of hex digits ({len(digits)}): every byte needs two")
    return bytes.fromhex("".join(digits))


def parse_udp_port(text: str) -> tuple[int, str]:
    """`--udp-port PORT=WHAT`: that UDP port carries WHAT (fou:47, fou:4, fou:41, gue; none: plain UDP)."""
    port, sep, what = text.partition("=")
    accepted = ", ".join(UDP_CARRIERS)
    if not sep or not port.strip().isdigit() or not 1 <= int(port) <= 65535:
        raise InputError(f"--udp-port {text!r}: give PORT=WHAT with PORT 1..65535 and WHAT one of {accepted}")
    if what not in UDP_CARRIERS:
        raise InputError(f"--udp-port {text!r}: {what!r} is not something explain reads in UDP; give one of {accepted}")
    return int(port), what


# --- command line -----------------------------------------------------------------------------------------

EXAMPLE_HEX = (
    "4500004400004000402fe620c6336401c6336402",
    "b0000800432d0000000004d200000000",
    "450000201c4640004001a692cb007101cb007102",
    "080019270007000170696e67",
)

DESCRIPTION = """\
Explain a packet byte by byte. For every field of every header: its byte offset,
its bits where it is not whole bytes (counted from the most significant bit, as
RFC diagrams do), the raw bytes, the value, the RFC section that defines it and
what it means. Headers: Ethernet or Linux cooked (from captures); the outer IPv4
or IPv6 header; GRE with every option (the checksum verified, the key also as a
dotted quad, the sequence number); IPIP (protocol 4), SIT (protocol 41) and
IPv6-in-IPv6; the inner IPv4/IPv6 header with what RFC 6040 makes of its ECN;
and its ICMP, ICMPv6, TCP or UDP header. What else GRE carries in real
captures: ERSPAN types I, II and III (protocol types 0x88be, 0x22eb) with the
mirrored frame, NHRP (0x2001: fixed header, mandatory part, client information
entries, extensions), PPTP's enhanced GRE (version 1: payload length, call ID,
sequence and acknowledgment numbers) with its PPP frame, and WCCP's redirect
header (0x883e).

IPsec ESP (protocol 50, RFC 4303), as vti and --esp-keys tunnels send it: the
SPI (which security association) and the sequence number (anti-replay); the
rest is encrypted, and explain says how long it is and stops there. With
--esp-keys FILE (the tunnel's key file) it opens the packet as the receiver
would and explains what ESP carried before encryption too (the GRE packet of
gre with --esp-keys, the inner packet of vti); the keys are never shown.

Tunnels in UDP: FOU (GRE, IPv4 or IPv6 right after the UDP header) and GUE
(its header: variant, C bit, Hlen, Proto/ctype, flags; or variant 1, a bare
IPv4 or IPv6 packet). A packet cannot say what its UDP port carries (on Linux,
`ip fou add` says it): explain reads port 4754 as GRE-in-UDP (RFC 8086) and
6080 as GUE, as the destination port or else the source port (a hub answers
from its own port), and --udp-port PORT=WHAT names any other.

A malformed packet is explained as far as it goes, then explain says at which
offset parsing stopped and why (truncated header, wrong version, IHL < 5,
lying total length, an unknown GRE version, routing bit...), and lists bad
checksums.
That is not an error: the exit status is 0.

The packet, in one of three forms:
  HEX            on the command line, starting at the IP header. Spaces,
                 colons and dashes between bytes are allowed (one argument
                 or several), and 0x before a word.
  (nothing)      the same hex read from standard input, e.g.
                 xxd -p packet.bin | usertunnel explain
  --pcap FILE    a packet from a capture (pcap or pcapng; Ethernet, raw IP or
                 Linux cooked). --index N picks packet N (0-based, default 0);
                 --all explains every packet.
"""

EPILOG = f"""\
example: a GRE packet as usertunnel sends it with --key 1234 --seq --csum
(outer IPv4 198.51.100.1 > 198.51.100.2, GRE with checksum, key and sequence
number 0, inner IPv4 203.0.113.1 > 203.0.113.2, ICMP echo request "ping"):
  usertunnel explain {EXAMPLE_HEX[0]} \\
      {EXAMPLE_HEX[1]} \\
      {EXAMPLE_HEX[2]} \\
      {EXAMPLE_HEX[3]}

the other forms:
  usertunnel explain -j 45:00:00:44:00:00:40:00:40:2f:...   colons between bytes; JSON out
  xxd -p packet.bin | usertunnel explain                     hex on standard input
  usertunnel explain --pcap gre.pcapng --index 3             the 4th packet of a capture
  tcpdump -ni eth0 -w gre.pcap ip proto gre                  capture GRE, then explain
  usertunnel explain --pcap gre.pcap --all                   every packet of it
  usertunnel explain --pcap fou.pcap --udp-port 5555=fou:47  UDP port 5555 carries GRE (FOU)

--udp-port PORT=WHAT (again for each port): fou:47 (FOU carrying GRE, as `ip fou
add port PORT ipproto 47`), fou:4 (IPv4: ipip), fou:41 (IPv6: sit), gue (`ip fou
add port PORT gue`), none (plain UDP, also to turn off 4754 or 6080).

-j prints a list of layers, each a list of fields {{layer, offset, length, bits,
name, value, meaning, rfc, problem}}; where parsing stopped is a last field named
"parsing stopped". With --all, a list of those, one per packet. What ESP
carried, opened with --esp-keys, follows as layers titled "inside ESP, ...",
their offsets counted from the first byte of the decrypted payload:
  usertunnel explain --esp-keys /etc/usertunnel/esp.toml --pcap esp.pcap --all

--svg draws the packet as RFCs draw headers (32-bit rows, a box per field, as
wide as its bits, a colour per header, the value inside); --html makes a page
of it that needs nothing else (no script, font or network) and reads on a
phone: the drawing beside the hex dump, where pointing at a box lights up its
bytes, then every field with its meaning and RFC section. With --all, every
packet, one under the other:
  usertunnel explain --html --pcap gre.pcap --all > gre.html
Exit status: 0 when the packet was explained (even a malformed one); 2 when the
input is unusable (not hex, no such file, not a capture, index out of range,
an --esp-keys file that is unreadable, wrong or readable by others).
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `explain` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain",
        help="explain a packet byte by byte: every GRE/FOU/GUE/IPIP/IP/ICMP/TCP/UDP field with its RFC section",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("hex", nargs="*", metavar="HEX", help="the packet as hex (read from stdin when absent)")
    p.add_argument("--pcap", metavar="FILE", help="read the packet from a pcap or pcapng capture file")
    p.add_argument("--index", metavar="N", help="with --pcap: the packet to explain, 0-based (default 0)")
    p.add_argument("--all", action="store_true", help="with --pcap: explain every packet")
    p.add_argument("-j", "--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--udp-port",
        action="append",
        default=[],
        metavar="PORT=fou:47|fou:4|fou:41|gue|none",
        help="what UDP port PORT carries (repeatable): FOU with GRE, IPv4 or IPv6 (ip fou add port PORT ipproto "
        "47|4|41), GUE (ip fou add port PORT gue), or nothing to dissect; 4754 is GRE-in-UDP and 6080 GUE unless "
        "said otherwise",
    )
    p.add_argument(
        "--esp-keys",
        metavar="FILE",
        help="open ESP packets with a tunnel's key file (the one usertunnel up --esp-keys reads; private to its "
        "owner) and explain what they carried before encryption too; the keys themselves are never shown",
    )
    p.add_argument(
        "--svg",
        action="store_true",
        help="print an SVG drawing instead: RFC-style 32-bit rows, a box per field as wide as its bits, each "
        "header its own colour, the value inside the box (its meaning and RFC section as its tooltip)",
    )
    p.add_argument(
        "--html",
        action="store_true",
        help="print a self-contained HTML page instead: the drawing beside the hex dump (pointing at a box "
        "highlights its bytes), then every field with its meaning and RFC section; no script, no network",
    )


def _index(args: argparse.Namespace) -> int | None:
    """The packet --index asks for (None: every packet), after checking the options go together."""
    chosen = [flag for flag, on in (("-j", args.json), ("--svg", args.svg), ("--html", args.html)) if on]
    if len(chosen) > 1:
        raise InputError(f"give one of -j, --svg and --html, not {' and '.join(chosen)}")
    if args.pcap is None:
        if args.index is not None or args.all:
            raise InputError("--index and --all need --pcap FILE")
        return 0
    if args.hex:
        raise InputError("give either HEX or --pcap FILE, not both")
    if args.all:
        if args.index is not None:
            raise InputError("give either --index N or --all, not both")
        return None
    if args.index is None:
        return 0
    text = str(args.index)
    if not text.isdigit():
        raise InputError(f"--index {text!r} is not a packet number: give 0, 1, 2, ... (0-based)")
    return int(text)


def _record(
    path: str, count: int, data: bytes, meta: object, default_linktype: int | None
) -> tuple[int, bytes, int, int]:
    """One packet of a capture as (index, bytes, link type, length on the wire), if explain reads its link type."""
    linktype = int(getattr(meta, "linktype", None) or default_linktype or LINKTYPE_RAW)  # pcapng: per interface
    if linktype not in LINKTYPES:
        accepted = ", ".join(f"{k} ({v})" for k, v in sorted(LINKTYPES.items()))
        why = f"packet {count} of {path!r} has link type {linktype}, which explain does not read"
        raise InputError(f"{why}; accepted: {accepted}")
    return count, bytes(data), linktype, int(getattr(meta, "wirelen", 0) or len(data))


def run(args: argparse.Namespace) -> int:
    """Run `usertunnel explain` with parsed `args`: 0 when explained, 2 when the input is unusable.

    The only function here that reads (stdin, a capture file) and prints. Captures are read with scapy's
    raw reader, which gives the bytes exactly as captured and detects pcapng by itself.
    """
    packets: list[tuple[int, bytes, int, int]] = []
    try:
        index = _index(args)
        udp_ports = dict(parse_udp_port(text) for text in args.udp_port)
        keys = None
        if args.esp_keys is not None:
            from ..core.errors import ConfigError
            from ..io.keyfile import read_esp_keys

            try:
                keys = read_esp_keys(args.esp_keys)
            except ConfigError as exc:
                raise InputError(str(exc).replace("\n", "; ")) from None
        if args.pcap is None:
            if args.hex:
                text = " ".join(args.hex)
            elif sys.stdin is None or sys.stdin.isatty():
                raise InputError("no packet: give it as HEX, pipe hex into standard input, or use --pcap FILE")
            else:
                text = sys.stdin.read()
            packets.append((0, parse_hex(text), LINKTYPE_RAW, 0))
        else:
            from scapy.error import Scapy_Exception
            from scapy.utils import RawPcapReader

            path: str = args.pcap
            if not os.path.isfile(path):
                what = "a directory" if os.path.isdir(path) else "no such file"
                raise InputError(f"cannot read {path!r}: {what} (give a pcap or pcapng capture file)")
            count = 0
            try:
                with RawPcapReader(path) as reader:
                    for data, meta in reader:
                        if index is None or count == index:
                            packets.append(_record(path, count, data, meta, getattr(reader, "linktype", None)))
                        count += 1
                        if index is not None and count > index:
                            break
            except (Scapy_Exception, EOFError, ValueError, struct.error) as exc:
                where = f"past packet {count}" if count else "as a capture"
                raise InputError(f"cannot read {path!r} {where}: {exc} (give a pcap or pcapng file)") from None
            if index is not None and not packets:
                have = f"indexes 0..{count - 1}" if count else "no packets"
                raise InputError(f"--index {index} is out of range: {path!r} holds {count} packet(s) ({have})")
    except InputError as exc:
        print(f"usertunnel explain: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, UnicodeDecodeError) as exc:
        print(f"usertunnel explain: error: cannot read the input: {exc}", file=sys.stderr)
        return 2

    explanations = [(i, explain(data, linktype, wire or None, udp_ports, keys)) for i, data, linktype, wire in packets]
    if args.svg or args.html:
        from .picture import packet, page

        source = f"{args.pcap}" if args.pcap else "a packet"
        items = [
            (f"packet {i} ({LINKTYPES[e.linktype]}): {summary(e)}" if args.pcap else summary(e), e)
            for i, e in explanations
        ]
        items = [
            drawn
            for title, e in items
            for drawn in [(title, e)] + ([(f"{e.inside_title}: {summary(e.inside)}", e.inside)] if e.inside else [])
        ]
        title = f"usertunnel explain: {source}"
        text = packet.svg(items, title) if args.svg else page.explain_page(items, title)
        text = text.rstrip("\n")
    elif args.json:
        docs = [to_json(e) for _, e in explanations]
        text = json.dumps(docs if index is None else docs[0], indent=1)
    else:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        heads = [f"packet {i} ({LINKTYPES[e.linktype]}): " if args.pcap else "" for i, e in explanations]
        text = "\n\n".join(head + render_text(e, width) for head, (_, e) in zip(heads, explanations, strict=True))
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `usertunnel explain ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
