"""`checksum.inner_sum`: the GRE checksum's sum over the inner packet, derived in O(1) for TCP and UDP,
must equal the byte-by-byte sum for every packet whose checksums are right (and fall back for the rest)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from usertunnel.core.checksum import inner_sum, ones_complement_sum

SETTINGS = settings(max_examples=400, deadline=None)
v4 = st.tuples(st.integers(1, 254), st.integers(1, 254)).map(lambda t: f"203.0.113.{t[0]}")
v6 = st.integers(1, 2**64 - 1).map(lambda n: f"2001:db8::{n & 0xFFFF:x}:{n >> 16 & 0xFFFF:x}")


@SETTINGS
@given(v4, v4, st.sampled_from(["tcp", "udp"]), st.binary(max_size=1500), st.integers(0, 2**32 - 1))
def test_property_derived_sum_equals_the_full_sum_for_ipv4_tcp_and_udp(
    src: str, dst: str, kind: str, payload: bytes, seq: int
) -> None:
    l4 = TCP(sport=seq & 0xFFFF, dport=80, seq=seq) if kind == "tcp" else UDP(sport=seq & 0xFFFF, dport=53)
    packet = bytes(IP(src=src, dst=dst, ttl=seq % 255 + 1) / l4 / payload)
    assert inner_sum(packet) == ones_complement_sum(packet)


@SETTINGS
@given(v6, v6, st.sampled_from(["tcp", "udp"]), st.binary(max_size=1500), st.integers(0, 2**20 - 1))
def test_property_derived_sum_equals_the_full_sum_for_ipv6_tcp_and_udp(
    src: str, dst: str, kind: str, payload: bytes, label: int
) -> None:
    l4 = TCP(sport=label & 0xFFFF, dport=80) if kind == "tcp" else UDP(sport=label & 0xFFFF, dport=53)
    packet = bytes(IPv6(src=src, dst=dst, fl=label) / l4 / payload)
    assert inner_sum(packet) == ones_complement_sum(packet)


@SETTINGS
@given(st.binary(max_size=300))
def test_property_anything_else_is_summed_byte_by_byte(data: bytes) -> None:
    # Arbitrary bytes rarely look like a consistent TCP/UDP packet; when they do not, the full sum is used.
    if len(data) < 40 or data[0] >> 4 not in (4, 6):
        assert inner_sum(data) == ones_complement_sum(data)


def test_udp_without_a_checksum_fragments_and_extension_headers_fall_back_to_the_full_sum() -> None:
    no_csum = bytearray(bytes(IP(src="203.0.113.1", dst="203.0.113.2") / UDP(sport=1, dport=2) / (b"x" * 100)))
    no_csum[26:28] = b"\x00\x00"
    fragment = bytes(IP(src="203.0.113.1", dst="203.0.113.2", flags="MF") / UDP() / (b"y" * 100))
    ext = bytes(IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrDestOpt() / UDP() / (b"z" * 100))
    for packet in (bytes(no_csum), fragment, ext):
        assert inner_sum(packet) == ones_complement_sum(packet)
