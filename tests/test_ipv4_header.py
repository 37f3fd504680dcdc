"""IPv4 header (RFC 791): pack/parse round trips, checksum against scapy, drops for malformed headers."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP

from usertunnel.core import ipv4
from usertunnel.core.checksum import checksum_is_valid
from usertunnel.core.drops import Drop
from usertunnel.core.ipv4 import IPv4Header, header_checksum_ok, parse_ipv4

SETTINGS = settings(max_examples=200, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
addresses = st.binary(min_size=4, max_size=4)
any_options = st.integers(0, 10).flatmap(lambda words: st.binary(min_size=4 * words, max_size=4 * words))
# Options scapy dissects and rebuilds byte for byte: NOPs, Router Alert (RFC 2113), then EOL padding.
_NOP, _ROUTER_ALERT, _EOL = b"\x01", b"\x94\x04\x00\x00", b"\x00"


@st.composite
def scapy_options(draw: st.DrawFn) -> bytes:
    parts = draw(st.lists(st.sampled_from([_NOP, _ROUTER_ALERT]), max_size=8))
    body = b"".join(parts)[:39]
    if draw(st.booleans()):
        body += _EOL
    return body + _EOL * (-len(body) % 4)


@st.composite
def ipv4_headers(draw: st.DrawFn, options: st.SearchStrategy[bytes] = any_options) -> IPv4Header:
    opts = draw(options)
    return IPv4Header(
        tos=draw(u8),
        total_length=draw(st.integers(ipv4.MIN_HEADER_LEN + len(opts), 0xFFFF)),
        identification=draw(u16),
        frag_off=draw(u16),
        ttl=draw(u8),
        protocol=draw(u8),
        checksum=draw(u16),
        src=draw(addresses),
        dst=draw(addresses),
        options=opts,
    )


@SETTINGS
@given(ipv4_headers(), st.binary(max_size=32))
def test_pack_parse_round_trip_for_any_header(header: IPv4Header, payload: bytes) -> None:
    wire = header.pack()
    assert len(wire) == header.header_length == header.ihl * 4
    assert wire[0] == 0x40 | header.ihl
    assert parse_ipv4(wire + payload) == header
    assert parse_ipv4(wire) == header


@SETTINGS
@given(ipv4_headers())
def test_with_checksum_makes_the_header_valid_and_changes_nothing_else(header: IPv4Header) -> None:
    fixed = header.with_checksum()
    assert header_checksum_ok(fixed.pack())
    assert checksum_is_valid(fixed.pack())
    assert replace(fixed, checksum=header.checksum) == header
    assert fixed.with_checksum() == fixed  # idempotent: the old checksum value does not leak in


@SETTINGS
@given(ipv4_headers(options=scapy_options()))
def test_with_checksum_equals_scapys_computed_checksum(header: IPv4Header) -> None:
    theirs = IP(header.pack())
    assert bytes(theirs)[: header.header_length] == header.pack()  # scapy read it as we wrote it
    theirs.chksum = None
    rebuilt = bytes(theirs)
    (scapy_checksum,) = struct.unpack_from("!H", rebuilt, 10)
    assert header.with_checksum().checksum == scapy_checksum
    assert rebuilt[: header.header_length] == header.with_checksum().pack()


def test_with_checksum_matches_scapy_for_a_header_scapy_builds_itself() -> None:
    theirs = bytes(IP(src="192.0.2.1", dst="198.51.100.2", ttl=64, tos=0xB8, id=0x1234, flags="DF", proto=47))
    parsed = parse_ipv4(theirs)
    assert isinstance(parsed, IPv4Header)
    assert parsed.with_checksum() == parsed
    assert parsed.dont_fragment and not parsed.is_fragment


@pytest.mark.parametrize(
    ("frag_off", "dont_fragment", "is_fragment"),
    [(0, False, False), (0x4000, True, False), (0x2000, False, True), (0x0001, False, True), (0x6001, True, True)],
)
def test_flag_properties_read_the_fragment_word(frag_off: int, dont_fragment: bool, is_fragment: bool) -> None:
    header = IPv4Header(0, 20, 0, frag_off, 64, 6, 0, bytes(4), bytes(4))
    assert header.dont_fragment is dont_fragment
    assert header.is_fragment is is_fragment


# --- malformed headers are drops, never exceptions ------------------------------------------------


def _valid(options: bytes = b"") -> bytes:
    return IPv4Header(0, 20 + len(options) + 8, 1, 0, 64, 17, 0, bytes(4), bytes(4), options).with_checksum().pack()


@pytest.mark.parametrize("options", [b"", b"\x01\x01\x01\x00", bytes(40)])
def test_truncated_at_every_offset_is_a_drop(options: bytes) -> None:
    wire = _valid(options)
    for cut in range(len(wire)):
        assert parse_ipv4(wire[:cut]) is Drop.OUTER_MALFORMED, f"cut at {cut} of {len(wire)}"
    assert isinstance(parse_ipv4(wire), IPv4Header)


@pytest.mark.parametrize("version", [v for v in range(16) if v != 4])
def test_wrong_version_is_a_drop(version: int) -> None:
    wire = bytearray(_valid())
    wire[0] = (version << 4) | 5
    assert parse_ipv4(bytes(wire)) is Drop.OUTER_MALFORMED


@pytest.mark.parametrize("ihl", range(5))
def test_ihl_below_five_is_a_drop(ihl: int) -> None:
    wire = bytearray(_valid())
    wire[0] = 0x40 | ihl
    assert parse_ipv4(bytes(wire) + bytes(40)) is Drop.OUTER_MALFORMED


@pytest.mark.parametrize(("ihl", "total_length"), [(5, 0), (5, 19), (6, 20), (6, 23), (15, 59)])
def test_total_length_below_the_header_length_is_a_drop(ihl: int, total_length: int) -> None:
    wire = bytearray(_valid() + bytes(40))
    wire[0] = 0x40 | ihl
    struct.pack_into("!H", wire, 2, total_length)
    assert parse_ipv4(bytes(wire)) is Drop.OUTER_MALFORMED


def test_total_length_equal_to_the_header_length_is_accepted() -> None:
    wire = bytearray(_valid())
    struct.pack_into("!H", wire, 2, 20)
    assert isinstance(parse_ipv4(bytes(wire)), IPv4Header)


@SETTINGS
@given(st.binary(max_size=80))
def test_parse_of_arbitrary_bytes_is_a_drop_or_a_header_that_packs_back_to_the_same_prefix(data: bytes) -> None:
    parsed = parse_ipv4(data)
    if isinstance(parsed, Drop):
        assert parsed is Drop.OUTER_MALFORMED
        return
    assert data[: parsed.header_length] == parsed.pack()
    assert parsed.header_length <= parsed.total_length


@SETTINGS
@given(ipv4_headers())
def test_parse_accepts_bytearray_and_memoryview_alike(header: IPv4Header) -> None:
    wire = header.pack()
    assert parse_ipv4(bytearray(wire)) == parse_ipv4(memoryview(wire)) == header
