"""Receive cases built by an independent builder: scapy writes every packet, the core decides.

tests/test_encap.py and the fuzzer feed packets built by our own `encapsulate`,
so a mistake shared by both directions would pass them. Here scapy builds each
packet field by field (GRE with and without checksum, key, sequence number;
wrong keys, bad checksums, missing and old sequence numbers, the routing bit,
version 1, truncated headers, protocol types no tunnel carries, outer
fragments, outer IPv4 options, link-layer padding, outer CE over Not-ECT and
ECT inner packets, IPIP and sit carrying the wrong family, gretap frames, GRE
and IPv6 in IPv6, Cisco keepalives, a hub's spokes, sit's 6to4 address rule)
and each decision is checked against the rule Linux applies, as README's
"What is received, and what is dropped" lists them and the interop cells
(tests/interop/test_kernel_refusals.py) pinned them down on a real kernel:
`linux` names what the kernel does with the same packet.

Every IPv4 packet goes to two Demuxes holding the same tunnels: one fed as the
I/O loop feeds it (the receive plans first, `Demux.planned`, then the
specification) and one fed to the specification alone (`Demux.decapsulate`).
Both must decide the same, counter for counter, and the ordinary packets must
have been served by the plan where the tunnel has one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from scapy.layers.inet import GRE, ICMP, IP, IPOption
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from usertunnel.core.checksum import checksum_is_valid
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Counters, Demux, KeepaliveReply, Received, Reflect, Result, Tunnel
from usertunnel.core.keepalive import KeepaliveParams
from usertunnel.core.neighbors import HubParams, Spoke
from usertunnel.core.params import Mode, TunnelParams

US, PEER, STRANGER = "198.51.100.1", "198.51.100.2", "192.0.2.3"  # outer addresses: our local, our remote, anyone
US6, PEER6 = "2001:db8::1", "2001:db8::2"
INNER_SRC, INNER_DST = "203.0.113.2", "203.0.113.1"  # the peer's host to ours


def _packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def tunnel(name: str, mode: Mode = Mode.GRE, local: str | None = US, remote: str | None = PEER, **kw: Any) -> Tunnel:
    return Tunnel(
        TunnelParams(name, mode, _packed(local) if local else None, _packed(remote) if remote else None, **kw)
    )


# --- scapy builds every packet ----------------------------------------------------------------------------------


def inner4(tos: int = 0, payload: bytes = b"built by scapy") -> Packet:
    """An ICMP echo request from the peer's host to ours, as scapy writes it (checksums included)."""
    return IP(src=INNER_SRC, dst=INNER_DST, tos=tos, id=0x4242, flags="DF", ttl=63) / ICMP(id=7, seq=1) / payload


def inner6(tc: int = 0) -> Packet:
    return IPv6(src="2001:db8:1::2", dst="2001:db8:1::1", tc=tc, hlim=63) / ICMPv6EchoRequest(id=7, seq=1)


def outer(payload: Packet, proto: int = 47, src: str = PEER, dst: str = US, tos: int = 0, **ip: Any) -> bytes:
    """The outer IPv4 packet around `payload` (scapy fills in the length and checksum)."""
    return bytes(IP(**{"src": src, "dst": dst, "proto": proto, "tos": tos, "flags": "DF", "ttl": 64, **ip}) / payload)


def gre(inner: Packet, key: int | None = None, seq: int | None = None, csum: bool = False, **fields: Any) -> Packet:
    """A GRE header as scapy builds it (the protocol type follows from `inner`; the checksum, when present, is
    computed by scapy unless `chksum` is given) in front of `inner`."""
    header = GRE(chksum_present=int(csum), key_present=int(key is not None), seqnum_present=int(seq is not None))
    if key is not None:
        header.key = key
    if seq is not None:
        header.sequence_number = seq
    for name, value in fields.items():
        setattr(header, name, value)
    return header / inner


def with_ce(inner: Packet) -> bytes:
    """`inner` marked CE, its header checksum recomputed by scapy: what RFC 6040 decapsulation delivers."""
    marked = inner.copy()
    if IPv6 in marked:
        marked[IPv6].tc |= 3
    else:
        marked[IP].tos |= 3
        del marked[IP].chksum
    return bytes(marked)


# --- the two receive paths --------------------------------------------------------------------------------------


@dataclass
class Expect:
    """What must come out: `kind` delivered / reflected / keepalive reply / dropped, on which tunnel (or the
    demux's `unmatched` counters), which bytes or drop reason; `linux` says what the kernel does."""

    kind: str
    on: str
    data: bytes | Drop | None
    linux: str
    planned: bool = False  # an ordinary packet for a tunnel with a receive plan: the plan must serve it (others
    # it may serve or leave to the specification: both paths must decide alike either way)


def delivered(on: str, inner: bytes, linux: str = "delivered (ip_tunnel_rcv)", planned: bool = False) -> Expect:
    return Expect("delivered", on, inner, linux, planned)


def dropped(reason: Drop, on: str, linux: str) -> Expect:
    return Expect("dropped", on, reason, linux)


@dataclass
class Receiver:
    """The same tunnels in two Demuxes: `loop` fed as the I/O loop feeds it, `spec` by decapsulate alone."""

    make: Callable[[], list[Tunnel]]
    loop: Demux = field(default_factory=Demux)
    spec: Demux = field(default_factory=Demux)

    def __post_init__(self) -> None:
        for demux in (self.loop, self.spec):
            for t in self.make():
                demux.add(t)

    def tunnels(self, demux: Demux) -> dict[str, Tunnel]:
        return {t.name: t for table in demux.tables.values() for t in table}

    def counters(self, demux: Demux) -> dict[str, dict[str, object]]:
        found = {name: _counted(t.counters) | {"reflected": t.reflected} for name, t in self.tunnels(demux).items()}
        return found | {"unmatched": _counted(demux.unmatched)}

    def receive(self, packet: bytes) -> tuple[Result, bool]:
        """The decision for `packet` (IPv4 outer), the same from both paths; and whether a plan served it."""
        view = memoryview(bytearray(packet))
        hit = self.loop.planned(view) if self.loop.fast else None
        by_loop = ("delivered", hit[0].name, bytes(hit[1])) if hit else _shown(self.loop.decapsulate(view))
        by_spec = self.spec.decapsulate(bytes(packet))
        assert by_loop == _shown(by_spec), f"the loop's path decided {by_loop}, the specification {_shown(by_spec)}"
        assert self.counters(self.loop) == self.counters(self.spec)
        return by_spec, hit is not None


def _counted(c: Counters) -> dict[str, object]:
    return {"rx_packets": c.rx_packets, "rx_bytes": c.rx_bytes, "drops": dict(c.drops)}


def _shown(result: Result) -> tuple[str, str, bytes | Drop | None]:
    """A result as (kind, tunnel name, bytes or reason), comparable across the two paths."""
    if isinstance(result, Received):
        return "delivered", result.tunnel.name, bytes(result.inner)
    if isinstance(result, Reflect):
        return "reflected", result.tunnel.name, bytes(result.packet)
    if isinstance(result, KeepaliveReply):
        return "keepalive reply", result.tunnel.name, None
    assert isinstance(result, Drop), result
    return "dropped", "", result


def run(make: Callable[[], list[Tunnel]], steps: list[tuple[bytes, Expect]]) -> Receiver:
    """Feed each packet in turn to both paths; check each decision, and whose counter it moved."""
    receiver = Receiver(make)
    for number, (packet, expect) in enumerate(steps, 1):
        before = receiver.counters(receiver.spec)
        result, planned = receiver.receive(packet)
        after = receiver.counters(receiver.spec)
        kind, name, data = _shown(result)
        moved = [owner for owner in after if after[owner] != before[owner]]
        where = f"packet {number} ({expect.linux})"
        assert (kind, data) == (expect.kind, expect.data), (
            f"{where}: {kind} {data!r}, expected {expect.kind} {expect.data!r}"
        )
        assert name in ("", expect.on), f"{where}: on {name}, expected {expect.on}"
        # A keepalive reply is counted by the I/O shell (the line protocol), everything else here, on its owner.
        assert moved == ([] if kind == "keepalive reply" else [expect.on]), f"{where}: counters of {moved} moved"
        assert planned or not expect.planned, f"{where}: the tunnel's receive plan did not serve an ordinary packet"
    return receiver


# --- GRE over IPv4 ----------------------------------------------------------------------------------------------

PLAIN = inner4()
CSUM_LINUX = "dropped: rx_crc_errors (ip_tunnel_rcv: the C bit must agree with icsum)"
SEQ_LINUX = "dropped: rx_fifo_errors (ip_tunnel_rcv: TUNNEL_SEQ, not after the last accepted)"
LOOKUP_LINUX = "no tunnel found (ip_tunnel_lookup: the key must match exactly): ICMP port unreachable"


def test_a_plain_gre_packet_is_delivered_with_its_inner_packet_unchanged_by_the_plan() -> None:
    run(lambda: [tunnel("gre0")], [
        (outer(gre(PLAIN)), delivered("gre0", bytes(PLAIN), planned=True)),
        (outer(gre(inner6())), delivered("gre0", bytes(inner6()), planned=True)),
    ])  # fmt: skip


def test_keys_must_match_exactly_wrong_or_missing_or_unexpected_is_key_mismatch() -> None:
    run(lambda: [tunnel("keyed", ikey=7, okey=7), tunnel("gre-other", local=US, remote=STRANGER)], [
        (outer(gre(PLAIN, key=7)), delivered("keyed", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN, key=8)), dropped(Drop.KEY_MISMATCH, "keyed", LOOKUP_LINUX)),
        (outer(gre(PLAIN)), dropped(Drop.KEY_MISMATCH, "keyed", LOOKUP_LINUX)),
        (outer(gre(PLAIN, key=0)), dropped(Drop.KEY_MISMATCH, "keyed", LOOKUP_LINUX)),  # key 0 is a key
        (outer(gre(PLAIN, key=7), src=STRANGER), dropped(Drop.KEY_MISMATCH, "gre-other", LOOKUP_LINUX)),
        (outer(gre(PLAIN), src=STRANGER), delivered("gre-other", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN), src="192.0.2.99"), dropped(Drop.NO_TUNNEL, "unmatched", LOOKUP_LINUX)),
        (outer(gre(PLAIN), dst="192.0.2.99"), dropped(Drop.NO_TUNNEL, "unmatched", LOOKUP_LINUX)),
    ])  # fmt: skip


def test_checksums_valid_bad_missing_and_unexpected() -> None:
    def make() -> list[Tunnel]:
        return [tunnel("csum", icsum=True, ikey=1, okey=1), tunnel("nocsum", ikey=2, okey=2)]

    good = outer(gre(PLAIN, key=1, csum=True))
    right = IP(good)[GRE].chksum
    run(make, [
        (good, delivered("csum", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN, key=1, csum=True, chksum=right ^ 0x0101)),
         dropped(Drop.CSUM_BAD, "csum", "dropped before the lookup (gre_parse_header: checksum error)")),
        (outer(gre(PLAIN, key=1)), dropped(Drop.CSUM_MISSING, "csum", CSUM_LINUX)),
        (outer(gre(PLAIN, key=2, csum=True)), dropped(Drop.CSUM_UNEXPECTED, "nocsum", CSUM_LINUX)),
        (outer(gre(PLAIN, key=2, csum=True, chksum=0xDEAD)),
         dropped(Drop.CSUM_BAD, "nocsum", "dropped before the lookup (gre_parse_header: checksum error)")),
        (outer(gre(PLAIN, key=2)), delivered("nocsum", bytes(PLAIN), planned=True)),
    ])  # fmt: skip
    assert checksum_is_valid(good[20:]) and right != 0


def test_sequence_numbers_in_order_accepted_missing_replayed_and_old_dropped() -> None:
    run(lambda: [tunnel("seq", iseq=True)], [
        (outer(gre(PLAIN, seq=10)), delivered("seq", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN, seq=10)), dropped(Drop.SEQ_OLD, "seq", SEQ_LINUX)),  # replayed
        (outer(gre(PLAIN, seq=5)), dropped(Drop.SEQ_OLD, "seq", SEQ_LINUX)),  # older
        (outer(gre(PLAIN)), dropped(Drop.SEQ_MISSING, "seq", SEQ_LINUX)),
        (outer(gre(PLAIN, seq=12)), delivered("seq", bytes(PLAIN), planned=True)),  # a gap is fine
        (outer(gre(PLAIN, seq=11)), dropped(Drop.SEQ_OLD, "seq", SEQ_LINUX)),  # reordered
        (outer(gre(PLAIN, seq=12 + (1 << 31) - 1)), delivered("seq", bytes(PLAIN), planned=True)),  # RFC 1982
        (outer(gre(PLAIN, seq=12)), dropped(Drop.SEQ_OLD, "seq", SEQ_LINUX)),
    ])  # fmt: skip


def test_sequence_numbers_wrap_and_are_ignored_by_a_tunnel_without_iseq() -> None:
    run(lambda: [tunnel("seq", iseq=True, ikey=1, okey=1), tunnel("noseq", ikey=2, okey=2)], [
        (outer(gre(PLAIN, key=1, seq=0xFFFFFFFF)), delivered("seq", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN, key=1, seq=0)), delivered("seq", bytes(PLAIN), planned=True)),
        (outer(gre(PLAIN, key=1, seq=0xFFFFFFFF)), dropped(Drop.SEQ_OLD, "seq", SEQ_LINUX)),
        (outer(gre(PLAIN, key=2, seq=3)), delivered("noseq", bytes(PLAIN), "delivered: the number is not read")),
        (outer(gre(PLAIN, key=2, seq=3)), delivered("noseq", bytes(PLAIN), "delivered: the number is not read")),
    ])  # fmt: skip


def test_every_option_at_once_checksum_key_and_sequence_number() -> None:
    run(lambda: [tunnel("all", ikey=0xFFFFFFFF, okey=0xFFFFFFFF, iseq=True, icsum=True)], [
        (outer(gre(PLAIN, key=0xFFFFFFFF, seq=1, csum=True)), delivered("all", bytes(PLAIN), planned=True)),
        (outer(gre(inner6(), key=0xFFFFFFFF, seq=2, csum=True)), delivered("all", bytes(inner6()), planned=True)),
        (outer(gre(PLAIN, key=0xFFFFFFFF, seq=2, csum=True)), dropped(Drop.SEQ_OLD, "all", SEQ_LINUX)),
        (outer(gre(PLAIN, key=0xFFFFFFFF, csum=True)), dropped(Drop.SEQ_MISSING, "all", SEQ_LINUX)),
        (outer(gre(PLAIN, key=0xFFFFFFFF, seq=3)), dropped(Drop.CSUM_MISSING, "all", CSUM_LINUX)),
    ])  # fmt: skip


def test_malformed_gre_headers_routing_bit_version_1_truncated() -> None:
    keyed = bytes(gre(PLAIN, key=7))
    run(lambda: [tunnel("gre0")], [
        (outer(gre(PLAIN, routing_present=1)),
         dropped(Drop.GRE_ROUTING, "unmatched", "dropped (gre_parse_header: GRE_ROUTING is -EINVAL)")),
        (outer(gre(PLAIN, version=1)),
         dropped(Drop.GRE_VERSION, "unmatched", "not GRE version 0 (gre_rcv: version 1 is PPTP's, not a tunnel's)")),
        (outer(Raw(keyed[:6])), dropped(Drop.GRE_TRUNCATED, "unmatched", "dropped (gre_parse_header: pskb_may_pull)")),
        (outer(Raw(keyed[:3])), dropped(Drop.GRE_TRUNCATED, "unmatched", "dropped (gre_rcv: pskb_may_pull)")),
        (outer(Raw(b"")), dropped(Drop.GRE_TRUNCATED, "unmatched", "dropped (gre_rcv: pskb_may_pull)")),
        # The other RFC 1701 bits are ignored on receipt (RFC 2784 2.3), as Linux does.
        (outer(gre(PLAIN, strict_route_source=1, recursion_control=3)), delivered("gre0", bytes(PLAIN))),
    ])  # fmt: skip


def test_protocol_types_no_tunnel_carries_are_dropped() -> None:
    linux = "handed to a stack with no handler for the protocol type (or no gretap device): dropped"
    run(lambda: [tunnel("gre0")], [
        (outer(GRE(proto=0x880B) / Raw(b"\xff\x03ppp")), dropped(Drop.GRE_PROTOCOL, "gre0", linux)),
        (outer(GRE() / Ether() / inner4()), dropped(Drop.GRE_PROTOCOL, "gre0", linux)),  # 0x6558, no gretap here
        (outer(GRE(proto=0x0800) / inner6()),
         dropped(Drop.INNER_MALFORMED, "gre0", "dropped by ip_rcv: an IPv6 packet read as IPv4 (IpInHdrErrors)")),
        (outer(GRE(proto=0x86DD) / PLAIN),
         dropped(Drop.INNER_MALFORMED, "gre0", "dropped by ipv6_rcv: an IPv4 packet read as IPv6")),
    ])  # fmt: skip


def test_outer_fragments_malformed_headers_options_and_padding() -> None:
    packet = outer(gre(PLAIN))
    linux_frag = "reassembled before any raw socket sees it; a raw socket never gets a fragment"
    linux_bad = "dropped by ip_rcv_core (IpInHdrErrors), before any raw socket"
    run(lambda: [tunnel("gre0")], [
        (outer(gre(PLAIN), flags="MF"), dropped(Drop.OUTER_FRAGMENT, "unmatched", linux_frag)),
        (outer(gre(PLAIN), flags="DF", frag=185), dropped(Drop.OUTER_FRAGMENT, "unmatched", linux_frag)),
        (packet[:-1], dropped(Drop.OUTER_MALFORMED, "unmatched", linux_bad)),  # total length > bytes
        (packet[:19], dropped(Drop.OUTER_MALFORMED, "unmatched", linux_bad)),
        (bytes(IP(src=PEER, dst=US, proto=47, ihl=4) / gre(PLAIN)),
         dropped(Drop.OUTER_MALFORMED, "unmatched", linux_bad)),
        (bytes(IPv6(src=PEER6, dst=US6) / gre(PLAIN)), dropped(Drop.OUTER_MALFORMED, "unmatched", linux_bad)),
        (outer(gre(PLAIN), options=IPOption(b"\x94\x04\x00\x00")), delivered("gre0", bytes(PLAIN))),  # router alert
        (packet + bytes(6), delivered("gre0", bytes(PLAIN), planned=True)),  # link-layer padding after the total
    ])  # fmt: skip


def test_inner_packets_are_checked_and_cut_to_their_own_length() -> None:
    bad_sum = PLAIN.copy()
    bad_sum[IP].chksum = 0x1234
    lying = PLAIN.copy()
    lying[IP].len = 200
    linux = "dropped by ip_rcv_core (IpInHdrErrors)"
    run(lambda: [tunnel("gre0")], [
        (outer(gre(bad_sum)), dropped(Drop.INNER_MALFORMED, "gre0", linux)),
        (outer(gre(lying)), dropped(Drop.INNER_MALFORMED, "gre0", linux)),
        (outer(GRE(proto=0x0800) / Raw(bytes(PLAIN)[:12])), dropped(Drop.INNER_MALFORMED, "gre0", linux)),
        (outer(GRE(proto=0x0800)), dropped(Drop.INNER_MALFORMED, "gre0", linux)),  # nothing after the header
        (outer(GRE(proto=0x0800) / Raw(bytes(PLAIN) + b"trailing")),
         delivered("gre0", bytes(PLAIN), "delivered, cut to its length")),
    ])  # fmt: skip


def test_outer_ce_marks_an_ect_inner_packet_and_drops_a_not_ect_one() -> None:
    ect0, ect1, ce, not_ect = inner4(tos=0xB8 | 2), inner4(tos=1), inner4(tos=3), inner4(tos=0x28)
    linux = "dropped: rx_frame_errors (ip_tunnel_rcv: INET_ECN_decapsulate, RFC 6040)"
    run(lambda: [tunnel("gre0")], [
        (outer(gre(ect0), tos=3), delivered("gre0", with_ce(ect0), "delivered, marked CE")),
        (outer(gre(ect1), tos=3), delivered("gre0", with_ce(ect1), "delivered, marked CE")),
        (outer(gre(ce), tos=3), delivered("gre0", bytes(ce), "delivered as it is: already CE")),
        (outer(gre(inner6(tc=2)), tos=0xB8 | 3), delivered("gre0", with_ce(inner6(tc=2)), "delivered, marked CE")),
        (outer(gre(not_ect), tos=3), dropped(Drop.ECN_CE_NOT_ECT, "gre0", linux)),
        (outer(gre(inner6()), tos=3), dropped(Drop.ECN_CE_NOT_ECT, "gre0", linux)),
        (outer(gre(not_ect), tos=2), delivered("gre0", bytes(not_ect), planned=True)),  # ECT outer: nothing
        (outer(gre(ect0), tos=1), delivered("gre0", bytes(ect0), planned=True)),
    ])  # fmt: skip


# --- IPIP, sit, gretap, IPv6 outer -------------------------------------------------------------------------------


def test_ipip_carries_ipv4_only_and_applies_the_same_rules() -> None:
    linux_family = "dropped by ip_rcv: ipip_rcv hands on anything as IPv4"
    run(lambda: [tunnel("ipip0", Mode.IPIP), tunnel("gre0")], [
        (outer(PLAIN, proto=4), delivered("ipip0", bytes(PLAIN), planned=True)),
        (outer(inner6(), proto=4), dropped(Drop.FAMILY, "ipip0", linux_family)),
        (outer(inner4(tos=2), proto=4, tos=3), delivered("ipip0", with_ce(inner4(tos=2)), "delivered, marked CE")),
        (outer(PLAIN, proto=4, tos=3), dropped(Drop.ECN_CE_NOT_ECT, "ipip0", "dropped: rx_frame_errors")),
        (outer(PLAIN, proto=4, src=STRANGER), dropped(Drop.NO_TUNNEL, "unmatched", LOOKUP_LINUX)),
        (outer(gre(PLAIN)), delivered("gre0", bytes(PLAIN), planned=True)),  # GRE and IPIP never compete
    ])  # fmt: skip


def test_sit_carries_ipv6_and_checks_6to4_addresses_when_its_remote_is_any() -> None:
    six_to_four = "2002:c000:203::1"  # embeds 192.0.2.3, the outer source
    ours = "2002:c633:6401::1"  # embeds 198.51.100.1, the outer destination
    inner = IPv6(src=six_to_four, dst=ours) / ICMPv6EchoRequest()
    spoofed = IPv6(src="2002:c000:204::1", dst=ours) / ICMPv6EchoRequest()
    linux = "dropped: rx_errors (ipip6_rcv: packet_is_spoofed)"
    run(lambda: [tunnel("sit0", Mode.SIT, remote=None), tunnel("sit1", Mode.SIT)], [
        (outer(inner, proto=41, src=STRANGER), delivered("sit0", bytes(inner))),
        (outer(spoofed, proto=41, src=STRANGER), dropped(Drop.SIT_SPOOFED, "sit0", linux)),
        (outer(PLAIN, proto=41, src=STRANGER), dropped(Drop.FAMILY, "sit0", "dropped: not IPv6 (ipip6_rcv)")),
        (outer(spoofed, proto=41), delivered("sit1", bytes(spoofed), "delivered: no check point to point")),
    ])  # fmt: skip


def test_gretap_carries_ethernet_frames_and_applies_rfc6040_to_the_ip_packet_inside() -> None:
    frame = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / inner4(tos=2)
    not_ect = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / PLAIN
    arp = Ether(src="02:00:00:00:00:02", dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=INNER_SRC, pdst=INNER_DST)
    marked = bytes(frame)[:14] + with_ce(inner4(tos=2))
    run(lambda: [tunnel("tap0", Mode.GRETAP, ikey=3, okey=3), tunnel("gre0", ikey=3, okey=3)], [
        (outer(gre(frame, key=3)), delivered("tap0", bytes(frame))),
        (outer(gre(PLAIN, key=3)), delivered("gre0", bytes(PLAIN), planned=True)),  # 0x0800: the gre tunnel's
        (outer(gre(frame, key=3), tos=3), delivered("tap0", marked, "delivered, the IP packet inside marked CE")),
        (outer(gre(not_ect, key=3), tos=3), dropped(Drop.ECN_CE_NOT_ECT, "tap0", "dropped: rx_frame_errors")),
        (outer(gre(arp, key=3), tos=3), delivered("tap0", bytes(arp), "delivered: no IP packet to mark")),
        (outer(gre(Raw(bytes(frame)[:13]), key=3, proto=0x6558)),
         dropped(Drop.INNER_MALFORMED, "tap0", "dropped (gre_rcv: shorter than an Ethernet header)")),
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "proto", "payload"),
    [(Mode.IP6GRE, 47, gre(inner4(tos=2))), (Mode.IPIP6, 4, inner4(tos=2)), (Mode.IP6IP6, 41, inner6(tc=2))],
    ids=["ip6gre", "ipip6", "ip6ip6"],
)
def test_tunnels_over_ipv6_decide_by_the_same_rules(mode: Mode, proto: int, payload: Packet) -> None:
    """The raw IPv6 socket delivers the payload after the IPv6 header; source, destination and traffic class
    come beside it (Demux.decapsulate6): scapy builds the whole outer packet, the test hands on its parts."""
    demux = Demux()
    demux.add(tunnel("t6", mode, US6, PEER6))
    inner = payload[GRE].payload if GRE in payload else payload

    def decap(tc: int, src: str = PEER6, body: Packet = payload) -> Result:
        packet = IPv6(src=src, dst=US6, tc=tc, nh=proto) / body
        return demux.decapsulate6(packet.nh, _packed(packet.src), _packed(packet.dst), packet.tc, bytes(packet.payload))

    assert _shown(decap(0)) == ("delivered", "t6", bytes(inner))
    assert _shown(decap(3)) == ("delivered", "t6", with_ce(inner))
    assert decap(0, src="2001:db8::99") is Drop.NO_TUNNEL
    not_ect = gre(PLAIN) if proto == 47 else (PLAIN if proto == 4 else inner6())
    assert decap(3, body=not_ect) is Drop.ECN_CE_NOT_ECT
    wrong = gre(inner6()) if proto == 47 else (inner6() if proto == 4 else PLAIN)
    if proto != 47:
        assert decap(0, body=wrong) is Drop.FAMILY
    assert demux.decapsulate6(proto, _packed(PEER6), _packed(US6), 0, b"") in (Drop.GRE_TRUNCATED, Drop.INNER_MALFORMED)


# --- keepalives and the hub (usertunnel's own, in Linux's GRE terms) ----------------------------------------------


def test_cisco_keepalives_a_peers_is_reflected_ours_comes_back_and_ce_over_not_ect_is_dropped() -> None:
    """A peer's keepalive: an IPv4 packet from us back to the peer carrying a bare GRE header of type 0, which a
    router (Linux with accept_local) routes back; our own comes back as GRE type 0 with nothing after it."""
    request = IP(src=US, dst=PEER, ttl=255, flags="DF") / GRE(proto=0)
    run(lambda: [tunnel("ka", keepalive=KeepaliveParams(1.0, 3))], [
        (outer(gre(request)), Expect("reflected", "ka", bytes(request), "routed back (accept_local=1)", False)),
        (outer(GRE(proto=0)), Expect("keepalive reply", "ka", None, "Linux sends no keepalives", False)),
        (outer(gre(request), tos=3), dropped(Drop.ECN_CE_NOT_ECT, "ka", "dropped: rx_frame_errors, before routing")),
    ])  # fmt: skip


def test_a_hub_accepts_its_spokes_by_key_and_keeps_each_spoke_to_its_prefixes() -> None:
    spoke = Spoke(9, (ipaddress.ip_network("203.0.113.16/28"),))
    hub = HubParams(spokes=(spoke,))
    from_spoke = inner4()
    from_spoke[IP].src = "203.0.113.17"
    del from_spoke[IP].chksum
    linux = "usertunnel's hub (Linux cannot answer a tunnel without a remote)"
    run(lambda: [tunnel("hub0", remote=None, ikey=5, okey=5, hub=hub, iseq=True)], [
        (outer(gre(PLAIN, key=5, seq=1), src=STRANGER), delivered("hub0", bytes(PLAIN), linux)),
        (outer(gre(PLAIN, key=5, seq=1), src=PEER), delivered("hub0", bytes(PLAIN), "each spoke its own sequence")),
        (outer(gre(PLAIN, key=5, seq=1), src=PEER), dropped(Drop.SEQ_OLD, "hub0", SEQ_LINUX)),
        (outer(gre(from_spoke, key=9, seq=1), src=STRANGER), delivered("hub0", bytes(from_spoke), linux)),
        (outer(gre(PLAIN, key=9, seq=2), src=STRANGER), dropped(Drop.SPOKE_SOURCE, "hub0", linux)),
        (outer(gre(PLAIN, key=6, seq=1), src=STRANGER), dropped(Drop.KEY_MISMATCH, "hub0", LOOKUP_LINUX)),
    ])  # fmt: skip


# --- and the other way: what we send is what scapy builds from the tunnel's options ------------------------------
# Not our bytes parsed and re-serialised: scapy writes the packet from the options alone (RFC 6040 4.1 for the
# outer ECN, the inner TTL and DSCP inherited or fixed, DF with pmtudisc, the identification counting from the
# tunnel's start, GRE fields in RFC 2890's order, its checksum computed by scapy), and both the specification
# (`Tunnel.encapsulate`) and the tunnel's transmit plan must give exactly those bytes.


def outer_ecn(inner_tos: int) -> int:
    """RFC 6040 section 4.1 (normal mode): the inner ECN copied, CE sent as ECT(0)."""
    return 2 if inner_tos & 3 == 3 else inner_tos & 3


SENDS = [
    ("gre", {}, {}),
    ("gre key", {"okey": 0x0A0B0C0D}, {"key": 0x0A0B0C0D}),
    ("gre seq", {"oseq": True}, {"seq": True}),
    ("gre csum", {"ocsum": True}, {"csum": True}),
    ("gre all, ttl 33, tos 0xb8", {"okey": 7, "oseq": True, "ocsum": True, "ttl": 33, "tos": 0xB8},
     {"key": 7, "seq": True, "csum": True}),
    ("gre tos inherit, nopmtudisc", {"tos": None, "pmtudisc": False}, {}),
    ("ipip", {}, {}),
    ("sit", {}, {}),
    ("gretap key", {"okey": 5}, {"key": 5}),
]  # fmt: skip


@pytest.mark.parametrize(("label", "options", "header"), SENDS, ids=[s[0] for s in SENDS])
def test_what_we_send_is_byte_for_byte_what_scapy_builds_from_the_options(
    label: str, options: dict[str, Any], header: dict[str, Any]
) -> None:
    mode = {"ipip": Mode.IPIP, "sit": Mode.SIT, "gretap": Mode.GRETAP}.get(label.split()[0], Mode.GRE)
    spec, planned = tunnel("t", mode, **options), tunnel("t", mode, **options)
    p = spec.params
    for number, tos in enumerate([0x00, 0x01, 0x02, 0xB8 | 3, 0x48]):
        inner: Packet = inner6(tc=tos) if mode is Mode.SIT else inner4(tos=tos, payload=bytes(range(number * 7)))
        if mode is Mode.GRETAP:
            inner = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / inner
        ip = inner[IPv6] if IPv6 in inner else inner[IP]
        inner_tos, inner_ttl = (ip.tc, ip.hlim) if IPv6 in inner else (ip.tos, ip.ttl)
        df = p.pmtudisc or (IP in inner and "DF" in inner[IP].flags)
        expected = IP(
            src=US, dst=PEER, id=number, flags="DF" if df else 0, ttl=p.ttl or inner_ttl,
            tos=(inner_tos if p.tos is None else p.tos) & 0xFC | outer_ecn(inner_tos),
        )  # fmt: skip
        if mode.value.is_gre:
            seq = number if header.get("seq") else None
            expected = expected / gre(inner, key=header.get("key"), seq=seq, csum=header.get("csum", False))
        else:
            expected = expected / inner
        sent = spec.encapsulate(bytes(inner))
        assert sent == bytes(expected), f"{label}, inner TOS {tos:#04x}: {sent!r}"
        if planned.tx_plan is not None:  # the compiled transmit code, where the tunnel has one, serves it alike
            header_of_plan = planned.tx_plan(bytes(inner))
            assert header_of_plan is not None and header_of_plan + bytes(inner) == bytes(expected), label


@pytest.mark.parametrize("encaplimit", [None, 4], ids=["encaplimit none", "encaplimit 4"])
def test_what_we_send_over_ipv6_is_what_scapy_builds_with_the_encapsulation_limit_option(
    encaplimit: int | None,
) -> None:
    from scapy.layers.inet6 import HBHOptUnknown, IPv6ExtHdrDestOpt, PadN

    # A fixed flow label: 0 would be Linux's automatic one, a hash of the inner flow (ip6_make_flowlabel).
    t = tunnel("t6", Mode.IP6GRE, US6, PEER6, okey=9, ocsum=True, encaplimit=encaplimit, flowlabel=0x12345)
    inner = inner4(tos=0x28 | 1)
    body = gre(inner, key=9, csum=True)
    if encaplimit is not None:
        limit = HBHOptUnknown(otype=4, optlen=1, optdata=bytes([encaplimit]))
        body = IPv6ExtHdrDestOpt(options=[limit, PadN(optlen=1, optdata=b"\x00")]) / body
    expected = IPv6(src=US6, dst=PEER6, tc=0 | outer_ecn(0x29), fl=0x12345, hlim=63) / body
    assert t.encapsulate(bytes(inner)) == bytes(expected)
