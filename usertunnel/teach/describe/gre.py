"""GRE (RFC 2784, RFC 2890) and what GRE carries in real captures: PPTP's enhanced GRE and its PPP
frame, ERSPAN, WCCP, NHRP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from ...core import gre
from ...core.checksum import internet_checksum
from ...core.drops import Drop
from .names import (
    ADDRESS_FAMILIES,
    ERSPAN_BSO,
    ERSPAN_ENCAP,
    ERSPAN_FRAME_TYPES,
    ERSPAN_GRANULARITY,
    ERSPAN_II_PROTO,
    ERSPAN_III_PROTO,
    ERSPAN_VERSIONS,
    ETHERTYPES,
    GRE_BITS,
    GRE_IGNORED,
    NHRP_CIE_CODES,
    NHRP_ERRORS,
    NHRP_EXTENSIONS,
    NHRP_FLAGS,
    NHRP_PROTO,
    NHRP_TYPES,
    PPP_PROTO,
    PPP_PROTOCOLS,
    PPTP_BITS,
    PPTP_RFC,
    WCCP_PROTO,
    WCCP_RFC,
)
from .walk import Ctx, Walk, Writer, preview, with_hex


class GREHeaders(Walk):
    """GRE with every option, enhanced GRE, PPP, ERSPAN, WCCP, NHRP."""

    # --- GRE ----------------------------------------------------------------------------------------------

    def gre(self, offset: int, ctx: Ctx) -> None:
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
            w.add(at + 2, 2, "reserved1", reserved1, meaning, "RFC 2784 2.6", shown=with_hex(reserved1, 4))
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

    def gre_enhanced(self, w: Writer, offset: int, ctx: Ctx) -> None:
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

    def ppp(self, offset: int, ctx: Ctx) -> None:
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

    def erspan(self, offset: int, ctx: Ctx) -> None:
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

    def wccp(self, offset: int, ctx: Ctx) -> None:
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

    def nhrp(self, offset: int, ctx: Ctx) -> None:
        """NHRP (RFC 2332 5): the fixed header, the mandatory part (addresses, then client information
        entries), then the extensions; each its own layer."""
        w = self.layer("NHRP", "NHRP fixed header", offset, "RFC 2332 5.1", ctx)
        afn = w.uint(offset, 2, "address family")
        w.add(offset, 2, "address family", afn, f"NBMA addresses are {ADDRESS_FAMILIES.get(afn, 'of another family')}",
              shown=with_hex(afn, 4))  # fmt: skip
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

    def nhrp_type_length(self, w: Writer, at: int, what: str) -> int:
        """An NHRP address type/length byte (RFC 2332 5.1): bit 1 the type, bits 2-7 the length."""
        value = w.uint(at, 1, f"{what} type/length")
        form = "E.164" if value & 0x40 else "NSAP"
        w.add(at, 1, f"{what} type/length", value, f"{form} format, {value & 0x3F} bytes long",
              shown=f"{form}/{value & 0x3F}")  # fmt: skip
        return value & 0x3F

    def nhrp_address(self, w: Writer, at: int, length: int, name: str, meaning: str) -> None:
        if length == 0:
            return
        raw = w.raw(at, length, name)
        shown = str(ipaddress.ip_address(raw)) if length in (4, 16) else raw.hex()
        w.add(at, length, name, shown, meaning)

    def nhrp_mandatory(self, offset: int, kind: int, shtl: int, sstl: int, ctx: Ctx) -> None:
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

    def nhrp_cie(self, offset: int, ctx: Ctx) -> int:
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

    def nhrp_extensions(self, offset: int, ctx: Ctx) -> None:
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
                w.add(at + 4, length, "extension value", value.hex(), preview(value), shown=f"{length} bytes")
            at += 4 + length
            if kind == 0:
                break

    def gre_checksum(self, w: Writer, offset: int, hlen: int) -> None:
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
