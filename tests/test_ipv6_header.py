"""IPv6 header, RFC 2473 encapsulation limit and outer-field choices: round trips, scapy, the kernel's bytes."""

from __future__ import annotations

from ipaddress import IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    HBHOptUnknown,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    PadN,
    RouterAlert,
)
from scapy.layers.ipsec import AH

from usertunnel.core import ipv6
from usertunnel.core.drops import Drop
from usertunnel.core.ipv6 import (
    EncapLimitExhausted,
    IPv6Header,
    UpperLayer,
    encap_limit,
    encap_limit_offset,
    encap_limit_option,
    next_encap_limit,
    parse_ipv6,
    upper_layer,
)

SETTINGS = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 0xFF)
addresses = st.binary(min_size=16, max_size=16)
SRC = "2001:db8::1"
DST = "2001:db8::2"
AH_24_BYTES = 24 // 4 - 2  # RFC 4302 section 2.2: the length in 4-octet units, minus 2 (scapy leaves it 0)

# Derived by hand from the kernel's init_tel_txopt + ipv6_push_frag_opts: next header
# (41, IPv6), hdr ext len 0, option 4 / length 1 / limit 4, PadN length 1 with one zero byte.
KERNEL_ENCAP_LIMIT_4_BEFORE_IPV6 = b"\x29\x00\x04\x01\x04\x01\x01\x00"


@st.composite
def headers(draw: st.DrawFn) -> IPv6Header:
    return IPv6Header(
        traffic_class=draw(u8),
        flow_label=draw(st.integers(0, 0xFFFFF)),
        payload_length=draw(st.integers(0, 0xFFFF)),
        next_header=draw(u8),
        hop_limit=draw(u8),
        src=draw(addresses),
        dst=draw(addresses),
    )


def v6(payload: object = None, *, nh: int | None = None, tc: int = 0, fl: int = 0, hlim: int = 64) -> bytes:
    packet = IPv6(src=SRC, dst=DST, tc=tc, fl=fl, hlim=hlim)
    if nh is not None:
        packet.nh = nh
    return bytes(packet / payload) if payload is not None else bytes(packet)


def tel(limit: int) -> HBHOptUnknown:
    return HBHOptUnknown(otype=ipv6.TLV_TNL_ENCAP_LIMIT, optdata=bytes([limit]))


# --- the fixed header -----------------------------------------------------------------------


@SETTINGS
@given(headers(), st.binary(max_size=16))
def test_pack_parse_round_trip_for_any_header(header: IPv6Header, extra: bytes) -> None:
    wire = header.pack()
    assert len(wire) == ipv6.HEADER_LEN
    assert header.version == 6 and wire[0] >> 4 == 6
    packet = wire + bytes(header.payload_length) + extra
    assert parse_ipv6(packet) == header
    assert ipv6.traffic_class(wire) == header.traffic_class
    assert ipv6.flow_label(wire) == header.flow_label


@SETTINGS
@given(headers())
def test_scapy_reads_our_header_field_for_field(header: IPv6Header) -> None:
    got = IPv6(header.pack() + bytes(header.payload_length))
    assert (got.version, got.tc, got.fl, got.plen, got.nh, got.hlim) == (
        6,
        header.traffic_class,
        header.flow_label,
        header.payload_length,
        header.next_header,
        header.hop_limit,
    )
    assert got.src == str(IPv6Address(header.src))
    assert got.dst == str(IPv6Address(header.dst))


@SETTINGS
@given(u8, st.integers(0, 0xFFFFF), u8, u8, st.binary(max_size=64))
def test_we_read_scapys_header_field_for_field(tc: int, fl: int, nh: int, hlim: int, payload: bytes) -> None:
    wire = bytes(IPv6(src=SRC, dst=DST, tc=tc, fl=fl, nh=nh, hlim=hlim) / payload)
    header = parse_ipv6(wire)
    assert isinstance(header, IPv6Header)
    assert (header.traffic_class, header.flow_label, header.next_header, header.hop_limit) == (tc, fl, nh, hlim)
    assert header.payload_length == len(payload)
    assert header.pack() == wire[:40]


def test_truncated_header_at_every_offset_is_malformed() -> None:
    wire = v6(b"payload", nh=59)
    for n in range(len(wire)):
        assert parse_ipv6(wire[:n]) is Drop.INNER_MALFORMED
    assert isinstance(parse_ipv6(wire), IPv6Header)


def test_wrong_version_and_lying_payload_length_are_malformed() -> None:
    wire = bytearray(v6(b"payload", nh=59))
    assert parse_ipv6(bytes([0x45]) + bytes(wire[1:])) is Drop.INNER_MALFORMED
    wire[5] += 1  # payload length one byte beyond the data
    assert parse_ipv6(wire) is Drop.INNER_MALFORMED


def test_an_outer_header_parse_reports_outer_malformed() -> None:
    assert parse_ipv6(b"\x60" + bytes(10), malformed=Drop.OUTER_MALFORMED) is Drop.OUTER_MALFORMED


# --- RFC 2473 Tunnel Encapsulation Limit: building the option ---------------------------------


def test_encap_limit_option_equals_the_kernels_bytes() -> None:
    assert encap_limit_option(4, ipv6.NEXTHDR_IPV6) == KERNEL_ENCAP_LIMIT_4_BEFORE_IPV6
    assert len(encap_limit_option(0, 4)) == ipv6.ENCAP_LIMIT_OPTION_LEN


@SETTINGS
@given(u8, u8)
def test_encap_limit_option_equals_scapys_destination_options_encoding(limit: int, nh: int) -> None:
    assert encap_limit_option(limit, nh) == bytes(IPv6ExtHdrDestOpt(nh=nh, options=[tel(limit), PadN(optdata=b"\0")]))
    assert encap_limit_option(limit, nh) == bytes(IPv6ExtHdrDestOpt(nh=nh, options=[tel(limit)]))  # scapy's autopad


@SETTINGS
@given(u8, st.binary(max_size=64))
def test_encap_limit_reads_back_what_encap_limit_option_wrote(limit: int, inner: bytes) -> None:
    body = encap_limit_option(limit, ipv6.NEXTHDR_IPV6) + inner
    packet = IPv6Header(0, 0, len(body), ipv6.NEXTHDR_DEST, 64, bytes(16), bytes(16)).pack() + body
    assert encap_limit_offset(packet) == 42
    assert encap_limit(packet) == limit
    assert upper_layer(packet) == UpperLayer(ipv6.NEXTHDR_IPV6, 48)


# --- parsing it the way ip6_tnl_parse_tlv_enc_lim does ----------------------------------------


def test_no_extension_header_means_no_limit() -> None:
    assert encap_limit(v6(UDP())) is None
    assert encap_limit(v6(IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0\0\0")]) / UDP())) is None


def test_limit_found_behind_hop_by_hop_routing_ah_and_an_atomic_fragment() -> None:
    chain = (
        IPv6ExtHdrHopByHop(options=[RouterAlert()])
        / IPv6ExtHdrRouting(addresses=["2001:db8::9"])
        / IPv6ExtHdrFragment(offset=0, m=0, id=7)
        / AH(nh=ipv6.NEXTHDR_DEST, payloadlen=AH_24_BYTES, spi=1, seq=1, icv=b"\0" * 12)
        / IPv6ExtHdrDestOpt(options=[tel(9)])
        / UDP()
    )
    packet = v6(chain)
    assert encap_limit(packet) == 9
    offset = encap_limit_offset(packet)
    assert offset is not None and packet[offset : offset + 3] == b"\x04\x01\x09"


def test_a_real_fragment_stops_the_walk() -> None:
    for frag in (IPv6ExtHdrFragment(offset=0, m=1), IPv6ExtHdrFragment(offset=5, m=0)):
        assert encap_limit(v6(frag / IPv6ExtHdrDestOpt(options=[tel(9)]) / UDP())) is None


def test_the_walk_stops_at_the_first_non_extension_header() -> None:
    # ESP (50) is not one of ipv6_ext_hdr()'s headers: what follows it is not read.
    dest = bytes(IPv6ExtHdrDestOpt(nh=59, options=[tel(9)]))
    assert encap_limit(v6(dest, nh=50)) is None
    assert encap_limit(v6(dest, nh=ipv6.NEXTHDR_DEST)) == 9


def test_options_are_skipped_by_length_and_pad1_by_one_byte() -> None:
    options = [HBHOptUnknown(otype=0x1E, optdata=b"\x04\x01\x07"), tel(3)]
    assert encap_limit(v6(IPv6ExtHdrDestOpt(options=options) / UDP())) == 3
    pad1_first = bytes([ipv6.NEXTHDR_UDP, 0, 0, 0, 4, 1, 5, 0])  # Pad1, Pad1, limit 5, Pad1
    assert encap_limit(v6(pad1_first + bytes(UDP()), nh=ipv6.NEXTHDR_DEST)) == 5


def test_type_4_with_a_length_other_than_1_is_not_the_limit() -> None:
    odd = HBHOptUnknown(otype=ipv6.TLV_TNL_ENCAP_LIMIT, optdata=b"\x05\x05")
    assert encap_limit(v6(IPv6ExtHdrDestOpt(options=[odd]) / UDP())) is None


def test_the_second_destination_options_header_is_searched_too() -> None:
    first = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0\0\0\0")])
    second = IPv6ExtHdrDestOpt(options=[tel(2)])
    assert encap_limit(v6(first / IPv6ExtHdrRouting(addresses=[]) / second / UDP())) == 2


def test_truncated_extension_headers_at_every_offset_never_raise() -> None:
    packet = v6(IPv6ExtHdrHopByHop(options=[RouterAlert()]) / IPv6ExtHdrDestOpt(options=[tel(6)]) / UDP())
    for n in range(len(packet) + 1):
        got = encap_limit(packet[:n])
        # The option is only read from a destination options header that is present in full.
        assert got == (6 if n >= 40 + 8 + 8 else None)
        assert isinstance(upper_layer(packet[:n]), Drop) == (n < 56)


@SETTINGS
@given(st.binary(max_size=120))
def test_encap_limit_and_upper_layer_never_raise_on_any_bytes(tail: bytes) -> None:
    for nh in (ipv6.NEXTHDR_HOP, ipv6.NEXTHDR_DEST, ipv6.NEXTHDR_FRAGMENT, ipv6.NEXTHDR_AUTH, ipv6.NEXTHDR_ROUTING):
        packet = IPv6Header(0, 0, len(tail), nh, 1, bytes(16), bytes(16)).pack() + tail
        limit = encap_limit(packet)
        assert limit is None or 0 <= limit <= 255
        got = upper_layer(packet)
        assert got is Drop.OUTER_MALFORMED or 40 <= got.offset <= len(packet)


# --- what the entry point sends (ipxip6_tnl_xmit) ----------------------------------------------


def test_inner_limit_is_decremented_and_wins_over_the_configured_one() -> None:
    inner = v6(IPv6ExtHdrDestOpt(options=[tel(3)]) / UDP())
    assert next_encap_limit(inner, ipv6.DEFAULT_ENCAP_LIMIT) == 2
    assert next_encap_limit(inner, None) == 2  # even with `encaplimit none`


def test_inner_limit_zero_refuses_the_packet_pointing_at_the_limit_byte() -> None:
    inner = v6(IPv6ExtHdrDestOpt(options=[tel(0)]) / UDP())
    assert next_encap_limit(inner, 4) == EncapLimitExhausted(pointer=44)
    assert inner[44] == 0


def test_without_an_inner_limit_the_configured_one_is_used() -> None:
    assert next_encap_limit(v6(UDP()), 4) == 4
    assert next_encap_limit(v6(UDP()), None) is None
    ipv4_inner = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP())
    assert next_encap_limit(ipv4_inner, 7) == 7


# --- receive: skipping to the tunnel's payload ------------------------------------------------


def test_upper_layer_skips_the_kernels_encap_limit_header() -> None:
    outer = v6(KERNEL_ENCAP_LIMIT_4_BEFORE_IPV6 + v6(UDP()), nh=ipv6.NEXTHDR_DEST)
    assert upper_layer(outer) == UpperLayer(ipv6.NEXTHDR_IPV6, 48)
    assert IPv6(outer[48:]).dst == DST


def test_upper_layer_without_extension_headers_is_right_after_the_fixed_header() -> None:
    assert upper_layer(v6(b"\0" * 20, nh=ipv6.NEXTHDR_IPIP)) == UpperLayer(ipv6.NEXTHDR_IPIP, 40)


def test_upper_layer_skips_hop_by_hop_then_destination_options() -> None:
    packet = v6(IPv6ExtHdrHopByHop(options=[RouterAlert()]) / IPv6ExtHdrDestOpt(options=[tel(1)]) / b"x", nh=None)
    assert upper_layer(packet) == UpperLayer(59, 56)


def test_upper_layer_returns_routing_and_fragment_headers_as_the_protocol() -> None:
    assert upper_layer(v6(IPv6ExtHdrFragment() / UDP())).protocol == ipv6.NEXTHDR_FRAGMENT


def test_hop_by_hop_after_another_header_is_malformed() -> None:
    packet = v6(IPv6ExtHdrDestOpt(options=[tel(1)]) / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / UDP())
    assert upper_layer(packet) is Drop.OUTER_MALFORMED


@pytest.mark.parametrize(
    ("otype", "accepted"),
    [(0x1E, True), (0x5E, False), (0x9E, False), (0xDE, False)],
    ids=["skip", "discard", "discard-icmp", "discard-icmp-unless-multicast"],
)
def test_unknown_options_obey_their_action_bits(otype: int, accepted: bool) -> None:
    packet = v6(IPv6ExtHdrDestOpt(options=[HBHOptUnknown(otype=otype, optdata=b"\0")]) / UDP())
    assert isinstance(upper_layer(packet), UpperLayer) == accepted


def test_padding_must_be_short_and_zero() -> None:
    nonzero_padn = bytes([59, 0, 1, 4, 0, 0, 0, 1])
    too_much_padding = bytes([59, 1, 1, 6]) + bytes(6) + bytes([1, 2, 0, 0])
    for header in (nonzero_padn, too_much_padding):
        assert upper_layer(v6(header, nh=ipv6.NEXTHDR_DEST)) is Drop.OUTER_MALFORMED


# --- the outer header's fields ---------------------------------------------------------------


def test_traffic_class_fixed_or_inherited_from_either_family() -> None:
    assert ipv6.outer_traffic_class(0x28, v6(UDP(), tc=0xB9)) == 0x28
    assert ipv6.outer_traffic_class(None, v6(UDP(), tc=0xB9)) == 0xB9
    assert ipv6.outer_traffic_class(None, bytes(IP(tos=0x2E) / UDP())) == 0x2E


def test_hop_limit_fixed_or_inherited_from_either_family() -> None:
    assert ipv6.outer_hop_limit(64, v6(UDP(), hlim=9)) == 64
    assert ipv6.outer_hop_limit(None, v6(UDP(), hlim=9)) == 9
    assert ipv6.outer_hop_limit(None, bytes(IP(ttl=33) / UDP())) == 33


def test_flow_label_fixed_or_inherited_from_an_ipv6_inner() -> None:
    assert ipv6.outer_flow_label(0xABCDE, v6(UDP(), fl=0x12345)) == 0xABCDE
    assert ipv6.outer_flow_label(None, v6(UDP(), fl=0x12345)) == 0x12345


def test_a_zero_label_becomes_the_flows_automatic_label_unless_auto_labels_are_off() -> None:
    inner6 = v6(UDP(sport=1000, dport=53))
    inner4 = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1000, dport=53))
    for inner in (inner6, inner4):
        label = ipv6.outer_flow_label(None, inner)  # an IPv4 inner under `flowlabel inherit`: automatic
        assert label == ipv6.flow_hash(inner) and 0 < label <= 0xFFFFF
        assert ipv6.outer_flow_label(0, inner) == label
        assert ipv6.outer_flow_label(None, inner, auto=False) == 0


def test_the_automatic_label_is_stable_per_flow_and_depends_on_the_ports() -> None:
    one = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1000, dport=80) / b"a")
    same_flow = bytes(IP(src="192.0.2.1", dst="192.0.2.2", id=9) / TCP(sport=1000, dport=80, seq=5) / b"bb")
    other = bytes(IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=1001, dport=80) / b"a")
    assert ipv6.flow_hash(one) == ipv6.flow_hash(same_flow) != ipv6.flow_hash(other)
