"""gretap: Ethernet frames over GRE (protocol type 0x6558) through a TAP device — core and end to end.

Two namespaces share one L2 segment across the tunnel: ARP and IPv6 neighbour
discovery cross it, and each side learns the other's MAC address.
"""

from __future__ import annotations

import os
import re
import time

import pytest
from conftest import INNER_A, INNER_B, UNDER_A, UNDER_B, Lab
from scapy.layers.inet import GRE, ICMP, IP
from scapy.layers.l2 import ARP, Ether
from traffic import tcp_transfer

from usertunnel.core.drops import Drop
from usertunnel.core.encap import Demux, Received, Tunnel
from usertunnel.core.errors import ConfigError
from usertunnel.core.params import Mode, TunnelParams
from usertunnel.io import netns

A, B = bytes([198, 51, 100, 1]), bytes([198, 51, 100, 2])
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def tap(local: bytes, remote: bytes, **kw: object) -> Tunnel:
    return Tunnel(TunnelParams("tap0", Mode.GRETAP, local, remote, **kw))  # type: ignore[arg-type]


def frame_ip(tos: int = 0, ttl: int = 33) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=INNER_A, dst=INNER_B, tos=tos, ttl=ttl) / ICMP())


def test_a_frame_goes_out_as_gre_protocol_0x6558_with_the_inner_ip_ttl_and_ecn() -> None:
    ours = tap(A, B, ikey=7, okey=7, ttl=None)
    wire = ours.encapsulate(frame_ip(tos=0xB9, ttl=33))  # DSCP 46, ECT(1)
    assert isinstance(wire, bytes)
    outer = IP(wire)
    assert outer[GRE].proto == 0x6558 and outer[GRE].key == 7
    assert outer.ttl == 33 and outer.tos == 0x01  # fixed TOS 0 with the inner ECN copied (RFC 6040)
    assert outer[Ether].src == MAC_A and outer[ICMP].type == 8


def test_a_non_ip_frame_gets_ttl_64_and_comes_back_whole() -> None:
    ours, peer = tap(A, B, ttl=None), tap(B, A, ttl=None)
    arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=INNER_A, pdst=INNER_B))
    wire = ours.encapsulate(arp)
    assert isinstance(wire, bytes) and IP(wire).ttl == 64
    demux = Demux()
    demux.add(peer)
    got = demux.decapsulate(wire)
    assert isinstance(got, Received) and bytes(got.inner) == arp


def test_gre_and_gretap_with_the_same_addresses_and_key_do_not_compete() -> None:
    gre = Tunnel(TunnelParams("gre0", Mode.GRE, B, A, ikey=5, okey=5))
    gretap = tap(B, A, ikey=5, okey=5)
    demux = Demux()
    demux.add(gre)
    demux.add(gretap)  # Linux keeps them in separate tables too
    frame = tap(A, B, ikey=5, okey=5).encapsulate(frame_ip())
    packet = Tunnel(TunnelParams("g", Mode.GRE, A, B, ikey=5, okey=5)).encapsulate(
        bytes(IP(src=INNER_A, dst=INNER_B) / ICMP())
    )
    assert isinstance(frame, bytes) and isinstance(packet, bytes)
    to_tap, to_gre = demux.decapsulate(frame), demux.decapsulate(packet)
    assert isinstance(to_tap, Received) and to_tap.tunnel is gretap
    assert isinstance(to_gre, Received) and to_gre.tunnel is gre


def test_a_frame_to_a_plain_gre_tunnel_is_dropped_for_its_protocol_type() -> None:
    gre = Tunnel(TunnelParams("gre0", Mode.GRE, B, A))
    demux = Demux()
    demux.add(gre)
    frame = tap(A, B).encapsulate(frame_ip())
    assert isinstance(frame, bytes) and demux.decapsulate(frame) is Drop.GRE_PROTOCOL


def test_outer_ce_marks_the_ip_packet_inside_a_frame_or_drops_it_if_not_ect() -> None:
    peer = tap(B, A)
    demux = Demux()
    demux.add(peer)
    for tos, expected in ((0x02, "ce"), (0x00, Drop.ECN_CE_NOT_ECT)):
        wire = bytearray(tap(A, B).encapsulate(frame_ip(tos=tos)))  # type: ignore[arg-type]
        wire[1] |= 0x03  # a router on the path marked CE
        wire[10:12] = b"\x00\x00"
        got = demux.decapsulate(bytes(IP(bytes(wire))))  # scapy recomputes the outer checksum
        if expected == "ce":
            assert isinstance(got, Received) and Ether(bytes(got.inner))[IP].tos & 3 == 3
        else:
            assert got is expected


def test_gretap_defaults_and_refusals() -> None:
    p = TunnelParams("t", Mode.GRETAP, A, B, ikey=1, okey=1)
    assert p.default_mtu(1500) == 1458  # 1500 - 20 - 8 - 14, as Linux's gretap with a key
    with pytest.raises(ConfigError, match="Ethernet frames"):
        TunnelParams("t", Mode.GRETAP, A, None, hub=__import__("usertunnel.core.neighbors").core.neighbors.HubParams())


@pytest.mark.netns
def test_two_namespaces_share_one_l2_segment_arp_nd_ping_and_tcp_cross_it(lab: Lab) -> None:
    args = ["--mode", "gretap", "--key", "1234"]
    for ns, local, remote, inner, mac in (
        (lab.a, UNDER_A, UNDER_B, INNER_A, MAC_A),
        (lab.b, UNDER_B, UNDER_A, INNER_B, MAC_B),
    ):
        lab.start(ns, ["--local", local, "--remote", remote, "--name", "tap0", "--address", f"{inner}/24",
                       "--address", f"2001:db8:100::{inner.rsplit('.', 1)[1]}/64", *args])  # fmt: skip
        netns.run(ns, ["ip", "link", "set", "tap0", "address", mac], check=True)
    assert lab.ping(lab.a, INNER_B).returncode == 0
    neigh = netns.run(lab.a, ["ip", "neigh", "show", INNER_B, "dev", "tap0"]).stdout.decode()
    assert MAC_B in neigh, neigh  # ARP went across the tunnel and came back
    for ns in (lab.a, lab.b):  # duplicate address detection runs across the tunnel too: wait for it (bounded)
        deadline = time.monotonic() + 10
        while netns.run(ns, ["ip", "-6", "addr", "show", "dev", "tap0", "tentative"]).stdout.strip():
            assert time.monotonic() < deadline, "IPv6 addresses still tentative after 10 s"
            time.sleep(0.2)
    six = netns.run(lab.a, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "2001:db8:100::2"], timeout=30)
    assert six.returncode == 0, six.stdout.decode()  # neighbour discovery too
    sent, received = tcp_transfer(lab.a, lab.b, INNER_B, 5201, 10 * 1024 * 1024)
    assert sent == received
    stats = lab.ends[0].stop()["tap0"]
    assert stats["drops"] == {}, stats
    assert re.search(r"mtu 1458", " ".join(lab.ends[0].lines)), lab.ends[0].lines[:2]
    assert os.path.exists("/dev/net/tun")


# --- ip6gretap: the same over an IPv6 underlay ---------------------------------------------------------------

A6, B6 = bytes.fromhex("20010db8000000000000000000000001"), bytes.fromhex("20010db8000000000000000000000002")


def tap6(local: bytes, remote: bytes, **kw: object) -> Tunnel:
    return Tunnel(TunnelParams("tap0", Mode.IP6GRETAP, local, remote, ttl=64, **kw))  # type: ignore[arg-type]


def test_ip6gretap_sends_a_frame_after_the_encapsulation_limit_option_and_gets_it_back() -> None:
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

    ours, peer = tap6(A6, B6, ikey=9, okey=9), tap6(B6, A6, ikey=9, okey=9)
    frame = frame_ip(tos=0x02)
    wire = ours.encapsulate(frame)
    assert isinstance(wire, bytes)
    outer = IPv6(wire)
    assert outer.hlim == 64 and outer.tc & 3 == 2  # ECT(0) copied from the IP packet inside the frame
    assert IPv6ExtHdrDestOpt in outer  # RFC 2473's encapsulation limit, default 4
    assert outer[GRE].proto == 0x6558 and outer[GRE].key == 9 and outer[Ether].src == MAC_A
    demux = Demux()
    demux.add(peer)
    # A raw IPv6 socket hands over what follows the IPv6 header and its extension headers.
    got = demux.decapsulate6(47, A6, B6, outer.tc, bytes(outer[GRE]))
    assert isinstance(got, Received) and bytes(got.inner) == frame
    assert TunnelParams("t", Mode.IP6GRETAP, A6, B6, ttl=64).default_mtu(1500) == 1500 - 40 - 8 - 4 - 14


@pytest.mark.netns
def test_ip6gretap_joins_two_namespaces_into_one_l2_segment_over_ipv6(lab: Lab) -> None:
    six = {lab.a: "2001:db8::1", lab.b: "2001:db8::2"}
    for ns, veth in ((lab.a, lab.veth_a), (lab.b, lab.veth_b)):
        netns.run(ns, ["ip", "-6", "addr", "add", f"{six[ns]}/64", "dev", veth, "nodad"], check=True)
    for ns, other, inner, mac in ((lab.a, lab.b, INNER_A, MAC_A), (lab.b, lab.a, INNER_B, MAC_B)):
        lab.start(ns, ["--mode", "ip6gretap", "--local", six[ns], "--remote", six[other], "--name", "tap6",
                       "--key", "77", "--address", f"{inner}/24"])  # fmt: skip
        netns.run(ns, ["ip", "link", "set", "tap6", "address", mac], check=True)
    assert lab.ping(lab.a, INNER_B).returncode == 0
    neigh = netns.run(lab.a, ["ip", "neigh", "show", INNER_B, "dev", "tap6"]).stdout.decode()
    assert MAC_B in neigh, neigh
    sent, received = tcp_transfer(lab.a, lab.b, INNER_B, 5202, 4 * 1024 * 1024)
    assert sent == received
    stats = lab.ends[0].stop()["tap6"]
    assert stats["drops"] == {}, stats
