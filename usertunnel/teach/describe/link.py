"""Link layers, as captures give them: Ethernet (and 802.1Q tags), Linux cooked SLL and SLL2."""

from __future__ import annotations

from dataclasses import replace

from ...core import gre
from .names import ARPHRD, ETHERTYPES, LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, SLL_PACKET_TYPES
from .walk import Ctx, Walk, Writer


class LinkHeaders(Walk):
    """Ethernet, VLAN tags, SLL and SLL2, then what their EtherType says follows."""

    # --- link layers --------------------------------------------------------------------------------------

    def link(self, linktype: int, ctx: Ctx) -> None:
        if linktype == LINKTYPE_ETHERNET:
            self.ethernet(0, ctx)
        elif linktype == LINKTYPE_LINUX_SLL:
            self.sll(ctx)
        elif linktype == LINKTYPE_LINUX_SLL2:
            self.sll2(ctx)
        else:
            self.ip(0, ctx)

    def ethertype(self, w: Writer, offset: int) -> int:
        value = w.uint(offset, 2, "EtherType")
        name = ETHERTYPES.get(value, "not one explain knows" if value >= 0x0600 else "an 802.3 length, not a type")
        w.add(offset, 2, "EtherType", value, f"the payload is {name}", shown=f"0x{value:04x}")
        return value

    def ethernet(self, offset: int, ctx: Ctx) -> None:
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

    def ethertype_payload(self, kind: int, offset: int, ctx: Ctx) -> None:
        if kind in (gre.PROTO_IPV4, gre.PROTO_IPV6):
            self.ip(offset, replace(ctx, expect_version=4 if kind == gre.PROTO_IPV4 else 6))
        elif kind == gre.PROTO_TEB:
            self.ethernet(offset, ctx)
        else:
            self.payload(offset, ctx, f"EtherType 0x{kind:04x} ({ETHERTYPES.get(kind, 'unknown')})")

    def sll(self, ctx: Ctx) -> None:
        w = self.layer("SLL", "Linux cooked header (SLL)", 0, "tcpdump LINKTYPE_LINUX_SLL", ctx)
        ptype = w.uint(0, 2, "packet type")
        w.add(0, 2, "packet type", ptype, SLL_PACKET_TYPES.get(ptype, "unknown"))
        hatype = w.uint(2, 2, "ARPHRD type")
        w.add(2, 2, "ARPHRD type", hatype, f"device type: {ARPHRD.get(hatype, 'other')}")
        alen = w.field(4, 2, "address length", "bytes of the link-layer address that are used")
        w.add(6, 8, "link-layer address", w.raw(6, 8, "link-layer address")[: min(alen, 8)].hex(":"), "the sender's")
        self.ethertype_payload(self.ethertype(w, 14), 16, ctx)

    def sll2(self, ctx: Ctx) -> None:
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
