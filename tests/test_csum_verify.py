"""`--csum-verify derived`: a received GRE checksum checked from the headers, the TCP/UDP payload left to
the receiving host's own checksum. What it catches, what it leaves to the host, and that a right packet
always passes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from usertunnel.core.checksum import checksum_is_valid, csum_derived_is_valid
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
SETTINGS = settings(max_examples=300, deadline=None)
GRE_OFFSET = 20  # the outer IPv4 header our encapsulate writes


def tunnel(local: bytes, remote: bytes, verify: str = "full") -> Tunnel:
    params = TunnelParams(
        "gre0", Mode.GRE, local, remote, ikey=7, okey=7, iseq=True, oseq=True, icsum=True, ocsum=True,
        csum_verify=verify,
    )  # fmt: skip
    return Tunnel(params)


def inner_packets() -> st.SearchStrategy[bytes]:
    payload = st.binary(min_size=0, max_size=1400)
    port = st.integers(1, 65535)
    v4 = st.builds(
        lambda kind, sport, data, ttl: bytes(
            IP(src="203.0.113.1", dst="203.0.113.2", ttl=ttl)
            / (TCP(sport=sport, dport=80) if kind == "tcp" else UDP(sport=sport, dport=53) if kind == "udp" else ICMP())
            / data
        ),
        st.sampled_from(["tcp", "udp", "icmp"]), port, payload, st.integers(1, 255),
    )  # fmt: skip
    v6 = st.builds(
        lambda kind, sport, data: bytes(
            IPv6(src="2001:db8::1", dst="2001:db8::2")
            / (TCP(sport=sport, dport=80) if kind == "tcp" else UDP(sport=sport, dport=53))
            / data
        ),
        st.sampled_from(["tcp", "udp"]), port, payload,
    )  # fmt: skip
    return st.one_of(v4, v6)


def gre_payload(inner: bytes) -> tuple[bytes, int]:
    """What our tunnel sends for `inner`, from the GRE header on, and the GRE header's length."""
    packet = tunnel(A, B).encapsulate(inner)
    assert isinstance(packet, bytes)
    return packet[GRE_OFFSET:], 16  # checksum, key and sequence: 4 + 4 + 4 + 4


@SETTINGS
@given(inner_packets())
def test_property_a_right_packet_passes_both_checks(inner: bytes) -> None:
    payload, hlen = gre_payload(inner)
    assert checksum_is_valid(payload)
    assert csum_derived_is_valid(payload, hlen)


@SETTINGS
@given(inner_packets(), st.data())
def test_property_damage_to_the_gre_header_is_caught_by_both(inner: bytes, data: st.DataObject) -> None:
    payload, hlen = gre_payload(inner)
    bit = data.draw(st.integers(0, hlen * 8 - 1))
    damaged = bytearray(payload)
    damaged[bit // 8] ^= 0x80 >> (bit % 8)
    assert not checksum_is_valid(damaged)
    assert not csum_derived_is_valid(damaged, hlen)


def own_checksums_are_right(inner: bytes) -> bool:
    """What the receiving host checks of an inner packet: its IPv4 header checksum, its TCP/UDP checksum."""
    if inner[0] >> 4 == 4:
        ihl = (inner[0] & 0x0F) << 2
        if not checksum_is_valid(inner[:ihl]):
            return False
        packet = IP(inner)
    else:
        packet = IPv6(inner)
    kinds = [kind for kind in (TCP, UDP, ICMP) if kind in packet]
    if not kinds:
        return True
    layer = packet[kinds[0]]
    sent = layer.chksum
    del layer.chksum
    rebuilt = IP(bytes(packet)) if inner[0] >> 4 == 4 else IPv6(bytes(packet))
    again = rebuilt[type(layer)]
    return bool(again.chksum == sent)


@SETTINGS
@given(inner_packets(), st.data())
def test_property_damage_the_derived_check_lets_through_is_shown_by_the_inner_packets_own_checksums(
    inner: bytes, data: st.DataObject
) -> None:
    """The full check catches any damage to the inner packet. The derived one may let damage through only
    where the inner packet's own checksums, which its receiving host verifies, show it."""
    payload, hlen = gre_payload(inner)
    assert own_checksums_are_right(inner)
    bit = data.draw(st.integers(0, len(inner) * 8 - 1))
    damaged = bytearray(payload)
    damaged[hlen + bit // 8] ^= 0x80 >> (bit % 8)
    assert not checksum_is_valid(damaged)
    if csum_derived_is_valid(damaged, hlen):
        assert not own_checksums_are_right(bytes(damaged[hlen:]))


def test_damage_inside_a_tcp_payload_passes_the_derived_check_and_not_the_full_one() -> None:
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=1, dport=2) / (b"x" * 1000))
    payload, hlen = gre_payload(inner)
    damaged = bytearray(payload)
    damaged[hlen + 500] ^= 0x04
    assert not checksum_is_valid(damaged)
    assert csum_derived_is_valid(damaged, hlen)  # left to the host's TCP checksum
    assert not own_checksums_are_right(bytes(damaged[hlen:]))


def test_damage_to_an_inner_ipv4_ttl_is_caught_by_the_derived_check() -> None:
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2", ttl=64) / UDP(sport=1, dport=2) / (b"y" * 200))
    payload, hlen = gre_payload(inner)
    damaged = bytearray(payload)
    damaged[hlen + 8] ^= 0x01
    assert not csum_derived_is_valid(damaged, hlen)


def test_icmp_is_summed_in_full_by_the_derived_check() -> None:
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / ICMP() / (b"z" * 300))
    payload, hlen = gre_payload(inner)
    damaged = bytearray(payload)
    damaged[hlen + 100] ^= 0x10
    assert not csum_derived_is_valid(damaged, hlen)


def test_a_tunnel_verifying_derived_drops_a_bad_checksum_field_and_delivers_a_right_packet() -> None:
    inner = bytes(IP(src="203.0.113.1", dst="203.0.113.2") / TCP(sport=1, dport=2) / (b"x" * 1000))
    ours = tunnel(B, A, "derived")
    demux = Demux()
    demux.add(ours)
    sent = tunnel(A, B).encapsulate(inner)
    assert isinstance(sent, bytes)
    got = demux.decapsulate(sent)
    assert isinstance(got, Received) and bytes(got.inner) == inner
    bad = bytearray(tunnel(A, B).encapsulate(inner))  # type: ignore[arg-type]
    bad[GRE_OFFSET + 4] ^= 0x01  # the checksum field
    assert demux.decapsulate(bytes(bad)) is Drop.CSUM_BAD
    assert ours.counters.drops[Drop.CSUM_BAD] == 1


def test_derived_verification_needs_a_tunnel_that_requires_checksums() -> None:
    with pytest.raises(ConfigError, match="use it with --csum or --icsum"):
        TunnelParams("gre0", Mode.GRE, A, B, csum_verify="derived")
    with pytest.raises(ConfigError, match="invalid csum-verify 'partial'"):
        TunnelParams("gre0", Mode.GRE, A, B, icsum=True, csum_verify="partial")
