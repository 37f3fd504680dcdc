"""IPv4 and IPv6 headers, IPv6 extension headers, what follows an IP header, and RFC 6040's ECN verdict."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from ...core import ecn, ipv4, ipv6
from ...core.checksum import internet_checksum
from ...core.drops import Drop
from .names import (
    ECN_NAMES,
    ECN_SHORT,
    IP_PROTOCOLS,
    IPV4_OPTIONS,
    IPV6_EXTENSIONS,
    IPV6_OPTIONS,
    SPECIAL_NETWORKS,
    protocol_meaning,
)
from .walk import Ctx, Walk, Writer, with_hex


def address_meaning(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    for network, what in SPECIAL_NETWORKS:
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


def dscp_name(dscp: int) -> str:
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


def ipv4_options(options: bytes) -> str:
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


class IPHeaders(Walk):
    """IPv4, IPv6 and its extension headers; then what their protocol number says follows."""

    # --- IP -----------------------------------------------------------------------------------------------

    def ip(self, offset: int, ctx: Ctx) -> None:
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

    def ip_title(self, ctx: Ctx, what: str, tunnels: bool = False) -> str:
        if ctx.role == "quoted":
            return f"quoted {what} header (the packet the ICMP error is about)"
        role = ctx.role or ("outer" if tunnels else "")
        via = f" ({ctx.via})" if ctx.via else ""
        return f"{role + ' ' if role else ''}{what} header{via}"

    def check_version(self, w: Writer, offset: int, want: int) -> None:
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

    def ipv4(self, offset: int, ctx: Ctx) -> None:
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
        w.add(offset + 1, 1, "DSCP", tos >> 2, dscp_name(tos >> 2), "RFC 2474 3", bits=(0, 5))
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
        w.add(offset + 2, 2, "total length", total, meaning, shown=with_hex(total, 4), problem=problem)
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
        w.add(offset + 9, 1, "protocol", proto, protocol_meaning(proto, v6=False))
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
            w.add(at, 4, name, str(address), address_meaning(address))
        if hlen > 20:
            opts = w.raw(offset + 20, hlen - 20, "options")
            w.add(offset + 20, hlen - 20, "options", opts.hex(), ipv4_options(opts), shown=f"{len(opts)} bytes")
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

    def ecn_fields(self, w: Writer, offset: int, bits: tuple[int, int], tclass: int) -> None:
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

    def ip_payload(self, proto: int, offset: int, sub: Ctx, ctx: Ctx, tos: int, addrs: tuple[bytes, bytes]) -> None:
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

    def ipv6(self, offset: int, ctx: Ctx) -> None:
        w = self.layer("IPv6", self.ip_title(ctx, "IPv6"), offset, "RFC 8200 3", ctx)
        self.check_version(w, offset, 6)
        tclass = (w.uint(offset, 2, "traffic class") >> 4) & 0xFF
        w.add(offset, 2, "DSCP", tclass >> 2, dscp_name(tclass >> 2), "RFC 2474 3", bits=(4, 9))
        self.ecn_fields(w, offset, (10, 11), tclass)
        flow = w.uint(offset, 4, "flow label") & 0xFFFFF
        meaning = "none" if flow == 0 else "identifies a flow, for load balancing (RFC 6437)"
        w.add(offset, 4, "flow label", flow, meaning, bits=(12, 31), shown=with_hex(flow, 5))
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
        w.add(offset + 4, 2, "payload length", plen, meaning, shown=with_hex(plen, 4), problem=problem)
        nxt = w.uint(offset + 6, 1, "next header")
        w.add(offset + 6, 1, "next header", nxt, protocol_meaning(nxt, v6=True))
        w.field(offset + 7, 1, "hop limit", "hops left: each router subtracts 1 and drops the packet at 0")
        src = w.raw(offset + 8, 16, "source address")
        dst = w.raw(offset + 24, 16, "destination address")
        for name, at, raw in (("source address", offset + 8, src), ("destination address", offset + 24, dst)):
            address = ipaddress.IPv6Address(raw)
            w.add(at, 16, name, str(address), address_meaning(address))
        sub = self.sub_ctx(ctx, offset + 4, offset + 40 + plen, "IPv6 payload length")
        at = offset + 40
        while nxt in IPV6_EXTENSIONS:
            nxt, at = self.ipv6_extension(nxt, at, sub)
        if ctx.role == "" and nxt in (4, 41, 47):
            w.layer.title = self.ip_title(ctx, "IPv6", tunnels=True)
        self.ip_payload(nxt, at, sub, ctx, tclass, (src, dst))
        self.trailer(offset + 40 + plen, ctx)

    def ipv6_extension(self, kind: int, offset: int, ctx: Ctx) -> tuple[int, int]:
        """One extension header (RFC 8200 4): its layer, then (next header, offset after it)."""
        title, rfc = IPV6_EXTENSIONS[kind]
        w = self.layer("IPv6 extension", title, offset, rfc, ctx)
        nxt = w.uint(offset, 1, "next header")
        w.add(offset, 1, "next header", nxt, protocol_meaning(nxt, v6=True))
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
