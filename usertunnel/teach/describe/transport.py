"""Transport headers: ICMP (and an ICMP error's quote), ICMPv6, TCP; the ports and checksums they share
with UDP.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from .names import (
    DEFAULT_UDP_PORTS,
    ICMP_CODES,
    ICMP_ERRORS,
    ICMP_TYPES,
    ICMPV6_CODES,
    ICMPV6_TYPES,
    PORTS,
    TCP_FLAGS,
    TCP_OPTIONS,
    UDP_CARRIERS,
)
from .walk import Ctx, Walk, Writer, pseudo_header, with_hex


def tcp_options(options: bytes) -> str:
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


class TransportHeaders(Walk):
    """ICMP, ICMPv6 and TCP, with their checksums verified by the core."""

    # --- transport ----------------------------------------------------------------------------------------

    def transport(self, kind: str, offset: int, rfc: str, ctx: Ctx) -> Writer:
        title = f"quoted {kind} header" if ctx.quoted else f"{ctx.role + ' ' if ctx.role else ''}{kind} header"
        return self.layer(kind, title, offset, rfc, ctx)

    def covered(self, w: Writer, protocol: int | None, length: int | None = None) -> tuple[bytes | None, bytes]:
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
        return message, pseudo_header(ctx.pseudo, protocol, len(message))

    def icmp(self, offset: int, ctx: Ctx) -> None:
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

    def icmp_body(self, w: Writer, offset: int, error: bool, version: int) -> None:
        """An ICMP error's quote of the packet that caused it (dissected), or the message's data."""
        ctx = w.ctx
        if error and not ctx.quoted and offset < ctx.end:
            quoted = replace(ctx, role="quoted", via="", quoted=True, expect_version=version, depth=ctx.depth + 1)
            self.ip(offset, quoted)
        else:
            self.data_field(w, offset)

    def icmpv6(self, offset: int, ctx: Ctx) -> None:
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
            w.add(at, 2, "identifier", ident, "matches a reply to its request", rfc, shown=with_hex(ident, 4))
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

    def ports(self, w: Writer, offset: int, carried: tuple[str, str] | None = None) -> None:
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

    def tcp(self, offset: int, ctx: Ctx) -> None:
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
            w.add(offset + 20, len(opts), "options", opts.hex(), tcp_options(opts), shown=f"{len(opts)} bytes")
        self.data_field(w, offset + doff * 4)
