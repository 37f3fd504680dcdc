"""Path MTU in the core: what a tunnel learns from "fragmentation needed", what it refuses, the ICMP
it answers with (read back by scapy), and IPv4 fragmentation of outer packets without DF."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, IPerror, defragment
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6

from usertunnel.core import icmp, ipv4
from usertunnel.core.drops import Drop
from usertunnel.core.encap import MIN_PMTU, PMTU_EXPIRES, Tunnel
from usertunnel.core.ipv4 import IPv4Header
from usertunnel.core.ipv6 import IPv6Header
from usertunnel.core.params import Mode, TunnelParams

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 6])


def v4(size: int, df: bool = True) -> bytes:
    payload = bytes(size - 20)
    src, dst = bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2])
    header = IPv4Header(0, size, 9, ipv4.FLAG_DF if df else 0, 64, 17, 0, src, dst)
    return header.with_checksum().pack() + payload


def v6(size: int) -> bytes:
    a, b = bytes.fromhex("20010db8010000000000000000000001"), bytes.fromhex("20010db8010000000000000000000002")
    return IPv6Header(0, 0, size - 40, 59, 64, a, b).pack() + bytes(size - 40)


def gre(**kw: object) -> Tunnel:
    return Tunnel(TunnelParams("t", Mode.GRE, A, B, **kw))  # type: ignore[arg-type]


def test_a_learned_path_mtu_refuses_df_and_ipv6_packets_that_no_longer_fit() -> None:
    t = gre()
    assert t.update_path_mtu(1300, now=10.0)
    assert isinstance(t.encapsulate(v4(1276), 11.0), bytes)  # 1276 + 24 = 1300 fits
    assert t.encapsulate(v4(1277), 11.0) is Drop.FRAG_NEEDED
    assert t.encapsulate(v6(1300), 11.0) is Drop.FRAG_NEEDED
    assert isinstance(t.encapsulate(v4(1400, df=False), 11.0), bytes)  # no DF: Linux sends it anyway
    assert t.counters.drops == {Drop.FRAG_NEEDED: 2}


def test_the_path_mtu_only_goes_down_has_a_floor_and_expires() -> None:
    t = gre()
    assert t.update_path_mtu(1400, 0.0)
    assert not t.update_path_mtu(1450, 1.0)
    assert t.update_path_mtu(100, 2.0) and t.path_mtu == MIN_PMTU
    assert t.encapsulate(v4(1000), 3.0) is Drop.FRAG_NEEDED
    assert isinstance(t.encapsulate(v4(1000), 2.0 + PMTU_EXPIRES + 1), bytes)
    assert t.path_mtu is None


def test_the_icmp_answer_names_the_inner_mtu_and_quotes_the_packet() -> None:
    t = gre(ikey=1, okey=1)  # 28 bytes of overhead
    t.update_path_mtu(1300, 0.0)
    big = v4(1400)
    reply = t.too_big(big)
    assert reply is not None
    packet = IP(reply)
    assert packet.src == "203.0.113.2" and packet.dst == "203.0.113.1"
    assert packet[ICMP].type == 3 and packet[ICMP].code == 4 and packet[ICMP].nexthopmtu == 1272
    assert len(reply) <= 576 and packet[IPerror].dst == "203.0.113.2"
    rebuilt = IP(bytes(reply))
    del rebuilt[ICMP].chksum
    assert IP(bytes(rebuilt))[ICMP].chksum == packet[ICMP].chksum  # scapy computes the same checksum
    six = IPv6(t.too_big(v6(1400)))
    assert six[ICMPv6PacketTooBig].mtu == 1280  # never below IPv6's minimum
    fresh = IPv6(bytes(six))
    del fresh[ICMPv6PacketTooBig].cksum
    assert IPv6(bytes(fresh))[ICMPv6PacketTooBig].cksum == six[ICMPv6PacketTooBig].cksum


def test_the_underlay_link_mtu_refuses_what_the_raw_socket_could_not_send() -> None:
    t = gre()
    t.link_mtu = 1300
    assert t.encapsulate(v4(1300), 0.0) is Drop.FRAG_NEEDED
    reply = t.too_big(v4(1300))
    assert reply is not None and IP(reply)[ICMP].nexthopmtu == 1276
    loose = gre(pmtudisc=False)
    loose.link_mtu = 1300
    assert isinstance(loose.encapsulate(v4(1400, df=False), 0.0), bytes)  # the shell cuts it into fragments


def test_icmp_builders_fit_their_rfc_size_limits() -> None:
    assert len(icmp.frag_needed(v4(1500), 1000)) <= icmp.IPV4_QUOTE_LIMIT
    assert len(icmp.packet_too_big(v6(1500), 1280)) <= icmp.IPV6_MIN_MTU


@settings(max_examples=100, deadline=None)
@given(st.integers(28, 4000), st.integers(68, 1500))
def test_property_fragments_fit_the_mtu_and_reassemble_to_the_packet(size: int, mtu: int) -> None:
    outer = v4(size, df=False)
    pieces = ipv4.fragment(outer, mtu)
    assert all(len(p) <= mtu for p in pieces)
    assert all(ipv4.header_checksum_ok(p) for p in pieces)
    whole = defragment([IP(p) for p in pieces])
    assert len(whole) == 1 and bytes(whole[0])[20:] == outer[20:]
