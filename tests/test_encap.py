"""The receive and transmit rules of `encap.Tunnel` / `encap.Demux`, lookup precedence, and tunnel parameters.

Packets for the receive side are built the way a peer would build them: by a
`Tunnel` whose local and remote are ours swapped, so that every receive test is
also a transmit/receive interoperability test. scapy is the independent reader
of what we put on the wire.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP
from scapy.layers.inet6 import IPv6

from usertunnel.core import ecn, gre, ipv4, ipv6, values
from usertunnel.core.checksum import checksum_is_valid, internet_checksum
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.gre import GREHeader
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.ipv6 import IPv6Header
from usertunnel.core.lookup import Rule, TunnelTable
from usertunnel.core.params import Mode, TunnelParams

SETTINGS = settings(max_examples=150, deadline=None)

LOCAL = bytes([192, 0, 2, 1])
REMOTE = bytes([198, 51, 100, 2])
OTHER_LOCAL = bytes([192, 0, 2, 99])
OTHER_REMOTE = bytes([203, 0, 113, 7])
EXPERIMENTAL = 253  # RFC 3692 protocol number: scapy leaves the payload raw, so bytes round-trip exactly


# --- helpers -------------------------------------------------------------------------------------------


def inner_v4(
    tos: int = 0, ttl: int = 64, df: bool = True, payload: bytes = b"inner payload", options: bytes = b""
) -> bytes:
    header = IPv4Header(
        tos=tos,
        total_length=20 + len(options) + len(payload),
        identification=0x1234,
        frag_off=ipv4.FLAG_DF if df else 0,
        ttl=ttl,
        protocol=EXPERIMENTAL,
        checksum=0,
        src=bytes([10, 0, 0, 1]),
        dst=bytes([10, 0, 0, 2]),
        options=options,
    )
    return header.with_checksum().pack() + payload


def inner_v6(traffic_class: int = 0, hop_limit: int = 64, payload: bytes = b"inner v6 payload") -> bytes:
    header = IPv6Header(
        traffic_class=traffic_class,
        flow_label=0x12345,
        payload_length=len(payload),
        next_header=EXPERIMENTAL,
        hop_limit=hop_limit,
        src=bytes.fromhex("20010db8000000000000000000000001"),
        dst=bytes.fromhex("20010db8000000000000000000000002"),
    )
    return header.pack() + payload


def tp(
    name: str = "gre1", mode: Mode = Mode.GRE, local: bytes | None = LOCAL, remote: bytes | None = REMOTE, **kw: Any
) -> TunnelParams:
    return TunnelParams(name, mode, local, remote, **kw)


def peer_of(p: TunnelParams, **kw: Any) -> Tunnel:
    """The tunnel at the other end of `p`: addresses swapped, keys/seq/csum from `kw`."""
    fields: dict[str, Any] = {"mode": p.mode, "local": p.remote or REMOTE, "remote": p.local or LOCAL} | kw
    return Tunnel(TunnelParams("peer", **fields))


def demux_with(*tunnels: Tunnel) -> Demux:
    d = Demux()
    for t in tunnels:
        d.add(t)
    return d


def encap(tunnel: Tunnel, inner: bytes) -> bytes:
    out = tunnel.encapsulate(inner)
    assert isinstance(out, bytes), out
    return out


def outer_ipv4(payload: bytes, protocol: int = 47, src: bytes = REMOTE, dst: bytes = LOCAL, tos: int = 0) -> bytes:
    """An outer IPv4 packet built by hand, for what a `Tunnel` would never send."""
    header = IPv4Header(tos, 20 + len(payload), 0, ipv4.FLAG_DF, 64, protocol, 0, src, dst)
    return header.with_checksum().pack() + payload


def set_outer_tos(packet: bytes, tos: int) -> bytes:
    """`packet` with the outer TOS byte replaced and the outer header checksum recomputed."""
    out = bytearray(packet)
    out[1] = tos
    out[10:12] = b"\x00\x00"
    struct.pack_into("!H", out, 10, internet_checksum(out[:20]))
    return bytes(out)


def received(result: Received | Drop) -> Received:
    assert isinstance(result, Received), result
    return result


def assert_well_formed_inner(inner: bytes, proto: int | None = None) -> None:
    version = inner[0] >> 4
    if version == 4:
        assert proto in (None, gre.PROTO_IPV4)
        ihl = (inner[0] & 0x0F) * 4
        assert 20 <= ihl <= len(inner)
        assert struct.unpack_from("!H", inner, 2)[0] == len(inner)
        assert checksum_is_valid(inner[:ihl])
    else:
        assert version == 6
        assert proto in (None, gre.PROTO_IPV6)
        assert len(inner) >= 40
        assert 40 + struct.unpack_from("!H", inner, 4)[0] == len(inner)


# --- transmit: what goes on the wire, read by scapy --------------------------------------------------------


@dataclass(frozen=True)
class WireCase:
    id: str
    kw: dict[str, Any]
    key: int | None
    seq: bool
    csum: bool


GRE_CASES = [
    WireCase("no-options", {}, None, False, False),
    WireCase("key", {"ikey": 7, "okey": 7}, 7, False, False),
    WireCase("ikey-differs-from-okey", {"ikey": 1, "okey": 0xFFFFFFFF}, 0xFFFFFFFF, False, False),
    WireCase("seq", {"oseq": True}, None, True, False),
    WireCase("csum", {"ocsum": True}, None, False, True),
    WireCase("all", {"okey": 0x0A0B0C0D, "oseq": True, "ocsum": True}, 0x0A0B0C0D, True, True),
]


@pytest.mark.parametrize("case", GRE_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("family", [4, 6])
def test_gre_encapsulation_read_by_scapy_has_the_expected_fields(case: WireCase, family: int) -> None:
    tunnel = Tunnel(tp(ttl=33, **case.kw))
    inner = inner_v4() if family == 4 else inner_v6()
    for expected_seq in (0, 1, 2):
        out = encap(tunnel, inner)
        pkt = IP(out)
        # The identification counts up per packet from the tunnel's starting value (0 here), like Linux's.
        assert (pkt.version, pkt.ihl, pkt.proto, pkt.ttl, pkt.id, pkt.frag) == (4, 5, 47, 33, expected_seq, 0)
        assert (pkt.src, pkt.dst) == ("192.0.2.1", "198.51.100.2")
        assert pkt.len == len(out) == tunnel.params.header_length + len(inner)
        assert "DF" in str(pkt.flags)
        g = pkt[GRE]
        assert (g.version, g.routing_present) == (0, 0)
        assert g.proto == (gre.PROTO_IPV4 if family == 4 else gre.PROTO_IPV6)
        assert g.key_present == (case.key is not None)
        if case.key is not None:
            assert g.key == case.key
        assert g.seqnum_present == case.seq
        if case.seq:
            assert g.sequence_number == expected_seq
        assert g.chksum_present == case.csum
        if case.csum:
            assert checksum_is_valid(out[20:])
        assert out[-len(inner) :] == inner
        assert bytes(g.payload) == inner
        assert isinstance(g.payload, IP if family == 4 else IPv6)


@pytest.mark.parametrize("case", GRE_CASES, ids=lambda c: c.id)
def test_scapy_recomputing_every_checksum_gives_identical_bytes(case: WireCase) -> None:
    tunnel = Tunnel(tp(**case.kw))
    for tos, ttl in [(0, 64), (0xFF, 1), (0xB8, 255), (0x03, 128)]:
        out = encap(tunnel, inner_v4(tos=tos, ttl=ttl, payload=bytes(range(tos % 7 + 1))))
        pkt = IP(out)
        del pkt.chksum
        if case.csum:
            del pkt[GRE].chksum
        assert bytes(pkt) == out


def test_ipip_encapsulation_read_by_scapy_is_outer_protocol_4_with_the_inner_right_behind() -> None:
    tunnel = Tunnel(tp("ipip1", Mode.IPIP))
    inner = inner_v4(ttl=9)
    out = encap(tunnel, inner)
    pkt = IP(out)
    assert (pkt.proto, pkt.ihl, pkt.len, pkt.ttl) == (4, 5, 20 + len(inner), 9)
    assert out[20:] == inner
    assert bytes(pkt.payload) == inner
    del pkt.chksum
    assert bytes(pkt) == out


def test_encapsulate_header_plus_inner_is_encapsulate() -> None:
    a, b = Tunnel(tp(okey=5, oseq=True, ocsum=True)), Tunnel(tp(okey=5, oseq=True, ocsum=True))
    inner = inner_v4()
    header = a.encapsulate_header(memoryview(inner))
    assert isinstance(header, bytes)
    assert header + inner == b.encapsulate(bytearray(inner))


def test_transmit_counters_count_packets_and_inner_bytes() -> None:
    tunnel = Tunnel(tp())
    encap(tunnel, inner_v4())
    encap(tunnel, inner_v6())
    assert (tunnel.counters.tx_packets, tunnel.counters.tx_bytes) == (2, len(inner_v4()) + len(inner_v6()))


# --- transmit: TTL, TOS/ECN, DF, sequence numbers -------------------------------------------------------------


def outer_of(out: bytes) -> IPv4Header:
    header = ipv4.parse_ipv4(out)
    assert isinstance(header, IPv4Header)
    assert ipv4.header_checksum_ok(out)
    return header


@pytest.mark.parametrize("fixed", [1, 64, 255])
def test_fixed_ttl_is_used_whatever_the_inner_ttl(fixed: int) -> None:
    tunnel = Tunnel(tp(ttl=fixed))
    assert outer_of(encap(tunnel, inner_v4(ttl=3))).ttl == fixed
    assert outer_of(encap(tunnel, inner_v6(hop_limit=200))).ttl == fixed


@pytest.mark.parametrize("inner_ttl", [0, 1, 64, 255])
def test_ttl_none_inherits_the_inner_ipv4_ttl_and_ipv6_hop_limit(inner_ttl: int) -> None:
    tunnel = Tunnel(tp(ttl=None))
    assert outer_of(encap(tunnel, inner_v4(ttl=inner_ttl))).ttl == inner_ttl
    assert outer_of(encap(tunnel, inner_v6(hop_limit=inner_ttl))).ttl == inner_ttl


def _ecn_after_encapsulation(inner_ecn: int) -> int:
    return ecn.ECT_0 if inner_ecn == ecn.CE else inner_ecn  # RFC 6040 section 4.1


@pytest.mark.parametrize("inner_ecn", [ecn.NOT_ECT, ecn.ECT_1, ecn.ECT_0, ecn.CE])
@pytest.mark.parametrize("fixed_tos", [0x00, 0x28, 0xB8, 0xFC, 0xFF])
def test_fixed_tos_keeps_its_dscp_and_takes_the_ecn_from_the_inner_packet(fixed_tos: int, inner_ecn: int) -> None:
    tunnel = Tunnel(tp(tos=fixed_tos))
    expected = (fixed_tos & 0xFC) | _ecn_after_encapsulation(inner_ecn)
    assert outer_of(encap(tunnel, inner_v4(tos=0x48 | inner_ecn))).tos == expected
    assert outer_of(encap(tunnel, inner_v6(traffic_class=0x48 | inner_ecn))).tos == expected


@pytest.mark.parametrize("inner_ecn", [ecn.NOT_ECT, ecn.ECT_1, ecn.ECT_0, ecn.CE])
@pytest.mark.parametrize("inner_dscp", [0x00, 0x28, 0xB8, 0xFC])
def test_inherited_tos_copies_the_inner_dscp_and_encapsulates_ecn_per_rfc6040(inner_dscp: int, inner_ecn: int) -> None:
    tunnel = Tunnel(tp(tos=None))
    expected = inner_dscp | _ecn_after_encapsulation(inner_ecn)
    assert outer_of(encap(tunnel, inner_v4(tos=inner_dscp | inner_ecn))).tos == expected
    assert outer_of(encap(tunnel, inner_v6(traffic_class=inner_dscp | inner_ecn))).tos == expected


def test_inner_ce_is_never_sent_as_outer_ce() -> None:
    tunnel = Tunnel(tp(tos=None))
    for tos in range(256):
        assert outer_of(encap(tunnel, inner_v4(tos=tos))).tos & ecn.ECN_MASK != ecn.CE


@pytest.mark.parametrize("inner_df", [True, False])
def test_df_is_always_set_with_pmtudisc(inner_df: bool) -> None:
    tunnel = Tunnel(tp(pmtudisc=True))
    assert outer_of(encap(tunnel, inner_v4(df=inner_df))).frag_off == ipv4.FLAG_DF
    assert outer_of(encap(tunnel, inner_v6())).frag_off == ipv4.FLAG_DF


@pytest.mark.parametrize("inner_df", [True, False])
def test_df_is_copied_from_the_inner_ipv4_packet_without_pmtudisc(inner_df: bool) -> None:
    tunnel = Tunnel(tp(pmtudisc=False, ttl=None))
    assert outer_of(encap(tunnel, inner_v4(df=inner_df))).frag_off == (ipv4.FLAG_DF if inner_df else 0)


def test_inner_ipv6_never_sets_df_without_pmtudisc() -> None:
    tunnel = Tunnel(tp(pmtudisc=False, ttl=None))
    assert outer_of(encap(tunnel, inner_v6())).frag_off == 0


def test_only_the_df_bit_of_the_inner_fragment_word_is_copied() -> None:
    tunnel = Tunnel(tp(pmtudisc=False, ttl=None))
    inner = bytearray(inner_v4(df=True))
    struct.pack_into("!H", inner, 6, ipv4.FLAG_DF | ipv4.FLAG_MF | 0x0123)
    assert outer_of(encap(tunnel, bytes(inner))).frag_off == ipv4.FLAG_DF


def _sequence_of(out: bytes) -> int:
    return int(IP(out)[GRE].sequence_number)


def test_first_output_sequence_number_is_zero_and_increments() -> None:
    tunnel = Tunnel(tp(oseq=True))
    assert [_sequence_of(encap(tunnel, inner_v4())) for _ in range(5)] == [0, 1, 2, 3, 4]


def test_output_sequence_number_wraps_at_2_to_the_32() -> None:
    tunnel = Tunnel(tp(oseq=True, ocsum=True, okey=1))
    tunnel.oseq_next = 0xFFFFFFFE
    seqs = [_sequence_of(encap(tunnel, inner_v4())) for _ in range(4)]
    assert seqs == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1]


def test_output_sequence_number_does_not_advance_on_a_drop() -> None:
    tunnel = Tunnel(tp(oseq=True))
    assert tunnel.encapsulate(b"") is Drop.INNER_MALFORMED
    assert tunnel.encapsulate(b"\x45" + bytes(5)) is Drop.INNER_MALFORMED
    assert _sequence_of(encap(tunnel, inner_v4())) == 0


def test_oseq_off_sends_no_sequence_number_and_keeps_none() -> None:
    tunnel = Tunnel(tp())
    out = encap(tunnel, inner_v4())
    assert IP(out)[GRE].seqnum_present == 0
    assert tunnel.oseq_next == 0


@pytest.mark.parametrize(
    "inner",
    [b"", b"\x45", b"\x45" + bytes(18), b"\x60" + bytes(38), b"\x00" + bytes(40), b"\x50" + bytes(40)],
    ids=["empty", "1-byte", "19-byte-v4", "39-byte-v6", "version-0", "version-5"],
)
def test_inner_packet_too_short_or_not_ip_is_inner_malformed_on_transmit(inner: bytes) -> None:
    tunnel = Tunnel(tp())
    assert tunnel.encapsulate(inner) is Drop.INNER_MALFORMED
    assert tunnel.counters.drops == {Drop.INNER_MALFORMED: 1}
    assert tunnel.counters.tx_packets == 0


def test_ipip_refuses_an_ipv6_inner_packet_on_transmit_as_family() -> None:
    tunnel = Tunnel(tp("ipip1", Mode.IPIP))
    assert tunnel.encapsulate(inner_v6()) is Drop.FAMILY
    assert tunnel.counters.drops == {Drop.FAMILY: 1}


def test_inner_packet_too_long_for_an_outer_ipv4_packet_is_a_drop_not_an_exception() -> None:
    tunnel = Tunnel(tp())
    payload_len = 0xFFFF - tunnel.params.header_length + 1 - 20
    inner = IPv4Header(0, 20 + payload_len, 0, 0, 64, EXPERIMENTAL, 0, bytes(4), bytes(4)).with_checksum().pack()
    inner += bytes(payload_len)
    assert len(inner) <= 0xFFFF  # a legal IPv4 packet
    assert tunnel.encapsulate(inner) is Drop.OVERSIZE


def test_largest_inner_packet_that_fits_is_encapsulated() -> None:
    tunnel = Tunnel(tp())
    n = 0xFFFF - tunnel.params.header_length
    out = encap(tunnel, inner_v4(payload=bytes(n - 20)))
    assert outer_of(out).total_length == 0xFFFF == len(out)


# --- receive -------------------------------------------------------------------------------------------


def test_valid_packet_is_received_with_the_exact_rule_and_counted() -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    inner = inner_v4()
    got = received(demux.decapsulate(encap(peer_of(ours.params), inner)))
    assert got.tunnel is ours
    assert got.rule is Rule.EXACT
    assert bytes(got.inner) == inner
    assert (ours.counters.rx_packets, ours.counters.rx_bytes) == (1, len(inner))
    assert ours.counters.drops == {} and demux.unmatched.drops == {}


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ({}, {}),
        ({"ikey": 5}, {"okey": 5}),
        ({"ikey": 0}, {"okey": 0}),
        ({"iseq": True}, {"oseq": True}),
        ({"icsum": True}, {"ocsum": True}),
        ({"ikey": 9, "okey": 10, "iseq": True, "icsum": True}, {"okey": 9, "oseq": True, "ocsum": True}),
    ],
)
@pytest.mark.parametrize("family", [4, 6])
def test_packet_from_a_matching_peer_is_received_for_every_option(
    ours: dict[str, Any], theirs: dict[str, Any], family: int
) -> None:
    tunnel = Tunnel(tp(**ours))
    peer = peer_of(tunnel.params, **theirs)
    demux = demux_with(tunnel)
    for n in range(3):
        inner = inner_v4(payload=bytes(n)) if family == 4 else inner_v6(payload=bytes(n))
        got = received(demux.decapsulate(encap(peer, inner)))
        assert bytes(got.inner) == inner
    assert tunnel.counters.rx_packets == 3


def test_ipip_packet_is_received() -> None:
    ours = Tunnel(tp("ipip1", Mode.IPIP))
    inner = inner_v4()
    got = received(demux_with(ours).decapsulate(encap(peer_of(ours.params), inner)))
    assert (got.tunnel, bytes(got.inner)) == (ours, inner)


def test_wrong_key_is_key_mismatch_counted_on_the_tunnel() -> None:
    ours = Tunnel(tp(ikey=5))
    demux = demux_with(ours)
    assert demux.decapsulate(encap(peer_of(ours.params, okey=6), inner_v4())) is Drop.KEY_MISMATCH
    assert ours.counters.drops == {Drop.KEY_MISMATCH: 1}
    assert demux.unmatched.drops == {}
    assert ours.counters.rx_packets == 0


def test_packet_with_a_key_to_a_keyless_tunnel_is_key_mismatch() -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    assert demux.decapsulate(encap(peer_of(ours.params, okey=0), inner_v4())) is Drop.KEY_MISMATCH
    assert ours.counters.drops == {Drop.KEY_MISMATCH: 1}


def test_packet_without_a_key_to_a_keyed_tunnel_is_key_mismatch() -> None:
    ours = Tunnel(tp(ikey=0))
    demux = demux_with(ours)
    assert demux.decapsulate(encap(peer_of(ours.params), inner_v4())) is Drop.KEY_MISMATCH
    assert ours.counters.drops == {Drop.KEY_MISMATCH: 1}


def test_ikey_not_okey_decides_what_is_received() -> None:
    ours = Tunnel(tp(ikey=1, okey=2))
    demux = demux_with(ours)
    assert isinstance(demux.decapsulate(encap(peer_of(ours.params, okey=1), inner_v4())), Received)
    assert demux.decapsulate(encap(peer_of(ours.params, okey=2), inner_v4())) is Drop.KEY_MISMATCH


@pytest.mark.parametrize(("src", "dst"), [(OTHER_REMOTE, LOCAL), (REMOTE, OTHER_LOCAL), (OTHER_REMOTE, OTHER_LOCAL)])
def test_unknown_outer_addresses_are_no_tunnel_counted_on_demux_unmatched(src: bytes, dst: bytes) -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    stranger = Tunnel(tp("stranger", local=src, remote=dst))
    assert demux.decapsulate(encap(stranger, inner_v4())) is Drop.NO_TUNNEL
    assert demux.unmatched.drops == {Drop.NO_TUNNEL: 1}
    assert ours.counters.drops == {}


def test_outer_protocol_without_any_tunnel_is_no_tunnel() -> None:
    demux = demux_with(Tunnel(tp()))
    assert demux.decapsulate(outer_ipv4(inner_v4(), protocol=4)) is Drop.NO_TUNNEL
    assert demux.decapsulate(outer_ipv4(b"x" * 8, protocol=17)) is Drop.NO_TUNNEL
    assert demux.unmatched.drops == {Drop.NO_TUNNEL: 2}


def test_removed_tunnel_no_longer_receives() -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    packet = encap(peer_of(ours.params), inner_v4())
    demux.remove(ours)
    assert demux.decapsulate(packet) is Drop.NO_TUNNEL
    demux.remove(ours)  # removing twice is harmless


# --- receive: sequence numbers (RFC 2890 section 2.2, Linux's ip_tunnel_rcv) -----------------------------


def _seq_pair(**ours: Any) -> tuple[Tunnel, Tunnel, Demux]:
    tunnel = Tunnel(tp(iseq=True, **ours))
    peer = peer_of(tunnel.params, oseq=True)
    return tunnel, peer, demux_with(tunnel)


def _with_seq(peer: Tunnel, seq: int) -> bytes:
    peer.oseq_next = seq
    return encap(peer, inner_v4())


def test_iseq_packet_without_sequence_number_is_seq_missing() -> None:
    ours = Tunnel(tp(iseq=True))
    demux = demux_with(ours)
    assert demux.decapsulate(encap(peer_of(ours.params), inner_v4())) is Drop.SEQ_MISSING
    assert ours.counters.drops == {Drop.SEQ_MISSING: 1}


def test_iseq_replayed_packet_is_seq_old() -> None:
    ours, peer, demux = _seq_pair()
    packet = encap(peer, inner_v4())
    assert isinstance(demux.decapsulate(packet), Received)
    assert demux.decapsulate(packet) is Drop.SEQ_OLD
    assert ours.counters.drops == {Drop.SEQ_OLD: 1}
    assert ours.counters.rx_packets == 1


def test_iseq_older_packet_is_seq_old_and_the_window_does_not_move_back() -> None:
    ours, peer, demux = _seq_pair()
    assert isinstance(demux.decapsulate(_with_seq(peer, 5)), Received)
    assert demux.decapsulate(_with_seq(peer, 3)) is Drop.SEQ_OLD
    assert demux.decapsulate(_with_seq(peer, 5)) is Drop.SEQ_OLD
    assert isinstance(demux.decapsulate(_with_seq(peer, 6)), Received)
    assert ours.iseq_window.last_accepted == 6


def test_iseq_first_packet_may_carry_any_sequence_number_and_gaps_are_accepted() -> None:
    _, peer, demux = _seq_pair()
    for seq in (0x7FFFFFFF, 0x80000000, 0x80001000, 0xC0000000):
        assert isinstance(demux.decapsulate(_with_seq(peer, seq)), Received), hex(seq)


def test_iseq_wraparound_accepts_ffffffff_then_0_then_1() -> None:
    ours, peer, demux = _seq_pair()
    for seq in (0xFFFFFFFF, 0, 1):
        assert isinstance(demux.decapsulate(_with_seq(peer, seq)), Received), hex(seq)
    assert ours.counters.rx_packets == 3


def test_iseq_ffffffff_is_old_again_just_after_the_wrap() -> None:
    # Linux keeps i_seqno == 0 as "nothing yet", so it would accept this replay; we do not.
    _, peer, demux = _seq_pair()
    assert isinstance(demux.decapsulate(_with_seq(peer, 0xFFFFFFFF)), Received)
    assert demux.decapsulate(_with_seq(peer, 0xFFFFFFFF)) is Drop.SEQ_OLD


def test_iseq_fffffffe_after_0_is_seq_old() -> None:
    _, peer, demux = _seq_pair()
    assert isinstance(demux.decapsulate(_with_seq(peer, 0)), Received)
    assert demux.decapsulate(_with_seq(peer, 0xFFFFFFFE)) is Drop.SEQ_OLD


def test_iseq_exactly_half_the_space_ahead_is_seq_old_like_linuxs_signed_difference() -> None:
    _, peer, demux = _seq_pair()
    assert isinstance(demux.decapsulate(_with_seq(peer, 9)), Received)  # next expected: 10
    assert demux.decapsulate(_with_seq(peer, 10 + 2**31)) is Drop.SEQ_OLD
    assert isinstance(demux.decapsulate(_with_seq(peer, 10 + 2**31 - 1)), Received)


def test_without_iseq_sequence_numbers_are_ignored() -> None:
    ours = Tunnel(tp())
    peer = peer_of(ours.params, oseq=True)
    demux = demux_with(ours)
    packet = _with_seq(peer, 5)
    assert isinstance(demux.decapsulate(packet), Received)
    assert isinstance(demux.decapsulate(packet), Received)


# --- receive: checksums ------------------------------------------------------------------------------


def _corrupt_last_byte(packet: bytes) -> bytes:
    return packet[:-1] + bytes([packet[-1] ^ 0x01])


def test_icsum_packet_without_checksum_is_csum_missing() -> None:
    ours = Tunnel(tp(icsum=True))
    demux = demux_with(ours)
    assert demux.decapsulate(encap(peer_of(ours.params), inner_v4())) is Drop.CSUM_MISSING
    assert ours.counters.drops == {Drop.CSUM_MISSING: 1}


@pytest.mark.parametrize("icsum", [True, False])
def test_present_bad_checksum_is_csum_bad_with_or_without_icsum(icsum: bool) -> None:
    ours = Tunnel(tp(icsum=icsum))
    demux = demux_with(ours)
    packet = encap(peer_of(ours.params, ocsum=True), inner_v4())
    assert demux.decapsulate(_corrupt_last_byte(packet)) is Drop.CSUM_BAD
    assert ours.counters.drops == {Drop.CSUM_BAD: 1}


def test_bad_checksum_does_not_advance_the_sequence_window() -> None:
    ours = Tunnel(tp(iseq=True, icsum=True))
    peer = peer_of(ours.params, oseq=True, ocsum=True)
    demux = demux_with(ours)
    assert demux.decapsulate(_corrupt_last_byte(_with_seq(peer, 100))) is Drop.CSUM_BAD
    assert isinstance(demux.decapsulate(_with_seq(peer, 50)), Received)


def test_checksummed_packet_to_a_tunnel_without_icsum_is_dropped_like_linux() -> None:
    ours = Tunnel(tp(icsum=False))
    packet = encap(peer_of(ours.params, ocsum=True), inner_v4())
    assert demux_with(ours).decapsulate(packet) is Drop.CSUM_UNEXPECTED


# --- receive: ECN (RFC 6040 section 4.2) ---------------------------------------------------------------


def _ecn_case(inner: bytes, outer_ecn: int, **ours: Any) -> tuple[Tunnel, Received | Drop]:
    tunnel = Tunnel(tp(**ours))
    packet = encap(peer_of(tunnel.params), inner)
    packet = set_outer_tos(packet, (packet[1] & 0xFC) | outer_ecn)
    return tunnel, demux_with(tunnel).decapsulate(packet)


def test_outer_ce_over_not_ect_inner_is_ecn_ce_not_ect() -> None:
    tunnel, result = _ecn_case(inner_v4(tos=0x28 | ecn.NOT_ECT), ecn.CE)
    assert result is Drop.ECN_CE_NOT_ECT
    assert tunnel.counters.drops == {Drop.ECN_CE_NOT_ECT: 1}
    _, result6 = _ecn_case(inner_v6(traffic_class=0x28), ecn.CE)
    assert result6 is Drop.ECN_CE_NOT_ECT


@pytest.mark.parametrize("inner_ecn", [ecn.ECT_0, ecn.ECT_1, ecn.CE])
@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00"])
def test_outer_ce_over_ecn_capable_ipv4_inner_marks_it_ce_with_a_valid_checksum(inner_ecn: int, options: bytes) -> None:
    inner = inner_v4(tos=0xB8 | inner_ecn, options=options)
    _, result = _ecn_case(inner, ecn.CE)
    got = bytes(received(result).inner)
    assert got[1] == 0xB8 | ecn.CE
    assert checksum_is_valid(got[: 20 + len(options)])
    assert got[:1] + got[2:10] + got[12:] == inner[:1] + inner[2:10] + inner[12:]
    assert_well_formed_inner(got)


@pytest.mark.parametrize("inner_ecn", [ecn.ECT_0, ecn.ECT_1, ecn.CE])
def test_outer_ce_over_ecn_capable_ipv6_inner_marks_its_traffic_class_ce(inner_ecn: int) -> None:
    inner = inner_v6(traffic_class=0xB8 | inner_ecn)
    _, result = _ecn_case(inner, ecn.CE)
    got = bytes(received(result).inner)
    assert ipv6.traffic_class(got) == 0xB8 | ecn.CE
    assert got[0] == inner[0] and got[2:] == inner[2:]
    assert (got[1] & 0x0F) == (inner[1] & 0x0F)  # the flow label is untouched


@pytest.mark.parametrize("outer_ecn", [ecn.NOT_ECT, ecn.ECT_0, ecn.ECT_1])
@pytest.mark.parametrize("inner_ecn", [ecn.NOT_ECT, ecn.ECT_0, ecn.ECT_1, ecn.CE])
def test_outer_not_ce_leaves_the_inner_packet_unchanged(outer_ecn: int, inner_ecn: int) -> None:
    inner = inner_v4(tos=0x48 | inner_ecn)
    _, result = _ecn_case(inner, outer_ecn)
    assert bytes(received(result).inner) == inner


def test_outer_ce_is_applied_on_ipip_too() -> None:
    _, result = _ecn_case(inner_v4(tos=ecn.NOT_ECT), ecn.CE, name="ipip1", mode=Mode.IPIP)
    assert result is Drop.ECN_CE_NOT_ECT
    _, result = _ecn_case(inner_v4(tos=ecn.ECT_1), ecn.CE, name="ipip1", mode=Mode.IPIP)
    assert bytes(received(result).inner)[1] & ecn.ECN_MASK == ecn.CE


# --- receive: inner packet and outer/GRE header checks ---------------------------------------------------


def test_ipip_carrying_ipv6_is_family_on_receive() -> None:
    ours = Tunnel(tp("ipip1", Mode.IPIP))
    demux = demux_with(ours)
    assert demux.decapsulate(outer_ipv4(inner_v6(), protocol=4)) is Drop.FAMILY
    assert ours.counters.drops == {Drop.FAMILY: 1}


def _gre_packet(inner: bytes, proto: int = gre.PROTO_IPV4, **outer: Any) -> bytes:
    return outer_ipv4(GREHeader(proto).pack() + inner, **outer)


def _lie_about_length(packet: bytes, delta: int, offset: int = 2) -> bytes:
    out = bytearray(packet)
    (n,) = struct.unpack_from("!H", out, offset)
    struct.pack_into("!H", out, offset, (n + delta) & 0xFFFF)
    if out[0] >> 4 == 4:
        ihl = (out[0] & 0x0F) * 4
        out[10:12] = b"\x00\x00"
        struct.pack_into("!H", out, 10, internet_checksum(out[:ihl]))
    return bytes(out)


@pytest.mark.parametrize(
    ("inner", "proto"),
    [
        pytest.param(b"", gre.PROTO_IPV4, id="empty"),
        pytest.param(inner_v4()[:19], gre.PROTO_IPV4, id="v4-truncated-header"),
        pytest.param(inner_v4(options=bytes(8))[:24], gre.PROTO_IPV4, id="v4-truncated-options"),
        pytest.param(_lie_about_length(inner_v4(), +1), gre.PROTO_IPV4, id="v4-total-length-too-long"),
        pytest.param(_lie_about_length(inner_v4(), -len(inner_v4()) + 19), gre.PROTO_IPV4, id="v4-total-below-ihl"),
        pytest.param(b"\x44" + inner_v4()[1:], gre.PROTO_IPV4, id="v4-ihl-4"),
        pytest.param(inner_v4()[:10] + b"\x00\x00" + inner_v4()[12:], gre.PROTO_IPV4, id="v4-bad-header-checksum"),
        pytest.param(inner_v6(), gre.PROTO_IPV4, id="v6-under-ipv4-protocol"),
        pytest.param(inner_v4(), gre.PROTO_IPV6, id="v4-under-ipv6-protocol"),
        pytest.param(inner_v6()[:39], gre.PROTO_IPV6, id="v6-truncated-header"),
        pytest.param(_lie_about_length(inner_v6(), +1, offset=4), gre.PROTO_IPV6, id="v6-payload-length-too-long"),
    ],
)
def test_malformed_or_lying_inner_packet_is_inner_malformed(inner: bytes, proto: int) -> None:
    ours = Tunnel(tp())
    assert demux_with(ours).decapsulate(_gre_packet(inner, proto)) is Drop.INNER_MALFORMED
    assert ours.counters.drops == {Drop.INNER_MALFORMED: 1}


def test_truncated_inner_under_a_valid_gre_checksum_is_inner_malformed() -> None:
    # Outer length and GRE checksum are right for what was sent; only the inner packet lies.
    ours = Tunnel(tp(icsum=True))
    inner = inner_v4(payload=b"0123456789")[:-4]
    hdr = GREHeader(gre.PROTO_IPV4).with_checksum(inner)
    assert demux_with(ours).decapsulate(outer_ipv4(hdr.pack() + inner)) is Drop.INNER_MALFORMED
    assert ours.counters.drops == {Drop.INNER_MALFORMED: 1}


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("padding", [1, 3, 46])
def test_padding_beyond_the_inner_total_length_is_trimmed(family: int, padding: int) -> None:
    inner = inner_v4() if family == 4 else inner_v6()
    proto = gre.PROTO_IPV4 if family == 4 else gre.PROTO_IPV6
    got = received(demux_with(Tunnel(tp())).decapsulate(_gre_packet(inner + b"\xee" * padding, proto)))
    assert bytes(got.inner) == inner


def test_padding_beyond_the_outer_total_length_is_ignored_even_with_a_checksum() -> None:
    ours = Tunnel(tp(icsum=True))
    inner = inner_v4()
    packet = encap(peer_of(ours.params, ocsum=True), inner)
    assert bytes(received(demux_with(ours).decapsulate(packet + b"\x5a" * 18)).inner) == inner


def test_gre_protocol_neither_ipv4_nor_ipv6_is_gre_protocol() -> None:
    ours = Tunnel(tp())
    assert demux_with(ours).decapsulate(_gre_packet(bytes(60), gre.PROTO_TEB)) is Drop.GRE_PROTOCOL
    assert ours.counters.drops == {Drop.GRE_PROTOCOL: 1}


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        pytest.param(b"", Drop.OUTER_MALFORMED, id="empty"),
        pytest.param(bytes(19), Drop.OUTER_MALFORMED, id="19-bytes"),
        pytest.param(b"\x65" + _gre_packet(inner_v4())[1:], Drop.OUTER_MALFORMED, id="outer-version-6"),
        pytest.param(b"\x44" + _gre_packet(inner_v4())[1:], Drop.OUTER_MALFORMED, id="outer-ihl-4"),
        pytest.param(_lie_about_length(_gre_packet(inner_v4()), +1), Drop.OUTER_MALFORMED, id="outer-length-lies"),
        pytest.param(_gre_packet(inner_v4())[:-1], Drop.OUTER_MALFORMED, id="outer-truncated"),
        pytest.param(outer_ipv4(b"\x00\x00\x08"), Drop.GRE_TRUNCATED, id="gre-3-bytes"),
        pytest.param(outer_ipv4(b"\xb0\x00\x08\x00" + bytes(8)), Drop.GRE_TRUNCATED, id="gre-options-truncated"),
        pytest.param(outer_ipv4(b"\x00\x01\x08\x00" + inner_v4()), Drop.GRE_VERSION, id="gre-version-1"),
        pytest.param(outer_ipv4(b"\x40\x00\x08\x00" + inner_v4()), Drop.GRE_ROUTING, id="gre-routing"),
    ],
)
def test_malformed_outer_or_gre_header_is_counted_on_demux_unmatched(packet: bytes, reason: Drop) -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    assert demux.decapsulate(packet) is reason
    assert demux.unmatched.drops == {reason: 1}
    assert ours.counters.drops == {}


@pytest.mark.parametrize("frag_off", [ipv4.FLAG_MF, 1, ipv4.FLAG_DF | 0x1FFF])
def test_outer_fragment_is_outer_fragment(frag_off: int) -> None:
    packet = bytearray(_gre_packet(inner_v4()))
    struct.pack_into("!H", packet, 6, frag_off)
    demux = demux_with(Tunnel(tp()))
    assert demux.decapsulate(bytes(packet)) is Drop.OUTER_FRAGMENT


def test_outer_ipv4_options_are_skipped() -> None:
    inner = inner_v4()
    payload = GREHeader(gre.PROTO_IPV4).pack() + inner
    options = b"\x94\x04\x00\x00"
    outer = IPv4Header(0, 24 + len(payload), 0, 0, 64, 47, 0, REMOTE, LOCAL, options).with_checksum().pack()
    got = received(demux_with(Tunnel(tp())).decapsulate(outer + payload))
    assert bytes(got.inner) == inner


def test_decapsulate_accepts_bytes_bytearray_and_memoryview() -> None:
    ours = Tunnel(tp())
    demux = demux_with(ours)
    packet = _gre_packet(inner_v4())
    for form in (packet, bytearray(packet), memoryview(packet)):
        assert bytes(received(demux.decapsulate(form)).inner) == inner_v4()


# --- lookup precedence: exact > remote only > local only > wildcard --------------------------------------


def _four_tunnels(**kw: Any) -> dict[Rule, Tunnel]:
    return {
        Rule.EXACT: Tunnel(tp("exact", local=LOCAL, remote=REMOTE, **kw)),
        Rule.REMOTE_ONLY: Tunnel(tp("remote-only", local=None, remote=REMOTE, **kw)),
        Rule.LOCAL_ONLY: Tunnel(tp("local-only", local=LOCAL, remote=None, **kw)),
        Rule.WILDCARD: Tunnel(tp("wildcard", local=None, remote=None, **kw)),
    }


def _from(src: bytes, dst: bytes, **kw: Any) -> bytes:
    return encap(Tunnel(tp("sender", local=src, remote=dst, **kw)), inner_v4())


@pytest.mark.parametrize(
    ("src", "dst", "rule"),
    [
        (REMOTE, LOCAL, Rule.EXACT),
        (REMOTE, OTHER_LOCAL, Rule.REMOTE_ONLY),
        (OTHER_REMOTE, LOCAL, Rule.LOCAL_ONLY),
        (OTHER_REMOTE, OTHER_LOCAL, Rule.WILDCARD),
    ],
)
def test_each_outer_address_pair_picks_the_most_specific_tunnel(src: bytes, dst: bytes, rule: Rule) -> None:
    tunnels = _four_tunnels()
    demux = demux_with(*tunnels.values())
    got = received(demux.decapsulate(_from(src, dst)))
    assert (got.tunnel, got.rule) == (tunnels[rule], rule)


def test_removing_the_more_specific_tunnels_falls_back_in_kernel_order() -> None:
    tunnels = _four_tunnels(ikey=3)
    demux = demux_with(*reversed(list(tunnels.values())))
    packet = _from(REMOTE, LOCAL, okey=3)
    for rule in (Rule.EXACT, Rule.REMOTE_ONLY, Rule.LOCAL_ONLY, Rule.WILDCARD):
        got = received(demux.decapsulate(packet))
        assert (got.tunnel, got.rule) == (tunnels[rule], rule)
        demux.remove(tunnels[rule])
    assert demux.decapsulate(packet) is Drop.NO_TUNNEL


def test_key_mismatch_at_a_specific_step_falls_through_to_a_less_specific_tunnel_with_that_key() -> None:
    exact_keyed = Tunnel(tp("exact-k1", ikey=1))
    exact_keyless = Tunnel(tp("exact-nokey"))
    wildcard_k2 = Tunnel(tp("wild-k2", local=None, remote=None, ikey=2))
    local_k3 = Tunnel(tp("local-k3", remote=None, ikey=3))
    demux = demux_with(exact_keyed, exact_keyless, wildcard_k2, local_k3)
    cases = [(1, exact_keyed, Rule.EXACT), (None, exact_keyless, Rule.EXACT), (2, wildcard_k2, Rule.WILDCARD)]
    cases.append((3, local_k3, Rule.LOCAL_ONLY))
    for key, tunnel, rule in cases:
        got = received(demux.decapsulate(_from(REMOTE, LOCAL, okey=key)))
        assert (got.tunnel, got.rule) == (tunnel, rule), key
    assert demux.decapsulate(_from(REMOTE, LOCAL, okey=4)) is Drop.KEY_MISMATCH
    assert exact_keyed.counters.drops == {Drop.KEY_MISMATCH: 1}  # blamed on the first exact match
    assert demux.decapsulate(_from(OTHER_REMOTE, OTHER_LOCAL, okey=4)) is Drop.KEY_MISMATCH
    assert wildcard_k2.counters.drops == {Drop.KEY_MISMATCH: 1}


def test_gre_and_ipip_tunnels_with_the_same_addresses_never_compete() -> None:
    g = Tunnel(tp("gre1"))
    i = Tunnel(tp("ipip1", Mode.IPIP))
    demux = demux_with(g, i)
    assert received(demux.decapsulate(encap(peer_of(g.params), inner_v4()))).tunnel is g
    assert received(demux.decapsulate(encap(peer_of(i.params), inner_v4()))).tunnel is i


def test_gre_tunnels_differing_only_by_ikey_may_coexist_but_not_twins() -> None:
    demux = demux_with(Tunnel(tp("a", ikey=1)), Tunnel(tp("b", ikey=2)), Tunnel(tp("c")))
    with pytest.raises(ConfigError, match=r"'d'.*same local, remote and ikey as 'a'.*File exists"):
        demux.add(Tunnel(tp("d", ikey=1)))


@dataclass
class Stub:
    params: TunnelParams


def _stub(name: str, local: bytes | None, remote: bytes | None, ikey: int | None = None) -> Stub:
    return Stub(tp(name, local=local, remote=remote, ikey=ikey))


def test_tunnel_table_lookup_order_is_exact_remote_local_wildcard() -> None:
    table: TunnelTable[Stub] = TunnelTable()
    stubs = [_stub("w", None, None), _stub("l", LOCAL, None), _stub("r", None, REMOTE), _stub("e", LOCAL, REMOTE)]
    for s in stubs:
        table.add(s)
    assert len(table) == 4
    assert set(map(id, table)) == set(map(id, stubs))
    w, l_, r, e = stubs
    assert table.lookup(LOCAL, REMOTE, None) == (e, Rule.EXACT)
    table.remove(e)
    assert table.lookup(LOCAL, REMOTE, None) == (r, Rule.REMOTE_ONLY)
    table.remove(r)
    assert table.lookup(LOCAL, REMOTE, None) == (l_, Rule.LOCAL_ONLY)
    table.remove(l_)
    assert table.lookup(LOCAL, REMOTE, None) == (w, Rule.WILDCARD)
    table.remove(w)
    assert table.lookup(LOCAL, REMOTE, None) is Drop.NO_TUNNEL
    assert len(table) == 0


def test_tunnel_table_key_must_match_exactly_at_every_step() -> None:
    table: TunnelTable[Stub] = TunnelTable()
    keyed = _stub("k", LOCAL, REMOTE, ikey=0)
    table.add(keyed)
    assert table.lookup(LOCAL, REMOTE, 0) == (keyed, Rule.EXACT)
    assert table.lookup(LOCAL, REMOTE, None) is Drop.KEY_MISMATCH  # key 0 is a key, not "no key"
    assert table.lookup(LOCAL, REMOTE, 1) is Drop.KEY_MISMATCH
    assert table.lookup(OTHER_LOCAL, REMOTE, 0) is Drop.NO_TUNNEL
    assert table.address_match(LOCAL, REMOTE) is keyed
    assert table.address_match(OTHER_LOCAL, REMOTE) is None


def test_tunnel_table_address_match_follows_the_same_order() -> None:
    table: TunnelTable[Stub] = TunnelTable()
    wild, local_only = _stub("w", None, None, 1), _stub("l", LOCAL, None, 2)
    table.add(wild)
    table.add(local_only)
    assert table.address_match(LOCAL, REMOTE) is local_only
    assert table.address_match(OTHER_LOCAL, REMOTE) is wild


# --- properties ---------------------------------------------------------------------------------------------


def _fuzz_demux() -> Demux:
    """Tunnels of every kind, so that fuzzed packets find one and get past the lookup."""
    return demux_with(
        Tunnel(tp("exact", iseq=True, icsum=True)),
        Tunnel(tp("exact-k", ikey=1, iseq=True)),
        Tunnel(tp("wild", local=None, remote=None)),
        Tunnel(tp("wild-k", local=None, remote=None, ikey=0)),
        Tunnel(tp("wild-k2", local=None, remote=None, ikey=0xFFFFFFFF)),
        Tunnel(tp("ipip", Mode.IPIP, local=None, remote=None)),
    )


def _check_outcome(result: Received | Drop) -> None:
    assert isinstance(result, Received | Drop)
    if isinstance(result, Received):
        assert_well_formed_inner(bytes(result.inner))


@SETTINGS
@given(st.binary(max_size=200))
def test_decapsulate_of_arbitrary_bytes_returns_received_or_drop_never_raises(data: bytes) -> None:
    _check_outcome(_fuzz_demux().decapsulate(data))


@st.composite
def deep_packets(draw: st.DrawFn) -> bytes:
    """A valid outer IPv4 header and (for GRE) a plausible GRE header, then anything, often a near-valid inner."""
    protocol = draw(st.sampled_from([47, 47, 47, 4]))
    if protocol == 47:
        valid_flags = st.sampled_from([0, gre.FLAG_KEY, gre.FLAG_SEQ, gre.FLAG_CSUM, 0xB000, 0x3000, 0xA000])
        flags = draw(st.integers(0, 0xFFFF) if draw(st.integers(0, 3)) == 0 else valid_flags)
        ip_protos = st.sampled_from([gre.PROTO_IPV4, gre.PROTO_IPV6])
        gre_proto = draw(st.integers(0, 0xFFFF) if draw(st.integers(0, 3)) == 0 else ip_protos)
        options = draw(st.binary(min_size=gre.header_length(flags) - 4, max_size=gre.header_length(flags) - 4))
        if flags & gre.FLAG_KEY and draw(st.integers(0, 3)) != 0:
            key_at = 4 if flags & gre.FLAG_CSUM else 0
            key = draw(st.sampled_from([0, 1, 0xFFFFFFFF]))
            options = options[:key_at] + key.to_bytes(4, "big") + options[key_at + 4 :]
        prefix = struct.pack("!HH", flags, gre_proto) + options
    else:
        prefix = b""
    kind = draw(st.sampled_from(["random", "v4", "v6", "mutated-v4", "mutated-v6"]))
    if kind == "random":
        inner = draw(st.binary(max_size=120))
    else:
        payload = draw(st.binary(max_size=40))
        if kind.endswith("v4"):
            inner = inner_v4(
                tos=draw(st.integers(0, 255)), payload=payload, options=draw(st.sampled_from([b"", bytes(4)]))
            )
        else:
            inner = inner_v6(traffic_class=draw(st.integers(0, 255)), payload=payload)
        if kind.startswith("mutated"):
            mutable = bytearray(inner)
            for _ in range(draw(st.integers(1, 3))):
                at = draw(st.integers(0, len(mutable) - 1))
                mutable[at] = draw(st.integers(0, 255))
            inner = bytes(mutable)
        inner += draw(st.binary(max_size=8))
    inner = inner[: draw(st.integers(0, len(inner)))] if draw(st.integers(0, 3)) == 0 else inner
    body = prefix + inner
    if protocol == 47 and len(prefix) >= 8 and prefix[0] & 0x80 and draw(st.booleans()):
        # Make the GRE checksum right so the packet gets past it.
        zeroed = bytearray(body)
        zeroed[4:6] = b"\x00\x00"
        struct.pack_into("!H", zeroed, 4, internet_checksum(zeroed))
        body = bytes(zeroed)
    src = draw(st.sampled_from([REMOTE, OTHER_REMOTE]))
    dst = draw(st.sampled_from([LOCAL, OTHER_LOCAL]))
    packet = outer_ipv4(body, protocol, src, dst, tos=draw(st.integers(0, 255)))
    if draw(st.integers(0, 3)) == 0:
        packet = _lie_about_length(packet, draw(st.integers(-30, 30)))
    return packet + draw(st.binary(max_size=8))


@settings(max_examples=600, deadline=None)
@given(st.lists(deep_packets(), min_size=1, max_size=4))
def test_decapsulate_of_arbitrary_bytes_after_a_valid_outer_prefix_never_raises_and_inner_is_well_formed(
    packets: list[bytes],
) -> None:
    demux = _fuzz_demux()
    for packet in packets:
        _check_outcome(demux.decapsulate(packet))


@st.composite
def tunnel_pairs(draw: st.DrawFn) -> tuple[Tunnel, Tunnel, bytes]:
    """Our tunnel, a peer configured to match it, and an inner packet that mode can carry."""
    mode = draw(st.sampled_from([Mode.GRE, Mode.IPIP]))
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    if mode is Mode.GRE:
        key = draw(st.none() | st.integers(0, 2**32 - 1))
        ours = {"ikey": key, "iseq": draw(st.booleans()), "icsum": draw(st.booleans())}
        theirs = {
            "okey": key,
            "oseq": ours["iseq"] or draw(st.booleans()),
            "ocsum": ours["icsum"],  # Linux drops a checksum the receiver does not expect
        }
    local = draw(st.sampled_from([LOCAL, None]))
    remote = draw(st.sampled_from([REMOTE, None]))
    tunnel = Tunnel(TunnelParams("t", mode, local, remote, **ours))
    peer = Tunnel(
        TunnelParams(
            "peer",
            mode,
            REMOTE,
            LOCAL,
            ttl=draw(st.none() | st.integers(1, 255)),
            tos=draw(st.none() | st.integers(0, 255)),
            **theirs,
        )
    )
    payload = draw(st.binary(max_size=64))
    if mode is Mode.GRE and draw(st.booleans()):
        inner = inner_v6(traffic_class=draw(st.integers(0, 255)), hop_limit=draw(st.integers(0, 255)), payload=payload)
    else:
        inner = inner_v4(tos=draw(st.integers(0, 255)), ttl=draw(st.integers(0, 255)), payload=payload)
    return tunnel, peer, inner


@SETTINGS
@given(tunnel_pairs())
def test_decapsulate_of_encapsulate_returns_the_inner_packet_for_every_mode_and_option(
    pair: tuple[Tunnel, Tunnel, bytes],
) -> None:
    tunnel, peer, inner = pair
    demux = demux_with(tunnel)
    for _ in range(2):
        got = received(demux.decapsulate(encap(peer, inner)))
        assert got.tunnel is tunnel
        assert bytes(got.inner) == inner


@SETTINGS
@given(st.binary(max_size=200), st.sampled_from(["all", "plain", "ipip", "inherit"]))
def test_encapsulate_of_arbitrary_bytes_is_a_drop_or_a_valid_outer_packet(data: bytes, config: str) -> None:
    p = {
        "all": tp(okey=5, oseq=True, ocsum=True, ttl=64),
        "plain": tp(),
        "ipip": tp("ipip1", Mode.IPIP),
        "inherit": tp(ttl=None, tos=None, pmtudisc=False),
    }[config]
    result = Tunnel(p).encapsulate(data)
    if isinstance(result, Drop):
        assert result in (Drop.INNER_MALFORMED, Drop.FAMILY, Drop.OVERSIZE)
        return
    assert len(result) == p.header_length + len(data)
    assert outer_of(result).total_length == len(result)
    assert result.endswith(data)
    if p.ocsum:
        assert checksum_is_valid(result[20:])


# --- params ----------------------------------------------------------------------------------------------


def test_fixed_ttl_with_nopmtudisc_is_refused_with_iproute2s_words() -> None:
    with pytest.raises(ConfigError, match="ttl != 0 and nopmtudisc are incompatible"):
        tp(ttl=64, pmtudisc=False)
    assert tp(ttl=None, pmtudisc=False).pmtudisc is False


@pytest.mark.parametrize("label", ["ikey", "okey"])
@pytest.mark.parametrize("value", [-1, 2**32, 2**40])
def test_key_out_of_range_is_refused_naming_the_key_and_the_range(label: str, value: int) -> None:
    with pytest.raises(ConfigError, match=rf"{label} {value} out of range: 0\.\.4294967295"):
        tp(**{label: value})


@pytest.mark.parametrize("value", [0, 2**32 - 1])
def test_keys_at_the_ends_of_the_range_are_accepted(value: int) -> None:
    assert tp(ikey=value, okey=value).ikey == value


@pytest.mark.parametrize(
    "option",
    [{"ikey": 1}, {"okey": 0}, {"iseq": True}, {"oseq": True}, {"icsum": True}, {"ocsum": True}],
    ids=lambda o: next(iter(o)),
)
def test_keys_sequence_numbers_and_checksums_are_refused_for_ipip(option: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="GRE options; mode ipip has none"):
        tp("ipip1", Mode.IPIP, **option)


@pytest.mark.parametrize("name", ["", "a" * 16, "has space", "tab\tname", "a/b", "a:b", "new\nline"])
def test_bad_interface_name_is_refused_saying_what_is_accepted(name: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid interface name .*1 to 15 characters, no spaces, '/' or ':'"):
        tp(name)


@pytest.mark.parametrize("name", ["g", "a" * 15, "gre-1.2_x", "tun@home"])
def test_good_interface_names_are_accepted(name: str) -> None:
    assert tp(name).name == name


@pytest.mark.parametrize(
    ("kw", "message"), [({"ttl": 0}, "ttl 0 out of range"), ({"ttl": 256}, "ttl 256"), ({"tos": 256}, "tos 0x100")]
)
def test_ttl_and_tos_out_of_range_are_refused(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tp(**kw)


def test_unknown_mode_lists_the_accepted_ones() -> None:
    with pytest.raises(
        ConfigError, match="unknown mode 'vti7'; accepted: gre, ipip, sit, isatap, ipip6, ip6ip6, ip6gre"
    ):
        Mode.from_name("vti7")
    assert Mode.from_name("ipip") is Mode.IPIP
    assert Mode.from_name("ip6gre") is Mode.IP6GRE


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1234", 1234),
        ("0x4d2", 1234),
        ("0X4D2", 1234),
        ("0.0.4.210", 1234),
        ("0", 0),
        ("4294967295", 2**32 - 1),
        ("255.255.255.255", 2**32 - 1),
        ("1.2.3.4", 0x01020304),
    ],
)
def test_parse_key_accepts_decimal_hex_and_dotted_quad(text: str, value: int) -> None:
    assert values.parse_key(text) == value


@pytest.mark.parametrize("text", ["-1", "4294967296", "abc", "", "1.2.3", "1.2.3.256", "0x1_0000_0000"])
def test_parse_key_rejects_what_iproute2_rejects_with_a_helpful_message(text: str) -> None:
    with pytest.raises(ConfigError, match=r"invalid key .*0\.\.4294967295 or a dotted quad"):
        values.parse_key(text)


def test_parse_key_reads_a_leading_zero_as_octal_like_iproute2() -> None:
    assert values.parse_key("010") == 8


@pytest.mark.parametrize(("text", "value"), [("inherit", None), ("0", None), ("1", 1), ("64", 64), ("255", 255)])
def test_parse_ttl_reads_inherit_zero_and_1_to_255(text: str, value: int | None) -> None:
    assert values.parse_ttl(text) == value


@pytest.mark.parametrize("text", ["256", "-1", "abc", "", "64.0"])
def test_parse_ttl_rejects_anything_else_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError, match=r'invalid ttl .*1\.\.255 or "inherit"'):
        values.parse_ttl(text)


@pytest.mark.parametrize(
    ("text", "value"), [("inherit", None), ("0", 0), ("10", 0x10), ("b8", 0xB8), ("0xfc", 0xFC), ("ff", 0xFF)]
)
def test_parse_tos_reads_a_hex_byte_or_inherit(text: str, value: int | None) -> None:
    assert values.parse_tos(text) == value


@pytest.mark.parametrize("text", ["100", "-1", "zz", ""])
def test_parse_tos_rejects_anything_else_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ConfigError, match=r'invalid tos .*00\.\.ff or "inherit"'):
        values.parse_tos(text)


def test_parse_ipv4_address_names_the_option_and_spots_ipv6() -> None:
    assert values.parse_ipv4_address("192.0.2.1", "local") == LOCAL
    with pytest.raises(ConfigError, match="invalid remote address 'nope'"):
        values.parse_ipv4_address("nope", "remote")
    with pytest.raises(ConfigError, match="local address '2001:db8::1' is IPv6"):
        values.parse_ipv4_address("2001:db8::1", "local")


@pytest.mark.parametrize(
    ("p", "mtu"),
    [
        (tp(), 1476),
        (tp(okey=1), 1472),
        (tp(okey=1, oseq=True, ocsum=True), 1464),
        (tp(ikey=1, iseq=True, icsum=True), 1476),  # only output options add bytes
        (tp("ipip1", Mode.IPIP), 1480),
    ],
)
def test_default_mtu_is_the_underlay_mtu_minus_the_exact_overhead(p: TunnelParams, mtu: int) -> None:
    assert p.default_mtu(1500) == mtu


@pytest.mark.parametrize(
    "kw", [{}, {"okey": 1}, {"oseq": True}, {"ocsum": True}, {"okey": 2, "oseq": True, "ocsum": True}]
)
def test_header_length_is_what_encapsulate_adds(kw: dict[str, Any]) -> None:
    tunnel = Tunnel(tp(**kw))
    assert len(encap(tunnel, inner_v4())) - len(inner_v4()) == tunnel.params.header_length


def test_counters_as_dict_names_drops_by_their_counter_name() -> None:
    ours = Tunnel(tp(ikey=5))
    demux_with(ours).decapsulate(encap(peer_of(ours.params, okey=6), inner_v4()))
    assert ours.counters.as_dict()["drops"] == {"key_mismatch": 1}


def test_outer_identification_counts_up_from_the_given_start_and_wraps_at_16_bits() -> None:
    tunnel = Tunnel(tp(), ident=0xFFFE)
    ids = [outer_of(encap(tunnel, inner_v4())).identification for _ in range(3)]
    assert ids == [0xFFFE, 0xFFFF, 0]
