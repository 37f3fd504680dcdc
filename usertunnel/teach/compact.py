"""The lab's compact view of a tunnel packet: a few rows per header, and one line per packet.

Rules of this file: it reads no packet bytes. It renders what the one describer (teach/describe/) says
about a packet, as `explain` does in full: the outer IPv4 header, GRE, the inner IPv4 header and its
ICMP, TCP or UDP header, each as rows (offset, field, value, meaning) in the lab's short words. Where the
describer stopped early, the view says so in the describer's words (`describe.refusal`), as explain and
--trace do.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.drops import Drop
from .describe import ECN_SHORT, ICMP_TYPES, Explanation, Field, Layer, describe, refusal

PROTOCOLS = {1: "ICMP", 4: "IPv4 (IPIP, RFC 2003)", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE (RFC 2784)", 58: "ICMPv6"}
ETHERTYPES = {0x0800: "IPv4", 0x86DD: "IPv6", 0x6558: "Ethernet (gretap)", 0: "keepalive"}
GRE_FLAG_BITS = ("C", "R", "K", "S", "s")  # bits 0-4 of the GRE header, as the describer names them


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


class _Fields:
    """One layer's fields by name, and whether the describer read all of `names`."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self.by_name: dict[str, Field] = {}
        for f in layer.fields:
            self.by_name.setdefault(f.name, f)

    def has(self, *names: str) -> bool:
        return all(n in self.by_name for n in names)

    def value(self, name: str) -> int:
        v = self.by_name[name].value
        assert isinstance(v, int)
        return v

    def text(self, name: str) -> str:
        return str(self.by_name[name].value)

    def reaches(self, length: int) -> bool:
        """True when the fields read cover the layer's first `length` bytes."""
        return max(f.offset + f.length for f in self.layer.fields) >= self.layer.offset + length


_IPV4 = ("IHL", "DSCP", "ECN", "total length", "identification", "flags", "fragment offset", "TTL", "protocol")
_IPV4_ALL = (*_IPV4, "header checksum", "source address", "destination address")


def _ipv4(layer: Layer | None) -> _Fields | None:
    """The layer's fields when it is an IPv4 header the describer read whole, else None."""
    if layer is None or layer.kind != "IPv4":
        return None
    f = _Fields(layer)
    return f if f.has(*_IPV4_ALL) else None


def _ipv4_section(title: str, f: _Fields) -> Section:
    base, ihl = f.layer.offset, f.value("IHL")
    tos = f.value("DSCP") << 2 | f.value("ECN")
    flags = f.value("flags")
    names = [n for n, bit in (("DF", 2), ("MF", 1)) if flags & bit]
    checksum = f.by_name["header checksum"]
    rows = [
        Row(base + 0, "version / IHL", f"4 / {ihl}", f"IPv4, header {ihl * 4} bytes"),
        Row(base + 1, "TOS", f"{tos:#04x}", f"DSCP {f.value('DSCP')}, ECN {ECN_SHORT[f.value('ECN')]}"),
        Row(base + 2, "total length", f.text("total length"), "bytes, header included"),
        Row(base + 4, "identification", f"{f.value('identification'):#06x}", ""),
        Row(base + 6, "flags / fragment offset", f"{' '.join(names) or '-'} / {f.value('fragment offset')}", ""),
        Row(base + 8, "TTL", f.text("TTL"), ""),
        Row(base + 9, "protocol", f.text("protocol"), PROTOCOLS.get(f.value("protocol"), "")),
        Row(base + 10, "header checksum", f"{checksum.value:#06x}", "INVALID" if checksum.problem else "valid"),
        Row(base + 12, "source", f.text("source address"), ""),
        Row(base + 16, "destination", f.text("destination address"), ""),
    ]
    return Section(title, rows)


def _gre(layer: Layer | None) -> _Fields | None:
    """The layer's fields when it is a version 0 GRE header read up to its protocol type, else None."""
    if layer is None or layer.kind != "GRE":
        return None
    f = _Fields(layer)
    return f if f.has(*GRE_FLAG_BITS, "Recur", "Flags", "Ver", "protocol type") and f.value("Ver") == 0 else None


def _gre_length(f: _Fields) -> int:
    return 4 + 4 * sum(f.value(bit) for bit in ("C", "K", "S"))


def _gre_section(f: _Fields) -> Section:
    word = sum(f.value(bit) << (15 - i) for i, bit in enumerate(GRE_FLAG_BITS))
    word |= f.value("Recur") << 8 | f.value("Flags") << 3 | f.value("Ver")
    bits = " ".join(f"{bit}={f.value(bit)}" for bit in ("C", "K", "S"))
    base, proto = f.layer.offset, f.value("protocol type")
    rows = [
        Row(base, "flags / version", f"{word:#06x}", f"{bits}, version {f.value('Ver')} (RFC 2784 2.1)"),
        Row(base + 2, "protocol type", f"{proto:#06x}", ETHERTYPES.get(proto, "unknown EtherType")),
    ]
    if f.has("checksum", "reserved1"):
        checksum = f.by_name["checksum"]
        why = checksum.meaning if checksum.problem else "valid, over GRE header + payload (RFC 2784 2.5)"
        rows.append(Row(checksum.offset, "checksum", f"{checksum.value:#06x}", why))
        rows.append(Row(checksum.offset + 2, "reserved1", f.text("reserved1"), ""))
    if f.has("key"):
        key = f.by_name["key"]
        dotted = key.shown.rsplit(" = ", 1)[-1]
        rows.append(Row(key.offset, "key", f"{key.value} ({dotted})", "identifies the tunnel (RFC 2890 2.1)"))
    if f.has("sequence number"):
        seq = f.by_name["sequence number"]
        rows.append(Row(seq.offset, "sequence number", str(seq.value), "for in-order delivery (RFC 2890 2.2)"))
    return Section(f"GRE header ({_gre_length(f)} bytes)", rows)


def _transport_section(layer: Layer | None) -> Section | None:
    if layer is None or layer.kind not in ("ICMP", "TCP", "UDP"):
        return None
    f, base = _Fields(layer), layer.offset
    if not f.reaches(8):
        return None
    if layer.kind == "ICMP":
        kind = f.by_name["type"]
        rows = [
            Row(base, "type / code", f"{kind.value} / {f.text('code')}", ICMP_TYPES.get(f.value("type"), "")),
            Row(base + 2, "checksum", f"{f.value('checksum'):#06x}", ""),
        ]
        if kind.value in (0, 8):
            rows.append(Row(base + 4, "identifier / sequence", f"{f.text('identifier')} / {f.text('sequence number')}"))
        return Section("inner ICMP", rows)
    ports = f"{f.text('source port')} -> {f.text('destination port')}"
    return Section(f"inner {layer.kind}", [Row(base, "ports", ports, "")])


def _tunnel_layers(e: Explanation) -> tuple[_Fields | None, _Fields | None, _Fields | None, Layer | None]:
    """The outer IPv4 header, its GRE header (None for IPIP), the inner IPv4 header and the layer after it,
    as far as the packet is a tunnel packet the lab knows (IPv4 in GRE or in IPIP)."""
    layers = [*e.layers, None, None, None]
    outer = _ipv4(layers[0])
    if outer is None:
        return None, None, None, None
    gre = _gre(layers[1]) if outer.value("protocol") == 47 else None
    at = 2 if gre is not None else 1
    if gre is None and outer.value("protocol") != 4:
        return outer, None, None, None
    inner = _ipv4(layers[at])
    return outer, gre, inner, layers[at + 1] if inner is not None else None


def sections(e: Explanation) -> list[Section | str]:
    """The compact view of a described tunnel packet: its sections; where a header the view shows could not
    be read, the describer's refusal (or, for a packet that is fine but not the lab's, why not)."""
    outer, gre, inner, transport = _tunnel_layers(e)
    if outer is None:
        return [refusal(e) or f"outer IPv4 header: not a valid IPv4 header ({Drop.OUTER_MALFORMED.description})"]
    out: list[Section | str] = [_ipv4_section("outer IPv4 header", outer)]
    if outer.value("protocol") == 47:
        if gre is None:
            return [*out, refusal(e) or f"GRE header: dropped: {Drop.GRE_VERSION.description}"]
        if _bad_checksum(gre):
            return [*out, f"GRE header: dropped: {Drop.CSUM_BAD.description}"]
        out.append(_gre_section(gre))
        if gre.value("protocol type") != 0x0800:
            return out
    elif outer.value("protocol") != 4:
        return out
    if inner is None:
        return [*out, refusal(e) or "inner IPv4 header: not a valid IPv4 header"]
    out.append(_ipv4_section("inner IPv4 header", inner))
    t = _transport_section(transport)
    return out if t is None else [*out, t]


def _bad_checksum(gre: _Fields) -> bool:
    checksum = gre.by_name.get("checksum")
    return checksum is not None and checksum.problem is not None


def render(parts: list[Section | str]) -> str:
    lines = []
    for s in parts:
        if isinstance(s, str):
            lines.append(f"  {s}")
            continue
        lines.append(f"  {s.title}")
        for r in s.rows:
            meaning = f"  {r.meaning}" if r.meaning else ""
            lines.append(f"    @{r.offset:<3d} {r.field:<24s} {r.value:<22s}{meaning}")
    return "\n".join(lines)


def summary(e: Explanation) -> str:
    """One line: outer addresses, GRE key/seq, inner addresses and ICMP type."""
    outer, gre, inner, transport = _tunnel_layers(e)
    if outer is None:
        return f"unparseable ({refusal(e) or Drop.OUTER_MALFORMED.description})"
    proto = outer.value("protocol")
    text = f"{outer.text('source address')} > {outer.text('destination address')} {PROTOCOLS.get(proto, proto)}"
    if gre is not None:
        if _bad_checksum(gre):
            return f"{text} [{Drop.CSUM_BAD.description}]"
        extra = [f"key={gre.text('key')}"] if gre.has("key") else []
        if gre.has("sequence number"):
            extra.append(f"seq={gre.text('sequence number')}")
        if gre.has("checksum"):
            extra.append("csum")
        text += f" [{' '.join(extra) or 'no options'}]"
        after = e.layers[2] if len(e.layers) > 2 else None
        if gre.value("protocol type") == 0x86DD and after is not None and after.kind == "IPv6":
            v6 = _Fields(after)
            if v6.has("source address", "destination address", "next header"):
                src, dst = v6.text("source address"), v6.text("destination address")
                return f"{text} | IPv6 {src} > {dst} next header {v6.text('next header')}"
    elif proto == 47:
        return f"{text} [{refusal(e) or Drop.GRE_VERSION.description}]"
    if inner is None:
        return text
    text += f" | {inner.text('source address')} > {inner.text('destination address')} ttl={inner.text('TTL')}"
    if transport is not None and transport.kind == "ICMP":
        kind = transport.get("type")
        if kind is not None:
            text += f" ICMP {kind.meaning}"
    return text


def view(packet: bytes) -> tuple[str, str]:
    """A captured tunnel packet as the lab prints it: its one-line summary, and its rows."""
    e = describe(packet)
    return summary(e), render(sections(e))
