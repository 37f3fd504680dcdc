"""UDP, and the tunnels UDP carries: FOU (GRE, IPv4 or IPv6 right after the header) and GUE."""

from __future__ import annotations

from dataclasses import replace

from ...core import fou
from ...core.drops import Drop
from .names import GUE_RFC, GUE_VARIANTS, IP_PROTOCOLS, UDP_CARRIERS, protocol_meaning
from .walk import Ctx, Walk, Writer


class UDPHeaders(Walk):
    """UDP, and FOU or GUE inside it when a port says so."""

    def udp(self, offset: int, ctx: Ctx) -> None:
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
            self.data_field(Writer(self, w.layer, sub), offset + 8)
        else:
            self.udp_tunnel(w, carried[1], offset + 8, sub)
        if not ctx.quoted:
            self.trailer(offset + length, ctx, "after the end the UDP length gives")

    def udp_carrier(self, ctx: Ctx, offset: int) -> tuple[str, str] | None:
        """Which port of the UDP header at `offset` says a tunnel is inside, and which (`udp_ports`): the
        destination port, else the source port (a hub answers from the port it receives on)."""
        if ctx.end < offset + 4:
            return None
        for name, at in (("destination port", offset + 2), ("source port", offset)):
            what = self.udp_ports.get(int.from_bytes(self.data[at : at + 2], "big"))
            if what is not None:
                return None if what == "none" else (name, what)
        return None

    def udp_tunnel(self, w: Writer, what: str, offset: int, sub: Ctx) -> None:
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

    def gue(self, offset: int, ctx: Ctx) -> None:
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
            w.add(offset + 1, 1, "Proto/ctype", ctype, protocol_meaning(ctype, v6=False), f"{GUE_RFC} 3.2.1")
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
