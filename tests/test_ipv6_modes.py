"""The IPv6 modes through encapsulate / decapsulate: sit (6to4, 6rd, ISATAP), ipip6, ip6ip6, ip6gre.

What goes on the wire is read back by scapy (an independent dissector); what
comes in over IPv6 is handed to `Demux.decapsulate6` the way a raw IPv6 socket
delivers it: the payload after the IPv6 header and its extension headers, with
the addresses and traffic class beside it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import GRE, IP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from usertunnel.core import ipv4, ipv6, sit
from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.ipv6 import IPv6Header
from usertunnel.core.params import Mode, TunnelParams

A6 = ipaddress.IPv6Address("2001:db8:1::1").packed
B6 = ipaddress.IPv6Address("2001:db8:1::2").packed
A4 = bytes([198, 51, 100, 1])
B4 = bytes([198, 51, 100, 2])
UDP = 17


def v4_inner(tos: int = 0, payload: bytes = b"inner v4") -> bytes:
    src, dst = bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2])
    header = IPv4Header(tos, 20 + len(payload), 7, ipv4.FLAG_DF, 64, 253, 0, src, dst)
    return header.with_checksum().pack() + payload


def v6_inner(src: str = "2001:db8:2::1", dst: str = "2001:db8:2::2", tclass: int = 0, label: int = 0x12345,
             next_header: int = 59, body: bytes = b"inner v6") -> bytes:  # fmt: skip
    a, b = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return IPv6Header(tclass, label, len(body), next_header, 64, a, b).pack() + body


def pair(mode: Mode, **kw: Any) -> tuple[Tunnel, Tunnel]:
    """(ours at A, the peer at B), matching each other."""
    a, b = (A6, B6) if mode.value.outer == 6 else (A4, B4)
    ours = Tunnel(TunnelParams("t", mode, a, b, **kw))
    peer = Tunnel(TunnelParams("p", mode, b, a, **kw))
    return ours, peer


def as_delivered(wire: bytes) -> tuple[bytes, bytes, int, bytes]:
    """What a raw IPv6 socket hands over: (src, dst, traffic class, payload after the extension headers)."""
    found = ipv6.upper_layer(wire)
    assert isinstance(found, ipv6.UpperLayer)
    return wire[8:24], wire[24:40], ipv6.traffic_class(wire), wire[found.offset :]


def receive6(demux: Demux, mode: Mode, wire: bytes) -> object:
    src, dst, tclass, payload = as_delivered(wire)
    return demux.decapsulate6(mode.value.ip_protocol, src, dst, tclass, payload)


OUTER6 = [Mode.IPIP6, Mode.IP6IP6, Mode.IP6GRE]


@pytest.mark.parametrize("mode", OUTER6, ids=lambda m: m.value.name)
def test_ipv6_outer_header_is_what_ip6_tunnel_sends_with_the_encapsulation_limit_option(mode: Mode) -> None:
    ours, peer = pair(mode, ttl=64)
    inner = v4_inner() if 4 in mode.value.families else v6_inner()
    wire = peer.encapsulate(inner)
    assert isinstance(wire, bytes)
    outer = IPv6(wire)
    assert outer.src == "2001:db8:1::2" and outer.dst == "2001:db8:1::1"
    assert outer.hlim == 64 and outer.plen == len(wire) - 40
    assert outer.nh == 60  # a destination options header first
    opt = outer[IPv6ExtHdrDestOpt]
    assert opt.nh == mode.value.ip_protocol
    assert bytes(wire[40:48]) == bytes([mode.value.ip_protocol, 0, 4, 1, 4, 1, 1, 0])  # init_tel_txopt's bytes
    assert outer.fl != 0  # an automatic flow label, as Linux's auto_flowlabels
    got = receive6(demux_of(ours), mode, wire)
    assert isinstance(got, Received) and bytes(got.inner) == inner


def demux_of(*tunnels: Tunnel) -> Demux:
    demux = Demux()
    for t in tunnels:
        demux.add(t)
    return demux


def test_encaplimit_none_sends_no_option_and_the_mtu_overhead_follows() -> None:
    ours, peer = pair(Mode.IP6IP6, encaplimit=None)
    wire = peer.encapsulate(v6_inner())
    assert isinstance(wire, bytes) and wire[6] == 41 and len(wire) == 40 + len(v6_inner())
    assert peer.params.header_length == 40
    assert pair(Mode.IP6IP6)[1].params.header_length == 48
    assert pair(Mode.IP6GRE, ikey=1, okey=1)[1].params.header_length == 56
    assert pair(Mode.IP6GRE)[1].params.default_mtu(1500) == 1448  # Linux's ip6gre0 default


def test_an_inner_encapsulation_limit_wins_and_zero_stops_the_packet() -> None:
    _, peer = pair(Mode.IP6IP6)
    limited = v6_inner(next_header=60, body=ipv6.encap_limit_option(3, 59))
    wire = peer.encapsulate(limited)
    assert isinstance(wire, bytes) and ipv6.encap_limit(wire) == 2
    exhausted = v6_inner(next_header=60, body=ipv6.encap_limit_option(0, 59))
    assert peer.encapsulate(exhausted) is Drop.ENCAP_LIMIT
    assert peer.counters.drops == {Drop.ENCAP_LIMIT: 1}


def test_flow_label_fixed_or_inherited_and_traffic_class_with_rfc6040_ecn() -> None:
    _, fixed = pair(Mode.IP6IP6, flowlabel=0xABCDE, tos=0x28)
    wire = fixed.encapsulate(v6_inner(tclass=0x02))  # ECT(0) inside
    assert isinstance(wire, bytes)
    assert IPv6(wire).fl == 0xABCDE and IPv6(wire).tc == 0x28 | 0x02
    _, inherit = pair(Mode.IP6IP6, flowlabel=None, tos=None)
    wire = inherit.encapsulate(v6_inner(tclass=0xB8, label=0x54321))
    assert isinstance(wire, bytes) and IPv6(wire).fl == 0x54321 and IPv6(wire).tc == 0xB8


def test_outer_ce_over_a_not_ect_inner_packet_is_dropped_over_ipv6_too() -> None:
    ours, peer = pair(Mode.IPIP6)
    wire = bytearray(peer.encapsulate(v4_inner(tos=0)))  # type: ignore[arg-type]
    src, dst, _, payload = as_delivered(bytes(wire))
    demux = demux_of(ours)
    assert demux.decapsulate6(4, src, dst, 0x03, payload) is Drop.ECN_CE_NOT_ECT


@pytest.mark.parametrize(
    ("mode", "inner"),
    [(Mode.IPIP6, v6_inner()), (Mode.IP6IP6, v4_inner()), (Mode.SIT, v4_inner())],
    ids=["ipv6-into-ipip6", "ipv4-into-ip6ip6", "ipv4-into-sit"],
)
def test_a_family_the_mode_cannot_carry_is_dropped_and_counted(mode: Mode, inner: bytes) -> None:
    _, peer = pair(mode)
    assert peer.encapsulate(inner) is Drop.FAMILY


def test_an_ipv6_packet_from_a_stranger_or_to_another_address_finds_no_tunnel() -> None:
    ours, peer = pair(Mode.IP6GRE, ikey=5, okey=5)
    demux = demux_of(ours)
    wire = peer.encapsulate(v4_inner())
    assert isinstance(wire, bytes)
    src, dst, tclass, payload = as_delivered(wire)
    stranger = ipaddress.IPv6Address("2001:db8:1::99").packed
    assert demux.decapsulate6(47, stranger, dst, tclass, payload) is Drop.NO_TUNNEL
    assert isinstance(demux.decapsulate6(47, src, dst, tclass, payload), Received)
    # An IPv4 GRE tunnel and an IPv6 one never compete, even with equal keys.
    v4 = Tunnel(TunnelParams("g4", Mode.GRE, None, None, ikey=5, okey=5))
    both = demux_of(ours, v4)
    got = both.decapsulate6(47, src, dst, tclass, payload)
    assert isinstance(got, Received) and got.tunnel is ours


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(OUTER6),
    st.none() | st.integers(0, 255),
    st.none() | st.integers(0, 255),
    st.none() | st.integers(1, 255),
    st.binary(max_size=80),
)
def test_property_every_ipv6_mode_round_trips_and_scapy_agrees_on_the_header(
    mode: Mode, limit: int | None, tclass: int | None, hops: int | None, body: bytes
) -> None:
    ours, peer = pair(mode, encaplimit=limit, tos=tclass, ttl=hops)
    inner = v4_inner(payload=body) if 4 in mode.value.families else v6_inner(body=body)
    wire = peer.encapsulate(inner)
    assert isinstance(wire, bytes)
    outer = IPv6(wire)
    assert outer.plen == len(wire) - 40
    assert outer.hlim == (hops if hops is not None else 64)
    assert (outer.nh == 60) is (limit is not None)
    got = receive6(demux_of(ours), mode, wire)
    assert isinstance(got, Received) and bytes(got.inner) == inner


# --- sit: fixed remote, 6to4, 6rd, ISATAP --------------------------------------------------------------


def test_sit_puts_ipv6_in_ipv4_protocol_41() -> None:
    ours, peer = pair(Mode.SIT, ttl=64)
    wire = peer.encapsulate(v6_inner())
    assert isinstance(wire, bytes)
    outer = IP(wire)
    assert outer.proto == 41 and outer.src == "198.51.100.2" and outer.dst == "198.51.100.1" and outer.flags.DF
    got = demux_of(ours).decapsulate(wire)
    assert isinstance(got, Received) and bytes(got.inner) == v6_inner()


def sixtofour(v4: bytes, host: int = 1) -> str:
    return str(ipaddress.IPv6Address(sit.six_to_four_prefix(v4)[:6] + bytes(2) + host.to_bytes(8, "big")))


def test_sit_6to4_derives_each_destination_and_refuses_what_has_none() -> None:
    a = Tunnel(TunnelParams("a", Mode.SIT, A4, None))
    assert a.dynamic_destination
    wire = a.encapsulate(v6_inner(src=sixtofour(A4), dst=sixtofour(B4)))
    assert isinstance(wire, bytes) and IP(wire).dst == "198.51.100.2"
    assert a.encapsulate(v6_inner(src=sixtofour(A4), dst="2001:db8:9::1")) is Drop.NO_IPV4_DESTINATION
    # The IPv4-compatible form (::a.b.c.d) is the kernel's NBMA fallback.
    wire = a.encapsulate(v6_inner(src=sixtofour(A4), dst="::198.51.100.7"))
    assert isinstance(wire, bytes) and IP(wire).dst == "198.51.100.7"


def test_sit_6to4_refuses_an_inner_source_that_does_not_embed_the_outer_one() -> None:
    a = Tunnel(TunnelParams("a", Mode.SIT, A4, None))
    b = Tunnel(TunnelParams("b", Mode.SIT, B4, None))
    demux = demux_of(a)
    honest = b.encapsulate(v6_inner(src=sixtofour(B4), dst=sixtofour(A4)))
    assert isinstance(honest, bytes)
    assert isinstance(demux.decapsulate(honest), Received)
    spoofed = b.encapsulate(v6_inner(src=sixtofour(bytes([198, 51, 100, 77])), dst=sixtofour(A4)))
    assert isinstance(spoofed, bytes)
    assert demux.decapsulate(spoofed) is Drop.SIT_SPOOFED
    assert a.counters.drops == {Drop.SIT_SPOOFED: 1}


def test_sit_6rd_takes_the_embedded_bits_after_the_delegated_prefix() -> None:
    # RFC 5969: 6rd prefix 2001:db8::/32, relay prefix 198.51.100.0/24: 8 bits of IPv4 embedded.
    sixrd = sit.SixRd.from_text("2001:db8::/32", "198.51.100.0/24")
    a = Tunnel(TunnelParams("a", Mode.SIT, A4, None, sixrd=sixrd))
    delegated = sixrd.delegated_prefix(B4)
    dst = str(ipaddress.IPv6Address(delegated[:8] + bytes(7) + b"\x01"))
    wire = a.encapsulate(v6_inner(src=str(ipaddress.IPv6Address(sixrd.delegated_prefix(A4))), dst=dst))
    assert isinstance(wire, bytes) and IP(wire).dst == "198.51.100.2"


def test_isatap_reaches_isatap_addresses_and_sends_the_rest_to_the_default_router() -> None:
    router = bytes([198, 51, 100, 9])
    prl = (sit.PrlEntry(router, True),)
    a = Tunnel(TunnelParams("a", Mode.ISATAP, A4, None, prl=prl))
    prefix = ipaddress.IPv6Address("2001:db8:5::").packed
    to_b = str(ipaddress.IPv6Address(sit.isatap_address(prefix, B4)))
    wire = a.encapsulate(v6_inner(dst=to_b))
    assert isinstance(wire, bytes) and IP(wire).dst == "198.51.100.2"
    wire = a.encapsulate(v6_inner(dst="2001:db8:77::1"))
    assert isinstance(wire, bytes) and IP(wire).dst == "198.51.100.9"
    lonely = Tunnel(TunnelParams("l", Mode.ISATAP, A4, None))
    assert lonely.encapsulate(v6_inner(dst="2001:db8:77::1")) is Drop.NO_IPV4_DESTINATION


def test_isatap_accepts_a_host_whose_address_embeds_its_outer_source_and_refuses_a_spoofer() -> None:
    prefix = ipaddress.IPv6Address("2001:db8:5::").packed
    a = Tunnel(TunnelParams("a", Mode.ISATAP, A4, None))
    a.device_addresses = (sit.DeviceAddress(sit.isatap_address(prefix, A4), 64),)
    b = Tunnel(TunnelParams("b", Mode.ISATAP, B4, None))
    demux = demux_of(a)
    me = str(ipaddress.IPv6Address(sit.isatap_address(prefix, A4)))
    honest = b.encapsulate(v6_inner(src=str(ipaddress.IPv6Address(sit.isatap_address(prefix, B4))), dst=me))
    assert isinstance(honest, bytes) and isinstance(demux.decapsulate(honest), Received)
    liar = sit.isatap_address(prefix, bytes([198, 51, 100, 66]))
    spoofed = b.encapsulate(v6_inner(src=str(ipaddress.IPv6Address(liar)), dst=me))
    assert isinstance(spoofed, bytes) and demux.decapsulate(spoofed) is Drop.SIT_SPOOFED


# --- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"mode": Mode.IP6GRE, "local": A4}, "runs over IPv6: local must be an IPv6 address"),
        ({"mode": Mode.SIT, "local": A6}, "runs over IPv4: local must be an IPv4 address"),
        ({"mode": Mode.GRE, "local": A4, "flowlabel": 5}, "belong to IPv6 outer headers"),
        ({"mode": Mode.ISATAP, "local": A4, "remote": B4}, "mode isatap has no fixed remote"),
        ({"mode": Mode.GRE, "local": A4, "sixrd": sit.SIX_TO_FOUR}, "6rd prefixes belong to mode sit"),
        ({"mode": Mode.SIT, "local": A4, "prl": (sit.PrlEntry(B4, True),)}, "belongs to mode isatap"),
    ],
)
def test_options_of_the_wrong_family_or_mode_are_refused(kw: dict[str, Any], words: str) -> None:
    kw.setdefault("remote", None)
    with pytest.raises(ConfigError, match=words):
        TunnelParams("x", **kw)


def test_a_gre_packet_over_ipv6_carries_ipv4_and_ipv6_and_scapy_reads_the_key() -> None:
    ours, peer = pair(Mode.IP6GRE, ikey=1234, okey=1234, oseq=True, iseq=True, ocsum=True, icsum=True)
    demux = demux_of(ours)
    for inner in (v4_inner(), v6_inner()):
        wire = peer.encapsulate(inner)
        assert isinstance(wire, bytes)
        assert IPv6(wire)[GRE].key == 1234
        got = receive6(demux, Mode.IP6GRE, wire)
        assert isinstance(got, Received) and bytes(got.inner) == inner
