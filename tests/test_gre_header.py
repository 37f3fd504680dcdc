"""GRE header (RFC 2784 / RFC 2890): build, parse, drop reasons, and agreement with scapy both ways."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE
from scapy.packet import Raw

from usertunnel.core import gre
from usertunnel.core.checksum import checksum_is_valid
from usertunnel.core.drops import Drop
from usertunnel.core.gre import GREHeader, parse_gre

SETTINGS = settings(max_examples=200, deadline=None)

u32 = st.integers(0, 2**32 - 1)
u16 = st.integers(0, 0xFFFF)
# scapy dissects protocol type 0x880b (PPP) as GRE_PPTP, an enhanced-GRE (version 1) layer with other fields.
scapy_proto = u16.filter(lambda p: p != 0x880B)
payloads = st.binary(max_size=64)
FLAG_COMBINATIONS = list(itertools.product([False, True], repeat=3))  # (C, K, S)


@st.composite
def headers(draw: st.DrawFn, proto: st.SearchStrategy[int] = u16) -> tuple[GREHeader, bytes]:
    """A header with any C/K/S combination (checksum computed over it and a payload) and that payload."""
    payload = draw(payloads)
    header = GREHeader(
        draw(proto),
        key=draw(st.none() | u32),
        sequence=draw(st.none() | u32),
        reserved0=draw(st.just(0) | st.integers(0, 0x1FF)),
    )
    if draw(st.booleans()):
        header = GREHeader(
            header.protocol,
            checksum=0,
            key=header.key,
            sequence=header.sequence,
            reserved0=header.reserved0,
            reserved1=draw(st.just(0) | u16),
        ).with_checksum(payload)
    return header, payload


def build(csum: bool, key: int | None, seq: int | None, proto: int, payload: bytes) -> GREHeader:
    header = GREHeader(proto, key=key, sequence=seq)
    return header.with_checksum(payload) if csum else header


# --- build -> parse -> build ------------------------------------------------------------------


@pytest.mark.parametrize(("csum", "has_key", "has_seq"), FLAG_COMBINATIONS)
def test_every_combination_of_c_k_s_round_trips_with_its_length(csum: bool, has_key: bool, has_seq: bool) -> None:
    payload = b"\x45\x00inner"
    header = build(csum, 0xDEADBEEF if has_key else None, 7 if has_seq else None, gre.PROTO_IPV4, payload)
    wire = header.pack()
    assert len(wire) == header.length == 4 + 4 * (csum + has_key + has_seq)
    assert wire[0] & 0xF0 == (0x80 * csum) | (0x20 * has_key) | (0x10 * has_seq)
    parsed = parse_gre(wire + payload)
    assert parsed == header
    assert isinstance(parsed, GREHeader)
    assert parsed.pack() == wire


@SETTINGS
@given(headers())
def test_build_parse_build_round_trip_for_any_flags_key_sequence_and_protocol(hp: tuple[GREHeader, bytes]) -> None:
    header, payload = hp
    wire = header.pack()
    parsed = parse_gre(wire + payload)
    assert parsed == header
    assert isinstance(parsed, GREHeader)
    assert parsed.pack() == wire
    assert gre.header_length(parsed.flags) == len(wire)


@pytest.mark.parametrize("value", [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF])
def test_extreme_keys_and_sequence_numbers_round_trip(value: int) -> None:
    header = GREHeader(gre.PROTO_IPV6, key=value, sequence=value)
    assert parse_gre(header.pack()) == header


@SETTINGS
@given(st.binary(max_size=40))
def test_parse_of_arbitrary_bytes_is_a_drop_or_a_header_that_packs_back_to_the_same_prefix(data: bytes) -> None:
    parsed = parse_gre(data)
    if isinstance(parsed, Drop):
        return
    assert isinstance(parsed, GREHeader)
    assert parsed.version == 0
    assert data[: parsed.length] == parsed.pack()


# --- checksum ------------------------------------------------------------------------------------


@SETTINGS
@given(headers())
def test_with_checksum_produces_a_header_that_parse_gre_accepts(hp: tuple[GREHeader, bytes]) -> None:
    base, payload = hp
    header = GREHeader(base.protocol, key=base.key, sequence=base.sequence).with_checksum(payload)
    wire = header.pack() + payload
    assert header.checksum is not None
    assert checksum_is_valid(wire)
    assert parse_gre(wire) == header


@SETTINGS
@given(headers())
def test_flipping_any_single_bit_except_c_makes_a_checksummed_packet_a_drop(hp: tuple[GREHeader, bytes]) -> None:
    base, payload = hp
    header = GREHeader(base.protocol, key=base.key, sequence=base.sequence).with_checksum(payload)
    wire = bytearray(header.pack() + payload)
    for bit in range(len(wire) * 8):
        if bit == 0:  # the C bit itself: see the next test
            continue
        damaged = bytearray(wire)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        result = parse_gre(bytes(damaged))
        assert isinstance(result, Drop), f"bit {bit} flipped and still accepted: {result}"
        if bit >= 16:  # beyond the flags word, nothing but the checksum can notice
            assert result is Drop.CSUM_BAD


def test_clearing_the_c_bit_turns_the_checksum_word_into_an_unchecked_header_by_design() -> None:
    # GRE has no way to protect the C bit itself: with C cleared, the header is 4 bytes shorter
    # and nothing is verified (RFC 2784 section 2.5; Linux behaves the same).
    payload = b"payload"
    header = GREHeader(gre.PROTO_IPV4, key=42).with_checksum(payload)
    damaged = bytearray(header.pack() + payload)
    damaged[0] ^= 0x80
    parsed = parse_gre(bytes(damaged))
    assert isinstance(parsed, GREHeader)
    assert parsed.checksum is None


def test_wrong_checksum_is_csum_bad() -> None:
    header = GREHeader(gre.PROTO_IPV4, checksum=0x1234)
    assert parse_gre(header.pack() + b"data") is Drop.CSUM_BAD


def test_checksum_covers_reserved1() -> None:
    payload = b"abc"
    header = GREHeader(gre.PROTO_IPV4, checksum=0, reserved1=0xBEEF).with_checksum(payload)
    assert parse_gre(header.pack() + payload) == header
    wire = bytearray(header.pack() + payload)
    wire[6] ^= 0x01
    assert parse_gre(bytes(wire)) is Drop.CSUM_BAD


# --- drop reasons --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", range(1, 8))
@pytest.mark.parametrize(("csum", "has_key", "has_seq"), FLAG_COMBINATIONS)
def test_version_other_than_zero_is_gre_version(version: int, csum: bool, has_key: bool, has_seq: bool) -> None:
    header = GREHeader(
        gre.PROTO_IPV4,
        checksum=0 if csum else None,
        key=1 if has_key else None,
        sequence=2 if has_seq else None,
        version=version,
    )
    assert parse_gre(header.pack() + b"data") is Drop.GRE_VERSION


def test_pptp_enhanced_gre_version_1_is_gre_version() -> None:
    # RFC 2637 enhanced GRE: K set, version 1, protocol PPP, payload length + call id.
    assert parse_gre(bytes.fromhex("2001880b00040000") + b"ppp!") is Drop.GRE_VERSION


@pytest.mark.parametrize(("csum", "has_key", "has_seq"), FLAG_COMBINATIONS)
def test_routing_bit_is_gre_routing(csum: bool, has_key: bool, has_seq: bool) -> None:
    flags = gre.FLAG_ROUTING | (gre.FLAG_CSUM * csum) | (gre.FLAG_KEY * has_key) | (gre.FLAG_SEQ * has_seq)
    wire = struct.pack("!HH", flags, gre.PROTO_IPV4) + bytes(20)
    assert parse_gre(wire) is Drop.GRE_ROUTING


def test_routing_bit_alone_in_a_four_byte_header_is_gre_routing_not_truncated() -> None:
    assert parse_gre(struct.pack("!HH", gre.FLAG_ROUTING, gre.PROTO_IPV4)) is Drop.GRE_ROUTING


@pytest.mark.parametrize(("csum", "has_key", "has_seq"), FLAG_COMBINATIONS)
def test_truncated_at_every_offset_is_gre_truncated(csum: bool, has_key: bool, has_seq: bool) -> None:
    wire = build(csum, 9 if has_key else None, 3 if has_seq else None, gre.PROTO_IPV4, b"").pack()
    for cut in range(len(wire)):
        assert parse_gre(wire[:cut]) is Drop.GRE_TRUNCATED, f"cut at {cut} of {len(wire)}"
    assert isinstance(parse_gre(wire), GREHeader)


def test_reserved_flag_bits_are_ignored_and_kept() -> None:
    # RFC 2784 section 2.3: a receiver that knows RFC 1701 may ignore s, Recur and the flags;
    # Linux's gre_parse_header drops only version != 0 and the routing bit.
    wire = struct.pack("!HH", 0x0FF8, gre.PROTO_IPV4)
    parsed = parse_gre(wire)
    assert isinstance(parsed, GREHeader)
    assert parsed.reserved0 == 0x1FF
    assert parsed.pack() == wire


# --- agreement with scapy ---------------------------------------------------------------------------


@SETTINGS
@given(headers(proto=scapy_proto))
def test_scapy_parses_what_we_build_to_the_same_field_values(hp: tuple[GREHeader, bytes]) -> None:
    header, payload = hp
    theirs = GRE(header.pack() + payload)
    assert theirs.version == 0
    assert theirs.routing_present == 0
    assert theirs.chksum_present == (header.checksum is not None)
    assert theirs.key_present == (header.key is not None)
    assert theirs.seqnum_present == (header.sequence is not None)
    assert theirs.proto == header.protocol
    if header.checksum is not None:
        assert theirs.chksum == header.checksum
        assert theirs.offset == header.reserved1
    if header.key is not None:
        assert theirs.key == header.key
    if header.sequence is not None:
        assert theirs.sequence_number == header.sequence
    # The three reserved fields scapy names, taken together, are our reserved0.
    assert (theirs.strict_route_source << 8) | (theirs.recursion_control << 5) | theirs.flags == header.reserved0


@SETTINGS
@given(st.booleans(), st.none() | u32, st.none() | u32, scapy_proto, payloads)
def test_we_parse_what_scapy_builds_to_the_same_field_values_including_its_checksum(
    csum: bool, key: int | None, seq: int | None, proto: int, payload: bytes
) -> None:
    fields: dict[str, int] = {"proto": proto, "chksum_present": int(csum)}
    if key is not None:
        fields |= {"key_present": 1, "key": key}
    if seq is not None:
        fields |= {"seqnum_present": 1, "sequence_number": seq}
    wire = bytes(GRE(**fields) / Raw(payload))
    ours = parse_gre(wire)
    assert isinstance(ours, GREHeader), ours
    theirs = GRE(wire)
    assert ours.protocol == proto
    assert ours.key == key
    assert ours.sequence == seq
    if csum:
        assert ours.checksum == theirs.chksum  # scapy computed it; we accepted it
        assert ours == GREHeader(proto, key=key, sequence=seq).with_checksum(payload)
    else:
        assert ours.checksum is None
    assert ours.pack() + payload == wire


def test_scapy_example_from_the_brief_parses_to_the_same_values() -> None:
    k, s, payload = 0x01020304, 0xFFFFFFFF, b"\x45" + bytes(19)
    wire = bytes(
        GRE(key_present=1, key=k, seqnum_present=1, sequence_number=s, chksum_present=1, proto=0x0800) / payload
    )
    ours = parse_gre(wire)
    assert isinstance(ours, GREHeader)
    assert (ours.key, ours.sequence, ours.protocol) == (k, s, 0x0800)
    assert ours.checksum == GRE(wire).chksum
    assert ours == GREHeader(0x0800, key=k, sequence=s).with_checksum(payload)
