"""Field-by-field dissection of a tunnel packet, for people learning how GRE works.

Built on the core's parsers (what usertunnel itself believes) and written as
rows: offset, field, value, meaning, source. The lab prints them; later
`explain` and `--trace` can reuse them.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ..core import ecn, gre, ipv4
from ..core.drops import Drop

PROTOCOLS = {1: "ICMP", 4: "IPv4 (IPIP, RFC 2003)", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE (RFC 2784)", 58: "ICMPv6"}
ETHERTYPES = {gre.PROTO_IPV4: "IPv4", gre.PROTO_IPV6: "IPv6", gre.PROTO_TEB: "Ethernet (gretap)", 0: "keepalive"}
ECN_NAMES = {ecn.NOT_ECT: "Not-ECT", ecn.ECT_0: "ECT(0)", ecn.ECT_1: "ECT(1)", ecn.CE: "CE"}
ICMP_TYPES = {0: "echo reply", 3: "destination unreachable", 8: "echo request", 11: "time exceeded"}


@dataclass(frozen=True)
class Row:
    offset: int
    field: str
    value: str
    meaning: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    rows: list[Row]


def _ipv4_section(title: str, data: bytes, base: int) -> tuple[Section, ipv4.IPv4Header] | str:
    h = ipv4.parse_ipv4(data)
    if isinstance(h, Drop):
        return f"{title}: not a valid IPv4 header ({h.description})"
    dscp, ecn_bits = h.tos >> 2, h.tos & ecn.ECN_MASK
    flags = []
    if h.frag_off & ipv4.FLAG_DF:
        flags.append("DF")
    if h.frag_off & ipv4.FLAG_MF:
        flags.append("MF")
    csum_ok = ipv4.header_checksum_ok(data)
    rows = [
        Row(base + 0, "version / IHL", f"4 / {h.ihl}", f"IPv4, header {h.header_length} bytes"),
        Row(base + 1, "TOS", f"{h.tos:#04x}", f"DSCP {dscp}, ECN {ECN_NAMES[ecn_bits]}"),
        Row(base + 2, "total length", str(h.total_length), "bytes, header included"),
        Row(base + 4, "identification", f"{h.identification:#06x}", ""),
        Row(base + 6, "flags / fragment offset", f"{' '.join(flags) or '-'} / {h.frag_off & ipv4.OFFSET_MASK}", ""),
        Row(base + 8, "TTL", str(h.ttl), ""),
        Row(base + 9, "protocol", str(h.protocol), PROTOCOLS.get(h.protocol, "")),
        Row(base + 10, "header checksum", f"{h.checksum:#06x}", "valid" if csum_ok else "INVALID"),
        Row(base + 12, "source", str(ipaddress.IPv4Address(h.src)), ""),
        Row(base + 16, "destination", str(ipaddress.IPv4Address(h.dst)), ""),
    ]
    return Section(title, rows), h


def _gre_section(data: bytes, base: int) -> tuple[Section, gre.GREHeader] | str:
    h = gre.parse_gre(data)
    if isinstance(h, Drop):
        return f"GRE header: dropped: {h.description}"
    bits = []
    for name, flag in (("C", gre.FLAG_CSUM), ("K", gre.FLAG_KEY), ("S", gre.FLAG_SEQ)):
        bits.append(f"{name}={1 if h.flags & flag else 0}")
    rows = [
        Row(base, "flags / version", f"{h.flags:#06x}", f"{' '.join(bits)}, version {h.version} (RFC 2784 2.1)"),
        Row(base + 2, "protocol type", f"{h.protocol:#06x}", ETHERTYPES.get(h.protocol, "unknown EtherType")),
    ]
    off = base + 4
    if h.checksum is not None:
        rows.append(Row(off, "checksum", f"{h.checksum:#06x}", "valid, over GRE header + payload (RFC 2784 2.5)"))
        rows.append(Row(off + 2, "reserved1", str(h.reserved1), ""))
        off += 4
    if h.key is not None:
        dotted = ipaddress.IPv4Address(h.key)
        rows.append(Row(off, "key", f"{h.key} ({dotted})", "identifies the tunnel (RFC 2890 2.1)"))
        off += 4
    if h.sequence is not None:
        rows.append(Row(off, "sequence number", str(h.sequence), "for in-order delivery (RFC 2890 2.2)"))
    return Section(f"GRE header ({h.length} bytes)", rows), h


def _transport_section(protocol: int, data: bytes, base: int) -> Section | None:
    if protocol == 1 and len(data) >= 8:
        kind, code, csum, ident, seq = struct.unpack_from("!BBHHH", data)
        rows = [
            Row(base, "type / code", f"{kind} / {code}", ICMP_TYPES.get(kind, "")),
            Row(base + 2, "checksum", f"{csum:#06x}", ""),
        ]
        if kind in (0, 8):
            rows.append(Row(base + 4, "identifier / sequence", f"{ident} / {seq}", ""))
        return Section("inner ICMP", rows)
    if protocol in (6, 17) and len(data) >= 8:
        sport, dport = struct.unpack_from("!HH", data)
        return Section(f"inner {PROTOCOLS[protocol]}", [Row(base, "ports", f"{sport} -> {dport}", "")])
    return None


def dissect(packet: bytes) -> list[Section | str]:
    """Sections for an outer IPv4 packet carrying GRE or IPIP, down to the inner transport header."""
    out: list[Section | str] = []
    outer = _ipv4_section("outer IPv4 header", packet, 0)
    if isinstance(outer, str):
        return [outer]
    section, oh = outer
    out.append(section)
    off = oh.header_length
    payload = packet[off : oh.total_length]
    if oh.protocol == 47:
        g = _gre_section(payload, off)
        if isinstance(g, str):
            return [*out, g]
        out.append(g[0])
        off += g[1].length
        if g[1].protocol != gre.PROTO_IPV4:
            return out
    elif oh.protocol != 4:
        return out
    inner = _ipv4_section("inner IPv4 header", packet[off:], off)
    if isinstance(inner, str):
        return [*out, inner]
    out.append(inner[0])
    t = _transport_section(inner[1].protocol, packet[off + inner[1].header_length :], off + inner[1].header_length)
    if t is not None:
        out.append(t)
    return out


def render(sections: list[Section | str]) -> str:
    lines = []
    for s in sections:
        if isinstance(s, str):
            lines.append(f"  {s}")
            continue
        lines.append(f"  {s.title}")
        for r in s.rows:
            meaning = f"  {r.meaning}" if r.meaning else ""
            lines.append(f"    @{r.offset:<3d} {r.field:<24s} {r.value:<22s}{meaning}")
    return "\n".join(lines)


def summary(packet: bytes) -> str:
    """One line: outer addresses, GRE key/seq, inner addresses and ICMP type."""
    h = ipv4.parse_ipv4(packet)
    if isinstance(h, Drop):
        return f"unparseable ({h.description})"
    text = f"{ipaddress.IPv4Address(h.src)} > {ipaddress.IPv4Address(h.dst)} {PROTOCOLS.get(h.protocol, h.protocol)}"
    off = h.header_length
    if h.protocol == 47:
        g = gre.parse_gre(packet[off : h.total_length])
        if isinstance(g, Drop):
            return f"{text} [{g.description}]"
        extra = [f"key={g.key}"] if g.key is not None else []
        if g.sequence is not None:
            extra.append(f"seq={g.sequence}")
        if g.checksum is not None:
            extra.append("csum")
        text += f" [{' '.join(extra) or 'no options'}]"
        off += g.length
        if g.protocol == gre.PROTO_IPV6 and len(packet) >= off + 40:
            src = ipaddress.IPv6Address(packet[off + 8 : off + 24])
            dst = ipaddress.IPv6Address(packet[off + 24 : off + 40])
            return f"{text} | IPv6 {src} > {dst} next header {packet[off + 6]}"
    inner = ipv4.parse_ipv4(packet[off:])
    if isinstance(inner, Drop):
        return text
    text += f" | {ipaddress.IPv4Address(inner.src)} > {ipaddress.IPv4Address(inner.dst)} ttl={inner.ttl}"
    if inner.protocol == 1 and len(packet) > off + inner.header_length:
        text += f" ICMP {ICMP_TYPES.get(packet[off + inner.header_length], '')}"
    return text
